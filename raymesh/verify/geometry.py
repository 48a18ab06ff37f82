"""Pure mesh checks: arrays in, counts out. What a viewer would see, measured."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import fastremap
import numpy as np


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True, return_counts=True)`` for an ``(n, k)``
    array, by one lexsort (numpy's axis=0 path sorts a void view, several times slower)."""
    if not len(rows):
        return rows, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    starts = np.concatenate([[True], np.any(ordered[1:] != ordered[:-1], axis=1)])
    group = np.cumsum(starts) - 1
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = group
    counts = np.diff(np.concatenate([np.flatnonzero(starts), [len(rows)]]))
    return ordered[starts], inverse, counts


def merged(fragments: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """All fragments as one mesh, vertices merged by exact position (what a seam-free viewer sees)."""
    verts = np.concatenate([f.vertices for f in fragments])
    offsets = np.cumsum([0] + [len(f.vertices) for f in fragments[:-1]])
    faces = np.concatenate([f.faces.astype(np.int64) + o for f, o in zip(fragments, offsets)])
    uniq, inverse, _ = unique_rows(verts)
    return uniq, inverse[faces]


def sorted_edge_keys(faces: np.ndarray) -> tuple[np.ndarray, int]:
    """Every face's three undirected edges as sorted int64 keys ``low * n + high`` (faces
    degenerate by index left out), and ``n``. 24 bytes a face and an in-place sort: this runs on
    the biggest meshes of a LOD task, where ``np.unique`` on stacked edge arrays took ~200 bytes
    a face and set the task's peak."""
    faces = np.asarray(faces)
    f = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    n = int(f.max()) + 1 if len(f) else 1
    keys = np.empty(3 * len(f), dtype=np.int64)
    for k, (i, j) in enumerate(((0, 1), (1, 2), (2, 0))):
        a, b = f[:, i].astype(np.int64), f[:, j].astype(np.int64)
        part = keys[k * len(f):(k + 1) * len(f)]
        np.minimum(a, b, out=part)
        part *= n
        part += np.maximum(a, b)
    keys.sort()
    return keys, n


def single_edge_keys(faces: np.ndarray) -> tuple[np.ndarray, int]:
    """The keys (``sorted_edge_keys``) of edges used by one face only, and ``n``."""
    keys, n = sorted_edge_keys(faces)
    if not len(keys):
        return keys, n
    differs = keys[1:] != keys[:-1]
    single = np.ones(len(keys), dtype=bool)
    single[1:] &= differs
    single[:-1] &= differs
    del differs
    return keys[single], n


def single_edges(faces: np.ndarray) -> np.ndarray:
    """Edges used by one face only, as ``(k, 2)`` vertex pairs (low, high)."""
    keys, n = single_edge_keys(faces)
    return np.stack([keys // n, keys % n], axis=1)


def edge_use(faces: np.ndarray, return_edges: bool = False):
    """How many faces use each undirected edge (faces degenerate by position are left out)."""
    keys, n = sorted_edge_keys(faces)
    if not len(keys):
        counts = np.zeros(0, dtype=np.int64)
        return (np.zeros((0, 2), dtype=np.int64), counts) if return_edges else counts
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, len(keys)))
    if not return_edges:
        return counts
    first = keys[starts]
    return np.stack([first // n, first % n], axis=1), counts


def open_edges(fragments: Sequence) -> int:
    """Edges used by one face only, fragments merged by position: 0 for a closed surface."""
    if not fragments:
        return 0
    _, faces = merged(fragments)
    return int((edge_use(faces) == 1).sum())


def on_planes(vertices: np.ndarray, planes: Sequence[Iterable[float]]) -> np.ndarray:
    on = np.zeros(len(vertices), dtype=bool)
    for axis in range(3):
        if planes[axis]:
            on |= np.isin(vertices[:, axis], list(planes[axis]))
    return on


def unmerged_plane_vertices(vertices: np.ndarray, faces: np.ndarray, planes: Sequence[Iterable[float]]) -> int:
    """Positions on an internal chunk plane (``planes[axis]``: coordinates in nm) held by two or
    more vertices, one of them on an open edge: a seam stitching should have closed.

    Coincident copies around closed sheets are not cracks: Draco's encoder splits a vertex where
    two sheets touch (a non-manifold vertex) into copies, so those are not counted.
    """
    idx = np.flatnonzero(on_planes(vertices, planes))
    if len(idx) < 2:
        return 0
    _, inverse, copies = unique_rows(vertices[idx])
    shared = idx[copies[inverse] > 1]
    if not len(shared):
        return 0
    edges, use = edge_use(faces, return_edges=True)
    on_open = np.zeros(len(vertices), dtype=bool)
    on_open[edges[use == 1].ravel()] = True
    return int(on_open[shared].sum())


def unmerged_seam_vertices(vertices: np.ndarray, faces: np.ndarray, planes) -> int:
    """Vertices of positions that stitching should have welded: a position on an internal chunk
    plane (``planes[axis]``: coordinates in nm), held by two or more vertices, one of them on an
    open edge, and around which welding the copies gives a plain oriented surface: every edge at
    the position then in exactly two faces, once in each direction, its faces one fan, and no edge
    of those faces in more than two faces, no two of them on the same three positions.

    Anything else is Draco's split, not a crack: the encoder welds every vertex by exact position
    and then splits the mesh where it is not a manifold (an edge in three or more faces, two
    coincident faces, faces meeting at a point, a flipped face). A split vertex also duplicates
    the other corners of the faces it separates, so copies sit next to, not only on, the
    non-manifold spot: two layer-2 meshes that meet in a zero-thickness wall (coincident,
    opposite-facing triangles) come out with every corner of the wall doubled, each copy on an
    open edge, although each of those corners' own edges closes once welded.
    """
    if not len(vertices) or not len(faces):
        return 0
    f = np.asarray(faces, dtype=np.int64)
    if not unmerged_plane_vertices(vertices, faces, planes):
        return 0  # the cheap test first: no open copies on a plane, nothing to weld
    uniq, inverse, copies = unique_rows(vertices)
    on = on_planes(uniq, planes)
    raw_edges, raw_use = edge_use(f, return_edges=True)
    was_open = np.zeros(len(uniq), dtype=bool)
    was_open[inverse[raw_edges[raw_use == 1].ravel()]] = True
    candidates = np.flatnonzero(on & (copies > 1) & was_open)
    if not len(candidates):
        return 0
    w = inverse[f]
    w = w[(w[:, 0] != w[:, 1]) & (w[:, 1] != w[:, 2]) & (w[:, 0] != w[:, 2])]
    n = np.int64(len(uniq))
    directed = np.concatenate([w[:, [0, 1]], w[:, [1, 2]], w[:, [2, 0]]])
    d_keys, d_use = np.unique(directed[:, 0] * n + directed[:, 1], return_counts=True)
    undirected = np.sort(directed, axis=1)
    u_keys, u_use = np.unique(undirected[:, 0] * n + undirected[:, 1], return_counts=True)

    def uses(keys, table, counts):
        at = np.clip(np.searchsorted(table, keys), 0, len(table) - 1)
        return np.where(table[at] == keys, counts[at], 0)

    cracked = 0
    for k in candidates:
        star = w[(w == k).any(axis=1)]
        if not len(star) or len(np.unique(np.sort(star, axis=1), axis=0)) < len(star):
            continue  # coincident faces: Draco separates them
        rolled = star[np.arange(len(star))[:, None], (np.argmax(star == k, axis=1)[:, None] + [1, 2]) % 3]
        a, b = rolled[:, 0], rolled[:, 1]  # each face is (k, a, b) in its own orientation
        if np.any(uses(np.minimum(a, b) * n + np.maximum(a, b), u_keys, u_use) > 2):
            continue  # an edge of its faces in three or more faces
        spokes = np.unique(np.concatenate([a, b]))
        if np.any(uses(k * n + spokes, d_keys, d_use) != 1) or np.any(uses(spokes * n + k, d_keys, d_use) != 1):
            continue  # an edge at the position still open, in three or more faces, or flipped
        parent = {int(s): int(s) for s in spokes}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for x, y in zip(a.tolist(), b.tolist()):
            parent[find(x)] = find(y)
        if len({find(int(s)) for s in spokes}) == 1:  # one fan, not sheets meeting at a point
            cracked += int(copies[k])
    return cracked


def surface_labels(labels: np.ndarray) -> np.ndarray:
    """Labels with a voxel face against another label inside the block: the ones marching cubes
    finds a surface for (zmesh does not close an object at the block's edge)."""
    found = []
    for axis in range(3):
        if labels.shape[axis] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        differ = a != b
        found += [a[differ], b[differ]]
    if not found:
        return np.empty(0, dtype=labels.dtype)
    out = fastremap.unique(np.concatenate(found))
    return out[out != 0]
