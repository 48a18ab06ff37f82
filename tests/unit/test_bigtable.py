"""The Bigtable store against the real emulator: PCG's bytes, batched reads, bad tables, and the
same meshes as SQLite. (The shared contract suite runs in test_store_contract.py.)"""

import io
import pickle
import pickletools

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.graph import GraphError, open_store
from raymesh.graph.pcg_meta import _RestrictedUnpickler, dumps_meta, loads_meta
from raymesh.runs.job import MeshJob
from support import SYNTH_CHUNK, SYNTH_RES, all_shards

PROJECT, INSTANCE = "raymesh-test", "pychunkedgraph"


def _url(name: str) -> str:
    return f"bigtable://{PROJECT}/{INSTANCE}/{name}"


@pytest.fixture(scope="module")
def both(bigtable_emulator, synthetic, tmp_path_factory):
    """The synthetic graph built twice: into SQLite and into a Bigtable table."""
    labels, agg = synthetic
    out = {}
    for kind in ("sqlite", "bigtable"):
        d = tmp_path_factory.mktemp(kind)
        url = _url("synthetic") if kind == "bigtable" else None
        out[kind] = build_graph(labels, str(d), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                                store_url=url, graph_id="same")
    return out


def test_meta_pickle_names_exactly_pcgs_classes_and_round_trips(both):
    store = open_store(both["bigtable"].store_url)
    data = store._read_keys([b"meta"], store._column("0", b"meta"))[b"meta"].cells["0"][b"meta"][0].value
    names = set()

    class Recording(_RestrictedUnpickler):
        def find_class(self, module, name):
            names.add((module, name))
            return super().find_class(module, name)

    Recording(io.BytesIO(data)).load()
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
    assert names == {("pychunkedgraph.graph.meta", "ChunkedGraphMeta"), ("pychunkedgraph.graph.meta", "GraphConfig"),
                     ("pychunkedgraph.graph.meta", "DataSource"), ("datetime", "timedelta")}
    assert loads_meta(dumps_meta(store.meta)) == store.raw_meta()
    mine, theirs = store.meta.to_dict(), open_store(both["sqlite"].store_url).meta.to_dict()
    for d in (mine, theirs):  # each build wrote its own copy of the segmentation
        d["data_source"].pop("watershed")
    assert mine == theirs
    assert store.version.startswith("raymesh")


def test_rows_are_pcgs_bytes(both):
    """Row keys, zstd children, 8-byte parents, big-endian counters (pcg-compat.md 2.2-2.3)."""
    import zstandard

    store = open_store(both["bigtable"].store_url)
    layout = store.layout
    chunk = int(layout.chunk_id(2, 0, 0, 0))
    nodes = store.range_read_chunk(chunk)
    node = min(nodes)
    rows = list(store._table.read_rows(start_key=b"%.20d" % node, end_key=b"%.20d" % node, end_inclusive=True))
    cells = rows[0].cells["0"]
    kids = np.frombuffer(zstandard.ZstdDecompressor().decompress(cells[b"children"][0].value), "<u8")
    assert kids.tolist() == nodes[node].tolist()
    parent = np.frombuffer(cells[b"parents"][0].value, "<u8")
    assert len(cells[b"parents"][0].value) == 8 and int(parent[0]) == store.get_parents(node)
    counter = list(store._table.read_rows(start_key=b"i%.20d" % chunk, end_key=b"i%.20d" % chunk, end_inclusive=True))
    assert int.from_bytes(counter[0].cells["1"][b"counter"][0].value, "big") == max(layout.get_segment_id(n) for n in nodes)


def test_meshes_are_byte_identical_to_sqlite(both):
    shards = []
    for kind in ("sqlite", "bigtable"):
        config = MeshConfig(graph=both[kind].store_url, layers=[2, 3, 4], mip=0, executor="serial",
                            time_stamp=2e9, force=True)
        summary = run(config, progress=False)
        assert all(not s.failures for s in summary.layers)
        shards.append(all_shards(MeshJob(config), (2, 3, 4)))
    assert shards[0] == shards[1] and all(v is not None for v in shards[0].values())


def test_one_chunk_costs_a_few_round_trips_whatever_its_node_count(both):
    job = MeshJob(MeshConfig(graph=both["bigtable"].store_url, layers=[2, 3, 4], mip=0, executor="serial",
                             time_stamp=2e9, force=True))
    store = job.store
    per_chunk = {}
    for layer in (2, 3, 4):
        for _, coords in job.iter_chunks(layer):
            store.round_trips = 0
            stats = job.run_chunk((layer, coords))
            per_chunk.setdefault(layer, []).append((stats.nodes, store.round_trips))
    for layer, counts in per_chunk.items():
        assert max(n for n, _ in counts) > 1, "chunks with several nodes are measured"
        assert max(r for _, r in counts) <= 4, (layer, counts)


def test_graph_meta_is_a_dry_run_unless_asked(both):
    url = both["bigtable"].store_url
    before = open_store(url).raw_meta()["custom_data"].get("mesh")
    config = MeshConfig(graph=url, layers=[2], mip=0, executor="serial", time_stamp=2e9)
    summary = run(config, progress=False)
    assert summary.graph_meta.startswith("dry run, graph meta not changed: would write custom_data['mesh'] = ")
    assert open_store(url).raw_meta()["custom_data"].get("mesh") == before
    summary = run(config.model_copy(update={"graph_meta": "write"}), progress=False)
    store = open_store(url)
    # max_layer only moves forward: it is the highest layer the mesh dir holds (an earlier test
    # may have meshed it further), never this run's last layer.
    from raymesh.runs.job import MeshJob
    from raymesh.runs.record import RunRecord

    record = RunRecord.from_bytes(MeshJob(config).bucket.read("raymesh_run.json"), "record")
    assert store.raw_meta()["custom_data"]["mesh"]["max_layer"] == record.max_layer >= 2
    cells = store._read_keys([b"meta"], store._column("0", b"meta", newest=False))[b"meta"].cells["0"][b"meta"]
    assert len(cells) >= 2, "PCG's update_meta adds a cell; the build's meta is still there"


def test_missing_table_is_an_unknown_graph(bigtable_emulator):
    with pytest.raises(GraphError, match=r"unknown graph: no table 'nope' in Bigtable instance 'pychunkedgraph'"):
        open_store(_url("nope"))
    with pytest.raises(GraphError, match="bigtable://PROJECT/INSTANCE/TABLE"):
        open_store("bigtable://only/two")


def test_table_without_meta_row(bigtable_emulator):
    from raymesh.graph.bigtable import BigtableStore

    BigtableStore(PROJECT, INSTANCE, "empty_table", create=True)
    store = open_store(_url("empty_table"))
    with pytest.raises(GraphError, match="has no meta row"):
        store.meta


class _Payload:
    """A pickle that would create a file when loaded, if anything ran it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_meta_pickle_naming_an_unexpected_class_is_refused_and_not_run(bigtable_emulator, tmp_path):
    from raymesh.graph.bigtable import BigtableStore

    marker = tmp_path / "ran"
    store = BigtableStore(PROJECT, INSTANCE, "evil_meta", create=True)
    store._write_rows([store._row(b"meta", "0", b"meta", pickle.dumps({"graph_config": _Payload(str(marker))}), None)])
    with pytest.raises(GraphError, match=r"names pathlib\.Path\.touch|names pathlib\.(Posix)?Path"):
        open_store(_url("evil_meta")).meta
    assert not marker.exists()
    buf = io.BytesIO()
    pickle.dump(np.arange(3), buf)  # arrays are not among the accepted classes either
    with pytest.raises(GraphError, match="numpy"):
        loads_meta(buf.getvalue())


def test_builder_refuses_a_table_holding_another_graph(both, synthetic, tmp_path):
    labels, agg = synthetic
    from raymesh.builder import BuildError

    with pytest.raises((BuildError, GraphError), match="different graph|already holds"):
        build_graph(labels[:, :, :20], str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                    agglomeration=agg, store_url=both["bigtable"].store_url, graph_id="same")


def test_edits_and_remeshing_match_sqlite(bigtable_emulator, synthetic, tmp_path):
    """The same merge and split in both stores: same new roots, same operation log, and the
    remeshed dynamic/ fragments byte for byte."""
    import datetime as dt
    import os

    from raymesh.cli_edit import remesher_for
    from raymesh.edits import merge, split
    from raymesh.volume import read_block

    labels, agg = synthetic
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    dynamic, roots_after, logs = [], [], []
    for kind in ("sqlite", "bigtable"):
        g = build_graph(labels, str(tmp_path / kind), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                        agglomeration=agg, graph_id="edited", time_stamp=t0,
                        store_url=_url("edited") if kind == "bigtable" else None)
        run(MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", graph_meta="write",
                       time_stamp=(t0 + dt.timedelta(seconds=30)).timestamp()), progress=False)
        store = open_store(g.store_url)
        meta = store.meta
        sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
        svs = np.unique(sv[sv > 0])
        roots = np.asarray(store.get_roots(svs))
        first, second = np.unique(roots)[:2]
        a, b = int(svs[roots == first][0]), int(svs[roots == second][0])
        merge(store, a, b, t0 + dt.timedelta(minutes=1))
        split(store, a, b, t0 + dt.timedelta(minutes=2))
        remesher = remesher_for(g.store_url)
        assert not remesher.run(remesher.nodes_since(None)).failures
        folder = os.path.join(meta.segmentation_path.removeprefix("file://"), "graphene_meshes", "dynamic")
        dynamic.append({n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))})
        roots_after.append(np.asarray(store.get_roots(svs)).tolist())
        logs.append([(op["id"], op["kind"], op["ms"], op["new_roots"].tolist(), op["removed"].tolist())
                     for op in store.operations()])
    assert dynamic[0] == dynamic[1] and dynamic[0]
    assert roots_after[0] == roots_after[1]
    assert logs[0] == logs[1]
