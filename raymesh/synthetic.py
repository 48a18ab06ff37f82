"""A small synthetic connectomics-like dataset, so demos and tests run without ../shared.

Branching tubes ("neurites") that wander through many chunks, some wholly inside the volume
(closed surfaces, for watertightness checks) and some leaving it. Each tube is cut into pieces
with their own labels and an agglomeration that joins them again, so the builder's agglomeration
path and in-chunk edges are exercised too. Fully determined by the seed.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 17  # objects that stay inside keep 6 + 2 voxels from the low and 6 + 3 from the high border


def _paint_segment(labels: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float, value: int,
                   anisotropy: np.ndarray) -> None:
    lo = np.maximum(np.floor(np.minimum(p0, p1) - radius / anisotropy - 1).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(p0, p1) + radius / anisotropy + 2).astype(int), labels.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    d = p1 - p0
    t = np.clip(((grid - p0) * anisotropy**2) @ d / max(float((d * anisotropy) @ (d * anisotropy)), 1e-9), 0, 1)
    closest = p0 + t[..., None] * d
    dist = np.linalg.norm((grid - closest) * anisotropy, axis=-1)
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    sub[dist <= radius] = value


def branching_tubes(
    shape: tuple[int, int, int] = (96, 96, 48),
    n_objects: int = 6,
    seed: int = 0,
    anisotropy: tuple[float, float, float] = (1.0, 1.0, 2.0),
    pieces_per_object: int = 3,
) -> tuple[np.ndarray, dict[int, int]]:
    """Labels ``[x, y, z]`` (uint32) and an agglomeration ``{piece label: object label}``."""
    if len(shape) != 3 or min(int(s) for s in shape) < MIN_SIDE:
        raise ValueError(f"synthetic shape {list(shape)} is too small: it needs three sides of at least "
                         f"{MIN_SIDE} voxels (tubes keep a margin from the border)")
    if int(n_objects) < 1 or int(pieces_per_object) < 1:
        raise ValueError(f"the synthetic volume needs at least 1 object of at least 1 piece, got "
                         f"{n_objects} objects of {pieces_per_object} pieces")
    if int(seed) < 0:
        raise ValueError(f"seed {seed} is negative; use 0 or more")
    rng = np.random.default_rng(seed)
    shape_a = np.asarray(shape)
    aniso = np.asarray(anisotropy, dtype=float)
    labels = np.zeros(shape, dtype=np.uint32)
    agglomeration: dict[int, int] = {}
    next_label = 1
    for obj in range(n_objects):
        obj_label = 1000 * (obj + 1)
        inside = obj % 2 == 0  # every other object stays clear of the border (closed surface)
        margin = 6 if inside else 0
        lo, hi = margin + 2, shape_a - margin - 3
        point = rng.uniform(lo, hi)
        direction = rng.normal(size=3)
        segments = []
        stack = [(point, direction, 0)]
        while stack and len(segments) < 14:
            p, d, depth = stack.pop()
            d = d / np.linalg.norm(d)
            length = rng.uniform(0.25, 0.45) * shape_a.min()
            q = np.clip(p + d * length / aniso, lo, hi)
            radius = rng.uniform(1.6, 3.2) * (0.85 ** depth)
            segments.append((p, q, radius))
            if depth < 3:
                stack.append((q, d + rng.normal(scale=0.8, size=3), depth + 1))
                if rng.random() < 0.6:
                    stack.append((q, rng.normal(size=3), depth + 1))
        per_piece = max(1, len(segments) // pieces_per_object)
        for i, (p, q, r) in enumerate(segments):
            piece = min(i // per_piece, pieces_per_object - 1)
            value = next_label + piece
            _paint_segment(labels, p, q, r, value, aniso)
        for piece in range(pieces_per_object):
            agglomeration[next_label + piece] = obj_label
        next_label += pieces_per_object
    present = set(np.unique(labels).tolist())
    return labels, {k: v for k, v in agglomeration.items() if k in present}
