"""Layer-2 output checks shared by the unit (serial) and integration (Ray, real data) tests."""

from __future__ import annotations

import numpy as np
import zmesh

from raymesh.formats.draco import decode, encode
from raymesh.layer2.corners import ChunkView, corner_patches
from raymesh.layer2.mesh import RemapCache, corner_views, neighbour_planes, read_l2_block, seam_patches, simplified_meshes, upper_plane
from raymesh.formats.mesh_layout import shard_key
from raymesh.layer2.remap import fetch_neighbourhood, fetch_with_upper, remap_chunk, uncovered_by_lower
from raymesh.formats.sharding import disassemble_shard


def chunk_fragments(job, coords) -> dict[int, bytes]:
    layout = job.meta.layout
    data = job.bucket.read(shard_key(layout, 2, int(layout.chunk_id(2, *coords))))
    assert data is not None, f"no shard for chunk {coords}"
    return disassemble_shard(data, job.sharding(2))


def assert_matches_direct_zmesh(job, coords) -> int:
    """The chunk's fragments equal meshing the remapped block directly with zmesh.

    "Directly" means PCG's call sequence: one mesher, labels in ascending order, get then erase.
    zmesh 1.15 simplifies the second and later labels of a mesher less than a fresh mesher would
    (state carried between get() calls), so the sequence is part of the reference.
    """
    grid = job.grid
    chunk = int(grid.layout.chunk_id(2, *coords))
    hood, upper = fetch_with_upper(job.store, coords, job.time_stamp)
    cache = RemapCache(job.meta, grid, None)  # its own, not the process's: this check reads afresh
    seg, labels = cache.get(coords, hood)
    uncovered = uncovered_by_lower(hood)
    planes = neighbour_planes(grid, labels, upper, cache)
    patched = set(seam_patches(labels, planes, grid.resolution))
    view = ChunkView(labels, uncovered)
    pairs, views = corner_views(job.store, grid, tuple(coords), view, {tuple(up): h for _, up, h in upper}, cache,
                                 job.time_stamp)
    if pairs:
        above = {a: upper_plane(labels, seg, hood, a) for a, _ in pairs}
        patched |= set(corner_patches(view, pairs, views, above, grid.resolution))
    mesher = zmesh.Mesher(grid.resolution)
    mesher.mesh(labels)
    frags = chunk_fragments(job, coords)
    settings = grid.chunk_settings(chunk)
    checked = 0
    for label in sorted(mesher.ids()):
        mesh = mesher.get(label, reduction_factor=100, max_error=job.config.max_error)
        mesher.erase(label)
        verts = mesh.vertices.astype(np.float64) + grid.chunk_offset(chunk)
        decoded = decode(frags[int(label)])
        low = verts.min(axis=0) <= grid.chunk_offset(chunk)  # touches the chunk's first plane
        capped = any(int(label) in nodes and low[list(axes)].all() for axes, nodes in uncovered.items())
        if capped or int(label) in patched:
            # Capped where a lower neighbour leaves the node open (l2.cap_meshes), or patched where
            # an upper one resolves a saddle differently (l2.seam_patches) or two caps meet in a
            # corner column (raymesh.layer2.corners): the direct mesh plus
            # those, so more faces, and every direct vertex within a bin of a decoded one.
            assert len(decoded.faces) > len(mesh.faces), f"fragment {label} has no cap or patch"
            d = np.abs(verts[:, None, :] - decoded.vertices[None, :, :]).max(axis=2).min(axis=1)
        else:
            assert frags[int(label)] == encode(verts, mesh.faces, settings), f"fragment {label} differs"
            assert len(decoded.faces) <= len(mesh.faces)
            # Every decoded vertex is within one quantization bin of an input vertex.
            d = np.abs(decoded.vertices[:, None, :] - verts[None, :, :]).max(axis=2).min(axis=1)
        assert d.max() <= settings.bin
        checked += 1
    assert checked == len(frags)
    return checked


def assert_within_chunk(job, coords) -> None:
    grid = job.grid
    chunk = int(grid.layout.chunk_id(2, *coords))
    lo = grid.chunk_offset(chunk)
    hi = lo + grid.block_shape(2) * np.asarray(grid.resolution)
    b = grid.chunk_settings(chunk).bin
    # A cap reaches half a voxel below the chunk, plus what simplification may move it (max_error).
    below = max(b, np.max(grid.resolution) / 2 + job.config.max_error + b)
    for node, data in chunk_fragments(job, coords).items():
        v = decode(data).vertices
        assert np.all(v >= lo - below) and np.all(v <= hi + b), f"mesh of {node} leaves chunk {coords} + 1 voxel"


def open_edge_vertices(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Vertices on edges used by exactly one face: the mesh's open boundary (the cut at the chunk)."""
    f = np.asarray(faces, dtype=np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    return vertices[np.unique(uniq[counts == 1])]


def remapped_block(job, coords) -> tuple[np.ndarray, np.ndarray]:
    """(supervoxel block, remapped layer-2 block) of a chunk, as the job sees it."""
    grid, store = job.grid, job.store
    seg = read_l2_block(store.meta, grid, coords)
    return seg, remap_chunk(seg, fetch_neighbourhood(store, coords, job.time_stamp))


def raw_chunk_meshes(job, coords, labels=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The chunk's meshes before Draco (absolute nm), by the same kernel the job ran."""
    grid = job.grid
    chunk = int(grid.layout.chunk_id(2, *coords))
    if labels is None:
        labels = remapped_block(job, coords)[1]
    return {label: (v + grid.chunk_offset(chunk), f)
            for label, v, f in simplified_meshes(labels, grid.resolution, job.config.max_error)}


def assert_seams_coincide(job, coords, axis: int) -> int:
    """The seam property stitching relies on, for the face shared with the +axis neighbour.

    Before Draco, the open-boundary vertices of each object on the shared plane are the same set
    on both sides. After Draco, each of them decodes to the same point in both chunks' fragments
    (both grids are one lattice), so stitching can merge them by exact equality.
    Checked on pre-Draco geometry because quantization also pulls interior vertices within half a
    bin of the plane onto it, so the decoded plane alone cannot tell cut vertices from others.

    One exception is PCG's by design (pcg-compat.md 6.3 step 5): an object with no layer-2 node
    in the lower chunk is not meshed in its overlap, so its cut on the plane appears only above.
    The check requires every such difference to be explained by supervoxels the lower chunk's
    remap dropped on that plane.
    """
    layout, grid, store = job.meta.layout, job.grid, job.store
    other = list(coords)
    other[axis] += 1
    if other[axis] >= layout.layer_chunk_bounds(2)[axis]:
        return 0
    chunks = [int(layout.chunk_id(2, *c)) for c in (coords, other)]
    plane = grid.chunk_offset(chunks[1])[axis]
    seg, below_labels = remapped_block(job, coords)
    dropped = np.take(seg, -1, axis=axis)[(np.take(below_labels, -1, axis=axis) == 0) & (np.take(seg, -1, axis=axis) != 0)]
    dropped_roots = set(np.asarray(store.get_roots(np.unique(dropped))).tolist()) if len(dropped) else set()
    sides, decoded = [], []
    for c, labels in ((coords, below_labels), (other, None)):
        by_root: dict[int, set] = {}
        for node, (v, f) in raw_chunk_meshes(job, c, labels).items():
            cut = open_edge_vertices(v, f)
            root = int(store.get_roots(node))
            by_root.setdefault(root, set()).update(map(tuple, cut[cut[:, axis] == plane].tolist()))
        sides.append(by_root)
        decoded.append({tuple(p) for data in chunk_fragments(job, c).values()
                        for p in decode(data).vertices.tolist()})
    compared = 0
    for root in set(sides[0]) | set(sides[1]):
        below, above = sides[0].get(root, set()), sides[1].get(root, set())
        where = f"seam of root {root} between {coords} and {other}"
        assert below <= above, f"{where}: {len(below - above)} cut vertices only below"
        assert below == above or root in dropped_roots, f"{where}: {len(above - below)} cut vertices only above"
        if not below:
            continue
        pts = np.array(sorted(below))
        for chunk, present in zip(chunks, decoded):
            s = grid.chunk_settings(chunk)
            q = np.asarray(s.origin) + np.floor((pts - s.origin) / s.bin + 0.5) * s.bin
            assert set(map(tuple, q.tolist())) <= present, f"{where}: cut not on chunk {chunk}'s grid"
        compared += len(below)
    return compared
