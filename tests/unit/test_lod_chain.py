"""The LOD chain on the synthetic graph, serially: what it writes beside ``initial/``, the rules its
meshes keep (borders, child grid, error budget, closed objects), reruns, and the
``neuroglancer_multilod_draco`` export read back by a reader written from the format description
and by CloudVolume's multi-LOD reader, sharded and unsharded."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.export import ViewerMeshes, export_roots
from raymesh.export.multilod import MultilodBuilder
from raymesh.formats import multilod
from raymesh.formats.draco import decode, snap
from raymesh.formats.mesh_layout import lod_key
from raymesh.formats.sharding import ShardingSpec, locate
from raymesh.geometry.distance import surface_deviation
from raymesh.lod.geometry import crossing_faces, lod_budget, open_edge_vertices
from raymesh.runs.job import MeshJob
from raymesh.stitch import plan_chunk, seam_planes
from raymesh.storage import local_path
from raymesh.verify.geometry import edge_use, merged, single_edges
from raymesh.volume import read_block
from stitch_checks import interior_roots
from support import SYNTH_CHUNK, SYNTH_RES, file_tree

TS = 2e9


@pytest.fixture(scope="module")
def meshed(synthetic, tmp_path_factory):
    """The synthetic graph meshed through its top layer three times: LOD chain on (the default),
    off, and on again into a third mesh dir."""
    from raymesh.builder import build_graph

    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path_factory.mktemp("lod")), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                    agglomeration=agg)
    jobs = {}
    for name, on in (("lod", True), ("plain", False), ("again", True)):
        config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", time_stamp=TS,
                            mesh_dir=name, lod_chain=on, graph_meta="write" if name == "lod" else "skip")
        summary = run(config, progress=False)
        assert not summary.failed
        jobs[name] = (MeshJob(config), summary)
    return g.store_url, jobs


def mesh_folder(job) -> str:
    return local_path(job.mesh_url)


def test_initial_is_unchanged_and_lod_shards_are_deterministic(meshed):
    _, jobs = meshed
    lod, plain, again = (mesh_folder(jobs[n][0]) for n in ("lod", "plain", "again"))
    assert file_tree(os.path.join(lod, "initial")) == file_tree(os.path.join(plain, "initial"))
    assert not os.path.exists(os.path.join(plain, "lod"))
    tree = file_tree(os.path.join(lod, "lod"))
    assert sorted({k.split(os.sep)[0] for k in tree}) == ["3", "4"]
    assert tree == file_tree(os.path.join(again, "lod"))
    summary = jobs["lod"][1]
    assert [s.lod_fragments > 0 for s in summary.layers] == [False, True, True]
    assert [s.lod_unsimplified for s in summary.layers] == [0, 0, 0]


def _plans(job, layer):
    layout = job.meta.layout
    for coords in layout.iter_chunk_coords(layer):
        chunk = int(layout.chunk_id(layer, *coords))
        yield chunk, plan_chunk(job.store, layer, chunk, job.time_stamp)


def test_every_node_has_a_lod_mesh_that_keeps_borders_and_the_child_grid(meshed):
    _, jobs = meshed
    job = jobs["lod"][0]
    reader = job.lod_reader()
    checked = 0
    for layer in (3, 4):
        for chunk, plan in _plans(job, layer):
            planes = seam_planes(job.grid, chunk)
            for node, descendants in plan.descendants.items():
                data = reader.read(node)
                assert data is not None, f"layer {layer} node {node} has no LOD mesh"
                out = decode(data)
                assert not crossing_faces(out.vertices, out.faces, planes).any(), f"{node} crosses its child grid"
                kept = {tuple(v) for v in np.round(out.vertices, 6).tolist()}
                for desc in descendants:
                    piece = reader.read(desc)
                    if piece is None:
                        continue
                    frag = decode(piece)
                    border = frag.vertices[open_edge_vertices(len(frag.vertices), frag.faces)]
                    missing = [v for v in np.round(border, 6).tolist() if tuple(v) not in kept]
                    assert not missing, f"{node}: border vertices of {desc} were simplified away: {missing[:3]}"
                checked += 1
    assert checked >= 10


def test_a_lod_task_reads_its_childrens_shards_whole_and_lower_layers_by_range(meshed):
    """A node whose children skip a layer needs the odd fragment of a lower layer's shard; reading
    those shards whole held every layer-2 shard under the root chunk at once."""
    _, jobs = meshed
    job = jobs["lod"][0]
    layout = job.meta.layout
    plain = job.lod_reader()
    skipped = 0
    for chunk, plan in _plans(job, 4):
        descendants = [d for ds in plan.descendants.values() for d in ds]
        reader = job.lod_reader(whole_below=3)
        reader.preload(descendants)
        assert {int(layout.get_chunk_layer(c)) for c in reader._values} == {3}
        for desc in descendants:
            assert reader.read(desc) == plain.read(desc)
            skipped += int(layout.get_chunk_layer(desc)) < 3
    assert skipped, "the synthetic graph has no layer-4 node with a layer-2 child: this test checks nothing"


def test_a_big_node_simplified_in_units_keeps_every_rule(meshed):
    """``lod_node`` cuts a node bigger than ``SPLIT_BYTES`` into units (here, at a limit of 0, one
    descendant each) and stores their meshes apart; forced on every node here (the synthetic nodes
    are small), what it stores, read back whole (``decode_lod``: the units merged where they
    meet), is what the whole-node collapse gives: borders kept, no face across the child grid, no
    new open edge (the seams close), every input vertex within the error, and about as many
    triangles."""
    from raymesh.geometry.distance import mesh_distance
    from raymesh.lod.geometry import decode_lod, lod_node

    _, jobs = meshed
    job = jobs["lod"][0]
    reader = job.lod_reader()
    split_cells = 0
    whole_faces = split_faces = 0
    for layer in (3, 4):
        error = job.lod_error(layer)
        for chunk, plan in _plans(job, layer):
            planes = seam_planes(job.grid, chunk)
            for node, descendants in plan.descendants.items():
                frags = [(d, reader.read(d)) for d in descendants if reader.read(d) is not None]
                if not frags:
                    continue
                data, _ = lod_node(job.grid, chunk, frags, error)
                whole = decode_lod(job.grid, chunk, data)
                data, summary = lod_node(job.grid, chunk, frags, error, split_bytes=0)
                split = decode_lod(job.grid, chunk, data)  # as the layer above and the export read it
                assert len(split.faces) <= summary.output_faces  # less any Draco drops as degenerate on its grid
                whole_faces, split_faces = whole_faces + len(whole.faces), split_faces + len(split.faces)
                assert summary.input_faces == sum(len(decode(d).faces) for _, d in frags)
                assert not crossing_faces(split.vertices, split.faces, planes).any()
                kept = {tuple(v) for v in split.vertices.tolist()}
                pieces = [decode(data) for _, data in frags]
                for piece in pieces:
                    border = piece.vertices[open_edge_vertices(len(piece.vertices), piece.faces)]
                    assert all(tuple(v) in kept for v in border.tolist()), f"{node}: a border vertex moved"
                # the cells' seams closed by decode_lod itself (the layer above reads it unwelded):
                # no more open edges along the mid-planes, on the node's grid, than the whole node has
                on_grid = snap(planes[None, :], split.settings)[0]

                def seam_open(frag):
                    edges = single_edges(frag.faces)
                    on = (frag.vertices == on_grid).any(axis=1)
                    return int((on[edges[:, 0]] & on[edges[:, 1]]).sum())

                assert seam_open(split) <= seam_open(whole), node
                # welded by position, as a viewer sees them (Draco splits a non-manifold vertex into copies)
                assert (edge_use(merged([split])[1]) == 1).sum() <= (edge_use(merged([whole])[1]) == 1).sum(), node
                cells = {tuple(np.asarray(piece.vertices).mean(axis=0) < planes) for piece in pieces}
                split_cells += len(cells) > 1
                if layer == 3:  # layer-2 pieces are the reference surface: each within the error
                    for piece in pieces:
                        d = mesh_distance(np.asarray(piece.vertices, float), split.vertices,
                                          split.faces.astype(np.int64), k=4, refine_above=error)
                        assert d.max() <= error + 1e-6, f"{node}: {d.max():.1f} nm from its LOD mesh"
    assert split_cells > 10, "too few nodes span several child cells for this test to mean anything"
    assert 0.9 <= split_faces / whole_faces <= 1.1


def _layer3_split(job, limit):
    """Every layer-3 node's LOD value as ``lod_node`` stores it at ``split_bytes=limit``."""
    from raymesh.lod.geometry import lod_node

    reader = job.lod_reader()
    values = {}
    for chunk, plan in _plans(job, 3):
        for node, descendants in plan.descendants.items():
            frags = [(d, reader.read(d)) for d in descendants if reader.read(d) is not None]
            if frags:
                values[node] = lod_node(job.grid, chunk, frags, job.lod_error(3), split_bytes=limit)[0]
    return values


def _welded_open_edges(frag) -> int:
    """Edges used by one face once vertices at one position are one (as a viewer sees them)."""
    return int((edge_use(merged([frag])[1]) == 1).sum())


def test_a_big_node_is_collapsed_in_units_of_at_most_the_split_size_that_meet_again(meshed):
    """Above layer 3 a big node's descendants are themselves stored in units; ``lod_node`` packs
    them (and whole values) into units of at most the split size, so that a task's biggest
    collapse does not grow with the object. Layer 3 stored one layer-2 fragment a unit, layer 4
    packed at several sizes: every unit within the limit (or one stored unit alone), some taking
    several units of one descendant (merged where they meet before the collapse); the value read
    back has its seams closed (no more open edges than the whole node's collapse), no face across
    the child grid, every border vertex of its descendants, and every input vertex within the
    error."""
    from raymesh.formats.lod_cells import unpack_cells
    from raymesh.geometry.distance import mesh_distance
    from raymesh.lod.geometry import _units, decode_lod, lod_node

    _, jobs = meshed
    job = jobs["lod"][0]
    grid, layout = job.grid, job.meta.layout
    below = _layer3_split(job, 0)
    reader = job.lod_reader()
    blob_sizes = [len(b) for v in below.values() for b in unpack_cells(v).blobs]
    error = job.lod_error(4)
    packed = checked = 0
    for chunk, plan in _plans(job, 4):
        planes = seam_planes(grid, chunk)
        for node, descendants in plan.descendants.items():
            frags = [(d, below.get(d) or reader.read(d)) for d in descendants]
            frags = [(d, v) for d, v in frags if v is not None]
            if not any(len(unpack_cells(v).blobs) > 1 for _, v in frags):
                continue
            whole = decode_lod(grid, chunk, lod_node(grid, chunk, frags, error)[0])
            inputs = [decode_lod(grid, int(layout.get_chunk_id(d)), v) for d, v in frags]
            for limit in (0, 2 * int(np.median(blob_sizes)), 6 * int(np.median(blob_sizes))):
                units, _ = _units(grid, chunk, frags, planes, limit)
                for unit in units:
                    size = sum(len(v.blobs[0]) if which is None else sum(len(v.blobs[i]) for i in which)
                               for _, v, which in unit)
                    alone = len(unit) == 1 and (unit[0][2] is None or len(unit[0][2]) == 1)
                    assert size <= limit or alone, (node, limit, size)
                    packed += any(which is not None and len(which) > 1 for _, _, which in unit)
                data, summary = lod_node(grid, chunk, frags, error, split_bytes=limit)
                split = decode_lod(grid, chunk, data)
                assert summary.input_faces == sum(len(f.faces) for f in inputs)
                assert not crossing_faces(split.vertices, split.faces, planes).any(), (node, limit)
                assert _welded_open_edges(split) <= _welded_open_edges(whole), (node, limit)
                # and merged by ``decode_lod`` itself (the layer above reads it unwelded)
                assert len(single_edges(split.faces)) <= len(single_edges(whole.faces)), (node, limit)
                kept = {tuple(v) for v in split.vertices.tolist()}
                for piece in inputs:
                    border = piece.vertices[open_edge_vertices(len(piece.vertices), piece.faces)]
                    assert all(tuple(v) in kept for v in border.tolist()), f"{node}: a border vertex moved"
                    d = mesh_distance(np.asarray(piece.vertices, float), split.vertices,
                                      split.faces.astype(np.int64), k=4, refine_above=error)
                    assert d.max() <= error + 1e-6, f"{node}: {d.max():.1f} nm from its LOD mesh"
                checked += 1
    assert checked >= 10 and packed >= 5, (checked, packed)


def test_a_value_stored_by_child_cell_in_the_first_layout_still_reads_and_feeds_the_layer_above(meshed):
    """Values written before units carried their planes (``MAGIC_V1``: one mesh per child cell,
    meeting on the node's mid-planes) read as the same mesh as the new layout, and a layer-4 node
    made from them in units has its seams closed."""
    import struct

    from raymesh.formats.lod_cells import MAGIC_V1, unpack_cells
    from raymesh.lod.geometry import child_cell, decode_lod, lod_node

    _, jobs = meshed
    job = jobs["lod"][0]
    grid, layout = job.grid, job.meta.layout
    reader = job.lod_reader()
    v1_values, compared = {}, 0
    for chunk, plan in _plans(job, 3):
        planes = seam_planes(grid, chunk)
        for node, descendants in plan.descendants.items():
            frags = [(d, reader.read(d)) for d in descendants if reader.read(d) is not None]
            cells: dict = {}
            for d, v in frags:
                key = child_cell(grid, int(layout.get_chunk_id(d)), planes)
                cells[key] = cells.get(key, 0) + len(v)
            if len(cells) < 2:
                continue
            # one unit a child cell: what the first layout stored
            data, _ = lod_node(grid, chunk, frags, job.lod_error(3), split_bytes=max(cells.values()))
            blobs = unpack_cells(data).blobs
            assert len(blobs) == len(cells)
            v1 = MAGIC_V1 + struct.pack(f"<I{len(blobs)}I", len(blobs), *(len(b) for b in blobs)) + b"".join(blobs)
            new, old = decode_lod(grid, chunk, data), decode_lod(grid, chunk, v1)
            np.testing.assert_array_equal(old.vertices, new.vertices)
            np.testing.assert_array_equal(old.faces, new.faces)
            v1_values[node] = v1
            compared += 1
    assert compared >= 5, compared
    fed = 0
    for chunk, plan in _plans(job, 4):
        for node, descendants in plan.descendants.items():
            frags = [(d, v1_values.get(d) or reader.read(d)) for d in descendants]
            frags = [(d, v) for d, v in frags if v is not None]
            if not any(d in v1_values for d, _ in frags):
                continue
            whole = decode_lod(grid, chunk, lod_node(grid, chunk, frags, job.lod_error(4))[0])
            split = decode_lod(grid, chunk, lod_node(grid, chunk, frags, job.lod_error(4), split_bytes=0)[0])
            assert _welded_open_edges(split) <= _welded_open_edges(whole), node
            assert len(single_edges(split.faces)) <= len(single_edges(whole.faces)), node
            fed += 1
    assert fed >= 3, fed


def _check_each_lod(graph: str, job, mesh_dir: str) -> None:
    """Every root's LODs read back as the export reads them: each within its budget of the
    layer-2 surface (sampled, both ways), interior objects closed at every LOD, fewer triangles
    per LOD."""
    meshes = ViewerMeshes(graph, mesh_dir)
    builder = MultilodBuilder(meshes)
    meta = job.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    inside = interior_roots(job.store, sv)
    roots = sorted(set(np.asarray(job.store.get_roots(np.unique(sv[sv > 0]))).tolist()))
    closed = {2: 0, 3: 0, 4: 0}
    faces_per_lod = {2: 0, 3: 0, 4: 0}
    for root in roots:
        lods = builder.fragments(root)
        assert len(lods) == 3
        whole = []
        for lod, frags in enumerate(lods):
            class F:  # merged() takes objects with vertices and faces
                def __init__(self, f):
                    self.vertices, self.faces = f.vertices, f.faces
            vertices, faces = merged([F(f) for f in frags])
            whole.append((vertices, faces))
            faces_per_lod[lod + 2] += len(faces)
            if root in inside:  # closed: no edge with one face (as the layer-2 checks count it)
                closed[lod + 2] += int(not (edge_use(faces) == 1).any())
        for lod in (1, 2):
            dev = surface_deviation(whole[lod], whole[0], samples=4000, seed=lod)
            budget = lod_budget(job.config.max_error, lod + 2)
            assert dev["a_to_b_max"] <= budget and dev["b_to_a_max"] <= budget, (root, lod, dev, budget)
    assert inside and closed[3] == closed[2] and closed[4] == closed[2], (closed, len(inside))
    assert faces_per_lod[3] < faces_per_lod[2] and faces_per_lod[4] < faces_per_lod[3], faces_per_lod


def test_each_lod_is_within_its_budget_and_interior_objects_stay_closed(meshed):
    graph, jobs = meshed
    _check_each_lod(graph, jobs["lod"][0], "lod")


def test_a_chain_of_nodes_stored_by_cell_reads_back_verifies_and_keeps_every_budget(meshed, monkeypatch, capsys):
    """Every node stored by cell (the split forced: the synthetic nodes are small), so layer 4
    reads layer 3's nodes from their cells, and the export and ``raymesh verify`` do too: the
    chain meets the same rules as with whole values."""
    import raymesh.lod.geometry as geometry
    from raymesh.cli import main as cli
    from raymesh.formats.lod_cells import MAGIC
    from raymesh.formats.sharding import disassemble_shard

    graph, jobs = meshed
    monkeypatch.setattr(geometry, "SPLIT_BYTES", 0)
    config = jobs["lod"][0].config.model_copy(update={"mesh_dir": "cells", "graph_meta": "skip"})
    assert not run(config, progress=False).failed
    job = MeshJob(config)
    layout = job.meta.layout
    stored = split = 0
    for layer in (3, 4):
        for coords in layout.iter_chunk_coords(layer):
            data = job.bucket.read(job.lod_path(layer, coords))
            if data:
                values = disassemble_shard(data, job.sharding(layer)).values()
                stored += len(values)
                split += sum(v.startswith(MAGIC) for v in values)
    assert split > 10 and split > stored // 4, (split, stored)
    _check_each_lod(graph, job, "cells")
    code = cli(["verify", "--graph", graph, "--mesh-dir", "cells", "--executor", "serial", "--quiet"])
    capsys.readouterr()
    assert code == 0


def test_a_rerun_redoes_a_missing_lod_shard_and_a_gap_below_fails(meshed, tmp_path):
    graph, jobs = meshed
    job = jobs["again"][0]
    folder = mesh_folder(job)
    layout = job.meta.layout
    key = lod_key(layout, 3, int(layout.chunk_id(3, 0, 0, 0)))
    before = open(os.path.join(folder, key), "rb").read()
    os.remove(os.path.join(folder, key))
    summary = run(job.config, progress=False)
    assert not summary.failed
    assert any("LOD shard is not written yet" in why for s in summary.layers for why in s.redone)
    assert open(os.path.join(folder, key), "rb").read() == before

    shutil.copytree(folder, tmp_path / "copy")
    os.remove(os.path.join(folder, key))
    summary = run(job.config.model_copy(update={"layers": [4], "force": True}), progress=False)
    assert summary.failed
    assert any(f"no shard file ({key})" in f for s in summary.layers for f in s.failures), summary.layers[-1].failures
    summary = run(job.config.model_copy(update={"force": False}), progress=False)  # a plain rerun mends it
    assert not summary.failed
    assert file_tree(os.path.join(folder, "lod")) == file_tree(tmp_path / "copy" / "lod")


def _read_segment(mesh_dir: str, root: int, info: dict) -> tuple[multilod.Manifest, bytes]:
    """A segment as the format describes it: ``<id>.index`` + ``<id>``, or the shard's value for
    the id, whose index entry points at the manifest with the fragment data right before it."""
    if "sharding" not in info:
        with open(os.path.join(mesh_dir, f"{root}.index"), "rb") as f:
            manifest = multilod.Manifest.from_bytes(f.read())
        with open(os.path.join(mesh_dir, str(root)), "rb") as f:
            return manifest, f.read()
    spec = ShardingSpec.from_json(info["sharding"])
    shard = int(spec.shard_of(np.array([root], dtype=np.uint64))[0])
    with open(os.path.join(mesh_dir, multilod.shard_file_name(shard, spec.shard_bits)), "rb") as f:
        data = f.read()
    start, size = locate(lambda a, b: data[a:b], root, spec)
    manifest = multilod.Manifest.from_bytes(data[start:start + size])
    return manifest, data[start - manifest.data_bytes:start]


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_precomputed_export_reads_back_with_the_format_and_cloudvolume(meshed, tmp_path, sharded):
    import json

    from cloudvolume import CloudVolume

    graph, jobs = meshed
    job = jobs["lod"][0]
    out = tmp_path / "export"
    done = export_roots(graph, None, "precomputed", str(out), mesh_dir="lod", sharded=sharded)
    roots = [d.root for d in done]
    assert len(roots) == 6
    info = json.loads((out / "mesh" / "info").read_text())
    assert info["@type"] == "neuroglancer_multilod_draco" and ("sharding" in info) == sharded
    assert json.loads((out / "info").read_text())["mesh"] == "mesh"
    grid = job.grid
    res = np.asarray(grid.resolution)
    chunk_shape = grid.block_shape(2) * res
    origin = np.asarray(grid.voxel_offset) * res
    cv = CloudVolume(f"file://{out}", progress=False)
    for root in roots:
        manifest, data = _read_segment(str(out / "mesh"), root, info)
        assert manifest.problems() == []
        assert manifest.num_lods == 3 and len(data) == manifest.data_bytes
        assert np.allclose(manifest.chunk_shape, chunk_shape) and np.allclose(manifest.grid_origin, origin)
        for lod, ranges in enumerate(manifest.fragment_ranges()):
            bounds = np.asarray(job.meta.layout.layer_chunk_bounds(lod + 2))
            assert (manifest.positions[lod] < bounds).all(), "a cell outside its layer's chunks"
            faces_here = 0
            for (a, b), pos in zip(ranges, manifest.positions[lod]):
                q, faces = multilod.decode_fragment(data[a:b])
                faces_here += len(faces)
                assert q.max(initial=0) <= 2**16 - 1
                size = chunk_shape * 2**lod
                v = multilod.dequantize(q, origin + pos * size, size, 16)
                assert ((v >= origin + pos * size - 1e-6) & (v <= origin + (pos + 1) * size + 1e-6)).all()
                if lod > 0:  # the child grid, as Neuroglancer's decoder partitions the fragment
                    assert not multilod.crossing_child_grid(q, faces, 16).any(), (root, lod, pos.tolist())
            mesh = cv.mesh.get(root, lod=lod)
            mesh = mesh[root] if isinstance(mesh, dict) else mesh
            assert len(mesh.faces) == faces_here, (root, lod)
            if faces_here:
                lo = origin + manifest.positions[lod].min(axis=0) * chunk_shape * 2**lod
                hi = origin + (manifest.positions[lod].max(axis=0) + 1) * chunk_shape * 2**lod
                assert (mesh.vertices >= lo - 1e-3).all() and (mesh.vertices <= hi + 1e-3).all()


def test_manifest_rules_are_checked():
    pos = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.uint32)
    m = multilod.Manifest(np.ones(3, np.float32), np.zeros(3, np.float32), np.array([1, 2], np.float32),
                          np.zeros((2, 3), np.float32), [pos, np.array([[0, 0, 0]], np.uint32)],
                          [np.array([3, 4], np.uint32), np.array([5], np.uint32)])
    assert any("Z-curve" in p for p in m.problems())
    m.positions[0] = pos[::-1].copy()
    assert m.problems() == []
    back = multilod.Manifest.from_bytes(m.to_bytes())
    assert back.positions[0].tolist() == [[0, 0, 0], [1, 0, 0]] and back.sizes[1].tolist() == [5]
    m.positions[1] = np.array([[1, 1, 1]], np.uint32)
    assert any("no parent" in p for p in m.problems())
    with pytest.raises(multilod.MultilodError):
        multilod.Manifest.from_bytes(m.to_bytes() + b"\0")
    # the spec's 2x2x2 example order
    cube = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1)])
    assert multilod.zorder(cube[::-1]).tolist() == list(range(7, -1, -1))


def test_fragments_keep_their_integer_vertices():
    q = np.array([[0, 0, 0], [65535, 3, 7], [5, 600, 9], [70, 8, 900]], dtype=np.uint16)
    faces = np.array([[0, 1, 2], [0, 2, 3], [1, 1, 2]], dtype=np.uint32)
    data = multilod.encode_fragment(q, faces, 16)
    back, back_faces = multilod.decode_fragment(data)
    assert len(back_faces) == 2  # the degenerate one is left out
    assert {tuple(v) for v in back[back_faces].reshape(-1, 3).tolist()} == {tuple(v) for v in q.tolist()}
    assert multilod.encode_fragment(q, np.array([[1, 1, 2]]), 16) == b""


def test_remeshing_extends_the_chain_to_an_edits_new_nodes(synthetic, tmp_path):
    """After a merge and ``raymesh remesh``, the merged root's new nodes have LOD meshes in
    ``lod_dynamic/`` and the root exports at every LOD, drawn from them."""
    from support import meshed_with_a_merge

    graph = meshed_with_a_merge(synthetic, tmp_path / "g")
    meshes = ViewerMeshes(graph)
    roots = meshes.current_roots()
    fresh = [r for r, new in meshes.is_new(roots).items() if new]
    assert len(fresh) == 1
    folder = local_path(meshes.job.mesh_url)
    assert os.listdir(os.path.join(folder, "lod_dynamic"))
    done = export_roots(graph, fresh, "precomputed", str(tmp_path / "out"))
    manifest = multilod.Manifest.from_bytes((tmp_path / "out" / "mesh" / f"{fresh[0]}.index").read_bytes())
    assert manifest.problems() == [] and manifest.num_lods == 3
    assert all(len(p) for p in manifest.positions) and done[0].lods["faces"][2] > 0


def test_a_node_smaller_than_the_error_keeps_its_mesh():
    """meshoptimizer may collapse a tiny closed piece away entirely; a node is never left with no mesh."""
    from raymesh.lod.geometry import bounded_collapse

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    out_v, out_f, _ = bounded_collapse(v, f, np.zeros(4, bool), 100.0)
    assert len(out_f) == 4 and len(out_v) == 4


def test_a_thin_spike_is_kept_and_the_rest_still_simplified():
    """meshoptimizer never moves a locked vertex but drops one whose neighbours all collapse onto
    one vertex (a thin tip cut off at its base): locking the tip alone never held, and after its
    rounds the node kept its whole input unsimplified (a fifth of the real volume's layer-3 and
    layer-4 faces). Locking the tip's ring of neighbours with it keeps the tip and lets the rest go."""
    import trimesh

    from raymesh.geometry.distance import mesh_distance
    from raymesh.lod.geometry import VERTEX_FRACTION, bounded_collapse
    from raymesh.simplify import collapse_locked

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1000.0)
    v, f = np.array(sphere.vertices), np.array(sphere.faces)
    tip = int(np.argmax(v[:, 2]))
    ring = np.setdiff1d(np.unique(f[(f == tip).any(axis=1)]), [tip])
    foot = v[tip].copy()
    side = v[ring] - foot
    side[:, 2] = 0
    v[ring] = foot + side / np.linalg.norm(side, axis=1)[:, None] * 10.0 - [0, 0, 5]  # a 10 nm base
    v[tip] = foot + [0, 0, 600]  # 600 nm tall

    alone = np.zeros(len(v), bool)
    alone[tip] = True
    _, _, kept = collapse_locked(v, f, alone, 40.0, return_kept=True, keep_components=False)
    assert tip not in kept  # what meshoptimizer does with the tip locked alone

    out_v, out_f, gave_up = bounded_collapse(v, f, np.zeros(len(v), bool), 80.0)
    assert not gave_up and len(out_f) < len(f) // 10
    assert (out_v == v[tip]).all(axis=1).any()
    assert mesh_distance(v, out_v, out_f.astype(np.int64), k=4, refine_above=40.0).max() <= 80.0 * VERTEX_FRACTION
    # one round finds the tip too far and locks it, with none left to redo the collapse: the input
    # is kept whole, and said so (the run's summary counts such nodes)
    once_v, once_f, gave_up = bounded_collapse(v, f, np.zeros(len(v), bool), 80.0, rounds=1)
    assert gave_up and len(once_f) == len(f)


def test_a_dir_with_the_chain_keeps_it_on_a_plain_rerun(meshed):
    """The run record says the mesh dir holds the chain: a rerun (or a repair) that does not mention
    it still writes it, so no chunk redone leaves a stale LOD shard; --no-lod-chain still wins."""
    graph, jobs = meshed
    folder = mesh_folder(jobs["again"][0])
    layout = jobs["again"][0].meta.layout
    key = lod_key(layout, 4, int(layout.chunk_id(4, 0, 0, 0)))
    before = open(os.path.join(folder, key), "rb").read()
    assert json.loads(open(os.path.join(folder, "raymesh_run.json")).read())["lod_chain"] is True
    plain = MeshConfig(graph=graph, layers=[2, 3, 4], executor="serial", mesh_dir="again", graph_meta="skip")
    assert plain.lod_chain is False  # the default
    os.remove(os.path.join(folder, key))
    summary = run(plain.model_copy(update={"lod_chain": False}), progress=False)  # told not to: no LOD shard
    assert not summary.failed and not os.path.exists(os.path.join(folder, key))
    summary = run(plain, progress=False)
    assert not summary.failed and open(os.path.join(folder, key), "rb").read() == before
    # a dir meshed without the chain records nothing of it
    assert "lod_chain" not in json.loads(open(os.path.join(mesh_folder(jobs["plain"][0]), "raymesh_run.json")).read())


def test_a_cell_container_round_trips_and_a_damaged_one_is_a_value_that_does_not_decode():
    """``formats.lod_cells``: one blob is stored as itself; several come back in order with their
    planes; a value of the first layout (no planes) still reads; a truncated or padded container
    raises ``DracoError`` (what every LOD reader turns into a failure naming the node), never a
    short list of cells."""
    import struct

    from raymesh.formats.draco import DracoError
    from raymesh.formats.lod_cells import MAGIC, MAGIC_V1, pack_cells, unpack_cells

    blobs = [b"DRACO-a", b"DRACO-bb", b"DRACO-ccc"]
    planes = [np.array([64.0, 32.0, 64.0]), np.array([]), np.array([-8.5])]
    assert pack_cells(blobs[:1]) == blobs[0] and unpack_cells(blobs[0]).blobs == blobs[:1]
    packed = pack_cells(blobs, planes)
    assert packed.startswith(MAGIC) and unpack_cells(packed).blobs == blobs
    back = unpack_cells(packed).planes
    assert [p.tolist() for p in back] == [[32.0, 64.0], [], [-8.5]]
    v1 = MAGIC_V1 + struct.pack("<4I", 3, 7, 8, 9) + b"".join(blobs)
    assert unpack_cells(v1).blobs == blobs and unpack_cells(v1).planes is None
    with pytest.raises(ValueError):
        pack_cells(blobs)
    for damaged in (packed[:-1], packed + b"x", packed[:len(MAGIC) + 2], MAGIC + (1).to_bytes(4, "little") + b"DRACO",
                    packed[:len(MAGIC) + 4 + 12 + 6], v1[:-1]):
        with pytest.raises(DracoError):
            unpack_cells(damaged)
