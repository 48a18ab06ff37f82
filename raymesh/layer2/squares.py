"""Marching squares on one unit square of a chunk plane: which pieces of the square a label's
cross-section covers, and the flat patches that make several meshes' cuts of the square agree.

Shared by the seam patches (``l2.seam_patches``) and the corner columns (``corners``).
"""

from __future__ import annotations

import numpy as np

# A unit square of a plane: corners k = 0..3 at (u, v) = (0, 0), (1, 0), (0, 1), (1, 1), u along the
# plane's first axis. Marching squares cuts it into these pieces (the four corner triangles, then
# the four quarters of the central diamond, each toward one corner), all counter-clockwise in
# (u, v); a label's cross-section on the square is a union of them (``REGION``).
PIECES = np.array([
    [(0, 0), (.5, 0), (0, .5)], [(1, 0), (1, .5), (.5, 0)], [(0, 1), (0, .5), (.5, 1)], [(1, 1), (.5, 1), (1, .5)],
    [(.5, .5), (0, .5), (.5, 0)], [(.5, .5), (.5, 0), (1, .5)], [(.5, .5), (.5, 1), (0, .5)],
    [(.5, .5), (1, .5), (.5, 1)]])


def _region_bits(inside: int) -> int:
    """Pieces inside a label holding the corners of bitmask ``inside``. Its own corners' triangles;
    the diamond's quarters toward them for two adjacent corners, all four for three or more, and
    for two diagonal ones, which marching cubes joins (zmesh does, for a label holding exactly a
    face's two diagonal corners)."""
    n = bin(inside).count("1")
    quarters = 0b1111 if n >= 3 or inside in (0b1001, 0b0110) else (inside if n == 2 else 0)
    return inside | quarters << 4


REGION = [_region_bits(i) for i in range(16)]
# The diamond's quarters as a patch adds them: without the centre vertex wherever they make a
# half or the whole diamond (the other side's contour crosses there in one straight edge, which a
# vertex at the centre would split), counter-clockwise like ``PIECES``.
_MIDS = {"b": (.5, 0), "r": (1, .5), "t": (.5, 1), "l": (0, .5)}
_QUARTER_TRIANGLES = {0b1111: ("brt", "btl"), 0b0011: ("lbr",), 0b1100: ("rtl",), 0b0101: ("tlb",), 0b1010: ("brt",)}


def patch_triangles(bits: int) -> np.ndarray:
    """(n, 3, 2) triangles in (u, v) covering the pieces ``bits``."""
    tris = [PIECES[p] for p in range(4) if bits >> p & 1]
    quarters = bits >> 4
    if quarters in _QUARTER_TRIANGLES:
        tris += [np.array([_MIDS[m] for m in tri]) for tri in _QUARTER_TRIANGLES[quarters]]
    else:
        tris += [PIECES[4 + q] for q in range(4) if quarters >> q & 1]
    return np.array(tris, dtype=np.float64)


def square_patches(mine: tuple[int, ...], theirs: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(owner, pieces, lid)`` to add on one square so both sides' cross-sections agree.

    Corners are grouped into objects (linked by a shared label on either side); per object the
    pieces inside on one side only are open, with the lid facing away from the side holding them
    (+1: this chunk's, below). Objects one side does not see at all on some corner are left to the
    caps; objects whose labels overlap on a side (two crossing diagonals) are ambiguous, left too.
    """
    groups: list[set[int]] = []
    for k in range(4):
        if mine[k] == 0 and theirs[k] == 0:
            continue
        hit = [g for g in groups if any((mine[k] and mine[k] == mine[o]) or (theirs[k] and theirs[k] == theirs[o])
                                        for o in g)]
        merged = {k}.union(*hit)
        groups = [g for g in groups if g not in hit] + [merged]
    out = []
    for group in groups:
        if any((mine[k] == 0) != (theirs[k] == 0) for k in group):
            continue
        sides = []
        for labels in (mine, theirs):
            bits = 0
            for label in sorted({labels[k] for k in group}):
                region = REGION[sum(1 << k for k in range(4) if labels[k] == label)]
                if bits & region:
                    break
                bits |= region
            else:
                sides.append(bits)
        if len(sides) < 2 or sides[0] == sides[1]:
            continue
        owner = min(mine[k] for k in group)
        below, above = sides[0] & ~sides[1], sides[1] & ~sides[0]
        out += [(owner, bits, lid) for bits, lid in ((below, 1), (above, -1)) if bits]
    return out


def square_residual(square: list[tuple[tuple[int, ...], int]], flat: list[tuple[tuple[int, ...], int, int]]
              ) -> list[tuple[tuple[int, ...], int, int]]:
    """``(group corners, pieces, lid)`` left open on one square by meshes meeting it from both
    sides (``square``: corner labels and side, +1 below the face, -1 above) and flat pieces on
    it (``flat``: corners of their owner, pieces, lid). Corners are grouped into objects by a
    shared label in any mesh; per object the pieces covered an odd number of times are open,
    their lid facing away from the side that covers them."""
    groups: list[set[int]] = []
    for k in range(4):
        hit = [g for g in groups if any(any(lab[k] and lab[k] == lab[o] for lab, _ in square) for o in g)]
        if not any(lab[k] for lab, _ in square):
            continue
        groups = [g for g in groups if g not in hit] + [{k}.union(*hit)]
    out = []
    for group in groups:
        odd = below = 0
        for labels, side in square:
            bits = 0
            for label in sorted({labels[k] for k in group} - {0}):
                region = REGION[sum(1 << k for k in range(4) if labels[k] == label)]
                if bits & region:
                    break
                bits |= region
            else:
                odd ^= bits
                if side > 0:
                    below ^= bits
                continue
            odd = None  # one mesh's labels overlap on the square: ambiguous, left alone
            break
        if odd is None:
            continue
        for corners, bits, lid in flat:
            if set(corners) <= group:
                odd ^= bits
                if lid > 0:
                    below ^= bits
        for lid, bits in ((1, odd & below), (-1, odd & ~below)):
            if bits:
                out.append((tuple(sorted(group)), bits, lid))
    return out
