"""Layer-2 meshing of one chunk (pcg-compat.md 6): labels in, ``{node id: Draco bytes}`` out.

``mesh_block`` is the pure kernel (marching cubes, simplification, offset, Draco). ``read_l2_block``
and ``mesh_l2_chunk`` add the segmentation read and the graph remap; the runtime decides where
and when they run and writes the shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import zmesh

from raymesh.draco import DracoError, DracoSettings, MeshGrid, encode
from raymesh.remap import fetch_neighbourhood, remap_chunk, uncovered_by_lower
from raymesh.volume import read_block

REDUCTION_FACTOR = 100
OVERLAP = 1


@dataclass
class ChunkMeshes:
    """What one chunk produced: fragments to write and failures to report (never dropped)."""

    chunk_id: int
    layer: int
    fragments: dict[int, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    n_nodes: int = 0


def simplified_meshes(labels: np.ndarray, resolution, max_error: float = 40,
                      reduction_factor: int = REDUCTION_FACTOR) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, vertices nm relative to the block, faces)`` per non-zero label, ascending.

    PCG's call sequence (one mesher, get then erase, ascending labels): zmesh 1.15 carries state
    between ``get`` calls, so the sequence is part of what makes the output reproducible.
    """
    mesher = zmesh.Mesher(tuple(float(r) for r in resolution))
    mesher.mesh(np.ascontiguousarray(labels))
    try:
        for label in sorted(int(i) for i in mesher.ids()):
            if label == 0:
                continue
            mesh = mesher.get(label, normals=False, reduction_factor=reduction_factor, max_error=max_error)
            mesher.erase(label)
            yield label, mesh.vertices.astype(np.float64), mesh.faces
    finally:
        mesher.clear()


def cap_meshes(labels: np.ndarray, uncovered: dict[int, set[int]], resolution, max_error: float = 40,
               reduction_factor: int = REDUCTION_FACTOR) -> dict[int, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Caps for the nodes a lower neighbour leaves open: ``{label: [(axis, vertices, faces), ...]}``.

    Deliberate addition to PCG (pcg-compat.md 6.3 leaves these open): where the lower neighbour
    on an axis does not mesh a node on this chunk's first plane (``remap.uncovered_by_lower``),
    the node's surface in the half-voxel slab below that plane is meshed here, the way that
    neighbour would have: a two-plane block (background, then the node's voxels of the first
    plane) gives the face half a voxel below and the walls up to the plane. Its open edge on the
    plane is the same marching-squares contour as the node's own open edge there (zmesh keeps
    open-boundary vertices through simplification), so the two weld exactly.
    """
    out: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for axis in sorted(uncovered):
        if not uncovered[axis] or labels.shape[axis] < 2:
            continue
        plane = np.take(labels, 0, axis=axis)
        keep = np.isin(plane, np.fromiter(uncovered[axis], dtype=np.uint64))
        if not keep.any():
            continue
        block = np.stack([np.zeros_like(plane), np.where(keep, plane, 0)], axis=axis)
        shift = np.zeros(3)
        shift[axis] = float(resolution[axis])
        for label, vertices, faces in simplified_meshes(block, resolution, max_error, reduction_factor):
            out.setdefault(label, []).append((axis, vertices - shift, faces))
    return out


def _with_caps(vertices: np.ndarray, faces: np.ndarray, caps: list[tuple[int, np.ndarray, np.ndarray]]):
    """A node's mesh and its caps as one mesh, welded on the first planes of the caps' axes."""
    from raymesh.stitch import merge_across_boundaries

    planes = np.full(3, np.nan)
    planes[[axis for axis, _, _ in caps]] = 0.0
    return merge_across_boundaries([(vertices, faces)] + [(v, f) for _, v, f in caps], planes)


def mesh_block(labels: np.ndarray, offset_nm: np.ndarray, resolution, settings: DracoSettings,
               max_error: float = 40, reduction_factor: int = REDUCTION_FACTOR,
               chunk_id: int = 0, layer: int = 2,
               caps: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] | None = None) -> ChunkMeshes:
    """zmesh marching cubes + simplification of every label, shifted to nm, Draco-encoded."""
    out = ChunkMeshes(chunk_id=chunk_id, layer=layer)
    caps = caps or {}
    for label, vertices, faces in simplified_meshes(labels, resolution, max_error, reduction_factor):
        out.n_nodes += 1
        if label in caps:
            vertices, faces = _with_caps(vertices, faces, caps[label])
        try:
            out.fragments[label] = encode(vertices + offset_nm, faces, settings)
        except DracoError as exc:
            out.failures.append(f"{label} failed: {len(vertices)} vertices, {len(faces)} faces ({exc})")
    return out


def l2_read_bounds(grid: MeshGrid, coords, size_at_mip, offset_at_mip) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` of a chunk at the mesh mip with +1 overlap, clipped to the dataset."""
    mip_chunk = grid.block_shape(2)
    lo_bound = np.asarray(offset_at_mip)
    hi_bound = lo_bound + np.asarray(size_at_mip)
    start = lo_bound + np.asarray(coords) * mip_chunk
    end = np.minimum(start + mip_chunk + OVERLAP, hi_bound)
    return np.clip(start, lo_bound, hi_bound), end


def read_l2_block(meta, grid: MeshGrid, coords) -> np.ndarray:
    start, end = l2_read_bounds(grid, coords, meta.size_at(grid.mip), meta.voxel_offset_at(grid.mip))
    return read_block(meta.segmentation_path, grid.mip, start, end)


def mesh_l2_chunk(store, grid: MeshGrid, coords, *, time_stamp=None, max_error: float = 40,
                  dust_threshold: int | None = None) -> ChunkMeshes:
    """Read, remap and mesh one layer-2 chunk."""
    layout = grid.layout
    chunk_id = int(layout.chunk_id(2, *coords))
    seg = read_l2_block(store.meta, grid, coords)
    hood = fetch_neighbourhood(store, coords, time_stamp=time_stamp)
    labels = remap_chunk(seg, hood, dust_threshold=dust_threshold)
    uncovered = uncovered_by_lower(hood)
    caps = cap_meshes(labels, uncovered, grid.resolution, max_error)
    result = mesh_block(labels, grid.chunk_offset(chunk_id), grid.resolution, grid.chunk_settings(chunk_id),
                        max_error=max_error, chunk_id=chunk_id, caps=caps)
    result.n_nodes = len(hood.own)
    return result
