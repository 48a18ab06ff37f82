"""Layer-2 output checks shared by the unit (serial) and integration (Ray, real data) tests."""

from __future__ import annotations

import numpy as np
import zmesh

from raymesh.draco import decode, encode
from raymesh.l2 import read_l2_block
from raymesh.mesh_layout import shard_key
from raymesh.remap import fetch_neighbourhood, remap_chunk
from raymesh.sharding import disassemble_shard


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
    grid, store = job.grid, job.store
    chunk = int(grid.layout.chunk_id(2, *coords))
    labels = remap_chunk(read_l2_block(store.meta, grid, coords), fetch_neighbourhood(store, coords, job.time_stamp))
    mesher = zmesh.Mesher(grid.resolution)
    mesher.mesh(labels)
    frags = chunk_fragments(job, coords)
    settings = grid.chunk_settings(chunk)
    checked = 0
    for label in sorted(mesher.ids()):
        mesh = mesher.get(label, reduction_factor=100, max_error=job.config.max_error)
        mesher.erase(label)
        verts = mesh.vertices.astype(np.float64) + grid.chunk_offset(chunk)
        assert frags[int(label)] == encode(verts, mesh.faces, settings), f"fragment {label} differs"
        decoded = decode(frags[int(label)])
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
    for node, data in chunk_fragments(job, coords).items():
        v = decode(data).vertices
        assert np.all(v >= lo - b) and np.all(v <= hi + b), f"mesh of {node} leaves chunk {coords} + 1 voxel"


def assert_seams_coincide(job, coords, axis: int) -> int:
    """Boundary vertices of one object on the face shared with the +axis neighbour coincide."""
    layout, grid, store = job.meta.layout, job.grid, job.store
    other = list(coords)
    other[axis] += 1
    if other[axis] >= layout.layer_chunk_bounds(2)[axis]:
        return 0
    chunk_b = int(layout.chunk_id(2, *other))
    b = grid.chunk_settings(chunk_b).bin
    plane = grid.chunk_offset(chunk_b)[axis]
    plane = np.floor(plane / b + 0.5) * b  # the grid value both sides decode the plane to
    sides = []
    for c in (coords, other):
        by_root: dict[int, set] = {}
        for node, data in chunk_fragments(job, c).items():
            v = decode(data).vertices
            on = v[v[:, axis] == plane]
            root = int(store.get_roots(node))
            by_root.setdefault(root, set()).update(map(tuple, on.tolist()))
        sides.append(by_root)
    compared = 0
    for root in set(sides[0]) & set(sides[1]):
        assert sides[0][root] == sides[1][root], f"seam of root {root} between {coords} and {other} differs"
        compared += len(sides[0][root])
    return compared
