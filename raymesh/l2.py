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
from raymesh.remap import fetch_neighbourhood, neighbour_planes, remap_chunk, uncovered_by_lower
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


Cap = tuple[tuple[int, ...], np.ndarray, np.ndarray]  # (axes it lies below, vertices, faces)


def cap_meshes(labels: np.ndarray, uncovered: dict[tuple[int, ...], set[int]], resolution, max_error: float = 40,
               reduction_factor: int = REDUCTION_FACTOR) -> dict[int, list[Cap]]:
    """Caps for the nodes lower neighbours leave open: ``{label: [(axes, vertices, faces), ...]}``.

    Deliberate addition to PCG (pcg-compat.md 6.3 leaves these open): where the lower neighbours
    around a first plane, edge line or corner voxel do not mesh a node there
    (``remap.uncovered_by_lower``), the node's surface in the half-voxel below is meshed here, the
    way those neighbours would have: the node's voxels on that plane, line or voxel, with one
    plane of background before them on each of those axes, give the face half a voxel below and
    the walls up to the planes. Its open edges on the planes are the same marching-squares
    contours as the node's own open edges there and the neighbouring caps' (zmesh keeps
    open-boundary vertices through simplification), so they all weld exactly.
    """
    out: dict[int, list[Cap]] = {}
    for axes in sorted(uncovered, key=lambda a: (len(a), a)):
        if not uncovered[axes] or any(labels.shape[a] < 2 for a in axes):
            continue
        first = labels[tuple(slice(0, 1) if a in axes else slice(None) for a in range(3))]
        keep = np.isin(first, np.fromiter(uncovered[axes], dtype=np.uint64))
        if not keep.any():
            continue
        block = np.pad(np.where(keep, first, 0), [(1, 0) if a in axes else (0, 0) for a in range(3)])
        shift = np.array([float(resolution[a]) if a in axes else 0.0 for a in range(3)])
        for label, vertices, faces in simplified_meshes(block, resolution, max_error, reduction_factor):
            out.setdefault(label, []).append((axes, vertices - shift, faces))
    return out


def _with_caps(vertices: np.ndarray, faces: np.ndarray, caps: list[Cap]):
    """A node's mesh and its caps as one mesh, welded on the first planes of the caps' axes."""
    from raymesh.stitch import merge_across_boundaries

    planes = np.full(3, np.nan)
    planes[sorted({a for axes, _, _ in caps for a in axes})] = 0.0
    return merge_across_boundaries([(vertices, faces)] + [(v, f) for _, v, f in caps], planes)


def _corners(plane: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four corners of every unit square of a plane: (i, j), (i+1, j+1), (i, j+1), (i+1, j)."""
    return plane[:-1, :-1], plane[1:, 1:], plane[:-1, 1:], plane[1:, :-1]


def _joined(d1, d2, a1, a2) -> np.ndarray:
    """Squares where one label holds both diagonal corners and neither other corner: marching
    cubes joins the two (zmesh does, for a label that holds a face's two diagonal corners)."""
    return (d1 == d2) & (d1 != 0) & (a1 != d1) & (a2 != d1)


def _apart(d1, d2, a1, a2) -> np.ndarray:
    """Squares where two different labels hold the diagonal corners, neither the other corners."""
    return (d1 != 0) & (d2 != 0) & (d1 != d2) & (a1 != d1) & (a1 != d2) & (a2 != d1) & (a2 != d2)


def seam_patches(labels: np.ndarray, neighbours: dict[int, np.ndarray], chunk_shape, resolution
                 ) -> dict[int, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Flat patches where this chunk and an upper neighbour resolve a saddle on their shared plane
    differently: ``{label: [(axis, vertices, faces), ...]}``, vertices in nm relative to the block.

    Deliberate addition to PCG (pcg-compat.md 6.3 leaves these open). On the plane, two diagonal
    voxels may be one label here (the overlap remap gives both of the neighbour's nodes one
    object label) but two layer-2 nodes in the neighbour, or the other way round (an unsafe
    object's overlap components given to two candidates). Marching cubes then joins them on one
    side and cuts them apart on the other, which leaves the diamond between the square's four
    edge midpoints open. Its two triangles, in this chunk's mesh of the label (of the smaller one
    when it has two), close it: both sides have vertices at those midpoints on the plane, so it
    welds like a cap. ``neighbours``: ``remap.neighbour_planes``. Squares on the chunk's last
    row or column of a plane (a diagonal neighbour's cells) are not looked at.
    """
    res = np.asarray(resolution, dtype=np.float64)
    out: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for axis in sorted(neighbours):
        b, c = [a for a in range(3) if a != axis]
        crop = tuple(-1 if a == axis else slice(0, int(chunk_shape[a])) for a in range(3))
        mine, theirs = labels[crop], neighbours[axis]
        c00, c11, c01, c10 = _corners(mine)
        n00, n11, n01, n10 = _corners(theirs)
        for here, there in (((c00, c11, c01, c10), (n00, n11, n01, n10)),
                            ((c01, c10, c00, c11), (n01, n10, n00, n11))):
            # Joined here, apart there: this side's volume reaches the plane over the diamond (its
            # lid faces the neighbour, +axis); apart here, joined there: the neighbour's does.
            for lid, hits in ((1.0, _joined(*here) & _apart(*there)), (-1.0, _apart(*here) & _joined(*there))):
                for i, j in zip(*np.nonzero(hits)):
                    owner = int(min(here[0][i, j], here[1][i, j]))
                    quad = np.zeros((4, 3))
                    quad[:, axis] = (labels.shape[axis] - 1) * res[axis]
                    quad[:, b] = (i + np.array([0.5, 1.0, 0.5, 0.0])) * res[b]
                    quad[:, c] = (j + np.array([0.0, 0.5, 1.0, 0.5])) * res[c]
                    faces = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32)
                    normal = np.cross(quad[1] - quad[0], quad[2] - quad[0])[axis]
                    if np.sign(normal) != lid:
                        faces = faces[:, ::-1].copy()
                    out.setdefault(owner, []).append((axis, quad, faces))
    return out


def _with_patches(vertices: np.ndarray, faces: np.ndarray, patches, top: np.ndarray):
    """A node's mesh and its seam patches as one mesh, welded on the last planes of their axes."""
    from raymesh.stitch import merge_across_boundaries

    planes = np.full(3, np.nan)
    for axis in {axis for axis, _, _ in patches}:
        planes[axis] = top[axis]
    return merge_across_boundaries([(vertices, faces)] + [(v, f) for _, v, f in patches], planes)


def mesh_block(labels: np.ndarray, offset_nm: np.ndarray, resolution, settings: DracoSettings,
               max_error: float = 40, reduction_factor: int = REDUCTION_FACTOR,
               chunk_id: int = 0, layer: int = 2,
               caps: dict[int, list[Cap]] | None = None,
               patches: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] | None = None) -> ChunkMeshes:
    """zmesh marching cubes + simplification of every label, shifted to nm, Draco-encoded."""
    out = ChunkMeshes(chunk_id=chunk_id, layer=layer)
    caps, patches = caps or {}, patches or {}
    top = (np.asarray(labels.shape) - 1) * np.asarray(resolution, dtype=np.float64)
    for label, vertices, faces in simplified_meshes(labels, resolution, max_error, reduction_factor):
        out.n_nodes += 1
        if label in caps:
            vertices, faces = _with_caps(vertices, faces, caps[label])
        if label in patches:
            vertices, faces = _with_patches(vertices, faces, patches[label], top)
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
    chunk_shape = grid.block_shape(2)
    patches = seam_patches(labels, neighbour_planes(seg, hood, chunk_shape), chunk_shape, grid.resolution)
    result = mesh_block(labels, grid.chunk_offset(chunk_id), grid.resolution, grid.chunk_settings(chunk_id),
                        max_error=max_error, chunk_id=chunk_id, caps=caps, patches=patches)
    result.n_nodes = len(hood.own)
    return result
