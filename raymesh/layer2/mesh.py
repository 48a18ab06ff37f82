"""Layer-2 meshing of one chunk (pcg-compat.md 6): labels in, ``{node id: Draco bytes}`` out.

``mesh_block`` is the pure kernel (marching cubes, simplification, offset, Draco). ``read_l2_block``
and ``mesh_l2_chunk`` add the segmentation read and the graph remap; the runtime decides where
and when they run and writes the shard.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import fastremap
import numpy as np
import zmesh

from raymesh.layer2.corners import ChunkView, corner_drops, corner_pairs, corner_patches, pair_chunks
from raymesh.formats.draco import DracoError, DracoSettings, MeshGrid, encode
from raymesh.layer2.remap import (GraphReads, Neighbourhood, fetch_neighbourhoods, fetch_with_upper, relabel, remap_chunk,
                                  uncovered_by_lower)
from raymesh.layer2.squares import patch_triangles, square_patches
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
                      reduction_factor: int = REDUCTION_FACTOR,
                      simplifier: str = "zmesh") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, vertices nm relative to the block, faces)`` per non-zero label, ascending.

    PCG's call sequence (one mesher, get then erase, ascending labels): zmesh 1.15 carries state
    between ``get`` calls, so the sequence is part of what makes the output reproducible.
    ``simplifier``: ``zmesh`` simplifies inside ``get`` (PCG's); another (``raymesh.simplify``)
    takes the unsimplified marching-cubes mesh and keeps its vertices on the block's faces.
    """
    mesher = zmesh.Mesher(tuple(float(r) for r in resolution))
    mesher.mesh(np.ascontiguousarray(labels))
    own = simplifier == "zmesh"
    if not own:
        from raymesh.simplify import simplify

        top = (np.asarray(labels.shape) - 1) * np.asarray(resolution, dtype=np.float64)
    try:
        for label in sorted(int(i) for i in mesher.ids()):
            if label == 0:
                continue
            mesh = mesher.get(label, normals=False, reduction_factor=reduction_factor if own else 0,
                              max_error=max_error)
            mesher.erase(label)
            vertices, faces = mesh.vertices, mesh.faces
            if not own:
                vertices, faces = simplify(simplifier, vertices, faces, top, max_error, reduction_factor, resolution)
            yield label, vertices.astype(np.float64), faces
    finally:
        mesher.clear()


Cap = tuple[tuple[int, ...], np.ndarray, np.ndarray]  # (axes it lies below, vertices, faces)


def cap_meshes(labels: np.ndarray, uncovered: dict[tuple[int, ...], set[int]], resolution, max_error: float = 40,
               reduction_factor: int = REDUCTION_FACTOR,
               drops: dict[tuple[int, ...], np.ndarray] | None = None,
               simplifier: str = "zmesh") -> dict[int, list[Cap]]:
    """Caps for the nodes lower neighbours leave open: ``{label: [(axes, vertices, faces), ...]}``.

    Deliberate addition to PCG (pcg-compat.md 6.3 leaves these open): where the lower neighbours
    around a first plane, edge line or corner voxel do not mesh a node there
    (``remap.uncovered_by_lower``), the node's surface in the half-voxel below is meshed here, the
    way those neighbours would have: the node's voxels on that plane, line or voxel, with one
    plane of background before them on each of those axes, give the face half a voxel below and
    the walls up to the planes. Its open edges on the planes are the same marching-squares
    contours as the node's own open edges there and the neighbouring caps' (either simplifier
    keeps open-boundary vertices: ``raymesh.simplify``), so they all weld exactly. ``drops``: first-
    plane voxels a face cap leaves to another chunk's cap (``corners.corner_drops``).
    """
    out: dict[int, list[Cap]] = {}
    for axes in sorted(uncovered, key=lambda a: (len(a), a)):
        if not uncovered[axes] or any(labels.shape[a] < 2 for a in axes):
            continue
        first = labels[tuple(slice(0, 1) if a in axes else slice(None) for a in range(3))]
        keep = np.isin(first, np.fromiter(uncovered[axes], dtype=np.uint64))
        if drops and axes in drops:
            keep &= ~drops[axes].reshape(keep.shape)
        if not keep.any():
            continue
        block = np.pad(np.where(keep, first, 0), [(1, 0) if a in axes else (0, 0) for a in range(3)])
        shift = np.array([float(resolution[a]) if a in axes else 0.0 for a in range(3)])
        for label, vertices, faces in simplified_meshes(block, resolution, max_error, reduction_factor, simplifier):
            out.setdefault(label, []).append((axes, vertices - shift, faces))
    return out


def _with_caps(vertices: np.ndarray, faces: np.ndarray, caps: list[Cap]):
    """A node's mesh and its caps as one mesh, welded on the first planes of the caps' axes."""
    from raymesh.stitch import merge_across_boundaries

    planes = np.full(3, np.nan)
    planes[sorted({a for axes, _, _ in caps for a in axes})] = 0.0
    return merge_across_boundaries([(vertices, faces)] + [(v, f) for _, v, f in caps], planes)


def _square(plane: np.ndarray, i: int, j: int) -> tuple[int, ...]:
    """The labels of square (i, j)'s corners, in ``PIECES``' corner order."""
    return tuple(int(x) for x in (plane[i, j], plane[i + 1, j], plane[i, j + 1], plane[i + 1, j + 1]))


def _corners(plane: np.ndarray) -> list[np.ndarray]:
    """Every square's corners at once, in ``PIECES``' corner order."""
    return [plane[:-1, :-1], plane[1:, :-1], plane[:-1, 1:], plane[1:, 1:]]


def _differs(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Squares whose corners the two sides partition differently (where a patch may be due)."""
    m, t = _corners(mine), _corners(theirs)
    out = np.zeros(m[0].shape, dtype=bool)
    for k in range(4):
        out |= (m[k] != 0) != (t[k] != 0)
        for o in range(k + 1, 4):
            out |= (m[k] == m[o]) != (t[k] == t[o])
    return out & ((m[0] != 0) | (m[1] != 0) | (m[2] != 0) | (m[3] != 0))


def seam_patches(labels: np.ndarray, neighbours: dict[int, np.ndarray], resolution
                 ) -> dict[int, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Flat patches where this chunk and an upper neighbour cut their shared plane differently:
    ``{label: [(axis, vertices, faces), ...]}``, vertices in nm relative to the block.

    Deliberate addition to PCG (pcg-compat.md 6.3 leaves these open). Each side labels the
    plane's voxels its own way: the overlap remap may give two of the neighbour's nodes one label
    here, or an unsafe object's overlap components to different candidates than the neighbour
    does; on the plane's last row and column (the neighbour's own overlap) the neighbour's stop
    layer decides. Where the two labellings cut a unit square differently (a saddle joined on
    one side only, a placeholder given to another node), the two marching-cubes surfaces meet
    the plane along different contours and leave the pieces between them open. Those pieces,
    added flat on the plane to this chunk's mesh of the object (its smallest label on the
    square), close it: their edges lie on the same edge midpoints as both sides' contours, so
    they weld like a cap. ``neighbours``: ``neighbour_planes``.
    """
    res = np.asarray(resolution, dtype=np.float64)
    out: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for axis in sorted(neighbours):
        b, c = [a for a in range(3) if a != axis]
        mine, theirs = np.take(labels, -1, axis=axis), neighbours[axis]
        for i, j in zip(*np.nonzero(_differs(mine, theirs))):
            for owner, bits, lid in square_patches(_square(mine, i, j), _square(theirs, i, j)):
                tris = patch_triangles(bits)
                vertices = np.zeros((3 * len(tris), 3))
                vertices[:, axis] = (labels.shape[axis] - 1) * res[axis]
                vertices[:, b] = (i + tris[:, :, 0].ravel()) * res[b]
                vertices[:, c] = (j + tris[:, :, 1].ravel()) * res[c]
                faces = np.arange(len(vertices), dtype=np.uint32).reshape(-1, 3)
                normal = np.cross(vertices[1] - vertices[0], vertices[2] - vertices[0])[axis]
                if np.sign(normal) != lid:
                    faces = faces[:, ::-1].copy()
                out.setdefault(owner, []).append((axis, vertices, faces))
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
               patches: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] | None = None,
               simplifier: str = "zmesh") -> ChunkMeshes:
    """zmesh marching cubes + simplification (``simplifier``: ``simplified_meshes``) of every
    label, shifted to nm, Draco-encoded."""
    out = ChunkMeshes(chunk_id=chunk_id, layer=layer)
    caps, patches = caps or {}, patches or {}
    top = (np.asarray(labels.shape) - 1) * np.asarray(resolution, dtype=np.float64)
    for label, vertices, faces in simplified_meshes(labels, resolution, max_error, reduction_factor, simplifier):
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


def block_mismatch(seg: np.ndarray, hood: Neighbourhood, chunk_shape) -> str | None:
    """Why a chunk's block cannot be the segmentation its graph was built from, or None.

    The chunk itself (its block without the overlap) must hold some supervoxel of the nodes the
    graph puts in the chunk, and none the graph does not know there. A segmentation that reads
    as background (chunk files the reader cannot find), a moved or rewritten one, or another
    graph's would otherwise mesh to nothing, silently.
    """
    core = seg[tuple(slice(0, int(n)) for n in chunk_shape)]
    present = fastremap.unique(core)
    present = present[present != 0]
    known = np.concatenate([np.asarray(v, dtype=np.uint64) for v in hood.own.values()]) if hood.own else \
        np.empty(0, dtype=np.uint64)
    if len(known) and not np.isin(known, present).any():
        seen = "only background" if not len(present) else f"only other supervoxels (e.g. {int(present[0])})"
        return (f"the segmentation holds none of the {len(known)} supervoxels the graph puts in this chunk, "
                f"{seen}")
    unknown = present[~np.isin(present, known)]
    if len(unknown):
        return (f"the segmentation holds {len(unknown)} supervoxel(s) the graph does not have in this chunk "
                f"(e.g. {int(unknown[0])})")
    return None


def _mismatch_failure(meta, grid: MeshGrid, coords, why: str) -> str:
    return (f"layer-2 chunk {list(coords)}: {why}; segmentation {meta.segmentation_path} at mip {grid.mip}. "
            "Likely causes: chunk files the reader does not find (they read as background), a segmentation "
            "moved or rewritten since the graph was built (the graph's watershed path points elsewhere), "
            "the wrong --mip, or a graph built from another segmentation")


def upper_plane(labels: np.ndarray, seg: np.ndarray, hood: Neighbourhood, axis: int) -> np.ndarray:
    """The first plane on ``axis`` of an upper neighbour's block as that neighbour's meshes cut it:
    its own remap (``labels``, of its supervoxels ``seg``), exact where a view from the chunk below
    is not (on the plane's last row and column the neighbour resolves placeholders by components
    that run through its whole overlap). Voxels it leaves out there (nodes of the chunks beside
    it that it does not link) keep their own layer-2 ids: their chunk's cap meshes them on this
    plane (``cap_meshes``), as if the neighbour had."""
    return plane_as_cut(np.take(labels, 0, axis=axis), np.take(seg, 0, axis=axis), hood)


def plane_as_cut(theirs: np.ndarray, seg: np.ndarray, hood: Neighbourhood) -> np.ndarray:
    """``upper_plane`` from the neighbour's labels and supervoxels on that plane alone."""
    beside = relabel(np.asarray(seg, dtype=np.uint64),
                     {int(sv): node for node, svs in hood.others.items() for sv in svs.tolist()})
    return np.where(theirs == 0, beside, theirs)


class RemapCache:
    """Blocks read and remapped (``read_l2_block`` + ``remap_chunk``) by chunk, for one graph
    state, kept for the process (``remap_cache``): the chunks around a chunk's edge lines are
    meshed soon after it, so the last ``size`` blocks are kept whole; and of every block, the
    first plane on each axis, which is all its lower neighbours need of it (``upper_plane``).
    Layer 2 runs from the last chunk to the first (``MeshJob.iter_chunks``), so a chunk's upper
    neighbours were meshed before it and their planes are here: each block is read and remapped
    about once, not up to four times. ``plane_bytes`` bounds the planes (64 MiB: those of about
    300 chunks of 64^3, a whole x-step of a 16x16 grid). The arrays handed out are read-only:
    they are shared."""

    def __init__(self, meta, grid: MeshGrid, dust_threshold: int | None, key=None, size: int = 16,
                 plane_bytes: int = 64 * 2**20):
        self.meta, self.grid, self.dust_threshold, self.key, self.size = meta, grid, dust_threshold, key, size
        self.reads = GraphReads()  # the graph rows and ancestors behind the blocks, kept alike
        self._items: OrderedDict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.plane_bytes = plane_bytes
        self._planes: OrderedDict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] = OrderedDict()
        self._plane_total = 0

    def first_plane(self, coords, hood: Neighbourhood, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """``(supervoxels, layer-2 labels)`` on a chunk's first plane on ``axis``: ``get``'s, also
        once the block itself is gone."""
        c = tuple(int(v) for v in coords)
        planes = self._planes.get(c)
        if planes is None:
            self.get(c, hood)
            planes = self._planes[c]
        else:
            self._planes.move_to_end(c)
        return planes[axis]

    def _keep_planes(self, c: tuple[int, ...], seg: np.ndarray, labels: np.ndarray) -> None:
        planes = [(np.ascontiguousarray(np.take(seg, 0, axis=a)), np.ascontiguousarray(np.take(labels, 0, axis=a)))
                  for a in range(3)]
        for pair in planes:
            for plane in pair:
                plane.flags.writeable = False
        self._planes[c] = planes
        self._plane_total += sum(p.nbytes for pair in planes for p in pair)
        while self._plane_total > self.plane_bytes and len(self._planes) > 1:
            _, old = self._planes.popitem(last=False)
            self._plane_total -= sum(p.nbytes for pair in old for p in pair)

    def get(self, coords, hood: Neighbourhood) -> tuple[np.ndarray, np.ndarray]:
        """``(supervoxels, layer-2 labels)`` of a chunk's block; ``hood`` must be the chunk's own
        neighbourhood (``fetch_neighbourhoods`` answers the same for it in any batch)."""
        c = tuple(int(v) for v in coords)
        hit = self._items.get(c)
        if hit is not None:
            self._items.move_to_end(c)
            return hit
        seg = read_l2_block(self.meta, self.grid, c)
        labels = remap_chunk(seg, hood, dust_threshold=self.dust_threshold)
        seg.flags.writeable = labels.flags.writeable = False
        self._items[c] = (seg, labels)
        if c not in self._planes:
            self._keep_planes(c, seg, labels)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return seg, labels


_PROCESS_CACHE: RemapCache | None = None


def remap_cache(store, grid: MeshGrid, time_stamp, dust_threshold: int | None, share: str | None = None
                ) -> RemapCache:
    """The process's cache for one job (``share``: its run id) and graph state: a Ray worker runs
    the job's tasks one after another, a serial run every chunk. A new one when the job, graph,
    time stamp, mip or dust threshold change. Without ``share`` or a time stamp ("now", which
    moves) nothing is kept beyond one chunk: the segmentation or graph may change between jobs."""
    global _PROCESS_CACHE
    if time_stamp is None or share is None:
        return RemapCache(store.meta, grid, dust_threshold)
    from raymesh.graph.base import read_ms

    key = (share, getattr(store, "url", id(store)), store.meta.segmentation_path, grid.mip, read_ms(time_stamp),
           dust_threshold)
    if _PROCESS_CACHE is None or _PROCESS_CACHE.key != key:
        _PROCESS_CACHE = RemapCache(store.meta, grid, dust_threshold, key=key)
    return _PROCESS_CACHE


def neighbour_planes(grid: MeshGrid, labels: np.ndarray, upper: list[tuple[int, list[int], Neighbourhood]],
                     cache: RemapCache) -> dict[int, np.ndarray]:
    """``upper_plane`` of each upper neighbour (``remap.fetch_with_upper``), skipped where this
    chunk has nothing on the plane (no patch is possible there)."""
    planes = {}
    for axis, up, hood in upper:
        if labels.shape[axis] <= int(grid.block_shape(2)[axis]) or not np.take(labels, -1, axis=axis).any():
            continue
        seg, theirs = cache.first_plane(up, hood, axis)
        planes[axis] = plane_as_cut(theirs, seg, hood)
    return planes


def corner_views(store, grid: MeshGrid, coords, view: ChunkView, known: dict[tuple[int, ...], Neighbourhood],
                 cache: RemapCache, time_stamp=None) -> tuple[list[tuple[int, int]], dict]:
    """The corner-column pairs of a chunk (``corners.corner_pairs``) and the views of the chunks
    around each edge line, read in one more batch only where a pair needs them (neighbourhoods
    in ``known`` are not read again, nor blocks in ``cache``)."""
    layout = grid.layout
    bounds = layout.layer_chunk_bounds(2)
    pairs = [(a, b) for a, b in corner_pairs(view, grid.block_shape(2))
             if all(0 <= c[i] < int(bounds[i]) for c in pair_chunks(coords, a, b).values() for i in range(3))]
    if not pairs:
        return [], {"P": {}, "M": {}, "U": {}}
    needed = sorted({c for a, b in pairs for c in pair_chunks(coords, a, b).values()})
    missing = [c for c in needed if c not in known]
    hoods = {**{c: known[c] for c in needed if c in known},
             **dict(zip(missing, fetch_neighbourhoods(store, missing, time_stamp=time_stamp, reads=cache.reads)
                                     if missing else []))}
    views = {c: ChunkView(cache.get(c, h)[1], uncovered_by_lower(h)) for c, h in hoods.items()}
    return pairs, {k: {(a, b): views[pair_chunks(coords, a, b)[k]] for a, b in pairs} for k in ("P", "M", "U")}


def mesh_l2_chunk(store, grid: MeshGrid, coords, *, time_stamp=None, max_error: float = 40,
                  dust_threshold: int | None = None, simplifier: str = "zmesh", share: str | None = None
                  ) -> ChunkMeshes:
    """Read, remap and mesh one layer-2 chunk (its upper neighbours remapped too, for the seams,
    and around an edge line where two chunks' caps meet, the chunks there). ``simplifier``:
    ``simplified_meshes``, for the node meshes and their caps alike. ``share``: the job's run
    id, under which the process keeps remapped blocks for the job's next chunks (``remap_cache``)."""
    layout = grid.layout
    coords = tuple(int(c) for c in coords)
    chunk_id = int(layout.chunk_id(2, *coords))
    cache = remap_cache(store, grid, time_stamp, dust_threshold, share)
    hood, upper = fetch_with_upper(store, coords, time_stamp=time_stamp, reads=cache.reads)
    seg, labels = cache.get(coords, hood)
    why = block_mismatch(seg, hood, grid.block_shape(2))
    if why is not None:
        return ChunkMeshes(chunk_id, 2, failures=[_mismatch_failure(store.meta, grid, coords, why)],
                           n_nodes=len(hood.own))
    view = ChunkView(labels, uncovered_by_lower(hood))
    planes = neighbour_planes(grid, labels, upper, cache)
    known = {tuple(up): h for _, up, h in upper}
    pairs, views = corner_views(store, grid, coords, view, known, cache, time_stamp)
    caps = cap_meshes(labels, view.uncovered, grid.resolution, max_error, drops=corner_drops(view, pairs, views),
                      simplifier=simplifier)
    if pairs:
        above_p = {a: upper_plane(labels, seg, hood, a) for a in sorted({a for a, _ in pairs})}
        for label, pieces in corner_patches(view, pairs, views, above_p, grid.resolution).items():
            caps.setdefault(label, []).extend(pieces)
    patches = seam_patches(labels, planes, grid.resolution)
    result = mesh_block(labels, grid.chunk_offset(chunk_id), grid.resolution, grid.chunk_settings(chunk_id),
                        max_error=max_error, chunk_id=chunk_id, caps=caps, patches=patches, simplifier=simplifier)
    result.n_nodes = len(hood.own)
    return result
