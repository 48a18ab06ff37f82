"""Runs driven as an operator drives them: failures remembered until redone, unsound shards
redone by a plain rerun, metadata that only moves forward, a segmentation that does not match
its graph refused, and output files others can read."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.cli import main as cli
from raymesh.config import MeshConfig
from raymesh.driver import coverage_gap, run
from raymesh.graph import open_store
from raymesh.runs.job import LayerSummary, MeshJob
from raymesh.layer2.mesh import block_mismatch
from raymesh.formats.mesh_layout import RUN_RECORD, shard_key
from raymesh.layer2.remap import Neighbourhood
from raymesh.formats.sharding import ShardError, ShardingSpec, check_shard, locate, synthesize_shard
from raymesh.stitch import plan_chunk
from raymesh.storage import local_path
from support import SYNTH_CHUNK, SYNTH_RES, file_tree, meshed_with_a_merge

TS = 2e9


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    labels, agg = synthetic
    return build_graph(labels, str(tmp_path_factory.mktemp("reruns")), resolution=SYNTH_RES,
                       chunk_size=SYNTH_CHUNK, agglomeration=agg)


def _config(graph, mesh_dir: str, layers, **kw) -> MeshConfig:
    return MeshConfig(graph=graph.store_url, layers=layers, executor="serial", mesh_dir=mesh_dir,
                      time_stamp=TS, graph_meta="skip", **kw)


def _initial(job) -> dict[str, bytes]:
    return file_tree(os.path.join(local_path(job.mesh_url), "initial"))


def _failed_records(job) -> list[str]:
    return sorted(file_tree(os.path.join(local_path(job.mesh_url), "raymesh_failed")))


# ---- shards checked from their indices ----------------------------------------------------------

def test_check_shard_counts_from_the_indices_and_finds_damage():
    spec = ShardingSpec(minishard_bits=3, minishard_index_encoding="gzip")
    values = {k: bytes([k % 251]) * (10 + k % 7) for k in range(1, 40)}
    data = synthesize_shard(values, spec)

    def reader(buf):
        return lambda a, b: bytes(buf[a:b]) if b <= len(buf) else buf[a:b]  # a short read, as a cut file gives

    assert check_shard(reader(data), spec) == 39
    assert check_shard(reader(synthesize_shard({}, spec)), spec) == 0
    assert check_shard(lambda a, b: None, spec) is None
    for damaged in (data[:len(data) - 5], data[:spec.index_bytes // 2]):
        with pytest.raises(ShardError):
            check_shard(reader(damaged), spec)
    bad_index = bytearray(data)
    bad_index[0:8] = (2**40).to_bytes(8, "little")  # an entry that starts past its end
    with pytest.raises(ShardError):
        check_shard(reader(bytes(bad_index)), spec)


# ---- reruns ------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "index overwritten", "empty file"])
def test_a_damaged_shard_is_redone_by_a_plain_rerun(graph, damage):
    config = _config(graph, f"damaged_{damage.replace(' ', '_')}", [2, 3])
    first = run(config, progress=False)
    assert not first.failed
    job = MeshJob(config)
    before = _initial(job)
    key = max((k for k in before if k.startswith("2/")), key=lambda k: len(before[k]))
    path = os.path.join(local_path(job.mesh_url), "initial", key)
    data = before[key]
    with open(path, "wb") as f:
        f.write({"truncated": data[:len(data) // 2], "index overwritten": b"\xff" * 64 + data[64:],
                 "empty file": b""}[damage])
    again = run(config, progress=False)
    assert not again.failed
    layer2 = again.layers[0]
    assert len(layer2.redone) == 1 and "truncated or corrupt" in layer2.redone[0], layer2.redone
    assert layer2.chunks_skipped == layer2.chunks - 1, "only the damaged chunk is redone"
    assert _initial(job) == before, "the redone shard has the same bytes"


def _corrupt_a_child_fragment(job) -> tuple[int, tuple[int, ...]]:
    """Overwrite (same length) the layer-2 fragment of a descendant of some multi-child layer-3
    node; returns the node and the layer-2 chunk it lives in."""
    layout = job.meta.layout
    for _, coords in job.iter_chunks(3):
        plan = plan_chunk(job.store, 3, int(layout.chunk_id(3, *coords)), job.time_stamp)
        for node, descendants in sorted(plan.descendants.items()):
            for desc in descendants:
                if layout.get_chunk_layer(desc) != 2:
                    continue
                chunk = int(layout.get_chunk_id(desc))
                path = os.path.join(local_path(job.mesh_url), shard_key(layout, 2, chunk))
                with open(path, "rb") as f:
                    data = f.read()
                where = locate(lambda a, b: data[a:b], int(desc), job.sharding(2))
                if where is None:
                    continue
                start, size = where
                with open(path, "r+b") as f:
                    f.seek(start)
                    f.write(b"\x01" * size)
                return int(node), tuple(int(c) for c in layout.get_chunk_coordinates(chunk))
    raise AssertionError("no layer-3 node with a layer-2 fragment")


def test_a_corrupt_child_fails_its_chunk_until_it_is_redone(graph, capsys):
    config = _config(graph, "corrupt_child", [2, 3])
    assert not run(config, progress=False).failed
    job = MeshJob(config)
    before = _initial(job)
    node, child = _corrupt_a_child_fragment(job)
    args = ["mesh", "--graph", graph.store_url, "--executor", "serial", "--mesh-dir", "corrupt_child",
            "--graph-meta", "skip"]
    assert cli(args + ["--layer", "3", "--force", "--quiet"]) == 1
    out = capsys.readouterr().err  # failures are errors: on stderr, even with --quiet
    assert f"{node}: the fragment of its descendant" in out and f"layer 2 chunk {list(child)}" in out, out
    records = _failed_records(job)
    assert any(r.startswith("2/") for r in records) and any(r.startswith("3/") for r in records), records

    # The layer-3 chunk is not "done": a plain rerun of layer 3 tries it again, and fails again
    # (its child is still corrupt), naming the child once more.
    assert cli(args + ["--layer", "3"]) == 1
    out = capsys.readouterr().err
    assert "redone: chunk" in out and f"layer 2 chunk {list(child)}" in out

    # A plain rerun from layer 2 redoes exactly the child, then the parent: everything is back.
    summary = run(config, progress=False)
    assert not summary.failed
    assert [len(layer.redone) for layer in summary.layers] == [1, 1]
    assert _initial(job) == before
    assert _failed_records(job) == []


def test_reruns_after_a_stitching_failure_do_not_count_it_done(graph, monkeypatch):
    """A chunk with a failed node is written with a failure record first; a plain rerun redoes it."""
    import raymesh.stitch as stitch

    config = _config(graph, "failed_node", [2, 3])
    assert not run(config.model_copy(update={"layers": [2]}), progress=False).failed
    real = stitch.stitch_node
    calls = {"n": 0}

    def flaky(grid, chunk_id, node, fragments):
        calls["n"] += 1
        if calls["n"] == 1:
            raise stitch.DracoError("simulated encoder failure")
        return real(grid, chunk_id, node, fragments)

    monkeypatch.setattr(stitch, "stitch_node", flaky)
    failed = run(config.model_copy(update={"layers": [3]}), progress=False)
    assert failed.failed and len(failed.layers[0].failures) == 1
    monkeypatch.setattr(stitch, "stitch_node", real)
    again = run(config.model_copy(update={"layers": [3]}), progress=False)
    assert not again.failed and len(again.layers[0].redone) == 1
    assert "failed in an earlier run" in again.layers[0].redone[0]
    job = MeshJob(config)
    assert _failed_records(job) == []
    clean = _config(graph, "failed_node_clean", [2, 3])
    run(clean, progress=False)
    assert _initial(job) == _initial(MeshJob(clean))


# ---- metadata only moves forward ----------------------------------------------------------------

def _metadata(store_url: str, mesh_url: str) -> dict:
    store = open_store(store_url)
    ws, mesh = local_path(store.meta.segmentation_path), local_path(mesh_url)
    with open(os.path.join(ws, "info"), "rb") as f, open(os.path.join(mesh, "info"), "rb") as g, \
            open(os.path.join(mesh, RUN_RECORD), "rb") as h:
        return {"ws_info": f.read(), "mesh_info": g.read(), "record": h.read(),
                "custom_data": store.meta.custom_data.get("mesh"), "meta_cells": store.raw_meta()}


def test_partial_and_noop_runs_never_move_metadata_back(synthetic, tmp_path, capsys):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    base = ["mesh", "--graph", g.store_url, "--executor", "serial", "--quiet"]
    assert cli(base + ["--layers", "2-4"]) == 0  # no --time-stamp: the graph as of now
    mesh_url = MeshJob(MeshConfig(graph=g.store_url)).mesh_url
    first = _metadata(g.store_url, mesh_url)
    assert first["custom_data"]["max_layer"] == 4
    assert json.loads(first["ws_info"])["mesh_metadata"]["max_meshed_layer"] == 4
    for extra in (["--layer", "3"], ["--layer", "2", "--chunk-start", "0", "0", "0", "--chunk-end", "1", "1", "1"],
                  ["--layers", "2-4"], ["--layer", "4", "--force"], ["--layer", "2", "--mip", "0"]):
        assert cli(base + extra) == 0, extra
        assert _metadata(g.store_url, mesh_url) == first, f"{extra} changed the recorded metadata"
    capsys.readouterr()
    # Asking for meshes made otherwise in the same mesh dir is refused, not mixed in.
    for extra in (["--max-error", "10"], ["--time-stamp", "1e9"]):
        assert cli(base + ["--layer", "2"] + extra) == 2
        err = capsys.readouterr().err
        assert "holds meshes made otherwise" in err and "--mesh-dir" in err, err
    assert _metadata(g.store_url, mesh_url) == first


def test_an_interrupted_first_run_resumes_at_its_own_time_stamp(synthetic, tmp_path):
    """The run record is written before the first chunk: a rerun without --time-stamp meshes the
    graph as of the first run's time, not as of the rerun's."""
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    config = MeshConfig(graph=g.store_url, layers=[2], executor="serial",
                        chunk_start=[0, 0, 0], chunk_end=[1, 1, 1])
    run(config, progress=False)  # "killed" after one chunk
    job = MeshJob(config)
    first = json.loads(job.bucket.read(RUN_RECORD))
    resumed = MeshJob(config.model_copy(update={"chunk_start": None, "chunk_end": None}))
    resumed.begin()
    assert resumed.time_stamp.timestamp() == pytest.approx(first["time_stamp"])


# ---- a segmentation that does not match its graph -----------------------------------------------

def test_a_segmentation_read_as_background_fails_the_layer(synthetic, tmp_path, capsys):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path / "g"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    store = open_store(g.store_url)
    ws = local_path(store.meta.segmentation_path)
    scale = store.meta.scale(0)["key"]
    # The chunk files of mip 0 renamed as CloudVolume names gzipped files on a local disk; a
    # reader that does not know that reads background everywhere.
    names = [n for n in os.listdir(os.path.join(ws, scale)) if not n.startswith(".")]
    victim = sorted(names)[0]
    shutil.move(os.path.join(ws, scale, victim), os.path.join(tmp_path, victim))
    code = cli(["mesh", "--graph", g.store_url, "--layers", "2-3", "--executor", "serial", "--quiet"])
    out = capsys.readouterr().err
    assert code == 1
    assert "holds none of the" in out and store.meta.segmentation_path.rstrip("/") in out, out
    assert "layers [3] not run" in out
    job = MeshJob(MeshConfig(graph=g.store_url))
    assert _failed_records(job), "the failed chunk keeps a record"
    assert json.loads(job.bucket.read(RUN_RECORD))["max_layer"] == 0, "no layer is recorded as meshed"
    # Put the file back: a plain rerun redoes exactly the failed chunk(s) and finishes.
    shutil.move(os.path.join(tmp_path, victim), os.path.join(ws, scale, victim))
    assert cli(["mesh", "--graph", g.store_url, "--layers", "2-3", "--executor", "serial", "--quiet"]) == 0
    assert _failed_records(job) == []


def test_block_mismatch_names_what_is_wrong():
    hood = Neighbourhood(stop_layer=3, own={7: np.array([11, 12], np.uint64), 8: np.array([13], np.uint64)},
                         others={}, ancestor={})
    block = np.zeros((5, 5, 5), np.uint64)
    assert "none of the 3 supervoxels" in block_mismatch(block, hood, (4, 4, 4))
    block[0, 0, 0], block[1, 1, 1] = 11, 99
    assert "1 supervoxel(s) the graph does not have" in block_mismatch(block, hood, (4, 4, 4))
    block[1, 1, 1] = 0
    block[4, 4, 4] = 99  # the overlap belongs to the neighbours: not checked here
    assert block_mismatch(block, hood, (4, 4, 4)) is None
    empty = Neighbourhood(stop_layer=3, own={}, others={}, ancestor={})
    assert block_mismatch(np.zeros((4, 4, 4), np.uint64), empty, (4, 4, 4)) is None


def test_a_layer_without_a_single_mesh_is_a_failure():
    layer = LayerSummary(2, chunks=4, chunks_skipped=1, nodes=30, fragments=0)
    assert "not one mesh written" in coverage_gap(layer)
    assert coverage_gap(LayerSummary(2, chunks=4, nodes=30, fragments=2)) is None
    assert coverage_gap(LayerSummary(3, chunks=2, nodes=5, unstitched=5)) is None
    assert coverage_gap(LayerSummary(2, chunks=4, chunks_skipped=4)) is None


# ---- permissions --------------------------------------------------------------------------------

def test_every_output_file_is_readable_by_others(synthetic, tmp_path, monkeypatch):
    import raymesh.storage as storage

    old = os.umask(0o022)
    monkeypatch.setattr(storage, "_UMASK", 0o022)
    try:
        url = meshed_with_a_merge(synthetic, tmp_path)
        mesh = local_path(MeshJob(MeshConfig(graph=url)).mesh_url)
        modes = {}
        for base, _, names in os.walk(mesh):
            for name in names:
                modes[os.path.relpath(os.path.join(base, name), mesh)] = os.stat(os.path.join(base, name)).st_mode & 0o777
        kinds = {name.split("/")[0] for name in modes}
        assert {"initial", "dynamic", "info", RUN_RECORD} <= kinds, kinds
        assert {n: m for n, m in modes.items() if m != 0o644} == {}
    finally:
        os.umask(old)
