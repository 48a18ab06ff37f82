"""Higher-layer stitching end to end with the serial executor, plus its pure pieces."""

import json

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.errors import MeshingError
from raymesh.runs.job import MeshJob
from raymesh.manifest import manifest_nodes
from raymesh.formats.mesh_layout import shard_key
from raymesh.formats.sharding import ShardBuilder, ShardingSpec, canonical_order, synthesize_shard
from raymesh.stitch import merge_across_boundaries, plan_chunk
from raymesh.volume import read_block
from stitch_checks import (assert_stitched_like_layer2, edge_use, interior_roots, layer_view, merged, on_l2_seams,
                           read_fragment)
from support import SYNTH_CHUNK, SYNTH_RES

TS = 2e9


@pytest.fixture(scope="module")
def stitched(synthetic, tmp_path_factory):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path_factory.mktemp("stitch")), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                    agglomeration=agg)
    config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", time_stamp=TS)
    summary = run(config, progress=False)
    return MeshJob(config), summary


def _roots(job):
    meta = job.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    return sv, sorted(set(np.asarray(job.store.get_roots(np.unique(sv[sv > 0]))).tolist()))


def test_every_layer_covers_the_layer2_surface(stitched):
    job, summary = stitched
    assert [s.failures for s in summary.layers] == [[], [], []]
    assert all(s.missing == 0 for s in summary.layers)
    _, roots = _roots(job)
    assert len(roots) == 6
    for root in roots:
        assert_stitched_like_layer2(job, root, (3, 4))
        assert layer_view(job, root, 4)["nodes"] == 1, "each synthetic object has one top-layer mesh"


def test_interior_objects_are_closed_at_every_layer(stitched):
    """Each edge in exactly two faces, for objects that do not touch the volume's faces.

    PCG's layer-2 remap leaves holes on chunk planes that raymesh closes at layer 2 (caps for an
    object entering a chunk's overlap without a node there; seam patches where two diagonal voxels
    on a chunk face are one label on one side and two nodes on the other). So: no non-manifold
    edges, no openings at any layer, and stitching adds and hides none.
    """
    job, _ = stitched
    store = job.store
    sv, roots = _roots(job)
    inside = interior_roots(store, sv)
    assert inside, "the synthetic data has objects wholly inside the volume"
    closed = 0
    for root in sorted(inside):
        openings = []
        for layer in (2, 3, 4):
            frags = [read_fragment(job, n) for n in manifest_nodes(store, root, layer)]
            vertices, faces = merged(frags)
            edges, use = edge_use(faces, return_edges=True)
            assert np.all(use <= 2), f"root {root}: non-manifold edges at layer {layer}"
            opened = vertices[np.unique(edges[use == 1])]
            assert np.all(on_l2_seams(job, opened)), f"root {root}: opening off the layer-2 seams at layer {layer}"
            openings.append(sorted(map(tuple, opened.tolist())))
        assert openings[0] == openings[1] == openings[2], f"root {root}: stitching changed its openings"
        closed += not openings[0]
    assert closed == len(inside), f"only {closed} of {len(inside)} interior objects are closed"


def test_plan_skips_single_child_nodes_and_descends_chains(stitched):
    job, _ = stitched
    store, layout = job.store, job.meta.layout
    for layer in (3, 4):
        for coords in layout.iter_chunk_coords(layer):
            chunk = int(layout.chunk_id(layer, *coords))
            plan = plan_chunk(store, layer, chunk, TS)
            rows = store.range_read_chunk(chunk, time_stamp=TS)
            assert set(plan.descendants) == {n for n, kids in rows.items() if len(kids) > 1}
            for node, desc in plan.descendants.items():
                assert len(desc) == len(rows[node])
                for d in desc:  # a meshed node: layer 2, or more than one child
                    assert layout.get_chunk_layer(d) == 2 or len(store.get_children(d)) > 1
                    assert read_fragment(job, d) is not None


def test_merge_dedups_only_plane_vertices():
    planes = np.array([10.0, 10.0, 10.0])
    a = (np.array([[0, 0, 0], [10, 1, 1], [0, 5, 5]], float), np.array([[0, 1, 2]], np.uint32))
    b = (np.array([[10, 1, 1], [20, 0, 0], [0, 0, 0]], float), np.array([[0, 1, 2]], np.uint32))
    v, f = merge_across_boundaries([a, b], planes)
    # (0,0,0) appears twice but off the planes: kept twice; (10,1,1) merged into one, appended last.
    assert v.tolist() == [[0, 0, 0], [0, 5, 5], [20, 0, 0], [0, 0, 0], [10, 1, 1]]
    assert f.tolist() == [[0, 4, 1], [4, 2, 3]]


def test_on_planes_with_many_values_and_a_tolerance_matches_brute_force():
    """The LOD chain's units meet on many planes per axis, looked up by bisection; exact for
    stitching (one value an axis), within a tolerance for values snapped after their planes."""
    from raymesh.stitch import on_planes

    rng = np.random.default_rng(3)
    planes = [np.array([64.0, 0.0, 128.0, 32.0]), np.array([]), np.array([40.0])]
    vertices = rng.integers(0, 130, size=(5000, 3)).astype(np.float64) + rng.choice([0.0, 0.25, 0.5], size=(5000, 3))
    tol = np.array([0.3, 0.3, 0.3])
    brute = np.zeros(len(vertices), dtype=bool)
    exact = np.zeros(len(vertices), dtype=bool)
    for axis, values in enumerate(planes):
        for v in values:
            brute |= np.abs(vertices[:, axis] - v) <= tol[axis]
            exact |= vertices[:, axis] == v
    assert brute.sum() > exact.sum() > 20
    np.testing.assert_array_equal(on_planes(vertices, planes, tol), brute)
    np.testing.assert_array_equal(on_planes(vertices, planes), exact)
    np.testing.assert_array_equal(on_planes(vertices, np.array([64.0, 1.0, 40.0])),
                                  (vertices == np.array([64.0, 1.0, 40.0])).any(axis=1))


def test_shard_builder_matches_synthesize_shard(tmp_path):
    spec = ShardingSpec(minishard_bits=3, minishard_index_encoding="gzip")
    values = {int(k): bytes([k % 251]) * (k % 17 + 1) for k in range(1000, 1100, 3)}
    builder = ShardBuilder(spec, spool_bytes=64)  # forces the spool to disk
    for key in canonical_order(values, spec):
        builder.add(key, values[key])
    assert b"".join(builder.pieces(piece_bytes=50)) == synthesize_shard(values, spec)
    with pytest.raises(Exception, match="canonical order"):
        builder.add(1000, b"x")


def test_missing_or_corrupt_child_shards_name_the_chunk(synthetic, tmp_path):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    with pytest.raises(MeshingError, match=r"layer 2 chunk \[\d+, \d+, \d+\] has no shard file.*run layer 2"):
        run(MeshConfig(graph=g.store_url, layers=[3], mip=0, executor="serial"), progress=False)
    config = MeshConfig(graph=g.store_url, layers=[2], mip=0, executor="serial")
    run(config, progress=False)
    job = MeshJob(config)
    layout = job.meta.layout
    key = shard_key(layout, 2, int(layout.chunk_id(2, 1, 1, 1)))
    data = job.bucket.read(key)
    job.bucket.write(key, data[:100])  # truncated: the index points past the end
    with pytest.raises(MeshingError, match=r"layer 2 chunk \[1, 1, 1\] is (corrupt|truncated)"):
        run(MeshConfig(graph=g.store_url, layers=[3], mip=0, executor="serial", force=True), progress=False)


def test_tiny_budget_spools_to_disk_with_identical_bytes(stitched, tmp_path):
    job, _ = stitched
    layout = job.meta.layout
    before = {c: job.bucket.read(shard_key(layout, 4, int(layout.chunk_id(4, *c)))) for _, c in job.iter_chunks(4)}
    # The node limit set apart from the budget: every node is still stitched, whole.
    config = job.config.model_copy(update={"layers": [3, 4], "force": True, "memory_budget": 256,
                                           "max_stitch_bytes": 2**40})
    summary = run(config, progress=False)
    assert summary.layers[1].unstitched == 0
    after = {c: job.bucket.read(shard_key(layout, 4, int(layout.chunk_id(4, *c)))) for _, c in job.iter_chunks(4)}
    assert before == after


def test_streaming_reads_fragments_not_whole_shards(stitched):
    job, summary = stitched
    layout = job.meta.layout
    l2 = [job.bucket.read(shard_key(layout, 2, int(layout.chunk_id(2, *c)))) for _, c in job.iter_chunks(2)]
    # Each chunk's shard with meshes is touched by one parent (an empty one is just its 16 << 4
    # byte index); reads are index entries, minishard indices and values, never whole files.
    assert summary.layers[1].shard_reads == sum(len(data) > 16 << 4 for data in l2)
    assert summary.layers[1].bytes_read < sum(len(data) for data in l2)


def test_cli_runs_layers_in_order_and_reports_stitching(synthetic, tmp_path, capsys):
    from raymesh.cli import main

    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    code = main(["mesh", "--graph", g.store_url, "--layers", "2-4", "--mip", "0", "--executor", "serial",
                 "--json", "--memory-budget", "64MiB"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "layer 4: 1 chunks" in err and "descendants without a mesh" in err
    assert [layer["layer"] for layer in json.loads(out)["layers"]] == [2, 3, 4], "stdout is the JSON alone"
    assert main(["mesh", "--graph", g.store_url, "--layers", "2-4", "--executor", "serial", "--quiet",
                 "--memory-budget", "lots"]) == 2
    assert "not a size" in capsys.readouterr().err


def test_configs_parse():
    from pathlib import Path

    from raymesh.config import load_config

    config = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"))
    assert config.layers == [2, 3, 4] and config.memory_budget == 2 * 2**30


def test_a_chunk_split_over_tasks_gives_the_same_shard(stitched):
    """Slices of a chunk's nodes, stitched apart and merged, write the single task's bytes."""
    import pickle

    job, _ = stitched
    for layer in (3, 4):
        for _, coords in job.iter_chunks(layer):
            key = job.shard_path(layer, coords)
            whole = job.bucket.read(key)
            for parts in (2, 3):
                plans = job.plan_parts(layer, coords, parts)
                pieces = [pickle.loads(pickle.dumps(job.stitch_part(pickle.loads(pickle.dumps(p))))) for p in plans]
                plan = plan_chunk(job.store, layer, int(job.meta.layout.chunk_id(layer, *coords)), job.time_stamp)
                assert sum(p.stats.nodes for p in pieces) == len(plan.descendants)
                assert sorted(n for p in plans for n in p.descendants) == sorted(plan.descendants)
                out = job.write_parts(layer, coords, pieces)
                assert out.stats.parts == parts and job.bucket.read(key) == whole, (layer, coords, parts)


def test_nodes_over_the_limit_leave_their_children_to_the_viewer(stitched):
    """A node limit that binds: big nodes keep no mesh, nor do their ancestors, and the verified
    manifest (PCG's verify=true) serves their children, so viewers still see the whole surface."""
    import pickle

    from raymesh.stitch import node_cost

    job, _ = stitched
    layout = job.meta.layout
    costs = []
    for _, coords in job.iter_chunks(3):
        plan = plan_chunk(job.store, 3, int(layout.chunk_id(3, *coords)), job.time_stamp)
        costs += node_cost(plan, job.fragment_reader()).values()
    limit = int(np.median(costs))
    config = job.config.model_copy(update={"mesh_dir": "limited", "max_stitch_bytes": limit})
    summary = run(config, progress=False)
    limited = MeshJob(config)
    assert all(not s.failures for s in summary.layers)
    assert summary.layers[1].unstitched > 0 and summary.layers[1].fragments > 0
    assert summary.layers[2].unstitched > 0, "ancestors of unstitched nodes are left unstitched too"
    for layer in (3, 4):
        for _, coords in limited.iter_chunks(layer):
            plan = plan_chunk(limited.store, layer, int(layout.chunk_id(layer, *coords)), limited.time_stamp)
            reader = limited.fragment_reader()
            for node, desc in plan.descendants.items():
                stitched_from = [reader.locate(d) for d in desc]
                if reader.locate(node) is not None:
                    assert sum(w[1] for w in stitched_from if w) <= limit, f"node {node} is over the limit"
                    assert all(w is not None for d, w in zip(desc, stitched_from) if layout.get_chunk_layer(d) > 2)
                elif layer == 4:
                    assert any(w is None for w in stitched_from) or sum(w[1] for w in stitched_from) > limit
    _, roots = _roots(job)
    several = 0
    for root in roots:
        assert_stitched_like_layer2(limited, root, (3, 4))
        several += layer_view(limited, root, 4)["nodes"] > 1
    assert several > 0, "the biggest objects are now loaded as several fragments"
    # Split over tasks with the limit: the same bytes as one task.
    for layer in (3, 4):
        for _, coords in limited.iter_chunks(layer):
            whole = limited.bucket.read(limited.shard_path(layer, coords))
            pieces = [pickle.loads(pickle.dumps(limited.stitch_part(p))) for p in limited.plan_parts(layer, coords, 3)]
            out = limited.write_parts(layer, coords, pieces)
            assert limited.bucket.read(limited.shard_path(layer, coords)) == whole
            assert len(out.stats.unstitched) == len({n for p in pieces for n in p.stats.unstitched})


def test_balanced_slices_cover_the_order_in_runs_of_similar_cost():
    from raymesh.stitch import balanced_slice

    order = list(range(10, 30))
    cost = {n: (1000 if n == 12 else 10) for n in order}
    slices = [balanced_slice(order, cost, k, 4) for k in range(4)]
    assert [n for s in slices for n in s] == order  # contiguous runs, canonical order kept
    assert [12] in slices, "the expensive node gets a part to itself"
    total = sum(cost.values())
    assert all(sum(cost[n] for n in s) <= total / 4 + 1000 for s in slices)
    assert balanced_slice([], {}, 0, 2) == []
