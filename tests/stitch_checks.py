"""Checks on stitched output shared by the unit (serial, synthetic) and integration (Ray, real) tests.

They look at the output the way a viewer does: the fragments PCG's manifest would list for a root,
read back from the shards, merged by position.
"""

from __future__ import annotations

import numpy as np

from raymesh.formats.draco import decode
from raymesh.manifest import manifest_nodes, shard_has_mesh
from raymesh.formats.mesh_layout import shard_key
from raymesh.formats.sharding import read_value
from raymesh.verify.checks import internal_planes as chunk_planes
from raymesh.verify.geometry import edge_use, merged, unmerged_seam_vertices  # noqa: F401 (shared with the tests)


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


def internal_planes(grid, node: int) -> list[set]:
    """Every layer's mid-planes inside ``node``'s chunk (per axis, nm), as the grid puts them."""
    return chunk_planes(grid, int(grid.layout.get_chunk_id(node)))


def internal_plane_duplicates(job, node: int, frag) -> int:
    """Unmerged seam vertices of a node's fragment (``unmerged_seam_vertices`` on every layer's
    mid-planes inside the node's chunk): cracks stitching should have closed, not Draco's splits."""
    if int(job.meta.layout.get_chunk_layer(node)) == 2:
        return 0
    return unmerged_seam_vertices(frag.vertices, frag.faces, internal_planes(job.grid, node))


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


def prefetch(job, roots, layers, read, has_mesh=None) -> None:
    """Hand a batching reader (``readback.CloudVolumeReader``) every node the roots' manifests at
    ``layers`` list, so the per-root checks after it read from memory."""
    if read is not None and hasattr(read, "prefetch"):
        read.prefetch({n for root in roots for layer in layers
                       for n in manifest_nodes(job.store, root, layer, has_mesh)})


def assert_stitched_like_layer2(job, root: int, layers, read=None, has_mesh=None) -> dict:
    """The fragments of every layer cover the layer-2 surface of ``root``: same faces, and the
    same open and non-manifold edges (stitching closes seams, adds no cracks, hides nothing)."""
    prefetch(job, [root], [2, *layers], read, has_mesh)
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
    prefetch(job, inside, [layer], read, has_mesh)
    closed = 0
    for root in sorted(inside):
        vertices, faces = merged(_loaded(job, root, layer, read, has_mesh)[1])
        edges, use = edge_use(faces, return_edges=True)
        assert np.all(on_l2_seams(job, vertices[np.unique(edges[use == 1])])), f"root {root}: opening off the seams"
        closed += not (use == 1).any()
    return closed, len(inside)
