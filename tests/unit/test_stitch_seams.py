"""Seam vertices after stitching: merged where a seam is, split by Draco where layer 2 is not a manifold.

The geometry is the real crop's (8 x 8 x 40 nm, 32^3 chunks, Draco bin 3 at every layer): layer-3
chunk (1, 1, 1) has its z mid-plane at 3840 nm, the lower face of layer-2 chunk (3, 2, 3).
"""

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.formats.draco import MeshGrid, decode, encode
from raymesh.driver import run
from raymesh.graph.ids import ChunkLayout
from raymesh.runs.job import MeshJob
from raymesh.stitch import plan_chunk, seam_planes, stitch_node
from stitch_checks import (edge_use, internal_plane_duplicates, internal_planes, l2_descendants, merged,
                           read_fragment, unmerged_seam_vertices)

LAYOUT = ChunkLayout.from_voxels([128, 128, 128], [32, 32, 32])
GRID = MeshGrid(LAYOUT, (32, 32, 32), (8.0, 8.0, 40.0), (8.0, 8.0, 40.0), (0, 0, 0))
L3 = int(LAYOUT.chunk_id(3, 1, 1, 1))
NODE = int(LAYOUT.node_id(L3, 1))
PLANES = [{float(v)} for v in seam_planes(GRID, L3)]  # 768, 768, 3840


def mesh(triangles):
    """Vertices and faces of triangles given by corner positions (shared positions: one vertex)."""
    points = sorted({p for t in triangles for p in t})
    index = {p: i for i, p in enumerate(points)}
    return np.array(points, dtype=np.float64), np.array([[index[p] for p in t] for t in triangles])


def l2_fragment(coords, triangles, segment):
    chunk = int(LAYOUT.chunk_id(2, *coords))
    return int(LAYOUT.node_id(chunk, segment)), encode(*mesh(triangles), GRID.chunk_settings(chunk))


def unweld(vertices, faces, axis, value):
    """A crack: faces above the plane ``axis = value`` get their own copies of its vertices."""
    vertices, faces = vertices.copy(), faces.astype(np.int64).copy()
    above = vertices[faces].mean(axis=1)[:, axis] > value
    on = np.flatnonzero(vertices[:, axis] == value)
    copy_of = {int(v): len(vertices) + i for i, v in enumerate(on)}
    vertices = np.concatenate([vertices, vertices[on]])
    for f in np.flatnonzero(above):
        faces[f] = [copy_of.get(int(v), int(v)) for v in faces[f]]
    return vertices, faces


def sheet(z0, z1):
    """A flat sheet at y = 600 over x 801..999, z z0..z1 (grid points), two triangles per quad."""
    xs, zs = (801, 900, 999), (z0, (z0 + z1) // 2, z1)
    tris = []
    for i in range(2):
        for j in range(2):
            a, b = (xs[i], 600, zs[j]), (xs[i + 1], 600, zs[j])
            c, d = (xs[i + 1], 600, zs[j + 1]), (xs[i], 600, zs[j + 1])
            tris += [(a, b, c), (a, c, d)]
    return tris


def test_a_seam_across_the_mid_plane_is_welded():
    """Two layer-2 halves of one sheet meeting on the z mid-plane come out as one sheet."""
    assert PLANES[2] == {3840.0}
    frags = [l2_fragment((3, 2, 2), sheet(3600, 3840), 1), l2_fragment((3, 2, 3), sheet(3840, 4080), 1)]
    out = decode(stitch_node(GRID, L3, NODE, frags))
    assert len(np.unique(out.vertices, axis=0)) == len(out.vertices) == 15, "one vertex per position"
    use = edge_use(out.faces.astype(np.int64))
    assert (use == 2).sum() == 18 and (use == 1).sum() == 12, "a 2 x 4 sheet: 18 inner edges, 12 on its rim"
    assert unmerged_seam_vertices(out.vertices, out.faces, PLANES) == 0
    # The check sees a crack: the same sheet with the seam left open holds the middle seam vertex
    # twice (the sheet's rim stays open, so its two rim vertices are not counted).
    cracked = unweld(out.vertices, out.faces, 2, 3840.0)
    assert unmerged_seam_vertices(*cracked, PLANES) == 2


def test_a_zero_thickness_wall_is_split_by_draco_not_left_unmerged():
    """The real crop's layer-3 node 279223176896970789 (chunk (1, 1, 1), built with the graph
    builder as committed at 684175b): two layer-2 meshes of layer-2 chunk (3, 2, 3) meet in a wall
    of no thickness at y = 765 (the chunk's upper y face): each has the triangle P, A, B, facing
    opposite ways, and a neighbour on the edge A-B. P = (1017, 765, 3840) and B lie on the z
    mid-plane; welded, the edge A-B is in four faces. Stitching merges P and B (and Draco's
    encoder welds every vertex by exact position anyway), then Draco splits the non-manifold edge:
    P comes out twice, each copy on an open edge, each of P's own edges closed once welded."""
    P, A, B = (1017, 765, 3840), (1017, 765, 3879), (1008, 765, 3840)
    wall = [l2_fragment((3, 2, 3), [(P, A, B), (A, (1008, 765, 3900), B)], 43),
            l2_fragment((3, 2, 3), [(P, B, A), (B, (1005, 765, 3879), A)], 44)]
    out = decode(stitch_node(GRID, L3, NODE, wall))

    copies = np.flatnonzero((out.vertices == P).all(axis=1))
    assert len(copies) == 2, "Draco's split: the stitched mesh held P once"
    edges, use = edge_use(out.faces.astype(np.int64), return_edges=True)
    assert all(np.isin(edges[use == 1], [c]).any() for c in copies), "each copy on an open edge"
    uniq, faces = merged([out])
    welded_edges, welded_use = edge_use(faces, return_edges=True)
    p, a, b = (int(np.flatnonzero((uniq == q).all(axis=1))[0]) for q in (P, A, B))
    at_p = (welded_edges == p).any(axis=1)
    assert np.all(welded_use[at_p] == 2), "P's own edges close once welded"
    assert welded_use[(welded_edges == sorted((a, b))).all(axis=1)].tolist() == [4], "A-B in four faces"

    # Nothing was left for stitching to merge: welding every input vertex first gives the same bytes.
    parts = [decode(data) for _, data in wall]
    everything, welded = merged(parts)
    settings = GRID.next_layer_settings(parts[0].settings, L3)
    assert encode(everything, welded, settings) == stitch_node(GRID, L3, NODE, wall)
    # The layer-2 union is already non-manifold there; the check does not call this a crack.
    assert edge_use(welded).max() == 4
    assert unmerged_seam_vertices(out.vertices, out.faces, PLANES) == 0


@pytest.fixture(scope="module")
def real_crop(real_labels, tmp_path_factory):
    """The real volume's central 128^3 crop, 32^3 chunks, meshed through layer 4 (about 15 s).
    ``real_labels`` skips, saying where the volume should be, when the shared data is absent."""
    crop = np.ascontiguousarray(real_labels[192:320, 192:320, 192:320])
    g = build_graph(crop, str(tmp_path_factory.mktemp("seams")), resolution=(8, 8, 40), chunk_size=(32, 32, 32))
    config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", time_stamp=2e9)
    summary = run(config, progress=False)
    assert [s.failures for s in summary.layers] == [[], [], []]
    return MeshJob(config)


@pytest.mark.real_data
def test_real_crop_has_no_unmerged_seam_vertices(real_crop):
    """Every layer-3 and layer-4 node: no crack on its internal planes. Positions held twice with
    a copy on an open edge (what the check counted before it told Draco's splits from cracks) are
    only found in nodes whose layer-2 union is already non-manifold."""
    job = real_crop
    layout = job.meta.layout
    assert GRID.chunk_settings(LAYOUT.chunk_id(2, 0, 0, 0)) == job.grid.chunk_settings(layout.chunk_id(2, 0, 0, 0))
    checked, split_nodes, biggest = 0, [], None
    for layer in (3, 4):
        for coords in np.ndindex(*layout.layer_chunk_bounds(layer)):
            chunk = int(layout.chunk_id(layer, *coords))
            for node in plan_chunk(job.store, layer, chunk, time_stamp=2e9).descendants:
                frag = read_fragment(job, node)
                assert frag is not None, f"layer-{layer} node {node} has no mesh"
                checked += 1
                assert internal_plane_duplicates(job, node, frag) == 0, f"node {node}: unmerged seam vertices"
                planes = internal_planes(job.grid, node)
                on = np.zeros(len(frag.vertices), dtype=bool)
                for axis in range(3):
                    on |= np.isin(frag.vertices[:, axis], list(planes[axis]))
                _, inverse, copies = np.unique(frag.vertices, axis=0, return_inverse=True, return_counts=True)
                edges, use = edge_use(frag.faces.astype(np.int64), return_edges=True)
                open_v = np.zeros(len(frag.vertices), dtype=bool)
                open_v[edges[use == 1].ravel()] = True
                if (on & open_v & (copies[inverse.reshape(-1)] > 1)).any():
                    split_nodes.append(node)
                if layer == 3 and (biggest is None or len(frag.vertices) > len(biggest[1].vertices)):
                    biggest = (node, frag)
    assert checked > 300
    for node in split_nodes:
        l2 = [f for f in (read_fragment(job, n) for n in l2_descendants(job.store, node)) if f is not None]
        assert (edge_use(merged(l2)[1]) > 2).any(), f"node {node}: split seam vertices over a manifold layer 2"
    # The check is not vacuous here: the biggest layer-3 mesh, cut open along its z mid-plane.
    node, frag = biggest
    z = float(seam_planes(job.grid, int(layout.get_chunk_id(node)))[2])
    assert unmerged_seam_vertices(*unweld(frag.vertices, frag.faces, 2, z), internal_planes(job.grid, node)) > 0
