"""Checks on stitched output shared by the unit (serial, synthetic) and integration (Ray, real) tests.

They look at the output the way a viewer does: the fragments PCG's manifest would list for a root,
read back from the shards, merged by position.
"""

from __future__ import annotations

import numpy as np

from raymesh.draco import decode
from raymesh.manifest import manifest_nodes, shard_has_mesh
from raymesh.mesh_layout import shard_key
from raymesh.sharding import read_value
from raymesh.stitch import seam_planes


def read_fragment(job, node: int):
    """A node's fragment from its layer's shard (None when it has no mesh)."""
    layout = job.meta.layout
    layer = int(layout.get_chunk_layer(node))
    key = shard_key(layout, layer, int(layout.get_chunk_id(node)))
    data = read_value(lambda s, e: job.bucket.read_range(key, s, e), node, job.sharding(layer))
    return None if data is None else decode(data)


def l2_descendants(store, node: int) -> list[int]:
    layout = store.layout
    out, frontier = [], [int(node)]
    while frontier:
        n = frontier.pop()
        if layout.get_chunk_layer(n) == 2:
            out.append(n)
        else:
            frontier += [int(c) for c in store.get_children(n)]
    return out


def merged(fragments) -> tuple[np.ndarray, np.ndarray]:
    """All fragments as one mesh, vertices merged by exact position (what a seam-free viewer sees)."""
    verts = np.concatenate([f.vertices for f in fragments])
    offsets = np.cumsum([0] + [len(f.vertices) for f in fragments[:-1]])
    faces = np.concatenate([f.faces.astype(np.int64) + o for f, o in zip(fragments, offsets)])
    uniq, inverse = np.unique(verts, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)[faces]


def edge_use(faces: np.ndarray, return_edges: bool = False):
    """How many faces use each undirected edge (faces degenerate by position are left out)."""
    f = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    return (uniq, counts) if return_edges else counts


def internal_plane_duplicates(job, node: int, frag) -> int:
    """Unmerged seam vertices: positions on an internal chunk plane of ``node`` held by two or more
    vertices, one of them on an open edge (a crack stitching should have closed).

    The planes are every layer's mid-planes inside the node's chunk, as the grid puts them.
    Coincident copies around closed sheets are not cracks: Draco's encoder splits a vertex where
    two sheets touch (a non-manifold vertex) into copies, so those are not counted.
    """
    layout, grid = job.meta.layout, job.grid
    layer = int(layout.get_chunk_layer(node))
    if layer == 2:
        return 0
    chunk = int(layout.get_chunk_id(node))
    coords = layout.get_chunk_coordinates(chunk)
    planes: list[set] = [set(), set(), set()]
    for sub in range(3, layer + 1):
        span = 2 ** (layer - sub)
        for offset in np.ndindex(span, span, span):
            sub_chunk = int(layout.chunk_id(sub, *(coords * span + np.array(offset))))
            for axis, value in enumerate(seam_planes(grid, sub_chunk)):
                planes[axis].add(float(value))
    v = frag.vertices
    on = np.zeros(len(v), dtype=bool)
    for axis in range(3):
        on |= np.isin(v[:, axis], list(planes[axis]))
    f = frag.faces.astype(np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    on_open = np.zeros(len(v), dtype=bool)
    on_open[np.unique(uniq[counts == 1])] = True
    _, inverse, copies = np.unique(v, axis=0, return_inverse=True, return_counts=True)
    shared = copies[inverse.reshape(-1)] > 1
    return int((on & shared & on_open).sum())


def interior_roots(store, sv_volume: np.ndarray) -> set[int]:
    """Roots whose voxels do not touch the volume's faces (their meshes must be closed)."""
    faces = [sv_volume[0], sv_volume[-1], sv_volume[:, 0], sv_volume[:, -1], sv_volume[:, :, 0], sv_volume[:, :, -1]]
    touching = np.unique(np.concatenate([f.ravel() for f in faces]))
    touching = touching[touching != 0]
    all_svs = np.unique(sv_volume)
    all_svs = all_svs[all_svs != 0]
    roots = np.asarray(store.get_roots(all_svs))
    edge_roots = set(np.asarray(store.get_roots(touching)).tolist()) if len(touching) else set()
    return set(roots.tolist()) - edge_roots


def surface_faces(fragments) -> int:
    """Faces with three distinct vertex positions: the surface, not the quantization slivers.

    Faces whose corners decode to one grid point already at layer 2 collapse when seams merge at
    the layers above (Draco drops index-degenerate triangles), so they are not counted on any layer.
    """
    total = 0
    for f in fragments:
        p = f.vertices[f.faces.astype(np.int64)]
        distinct = (np.any(p[:, 0] != p[:, 1], axis=1) & np.any(p[:, 1] != p[:, 2], axis=1)
                    & np.any(p[:, 0] != p[:, 2], axis=1))
        total += int(distinct.sum())
    return total


def _loaded(job, root: int, layer: int, read, has_mesh) -> tuple[list[int], list]:
    """The manifest's nodes and their fragments. A layer-2 node may have none (marching cubes finds
    no surface in a chunk its object fills; PCG's verified manifest leaves it out); a node above
    layer 2 in the manifest must have one."""
    layout = job.store.layout
    nodes = manifest_nodes(job.store, root, layer, has_mesh)
    frags = read(nodes)
    assert all(f is not None for n, f in zip(nodes, frags) if layout.get_chunk_layer(n) > 2), \
        f"root {root}: a node of its layer-{layer} manifest has no mesh"
    kept = [(n, f) for n, f in zip(nodes, frags) if f is not None]
    return [n for n, _ in kept], [f for _, f in kept]


def layer_view(job, root: int, layer: int, read=None, has_mesh=None) -> dict:
    """What a viewer loading ``root`` at ``layer`` gets: surface faces, open and non-manifold edges
    (as position pairs, fragments merged by position) and unmerged seam vertices. Reading the
    initial shards, the manifest is the verified one (nodes without a mesh give their children)."""
    if read is None:
        read = lambda nodes: [read_fragment(job, n) for n in nodes]  # noqa: E731
        has_mesh = has_mesh or shard_has_mesh(job)
    nodes, frags = _loaded(job, root, layer, read, has_mesh)
    vertices, faces = merged(frags)
    edges, use = edge_use(faces, return_edges=True)
    as_set = lambda sel: {tuple(map(tuple, vertices[e].tolist())) for e in edges[sel]}  # noqa: E731
    return {"nodes": len(nodes), "faces": surface_faces(frags), "open": as_set(use == 1),
            "nonmanifold": as_set(use > 2),
            "unmerged": sum(internal_plane_duplicates(job, n, f) for n, f in zip(nodes, frags))}


def assert_stitched_like_layer2(job, root: int, layers, read=None, has_mesh=None) -> dict:
    """The fragments of every layer cover the layer-2 surface of ``root``: same faces, and the
    same open and non-manifold edges (stitching closes seams, adds no cracks, hides nothing)."""
    base = layer_view(job, root, 2, read, has_mesh)
    for layer in layers:
        view = layer_view(job, root, layer, read, has_mesh)
        where = f"root {root} at layer {layer}"
        assert view["faces"] == base["faces"], f"{where}: {view['faces']} faces, layer 2 has {base['faces']}"
        assert view["open"] == base["open"], f"{where}: open edges differ from layer 2"
        assert view["nonmanifold"] == base["nonmanifold"], f"{where}: non-manifold edges differ from layer 2"
        # Coincident seam vertices are only left where Draco splits a vertex that is already
        # non-manifold at layer 2; with a manifold layer-2 union every seam vertex is merged.
        assert view["unmerged"] == 0 or base["nonmanifold"] or base["open"], f"{where}: unmerged seam vertices"
    return base


def on_l2_seams(job, points: np.ndarray) -> np.ndarray:
    """Whether each point lies on a layer-2 chunk plane, as the (shared) Draco lattice puts it."""
    grid = job.grid
    b = grid.chunk_settings(int(grid.layout.chunk_id(2, 0, 0, 0))).bin
    step = grid.block_shape(2) * np.asarray(grid.resolution)
    base = np.asarray(grid.voxel_offset) * np.asarray(grid.resolution)
    on = np.zeros(len(points), dtype=bool)
    for axis in range(3):
        k = np.round((points[:, axis] - base[axis]) / step[axis])
        plane = base[axis] + k * step[axis]
        on |= points[:, axis] == b * np.floor(plane / b + 0.5)
    return on


def closed_interior_objects(job, sv_volume: np.ndarray, read, layer: int, has_mesh=None) -> tuple[int, int]:
    """``(closed, interior)`` objects as a viewer loads them at ``layer``; asserts that any
    opening lies on a layer-2 chunk plane (the only place PCG's layer-2 algorithm leaves one)."""
    store = job.store
    inside = interior_roots(store, sv_volume)
    closed = 0
    for root in sorted(inside):
        vertices, faces = merged(_loaded(job, root, layer, read, has_mesh)[1])
        edges, use = edge_use(faces, return_edges=True)
        assert np.all(on_l2_seams(job, vertices[np.unique(edges[use == 1])])), f"root {root}: opening off the seams"
        closed += not (use == 1).any()
    return closed, len(inside)
