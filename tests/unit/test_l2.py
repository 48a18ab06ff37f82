"""Layer-2 meshing end to end with the serial executor (no Ray): content, seams, errors, resume."""

import json
import shutil

import numpy as np
import pytest

from l2_checks import assert_matches_direct_zmesh, assert_seams_coincide, assert_within_chunk, chunk_fragments
from raymesh.builder import build_graph
from raymesh.config import MeshConfig, load_config
from raymesh.formats.draco import DracoSettings
from raymesh.driver import run
from raymesh.errors import ConfigError
from raymesh.graph import open_store
from raymesh.runs.job import MeshJob
from raymesh.layer2.mesh import mesh_block
from raymesh.storage import Bucket
from raymesh.volume import SegmentationError
from support import SYNTH_CHUNK, SYNTH_RES


@pytest.fixture
def graph(synthetic, tmp_path):
    labels, agg = synthetic
    return build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)


def _config(graph, **kw):
    return MeshConfig(graph=graph.store_url, layers=[2], mip=0, executor="serial", **kw)


def test_every_node_meshed_matching_zmesh_with_seams(graph):
    config = _config(graph, time_stamp=2e9)
    summary = run(config, progress=False)
    layer = summary.layers[0]
    assert layer.failures == [] and layer.fragments == layer.nodes == graph.node_counts[2]
    job = MeshJob(config)
    for _, coords in job.iter_chunks(2):
        assert_within_chunk(job, coords)
        assert_matches_direct_zmesh(job, coords)


def test_a_cap_closes_a_node_its_lower_neighbour_leaves_open():
    """A blob on the chunk's first x plane, which the lower neighbour does not mesh: the node's own
    mesh is open there; with the cap (half a voxel below, walls up to the plane) it is closed."""
    from raymesh.layer2.mesh import _with_caps, cap_meshes, simplified_meshes
    from stitch_checks import edge_use

    labels = np.zeros((12, 12, 12), dtype=np.uint64)
    yy, zz = np.mgrid[:12, :12]
    disk = (yy - 6) ** 2 + (zz - 5) ** 2 <= 9
    labels[0:7][:, disk] = 7  # a cylinder standing on the x = 0 plane
    res = (8.0, 8.0, 40.0)
    (_, vertices, faces), = simplified_meshes(labels, res)
    assert (edge_use(faces) == 1).any(), "without a cap the node is open on the plane"
    assert cap_meshes(labels, {(0,): set()}, res) == {} and cap_meshes(labels, {(1,): {7}}, res) == {}
    caps = cap_meshes(labels, {(0,): {7}}, res)
    ((axis, cap_v, _),) = caps[7]
    # Half a voxel below the plane, give or take what simplification may move (max_error 40 nm).
    assert axis == (0,) and -res[0] / 2 - 40 <= cap_v[:, 0].min() < 0 and cap_v[:, 0].max() == 0
    welded_v, welded_f = _with_caps(vertices, faces, caps[7])
    assert np.all(edge_use(welded_f) == 2), "node and cap weld into a closed surface"
    assert len(welded_v) < len(vertices) + len(cap_v)


@pytest.mark.parametrize("corner", [False, True])
def test_edge_and_corner_caps_close_a_node_open_on_several_first_planes(corner):
    """A blob on the chunk's x = 0 and z = 0 planes (and y = 0 for the corner), left open by every
    lower neighbour: face caps alone leave the quarter column below the edge line open (the cells
    of the diagonal neighbour); with the edge (and corner) caps the node is closed."""
    from raymesh.layer2.mesh import _with_caps, cap_meshes, simplified_meshes
    from stitch_checks import edge_use

    labels = np.zeros((10, 10, 10), dtype=np.uint64)
    labels[0:4, (0 if corner else 3):7, 0:3] = 7
    res = (8.0, 8.0, 40.0)
    (_, vertices, faces), = simplified_meshes(labels, res)
    faces_only = {(0,): {7}, (2,): {7}} | ({(1,): {7}} if corner else {})
    caps = cap_meshes(labels, faces_only, res)
    assert (edge_use(_with_caps(vertices, faces, caps[7])[1]) == 1).any(), "face caps leave the edge open"
    every = dict(faces_only)
    every.update({(0, 2): {7}} if not corner else
                 {(0, 1): {7}, (0, 2): {7}, (1, 2): {7}, (0, 1, 2): {7}})
    caps = cap_meshes(labels, every, res)
    assert sorted(axes for axes, _, _ in caps[7]) == sorted(every)
    welded_v, welded_f = _with_caps(vertices, faces, caps[7])
    assert np.all(edge_use(welded_f) == 2), "node, face, edge and corner caps weld into a closed surface"
    lowest = welded_v.min(axis=0)
    assert np.all(lowest[[0, 2]] < 0) and (lowest[1] < 0) == corner


@pytest.mark.parametrize("joined_below", [True, False])
def test_seam_patch_closes_a_saddle_the_two_chunks_resolve_differently(joined_below):
    """Two diagonal voxels on the plane between two chunks: one label in the lower chunk's overlap
    and two layer-2 nodes in the upper chunk (or the other way round). Marching cubes joins them
    on one side only, leaving a diamond open; the patch closes it, oriented like its neighbours."""
    from raymesh.layer2.mesh import _with_patches, seam_patches, simplified_meshes
    from stitch_checks import edge_use

    res = np.array([8.0, 8.0, 40.0])
    volume = np.zeros((6, 6, 8), dtype=np.uint64)  # chunks z 0-3 and 4-7
    volume[2:4, 2:4, 1:4] = 1  # one body below the plane
    volume[2, 2, 4:7] = 1  # two columns above it, touching only along a diagonal on the plane
    volume[3, 3, 4:7] = 1
    # Lower block (with the upper chunk's first plane as overlap) and the upper chunk's nodes.
    lower = np.where(volume[:, :, :5] > 0, 7, 0).astype(np.uint64)
    upper = np.zeros((6, 6, 4), dtype=np.uint64)
    upper[2, 2, :3], upper[3, 3, :3] = 11, 12
    if not joined_below:  # the lower chunk gives the two overlap voxels to two of its nodes
        lower[3, 3, 4] = 8
        lower[3, 3, 1:4] = 8
        lower[2:4, 2:4, 1:4] = np.where(lower[2:4, 2:4, 1:4] == 8, 8, 7)
        upper[3, 3, :3] = 11  # and the upper chunk has them as one node, joined on the plane
        upper[2, 2, :3] = 11
        upper[2:4, 2:4, 0] = np.where(np.eye(2, dtype=bool), 11, 0)
        upper[2, 3, 1:3] = upper[3, 2, 1:3] = 11  # one node: connected above the plane
    neighbours = {2: upper[:, :, 0].copy()}
    patches = seam_patches(lower, neighbours, res)
    assert set(patches) == {7} and len(patches[7]) == 1
    below = {label: (v, f) for label, v, f in simplified_meshes(lower, res)}
    above = [(v + np.array([0, 0, 4 * res[2]]), f) for _, v, f in simplified_meshes(upper, res)]

    def merged(parts):
        verts = np.concatenate([v for v, _ in parts])
        offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
        faces = np.concatenate([f.astype(np.int64) + o for (_, f), o in zip(parts, offsets)])
        uniq, inverse = np.unique(verts, axis=0, return_inverse=True)
        return inverse.reshape(-1)[faces]

    assert (edge_use(merged(list(below.values()) + above)) == 1).sum() == 4, "a diamond is open"
    top = (np.asarray(lower.shape) - 1) * res
    below[7] = _with_patches(*below[7], patches[7], top)
    faces = merged(list(below.values()) + above)
    assert np.all(edge_use(faces) == 2), "closed with the patch"
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed), "every edge once each way: oriented consistently"


def test_seam_vertices_coincide(graph):
    config = _config(graph, time_stamp=2e9)
    run(config, progress=False)
    job = MeshJob(config)
    seams = sum(assert_seams_coincide(job, coords, axis) for _, coords in job.iter_chunks(2) for axis in range(3))
    assert seams > 50, "the synthetic objects cross chunk faces"


def test_metadata(graph):
    run(_config(graph), progress=False)
    store = open_store(graph.store_url)
    ws = json.loads(Bucket(store.meta.segmentation_path).read("info"))
    assert ws["mesh"] == "graphene_meshes"
    assert ws["mesh_metadata"] == {"unsharded_mesh_dir": "dynamic", "max_meshed_layer": 2,
                                   "uniform_draco_grid_size": 11}  # floor(16/sqrt 2) at 16 nm
    info = json.loads(Bucket(store.meta.segmentation_path + "/graphene_meshes").read("info"))
    assert info["@type"] == "neuroglancer_legacy_mesh" and set(info["sharding"]) == {"2", "3", "4"}
    mesh = store.meta.custom_data["mesh"]
    assert {k: mesh[k] for k in ("max_layer", "mip", "max_error", "dir")} == \
        {"max_layer": 2, "mip": 0, "max_error": 40.0, "dir": "graphene_meshes"}


def test_deterministic_and_resumable(graph):
    first = run(_config(graph, chunk_start=[0, 0, 0], chunk_end=[2, 3, 3]), progress=False)
    assert first.layers[0].chunks == 18
    job = MeshJob(_config(graph))
    before = {c: chunk_fragments(job, c) for _, c in job.iter_chunks(2) if c[0] < 2}
    resumed = run(_config(graph), progress=False)
    assert resumed.layers[0].chunks_skipped == 18 and resumed.layers[0].chunks == 27
    forced = run(_config(graph, force=True), progress=False)
    assert forced.layers[0].chunks_skipped == 0
    assert all(chunk_fragments(job, c) == frags for c, frags in before.items())


def test_bad_inputs(graph, tmp_path):
    # a range partly outside is clipped (tests/unit/test_first_hour.py); one wholly outside is refused
    with pytest.raises(ConfigError, match=r"chunk range 3 0 0 \.\. 4 1 1 is outside layer 2, whose chunks are "
                                          r"0 0 0 \.\. 3 3 3"):
        run(_config(graph, chunk_start=[3, 0, 0], chunk_end=[4, 1, 1]), progress=False)
    with pytest.raises(ConfigError, match="mip 5 does not exist"):
        run(MeshConfig(graph=graph.store_url, mip=5, executor="serial"), progress=False)
    with pytest.raises(ConfigError, match="this graph has layers 2..4"):
        run(MeshConfig(graph=graph.store_url, layers=[2, 9], executor="serial"), progress=False)
    ws = graph.segmentation[len("file://"):]
    shutil.move(ws, str(tmp_path / "moved"))
    with pytest.raises(SegmentationError, match="no segmentation at"):
        run(_config(graph), progress=False)


def test_unencodable_mesh_is_reported_not_dropped():
    labels = np.zeros((5, 5, 5), dtype=np.uint64)
    labels[1:3, 1:3, 1:3] = 7
    # Vertices that quantize to one point: Draco reports "All triangles are degenerate".
    result = mesh_block(labels, np.full(3, np.inf), (1, 1, 1), DracoSettings(10, 1023, (0, 0, 0)))
    assert result.fragments == {} and result.n_nodes == 1
    assert len(result.failures) == 1 and result.failures[0].startswith("7 failed: ")


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: sqlite:///x\nmax_eror: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'max_eror'"):
        load_config(str(bad))
    bad.write_text("graph: sqlite:///x\nmip: two\n")
    with pytest.raises(ConfigError, match="'mip: two' in .*bad.yaml"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="no meshes below layer 2"):
        load_config(None, graph="sqlite:///x", layers=[1, 2])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def _upper_block(linked: bool):
    """An upper neighbour (on z) of a 4x4x4 chunk, and the lower chunk's top plane: a saddle on the
    square x 2-3, y 3-4, whose corner (3, 4) lies beside the neighbour (node 31 of the chunk next
    to it), its other diagonal (2, 3) in the neighbour (node 21)."""
    from raymesh.layer2.remap import Neighbourhood

    seg = np.zeros((5, 5, 5), dtype=np.uint64)  # the neighbour's block; z = 0 is the shared plane
    seg[2, 3, 0], seg[3, 4, 0] = 2001, 3001
    seg[0, 0, 0] = 2002  # a second node of the neighbour, elsewhere
    hood = Neighbourhood(stop_layer=3, own={21: np.array([2001]), 22: np.array([2002])},
                         others={31: np.array([3001])}, ancestor={21: 901, 22: 902, 31: 901 if linked else 903})
    labels = np.zeros((5, 5, 5), dtype=np.uint64)
    labels[2, 3, 4] = labels[3, 4, 4] = 7  # this chunk's remap gives both its node 7: joined below
    return seg, hood, labels


@pytest.mark.parametrize("linked", [False, True])
def test_saddle_on_a_planes_last_row_is_decided_by_the_upper_neighbours_links(linked):
    """On a plane's last row the upper neighbour's corners lie partly in its own overlap, labelled
    by its stop layer: linked to its node the square is joined above as below (no patch); not
    linked, the chunk beside meshes its voxel alone (its cap), so the square is apart above (a
    patch: the diamond, lid up)."""
    from raymesh.layer2.mesh import seam_patches, upper_plane
    from raymesh.layer2.remap import remap_chunk

    seg, hood, labels = _upper_block(linked)
    plane = upper_plane(remap_chunk(seg, hood), seg, hood, axis=2)
    assert plane[2, 3] == 21 and plane[0, 0] == 22
    assert plane[3, 4] == (21 if linked else 31)
    patches = seam_patches(labels, {2: plane}, np.array([8.0, 8.0, 40.0]))
    if linked:
        assert patches == {}
    else:
        ((axis, vertices, faces),) = patches[7]
        assert axis == 2 and len(faces) == 2
        corners = {tuple(p) for p in np.round(vertices[:, :2] / 8.0, 2).tolist()}
        assert corners == {(2.5, 3.0), (3.0, 3.5), (2.5, 4.0), (2.0, 3.5)}
        normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
        assert np.all(normals[:, 2] > 0), "lid up: this side's volume reaches the plane there"


def test_a_placeholder_beside_goes_where_its_component_reaches_in_the_neighbour():
    """Two of the neighbour's nodes share the ancestor of the node beside it (6.3's placeholder).
    The neighbour gives the component to the smallest candidate behind it anywhere along it: here
    node 22, four planes up, with nothing behind it on the shared plane. The plane alone cannot
    tell; the neighbour's own remap of its block can."""
    from raymesh.layer2.mesh import upper_plane
    from raymesh.layer2.remap import remap_chunk

    seg, hood, _ = _upper_block(True)
    hood.ancestor[22] = 901  # 21 and 22 both candidates for 31
    seg[3, 4, :4] = 3001  # 31's voxels beside the neighbour, up to z = 3
    seg[3, 3, 3] = 2002  # node 22 just inside, next to the component's top
    assert upper_plane(remap_chunk(seg, hood), seg, hood, axis=2)[3, 4] == 22
    seg[3, 3, 3] = 0
    seg[3, 3, 0] = 2001  # now only node 21 lies behind it, on the plane itself
    assert upper_plane(remap_chunk(seg, hood), seg, hood, axis=2)[3, 4] == 21


def test_a_chunk_and_its_upper_neighbours_share_one_batch_of_graph_reads(graph):
    """``fetch_with_upper`` gives each chunk what fetching it alone gives."""
    from raymesh.layer2.remap import fetch_neighbourhood, fetch_with_upper

    store = open_store(graph.store_url)
    for coords in np.ndindex(*store.layout.layer_chunk_bounds(2)):
        hood, upper = fetch_with_upper(store, coords)
        for h, c in [(hood, coords)] + [(h, up) for _, up, h in upper]:
            alone = fetch_neighbourhood(store, c)
            assert (h.stop_layer, h.ancestor, h.lower) == (alone.stop_layer, alone.ancestor, alone.lower)
            assert {n: v.tolist() for n, v in h.own.items()} == {n: v.tolist() for n, v in alone.own.items()}
            assert list(h.others) == list(alone.others)
            for stop, at in alone.ancestor_at.items():
                assert {n: h.ancestor_at[stop][n] for n in at} == at


def test_a_serial_run_reads_and_remaps_each_block_once_and_a_new_job_reads_afresh(graph, monkeypatch):
    """Layer 2 runs last chunk first, so a chunk's upper neighbours left their first planes in the
    process's remap cache, and every chunk's graph rows are read once (``remap.GraphReads``); the
    next job (another run id) reads and remaps everything again."""
    from collections import Counter

    import raymesh.layer2.mesh as mesh
    from raymesh.graph.sqlite import SQLiteStore

    remapped = []
    real = mesh.remap_chunk
    monkeypatch.setattr(mesh, "remap_chunk", lambda seg, hood, **kw: remapped.append(1) or real(seg, hood, **kw))
    rows_read = Counter()
    read_chunk = SQLiteStore.range_read_chunk
    monkeypatch.setattr(SQLiteStore, "range_read_chunk",
                        lambda self, chunk_id, **kw: rows_read.update([chunk_id]) or read_chunk(self, chunk_id, **kw))
    config = _config(graph, time_stamp=2e9)
    job = MeshJob(config)
    chunks = [c for _, c in job.iter_chunks(2)]
    assert chunks == sorted(chunks, reverse=True)
    run(config, progress=False)
    first = len(remapped)
    assert first == len(chunks), f"{first} remaps for {len(chunks)} chunks"
    l2_chunks = {int(job.meta.layout.chunk_id(2, *c)) for c in chunks}
    assert l2_chunks <= set(rows_read) and max(rows_read.values()) == 1, rows_read
    remapped.clear()
    rows_read.clear()
    run(config.model_copy(update={"force": True}), progress=False)
    assert len(remapped) == first, "a new job does not use the last one's blocks"
    assert l2_chunks <= set(rows_read) and max(rows_read.values()) == 1, "nor its graph rows"


def test_placeholder_given_to_another_node_above_is_patched():
    """Three corners one object below; above, the neighbour gives two of them (its overlap) to
    another node than the third's: the two cross-sections differ by the half of the diamond
    toward the fourth corner, which the patch fills (one triangle, lid up)."""
    from raymesh.layer2.mesh import seam_patches

    labels = np.zeros((3, 3, 3), dtype=np.uint64)
    labels[1, 0, 2] = labels[0, 1, 2] = labels[1, 1, 2] = 7
    theirs = np.zeros((3, 3), dtype=np.uint64)
    theirs[1, 0] = 37
    theirs[0, 1] = theirs[1, 1] = 35
    patches = seam_patches(labels, {2: theirs}, np.array([1.0, 1.0, 1.0]))[7]
    # The squares beside it differ too (two of the neighbour's nodes face to face), each its own patch.
    ((axis, vertices, faces),) = [p for p in patches if p[1][:, :2].max() <= 1.0]
    assert axis == 2 and len(faces) == 1, "one triangle: the other side's contour crosses it in one edge"
    assert {tuple(p) for p in vertices[:, :2].tolist()} == {(0.5, 0.0), (0.0, 0.5), (1.0, 0.5)}


def test_patches_leave_equal_cuts_and_caps_alone():
    from raymesh.layer2.mesh import seam_patches

    labels = np.zeros((3, 3, 3), dtype=np.uint64)
    labels[0, 0, 2] = labels[1, 1, 2] = 7
    same = np.where(np.take(labels, -1, axis=2) == 7, 40, 0).astype(np.uint64)
    assert seam_patches(labels, {2: same}, np.ones(3)) == {}, "same partition, other ids"
    unseen = same.copy()
    unseen[1, 1] = 0  # the neighbour does not see one corner at all: its cap meshes it
    assert seam_patches(labels, {2: unseen}, np.ones(3)) == {}
