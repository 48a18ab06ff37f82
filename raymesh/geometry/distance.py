"""How far apart two triangle meshes are: exact point-to-triangle distances from points sampled
on one surface to the other, the measure the simplifier and LOD benchmarks and tests report
("sampled, both directions")."""

from __future__ import annotations

import numpy as np


def closest_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance from each point to its triangle (rows of a, b, c), vectorised (Ericson 5.1.5).
    Each point's Voronoi region is found first and its closest point computed for its rows only
    (the first region that holds, in Ericson's order). A degenerate triangle (two corners the
    same) can come out as infinitely far, never as nearer than it is."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    regions = [(d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (d6 >= 0) & (d5 <= d6),
               (vc <= 0) & (d1 >= 0) & (d3 <= 0), (vb <= 0) & (d2 >= 0) & (d6 <= 0),
               (va <= 0) & (d4 >= d3) & (d5 >= d6)]
    region = np.select(regions, np.arange(len(regions)), default=len(regions))
    out = np.empty_like(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        for r in range(len(regions) + 1):
            i = np.flatnonzero(region == r)
            if not len(i):
                continue
            if r == 0:
                out[i] = a[i]
            elif r == 1:
                out[i] = b[i]
            elif r == 2:
                out[i] = c[i]
            elif r == 3:
                out[i] = a[i] + (d1[i] / (d1[i] - d3[i]))[:, None] * ab[i]
            elif r == 4:
                out[i] = a[i] + (d2[i] / (d2[i] - d6[i]))[:, None] * ac[i]
            elif r == 5:
                out[i] = b[i] + ((d4[i] - d3[i]) / ((d4[i] - d3[i]) + (d5[i] - d6[i])))[:, None] * (c[i] - b[i])
            else:
                den = 1.0 / (va[i] + vb[i] + vc[i])
                out[i] = a[i] + ab[i] * (vb[i] * den)[:, None] + ac[i] * (vc[i] * den)[:, None]
    d = np.linalg.norm(p - out, axis=1)
    return np.where(np.isfinite(d), d, np.inf)


# Point-triangle pairs per closest_distance call: about 400 bytes of temporaries each, so ~0.8 MB
# at a time. Numpy's per-call overhead is already small at 512 (0.55-0.7 us a pair measured from
# 512 to 16384 pairs a call); at 16384 these temporaries set the peak of every LOD task of the
# real volume (6-17 MiB, more than the meshes being checked).
PAIRS = 1 << 11


def mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 16,
                  refine_above: float = 5.0) -> np.ndarray:
    """Exact distance from each point to the mesh: the k triangles with the nearest centroids
    first, then, for points farther than ``refine_above``, every triangle that could be closer
    (centroid within the distance found plus the largest centroid-to-corner radius).

    Triangles' corners are gathered a batch at a time (``PAIRS``), never for the whole mesh at
    once: 72 bytes a face, plus the radius's temporaries, made this the biggest allocation of a
    root-layer LOD task (a 386k-face node)."""
    from scipy.spatial import cKDTree

    if not len(faces):
        return np.full(len(points), np.inf)
    faces = np.asarray(faces, dtype=np.int64)
    cent = np.empty((len(faces), 3))
    radius = 0.0
    for lo in range(0, len(faces), PAIRS):
        tri = vertices[faces[lo:lo + PAIRS]]
        cent[lo:lo + PAIRS] = tri.mean(axis=1)
        radius = max(radius, float(np.linalg.norm(tri - cent[lo:lo + PAIRS, None, :], axis=2).max()))
    tree = cKDTree(cent, balanced_tree=False)
    k = min(k, len(faces))
    _, idx = tree.query(points, k=k)
    idx = idx.reshape(len(points), k)
    best = np.empty(len(points))
    step = max(1, PAIRS // k)
    for lo in range(0, len(points), step):  # the k candidates of many points per call, in bounded batches
        hi = min(lo + step, len(points))
        t = vertices[faces[idx[lo:hi].ravel()]]
        pts = np.repeat(points[lo:hi], k, axis=0)
        best[lo:hi] = closest_distance(pts, t[:, 0], t[:, 1], t[:, 2]).reshape(hi - lo, k).min(axis=1)
    far = np.flatnonzero(best > refine_above)
    if len(far):
        best[far] = _refined(points[far], best[far], vertices, faces, tree, radius)
    return best


def _refined(points: np.ndarray, best: np.ndarray, vertices: np.ndarray, faces: np.ndarray, tree, radius: float,
             max_pairs: int = PAIRS) -> np.ndarray:
    """``best`` lowered to the distance to every triangle whose centroid lies within it plus
    ``radius`` (no other triangle can be nearer), at most ``max_pairs`` point-triangle pairs at a
    time, however many triangles a point has within reach: one large triangle makes ``radius``,
    and so every point's reach, large. Each point's count is asked first (no lists); points are
    then taken in groups, fewest candidates first, whose count times their largest count fits in
    ``max_pairs``, and a group's candidates are fetched as its nearest centroids by rank (numpy
    arrays; a point with more candidates than ``max_pairs`` has them fetched a slice of ranks at
    a time). The nearest ``count`` centroids within the group's largest reach are exactly a point's
    own candidates, or as near."""
    out = best.copy()
    reach = best + radius
    counts = np.asarray(tree.query_ball_point(points, reach, return_length=True), dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    i = 0
    while i < len(order):
        j, widest = i + 1, int(counts[order[i]])
        while j < len(order) and (j - i + 1) * int(counts[order[j]]) <= max_pairs:
            widest = int(counts[order[j]])
            j += 1
        rows = order[i:j]
        i = j
        per_call = max(1, max_pairs // len(rows))
        for first in range(0, widest, per_call):
            ranks = list(range(first + 1, min(widest, first + per_call) + 1))
            _, near = tree.query(points[rows], k=ranks, distance_upper_bound=float(reach[rows].max()))
            valid = near < tree.n
            owner = np.broadcast_to(rows[:, None], near.shape)[valid]
            t = vertices[faces[near[valid]]]
            d = closest_distance(points[owner], t[:, 0], t[:, 1], t[:, 2])
            np.minimum.at(out, owner, d)
    return out


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    t = vertices[faces.astype(np.int64)]
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def surface_points(vertices: np.ndarray, faces: np.ndarray, n: int, rng) -> np.ndarray:
    """The mesh's vertices and ``n`` points sampled uniformly by area."""
    area = triangle_areas(vertices, faces)
    if n <= 0 or not len(faces) or area.sum() <= 0:
        return vertices
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    t = vertices[faces[pick].astype(np.int64)]
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    pts = (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]
    return np.concatenate([vertices, pts])


def surface_deviation(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], samples: int = 20000,
                      seed: int = 0, refine_above: float = 5.0) -> dict:
    """Distances both ways between meshes ``a`` and ``b`` (``(vertices, faces)``, nm): p99 and max
    of ``a -> b`` (how far ``a`` strays) and ``b -> a`` (what ``a`` leaves out), and the area ratio.
    A distance is exact above ``refine_above`` and an upper bound below it (``mesh_distance``):
    raise it to half the budget being checked when many points lie a few nm apart."""
    rng = np.random.default_rng(seed)
    (va, fa), (vb, fb) = a, b
    ab = mesh_distance(surface_points(va, fa, samples, rng), vb, fb, refine_above=refine_above)
    ba = mesh_distance(surface_points(vb, fb, samples, rng), va, fa, refine_above=refine_above)
    area_a, area_b = float(triangle_areas(va, fa).sum()), float(triangle_areas(vb, fb).sum())
    return {"a_to_b_p99": float(np.percentile(ab, 99)) if len(ab) else 0.0, "a_to_b_max": float(ab.max(initial=0)),
            "b_to_a_p99": float(np.percentile(ba, 99)) if len(ba) else 0.0, "b_to_a_max": float(ba.max(initial=0)),
            "area_ratio": area_a / area_b if area_b else float("nan")}
