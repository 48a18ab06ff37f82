"""The graph-store contract. Every backend runs this same suite: add it to BACKENDS."""

import datetime as dt
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.graph import GraphError, open_store
from support import SYNTH_CHUNK, SYNTH_RES

T_BUILD = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
BACKENDS = ["sqlite", "bigtable"]


@pytest.fixture(params=BACKENDS)
def store(request, synthetic, tmp_path):
    labels, agg = synthetic
    if request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        url = f"bigtable://raymesh-test/pychunkedgraph/contract_{tmp_path.name}"
    else:
        url = f"sqlite://{tmp_path}/graph.sqlite"
    build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                store_url=url, time_stamp=T_BUILD)
    s = open_store(url)
    yield s
    s.close()


def _all_nodes(store, layer):
    out = {}
    for c in store.layout.iter_chunk_coords(layer):
        out.update(store.range_read_chunk(store.get_chunk_id(layer=layer, x=c[0], y=c[1], z=c[2])))
    return out


def test_meta(store, synthetic):
    labels, _ = synthetic
    meta = store.meta
    assert meta.layer_count == 4
    assert meta.chunk_size.tolist() == list(SYNTH_CHUNK)
    assert meta.resolution.tolist() == list(SYNTH_RES)
    assert meta.voxel_bounds.tolist() == [[0, 0, 0], list(labels.shape)]
    assert meta.segmentation_path.endswith("/ws")
    assert "build" in meta.custom_data
    assert meta.mips == 2 and meta.resolution_at(1).tolist() == [32.0, 32.0, 40.0]


def test_chunk_helpers(store):
    cid = store.get_chunk_id(layer=3, x=1, y=0, z=1)
    assert store.get_chunk_layer(cid) == 3
    assert store.get_chunk_coordinates(cid).tolist() == [1, 0, 1]
    assert store.get_chunk_id(node_id=cid | 7) == cid


def test_range_read_chunk(store):
    layout = store.layout
    l2 = _all_nodes(store, 2)
    svs = np.concatenate(list(l2.values()))
    assert len(np.unique(svs)) == len(svs), "a supervoxel has one layer-2 node"
    for node, kids in l2.items():
        assert np.all(layout.get_chunk_layer(kids) == 1)
        assert np.array_equal(layout.parent_chunk_id(kids, 2), np.full(len(kids), layout.get_chunk_id(node)))
    for layer in range(3, store.meta.layer_count + 1):
        for node, kids in _all_nodes(store, layer).items():
            assert np.all(layout.get_chunk_layer(kids) < layer)


def test_children_and_parents(store):
    node, kids = next(iter(_all_nodes(store, 3).items()))
    assert np.array_equal(np.sort(store.get_children(node)), np.sort(kids))
    many = store.get_children([node, 12345])
    assert set(many) == {node, 12345} and len(many[12345]) == 0
    assert np.all(store.get_parents(kids) == node)
    assert store.get_parents(int(kids[0])) == node
    with pytest.raises(GraphError, match="no parent"):
        store.get_parents([node | 0xFFFF])
    assert store.get_parents([node | 0xFFFF], fail_to_zero=True).tolist() == [0]
    assert store.get_node_timestamps([node]).tolist() == [int(T_BUILD.timestamp() * 1000)]


def test_get_roots_stop_layer_and_ceil(store):
    layout = store.layout
    l2 = _all_nodes(store, 2)
    ids = np.array(sorted(l2), dtype=np.uint64)
    roots = store.get_roots(ids)
    assert np.all(layout.get_chunk_layer(roots) == 4)
    at3 = store.get_roots(ids, stop_layer=3)
    assert np.all(layout.get_chunk_layer(at3) >= 3)
    below = store.get_roots(ids, stop_layer=3, ceil=False)
    assert np.all(layout.get_chunk_layer(below) <= 3)
    # Where the ancestor skips layer 3, ceil=False stops at the layer-2 node itself.
    skipped = layout.get_chunk_layer(at3) > 3
    assert np.array_equal(below[skipped], ids[skipped])
    assert np.array_equal(store.get_roots(at3), roots)


def test_ancestors_at_several_layers_in_one_walk(store):
    l2 = np.array(sorted(_all_nodes(store, 2)) + [0], dtype=np.uint64)
    at = store.get_ancestors(l2, [4, 3, 2])
    for stop in (2, 3, 4):
        assert np.array_equal(at[stop], store.get_roots(l2, stop_layer=stop, fail_to_zero=True)), stop
    assert at[4][-1] == 0


def test_answers_as_of_a_timestamp(store):
    layout = store.layout
    before = T_BUILD - dt.timedelta(seconds=1)
    chunk = store.get_chunk_id(layer=2, x=0, y=0, z=0)
    assert store.range_read_chunk(chunk, time_stamp=before) == {}
    l2 = store.range_read_chunk(chunk)
    node = next(iter(l2))
    assert store.get_parents([node], time_stamp=before, fail_to_zero=True).tolist() == [0]
    old_root = store.get_roots(node)
    # An "edit" at T2: a new root over the old root's children replaces it.
    t2 = T_BUILD + dt.timedelta(minutes=5)
    root_chunk = layout.chunk_id(layout.n_layers, 0, 0, 0)
    new_root = root_chunk | 0xFFFF00
    store.write_nodes(np.array([new_root], np.uint64), [store.get_children(old_root)], t2)
    assert store.get_roots(node, time_stamp=T_BUILD) == old_root
    assert store.get_roots(node, time_stamp=t2) == new_root
    assert store.get_roots(node) == new_root
    assert new_root not in store.range_read_chunk(root_chunk, time_stamp=T_BUILD)
    assert new_root in store.range_read_chunk(root_chunk, time_stamp=t2)


def _roots_in_process(url, ids):
    return open_store(url).get_roots(np.array(ids, dtype=np.uint64)).tolist()


def test_concurrent_readers_in_processes(store):
    ids = sorted(_all_nodes(store, 2))
    expected = store.get_roots(np.array(ids, dtype=np.uint64)).tolist()
    # tensorstore forbids fork(); Ray workers are separate processes too.
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_roots_in_process, [store.url] * 6, [ids] * 6))
    assert all(r == expected for r in results)


def test_cross_edges_round_trip(store, synthetic):
    from raymesh.builder import build_hierarchy

    labels, agg = synthetic
    built = build_hierarchy(labels, SYNTH_CHUNK, agg)
    got = store.get_cross_edges(built.cross_l2.tolist())
    assert len(built.cross_l2) > 0
    for node, layer, pairs in zip(built.cross_l2, built.cross_layer, built.cross_pairs):
        assert np.array_equal(got[int(node)][int(layer)], pairs)
    before = T_BUILD - dt.timedelta(seconds=1)
    assert store.get_cross_edges(built.cross_l2[:3].tolist(), time_stamp=before) == {
        int(n): {} for n in built.cross_l2[:3]}
