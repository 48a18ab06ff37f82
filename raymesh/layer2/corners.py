"""Corner columns: where two face caps of two chunks meet in the cells of a third.

Around a chunk edge line four chunks meet: P (lower on axes a and b), E = P + a, M = P + b and
U = P + a + b. The column of marching-cubes cells next to the line belongs to P. Where P does not
mesh an object there, E's cap on a (``l2.cap_meshes``) and M's cap on b both reach into that
column, and both hold U's voxel on the line when E and M each link it to their capped node. Two
caps then mesh the same cells, their sheets cross, and each leaves an open strip on the other's
plane. Deliberate addition to PCG, as the caps are:

- ``corner_drops``: the cap on the higher axis leaves U's voxel out of that column, so one cap
  meshes the shared cells;
- ``corner_patches``: what is still open on E's face of the column (saddles along the line where
  the two caps' pieces do not add up to the cut on the other side) is filled flat on the face by
  E, from every mesh that meets that face: E's own and its cap, M's cap, U's caps, P's own mesh
  and P's seam patches. The pieces covered an odd number of times are the hole.

Pure: the chunks' labels in, masks and patches out. ``l2.mesh_l2_chunk`` reads the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raymesh.layer2.squares import patch_triangles, square_patches, square_residual


@dataclass
class ChunkView:
    """A chunk as its own layer-2 job sees it: remapped labels and the nodes its caps close."""

    labels: np.ndarray
    uncovered: dict[tuple[int, ...], set[int]]


def _capped(values: np.ndarray, nodes) -> np.ndarray:
    return np.isin(values, np.fromiter(nodes or (), dtype=np.uint64)) & (values != 0)


def _line(labels: np.ndarray, a: int, a_at: int, b: int, b_at: int) -> np.ndarray:
    """Voxels along the third axis at index ``a_at`` on ``a`` and ``b_at`` on ``b``."""
    index = [slice(None)] * 3
    index[a], index[b] = a_at, b_at
    return labels[tuple(index)]


def corner_pairs(view: ChunkView, chunk_shape) -> list[tuple[int, int]]:
    """``(a, b)``: this chunk's cap on ``a`` holds a voxel on its last row on ``b`` (its overlap,
    in the chunk U = this + b), so a neighbour's cap on ``b`` may reach the same cells."""
    out = []
    for a in range(3):
        nodes = view.uncovered.get((a,))
        if not nodes:
            continue
        for b in range(3):
            if b != a and view.labels.shape[b] > int(chunk_shape[b]):
                if _capped(_line(view.labels, a, 0, b, -1), nodes).any():
                    out.append((a, b))
    return out


def pair_chunks(coords, a: int, b: int) -> dict[str, tuple[int, ...]]:
    """The other three chunks around the edge line of pair ``(a, b)``."""
    def shift(da: int, db: int) -> tuple[int, ...]:
        out = [int(c) for c in coords]
        out[a] += da
        out[b] += db
        return tuple(out)
    return {"P": shift(-1, 0), "M": shift(-1, 1), "U": shift(0, 1)}


def _mine_in_column(view: ChunkView, a: int, b: int) -> np.ndarray:
    return _capped(_line(view.labels, a, 0, b, -1), view.uncovered.get((a,)))


def _theirs_in_column(m: ChunkView, a: int, b: int) -> np.ndarray:
    """M's cap on b at U's voxel on the line (M's last plane on a, first on b)."""
    return _capped(_line(m.labels, a, -1, b, 0), m.uncovered.get((b,)))


def corner_drops(view: ChunkView, pairs, views: dict[str, dict[tuple[int, int], ChunkView]]
                 ) -> dict[tuple[int, ...], np.ndarray]:
    """Per cap, the voxels of its first plane it leaves out: U's voxel on the line where this
    chunk's cap on a and M's cap on b both hold it and a is the higher axis."""
    drops: dict[tuple[int, ...], np.ndarray] = {}
    for a, b in pairs:
        if a < b or (a, b) not in views["M"]:
            continue
        both = _mine_in_column(view, a, b) & _theirs_in_column(views["M"][(a, b)], a, b)
        if both.any():
            mask = drops.setdefault((a,), np.zeros(np.take(view.labels, 0, axis=a).shape, dtype=bool))
            index = [slice(None)] * 2
            index[b if b < a else b - 1] = -1
            mask[tuple(index)] |= both
    return drops


def _rows(labels: np.ndarray, a: int, a_at: int, b: int) -> np.ndarray:
    """The last two rows on ``b`` of the plane at ``a_at`` on ``a``, each along the third axis."""
    return np.stack([_line(labels, a, a_at, b, -2), _line(labels, a, a_at, b, -1)])


def _column_square(rows: np.ndarray, j: int, order: tuple[int, ...]) -> tuple[int, ...]:
    """Square j of two rows, its corners in ``squares.PIECES``' order (``order`` maps the rows'
    (row, column) corners to the plane's (u, v))."""
    corners = [int(rows[r, j + s]) for s, r in ((0, 0), (0, 1), (1, 0), (1, 1))]
    return tuple(corners[i] for i in order)


def corner_patches(view: ChunkView, pairs, views, plane_above_p: dict[int, np.ndarray], resolution
                   ) -> dict[int, list[tuple[tuple[int, ...], np.ndarray, np.ndarray]]]:
    """Flat patches on this chunk's first plane on a, along its last row on b, for each pair:
    ``{label: [((a,), vertices, faces), ...]}`` in nm relative to the block, the shape of
    ``l2.cap_meshes``' output so they weld with the caps. ``plane_above_p[a]``: this chunk's
    first plane on a as its lower neighbour P sees it (``l2.upper_plane``)."""
    res = np.asarray(resolution, dtype=np.float64)
    out: dict[int, list] = {}
    for a, b in pairs:
        p, m, u = (views[k].get((a, b)) for k in ("P", "M", "U"))
        if p is None or m is None or u is None:
            continue
        c = 3 - a - b
        n = view.labels.shape[c]
        own = _rows(view.labels, a, 0, b)
        cap = np.where(_capped(own, view.uncovered.get((a,))), own, 0)
        if a > b:  # this cap leaves U's voxel to M's (``corner_drops``)
            cap[1] = np.where(_theirs_in_column(m, a, b), 0, cap[1])
        u_line = _line(u.labels, a, 0, b, 0)
        m_line = _line(m.labels, a, -1, b, 0)
        m_cap = np.where(_theirs_in_column(m, a, b), m_line, 0)
        if a < b:
            m_cap = np.where(_mine_in_column(view, a, b), 0, m_cap)
        zero = np.zeros(n, dtype=np.uint64)
        edge = tuple(sorted((a, b)))
        sides = [(own, -1), (cap, 1),
                 (np.stack([zero, m_cap]), 1),
                 (np.stack([zero, np.where(_capped(u_line, u.uncovered.get((b,))), u_line, 0)]), -1),
                 (np.stack([zero, np.where(_capped(u_line, u.uncovered.get(edge)), u_line, 0)]), 1),
                 (_rows(p.labels, a, -1, b), 1)]
        above_p = plane_above_p[a]
        index = [slice(None)] * 2
        index[b if b < a else b - 1] = slice(-2, None)
        above_p = above_p[tuple(index)]
        if b > c:
            above_p = above_p.T
        p_rows = _rows(p.labels, a, -1, b)
        # Squares along c: corners (row 0, j), (row 1, j), (row 0, j+1), (row 1, j+1) when b is the
        # plane's first axis (u), else (j, row 0), (j+1, row 0), (j, row 1), (j+1, row 1).
        order = (0, 1, 2, 3) if b < c else (0, 2, 1, 3)
        for j in range(n - 1):
            square = [(_column_square(arr, j, order), side) for arr, side in sides]
            mine_p, theirs_p = _column_square(p_rows, j, order), _column_square(above_p, j, order)
            flat = []
            for owner, bits, lid in square_patches(mine_p, theirs_p):
                flat.append((tuple(k for k in range(4) if mine_p[k] == owner), bits, lid))
            own_sq = square[0][0]
            for group, bits, lid in square_residual(square, flat):
                owners = [own_sq[k] for k in group if own_sq[k]]
                if not owners:
                    continue
                tris = patch_triangles(bits)
                uv = tris.reshape(-1, 2)
                vertices = np.zeros((len(uv), 3))
                first_b = view.labels.shape[b] - 2
                u_axis, v_axis = (b, c) if b < c else (c, b)
                vertices[:, a] = 0.0
                vertices[:, u_axis] = ((first_b if u_axis == b else j) + uv[:, 0]) * res[u_axis]
                vertices[:, v_axis] = ((first_b if v_axis == b else j) + uv[:, 1]) * res[v_axis]
                faces = np.arange(len(vertices), dtype=np.uint32).reshape(-1, 3)
                normal = np.cross(vertices[1] - vertices[0], vertices[2] - vertices[0])[a]
                if np.sign(normal) != lid:
                    faces = faces[:, ::-1].copy()
                out.setdefault(min(owners), []).append(((a,), vertices, faces))
    return out
