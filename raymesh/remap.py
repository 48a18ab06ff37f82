"""Supervoxel -> layer-2 id remapping of one chunk, with the overlap resolution of pcg-compat.md 6.3.

Each layer-2 mesh extends one voxel into its positive neighbours, but only where those voxels
belong to the same object. ``fetch_neighbourhood`` does the graph reads (a few batched round
trips); ``remap_chunk`` is pure (arrays in, array out) so it is tested without a graph.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import cc3d
import numpy as np

from raymesh.ids import ChunkLayout, GraphLayoutError


@dataclass
class Neighbourhood:
    """The layer-2 nodes of a chunk and its 7 positive neighbours, and their stop-layer ancestors."""

    stop_layer: int
    own: dict[int, np.ndarray]  # l2 id -> supervoxels, this chunk
    others: dict[int, np.ndarray]  # l2 id -> supervoxels, neighbour chunks
    ancestor: dict[int, int]  # l2 id -> ancestor at stop_layer (0 = broken chain)
    # axes -> (stop layer, layer-2 ids) of the lower neighbour one below on those axes (a face
    # neighbour for one axis, an edge neighbour for two, the corner one for three), where there is one
    lower: dict[tuple[int, ...], tuple[int, list[int]]] = field(default_factory=dict)
    # axis -> (stop layer, coords) of the upper neighbour on that axis (its overlap rule, for seam patches)
    upper: dict[int, tuple[int, list[int]]] = field(default_factory=dict)
    ancestor_at: dict[int, dict[int, int]] = field(default_factory=dict)  # stop -> id -> ancestor


def neighbour_chunks(layout: ChunkLayout, coords) -> list[int]:
    """The 2x2x2 neighbourhood (x outer, z inner, the chunk first), skipping unrepresentable ones."""
    cx, cy, cz = (int(c) for c in coords)
    out = []
    for x in (cx, cx + 1):
        for y in (cy, cy + 1):
            for z in (cz, cz + 1):
                try:
                    out.append(int(layout.chunk_id(2, x, y, z)))
                except GraphLayoutError:
                    continue
    return out


def latest_l2_nodes(rows: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Newest nodes first; a node is dropped if its first supervoxel was already claimed (it was
    superseded by an edit). Segment ids grow with creation time, so descending id = newest first."""
    claimed: set[int] = set()
    kept: dict[int, np.ndarray] = {}
    for node in sorted(rows, reverse=True):
        kids = rows[node]
        if not len(kids) or int(kids[0]) in claimed:
            continue
        kept[node] = kids
        claimed.update(int(k) for k in kids)
    return kept


def lower_neighbours(layout: ChunkLayout, coords) -> list[tuple[tuple[int, ...], list[int]]]:
    """``(axes, coords)`` of the up to 7 chunks one below on ``axes`` (faces first, then edges,
    then the corner), inside the dataset: the chunks whose marching-cubes cells reach this chunk's
    first planes."""
    out = []
    for axes in sorted((a for a in itertools.product((0, 1), repeat=3) if any(a)), key=lambda a: (sum(a), a[::-1])):
        below = tuple(i for i in range(3) if axes[i])
        if all(int(coords[i]) > 0 for i in below):
            out.append((below, [int(v) - axes[i] for i, v in enumerate(coords)]))
    return out


def fetch_neighbourhood(store, coords, time_stamp=None) -> Neighbourhood:
    """Graph reads for one chunk: one batched range read (the chunk, its 7 positive neighbours and
    its up to 7 lower ones) and one batched ancestor walk, for all the stop layers involved: the
    chunk's, its lower neighbours' (``uncovered_by_lower``) and its upper face neighbours'
    (``upper_links``).

    Ancestors are taken at ``time_stamp`` (PCG takes them at "now", pcg-compat.md 10.1; for
    initial meshing right after ingest both agree, and T is the faithful choice).
    """
    layout = store.layout
    stop = layout.stop_layer(coords)
    chunks = neighbour_chunks(layout, coords)
    below = lower_neighbours(layout, coords)
    rows = store.range_read_chunks(chunks + [int(layout.chunk_id(2, *c)) for _, c in below], time_stamp=time_stamp)
    own: dict[int, np.ndarray] = {}
    others: dict[int, np.ndarray] = {}
    for i, r in enumerate(rows[:len(chunks)]):
        (own if i == 0 else others).update(latest_l2_nodes(r))
    lower = {axes: (layout.stop_layer(c), sorted(latest_l2_nodes(r)))
             for (axes, c), r in zip(below, rows[len(chunks):])}
    upper = {axis: (layout.stop_layer(up), up) for axis, up in upper_neighbours(layout, coords)}
    if not own:
        lower, upper = {}, {}
    ids = np.array(sorted(own) + sorted(others), dtype=np.uint64)
    lower_ids = sorted({n for _, nodes in lower.values() for n in nodes} - set(own))
    walk = np.concatenate([ids, np.array(lower_ids, dtype=np.uint64)])
    stops = sorted({stop} | {s for s, _ in lower.values()} | {s for s, _ in upper.values()})
    anc = store.get_ancestors(walk, stops, time_stamp=time_stamp)
    ancestor_at = {s: dict(zip(walk.tolist(), anc[s].tolist())) for s in stops}
    return Neighbourhood(stop, own, others, dict(zip(ids.tolist(), anc[stop][:len(ids)].tolist())),
                         lower, upper, ancestor_at)


def upper_neighbours(layout: ChunkLayout, coords) -> list[tuple[int, list[int]]]:
    """``(axis, coords)`` of the chunks one above on each axis, inside the dataset."""
    bounds = layout.layer_chunk_bounds(2)
    out = []
    for axis in range(3):
        up = [int(c) + (a == axis) for a, c in enumerate(coords)]
        if up[axis] < int(bounds[axis]):
            out.append((axis, up))
    return out


def supervoxel_map(hood: Neighbourhood) -> tuple[dict[int, int], dict[int, list[int]]]:
    """``{sv: label}`` and the unsafe placeholders ``{ancestor: candidate l2 ids}`` (6.3 steps 3-4)."""
    anc = hood.ancestor
    counts = Counter(anc[n] for n in hood.own)
    members: dict[int, list[int]] = {}
    for n in list(hood.own) + list(hood.others):
        members.setdefault(anc[n], []).append(n)
    svs = {**hood.others, **hood.own}
    mapping: dict[int, int] = {}
    unsafe_own = {n for n in hood.own if counts[anc[n]] > 1}
    for s in hood.own:
        if s in unsafe_own:
            continue
        for n in members[anc[s]]:
            mapping.update(dict.fromkeys(svs[n].tolist(), s))
    for u in unsafe_own:
        mapping.update(dict.fromkeys(svs[u].tolist(), u))
    unsafe: dict[int, list[int]] = {}
    for a in sorted({anc[u] for u in unsafe_own}):
        if a == 0:
            # Broken chains share "ancestor 0"; a placeholder 0 would be background. PCG's output
            # for this case is ill-defined (it labels background); orphans get no overlap here.
            continue
        if all(n in unsafe_own for n in members[a]):
            continue
        unsafe[a] = members[a]
        for n in members[a]:
            if n not in hood.own:
                mapping.update(dict.fromkeys(svs[n].tolist(), a))
    return mapping, unsafe


def relabel(seg: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Every voxel to its label; supervoxels not in the map to 0."""
    if not mapping:
        return np.zeros(seg.shape, dtype=np.uint64)
    keys = np.fromiter(mapping.keys(), dtype=np.uint64, count=len(mapping))
    vals = np.fromiter(mapping.values(), dtype=np.uint64, count=len(mapping))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.minimum(np.searchsorted(keys, seg), len(keys) - 1)
    return np.where(keys[pos] == seg, vals[pos], np.uint64(0))


def resolve_placeholders(seg: np.ndarray, unsafe: dict[int, list[int]],
                         fallback: dict[int, int] | None = None) -> np.ndarray:
    """Give each overlap component of a placeholder to the smallest candidate behind it (6.3 step 6).

    Deliberate deviation from PCG: a component with no candidate directly behind it (it reaches
    this chunk's overlap only along an edge or corner of the block, and joins the object in a
    diagonal neighbour chunk) goes to ``fallback[a]`` (the smallest own node of that object)
    instead of being zeroed. Zeroing it leaves a hole where three or four chunks meet: the chunk
    that owns the marching-cubes cells there no longer sees the object while its neighbours do,
    so their cuts on the shared plane disagree.
    """
    fallback = fallback or {}
    for a, candidates in unsafe.items():
        mask = seg == np.uint64(a)
        if not mask.any():
            continue
        comps = cc3d.connected_components(mask, connectivity=6)
        allowed = np.asarray(sorted(candidates), dtype=np.uint64)
        for c in range(1, int(comps.max()) + 1):
            comp = comps == c
            behind = [np.empty(0, np.uint64)]
            for axis in range(3):
                if seg.shape[axis] > 1:  # labels just inside the last plane, where C touches it
                    last = np.take(comp, -1, axis=axis)
                    behind.append(np.take(seg, -2, axis=axis)[last])
            behind = np.concatenate(behind)
            hits = np.intersect1d(np.unique(behind), allowed)
            seg[comp] = hits[0] if len(hits) else fallback.get(a, 0)
    return seg


def remove_dust(seg: np.ndarray, threshold: int) -> np.ndarray:
    """Drop labels smaller than ``threshold`` voxels that do not reach the positive faces (6.5)."""
    labels, counts = np.unique(seg, return_counts=True)
    border = np.unique(np.concatenate([seg[-2:, :, :].ravel(), seg[:, -2:, :].ravel(), seg[:, :, -2:].ravel()]))
    dust = labels[(counts < threshold) & ~np.isin(labels, border) & (labels != 0)]
    if len(dust):
        seg[np.isin(seg, dust)] = 0
    return seg


def remap_chunk(seg: np.ndarray, hood: Neighbourhood, dust_threshold: int | None = None) -> np.ndarray:
    """Supervoxel block (chunk + overlap) -> layer-2 labels, overlap resolved."""
    mapping, unsafe = supervoxel_map(hood)
    fallback = {a: min(n for n in members if n in hood.own) for a, members in unsafe.items()}
    out = resolve_placeholders(relabel(np.asarray(seg, dtype=np.uint64), mapping), unsafe, fallback)
    if dust_threshold:
        out = remove_dust(out, int(dust_threshold))
    return out


def uncovered_by_lower(hood: Neighbourhood) -> dict[tuple[int, ...], set[int]]:
    """Per set of axes, the chunk's own layer-2 nodes that no lower neighbour around those first
    planes meshes there.

    A lower neighbour's overlap holds this chunk's first plane (face), line (edge) or voxel
    (corner). It meshes a node there only when the node's stop-layer ancestor (at the neighbour's
    stop layer) is that of one of its own nodes (6.3 step 4; with ``resolve_placeholders``'
    fallback no such component is zeroed). For the others nobody meshes the half-voxel slab
    below the first plane, and the object is open there: the case ``l2.cap_meshes`` closes. An
    edge or corner counts as open only when every neighbour whose cells meet there (the faces and
    edges it lies on, and itself) leaves the node open, so a cap there meets only other caps.
    """
    missed: dict[tuple[int, ...], set[int]] = {}
    for axes, (stop, theirs) in hood.lower.items():
        anc = hood.ancestor_at[stop]
        covered = {anc[n] for n in theirs} - {0}
        missed[axes] = {n for n in hood.own if anc[n] not in covered}
    # A neighbour below on some axes implies the ones below on fewer of them: all are in ``missed``.
    return {axes: set.intersection(*(nodes for sub, nodes in missed.items() if set(sub) <= set(axes)))
            for axes in missed}


UNKNOWN = np.uint64(2**64 - 1)  # a voxel whose label seen from the neighbour this chunk cannot tell


def neighbour_planes(seg: np.ndarray, hood: Neighbourhood, chunk_shape,
                     links: dict[int, dict[int, list[int]]] | None = None) -> dict[int, np.ndarray]:
    """Per axis with an overlap, the block's last plane (the upper neighbour's first one) as that
    neighbour meshes it, label by label: its own voxels as its layer-2 ids; the plane's last row
    and column (the neighbour's own overlap, in chunks beside it) as the node of its own it gives
    them (``links[axis]``, ``upper_links``), or, unlinked or not looked up, as their own layer-2
    ids (a cap of their chunk meshes them there, ``l2.cap_meshes``).

    Where several of its nodes share the ancestor (6.3's placeholder), the neighbour gives an
    overlap component the smallest candidate behind it; seen from this plane, that is the
    smallest candidate just inside next to the piece of the component on the plane (the
    component may reach farther into the neighbour than the plane shows, so this is the
    plane's best view); with none there, ``UNKNOWN``.
    """
    mapping = {int(sv): node for node, svs in hood.others.items() for sv in svs.tolist()}
    out = {}
    for axis in range(3):
        if seg.shape[axis] <= int(chunk_shape[axis]):
            continue
        plane = relabel(np.asarray(np.take(seg, -1, axis=axis), dtype=np.uint64), mapping)
        given = (links or {}).get(axis)
        if given:
            _resolve_beside(plane, given, [int(chunk_shape[a]) for a in range(3) if a != axis])
        out[axis] = plane
    return out


def _resolve_beside(plane: np.ndarray, given: dict[int, list[int]], inner: list[int]) -> None:
    """Relabel, in place, the plane's voxels beside the neighbour with the nodes it gives them:
    per connected piece of one node, the smallest candidate found just inside next to it, else
    the only one; ``UNKNOWN`` where several are left (what the neighbour chose lies outside
    this plane)."""
    raw = plane.copy()
    pieces = cc3d.connected_components(np.where(overlap_mask(raw.shape, inner), raw, 0), connectivity=4)
    for piece in range(1, int(pieces.max()) + 1):
        i, j = np.nonzero(pieces == piece)
        candidates = given.get(int(raw[i[0], j[0]]))
        if not candidates:
            continue
        row, col = i >= inner[0], j >= inner[1]
        behind = set(raw[inner[0] - 1, j[row]].tolist()) | set(raw[i[col], inner[1] - 1].tolist())
        hits = [c for c in candidates if c in behind]
        plane[i, j] = hits[0] if hits else (candidates[0] if len(candidates) == 1 else UNKNOWN)


def overlap_mask(shape, chunk_shape) -> np.ndarray:
    """True on a plane's rows and columns past the chunk: its overlap, in the chunks beside it."""
    rows = np.arange(shape[0])[:, None] >= int(chunk_shape[0])
    cols = np.arange(shape[1])[None, :] >= int(chunk_shape[1])
    return rows | cols


def upper_links(hood: Neighbourhood, layout: ChunkLayout) -> dict[int, dict[int, list[int]]]:
    """``{axis: {node beside: [candidates]}}``: the own nodes of the upper neighbour on ``axis``
    that 6.3's rule, at its own stop layer, may give each node of the chunks beside it (its
    overlap on the shared plane): those with the node's ancestor. One candidate is the node; with
    several it resolves them by what lies behind (``neighbour_planes``). Unlinked nodes are left
    out: their own chunk meshes them there."""
    nodes = sorted(hood.others)
    where = dict(zip(nodes, layout.get_chunk_coordinates(np.array(nodes, dtype=np.uint64)).tolist())) if nodes else {}
    out: dict[int, dict[int, list[int]]] = {}
    for axis, (stop, up) in hood.upper.items():
        at = hood.ancestor_at[stop]
        members: dict[int, list[int]] = {}
        for n in (n for n in nodes if where[n] == up):
            if at[n]:
                members.setdefault(at[n], []).append(n)
        out[axis] = {n: members[at[n]] for n, c in where.items()
                     if c[axis] == up[axis] and c != up and at[n] in members}
    return out
