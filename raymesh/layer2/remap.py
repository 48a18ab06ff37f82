"""Supervoxel -> layer-2 id remapping of one chunk, with the overlap resolution of pcg-compat.md 6.3.

Each layer-2 mesh extends one voxel into its positive neighbours, but only where those voxels
belong to the same object. ``fetch_neighbourhoods`` does the graph reads (a few batched round
trips); ``remap_chunk`` is pure (arrays in, array out) so it is tested without a graph.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import cc3d
import numpy as np

from raymesh.graph.ids import ChunkLayout, GraphLayoutError


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
        claimed.update(kids.tolist())
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


class GraphReads:
    """What a job's graph reads at one time stamp gave, kept for its next chunks: each chunk's
    latest layer-2 rows and each node's ancestors at the stop layers asked for. A chunk's
    neighbourhood spans its 7 upper and 7 lower neighbours, so without this every chunk's rows
    are read about four times over a job (each chunk is read as its own, as an upper neighbour's
    and as lower neighbours'). Bounded by the supervoxel ids it holds; older chunks go first.

    Only for a fixed time stamp (the rows and ancestors at T do not change) and within one job
    (``remap.remap_cache``)."""

    def __init__(self, max_ids: int = 8 * 2**20, max_ancestors: int = 4 * 2**20):
        self.rows: OrderedDict[int, dict[int, np.ndarray]] = OrderedDict()
        self.ancestors: dict[int, dict[int, int]] = {}  # stop layer -> node -> ancestor
        self.max_ids, self.max_ancestors = max_ids, max_ancestors
        self._ids = 0

    def known_rows(self, chunk_id: int) -> dict[int, np.ndarray] | None:
        rows = self.rows.get(chunk_id)
        if rows is not None:
            self.rows.move_to_end(chunk_id)
        return rows

    def keep_rows(self, chunk_id: int, rows: dict[int, np.ndarray]) -> None:
        self.rows[chunk_id] = rows
        self._ids += sum(len(v) for v in rows.values())
        while self._ids > self.max_ids and len(self.rows) > 1:
            _, old = self.rows.popitem(last=False)
            self._ids -= sum(len(v) for v in old.values())

    def keep_ancestors(self, stop: int, found: dict[int, int]) -> None:
        if sum(len(a) for a in self.ancestors.values()) + len(found) > self.max_ancestors:
            self.ancestors.clear()
        self.ancestors.setdefault(stop, {}).update(found)


def fetch_neighbourhoods(store, coords_list, time_stamp=None, reads: GraphReads | None = None
                         ) -> list[Neighbourhood]:
    """Graph reads for several chunks at once: one batched range read (each chunk, its 7 positive
    neighbours and its up to 7 lower ones, with their parents where the store reads them from the
    same rows) and one batched ancestor walk, for all the stop layers
    involved (each chunk's and its lower neighbours', ``uncovered_by_lower``). A chunk and its
    upper neighbours (``l2.neighbour_planes`` remaps those too) share most of these rows, so
    batching them costs no extra round trip.

    Ancestors are taken at ``time_stamp`` (PCG takes them at "now", pcg-compat.md 10.1; for
    initial meshing right after ingest both agree, and T is the faithful choice).

    ``reads``: rows and ancestors already read in this job at this time stamp; only the rest is
    read, and what is read is added to it.
    """
    reading = getattr(store, "reading", None)
    with reading() if reading is not None else contextlib.nullcontext():  # one read-gate slot for all
        return _fetch_neighbourhoods(store, coords_list, time_stamp, reads if reads is not None else GraphReads())


def _fetch_neighbourhoods(store, coords_list, time_stamp, reads: GraphReads) -> list[Neighbourhood]:
    layout = store.layout
    plans = [(layout.stop_layer(c), neighbour_chunks(layout, c), lower_neighbours(layout, c)) for c in coords_list]
    chunks = sorted({ch for _, near, below in plans
                     for ch in near + [int(layout.chunk_id(2, *c)) for _, c in below]})
    rows = {ch: r for ch in chunks if (r := reads.known_rows(ch)) is not None}
    unread = [ch for ch in chunks if ch not in rows]
    parents: dict[int, int] = {}
    if unread:
        # The nodes' parents come with them where the store reads both from the same rows
        # (Bigtable); the ancestor walk then starts one layer up.
        read = getattr(store, "range_read_chunks_with_parents", None)
        chunk_rows, parents = read(unread, time_stamp=time_stamp) if read else (
            store.range_read_chunks(unread, time_stamp=time_stamp), {})
        for ch, r in zip(unread, chunk_rows):
            rows[ch] = latest_l2_nodes(r)
            reads.keep_rows(ch, rows[ch])
    partial = []
    for stop, near, below in plans:
        own = dict(rows[near[0]])
        others = {n: svs for ch in near[1:] for n, svs in rows[ch].items()}
        lower = {axes: (layout.stop_layer(c), sorted(rows[int(layout.chunk_id(2, *c))]))
                 for axes, c in below} if own else {}
        partial.append((stop, own, others, lower))
    nodes = {n for _, own, others, lower in partial
             for n in [*own, *others, *(m for _, nodes in lower.values() for m in nodes)]}
    stops = sorted({stop for stop, *_ in partial} | {s for *_, lower in partial for s, _ in lower.values()})
    order = sorted(nodes)
    known = [reads.ancestors.get(s, {}) for s in stops]
    walk = [n for n in order if not all(n in k for k in known)]
    found: dict[int, dict[int, int]] = {s: {} for s in stops}
    if walk:
        ids = np.array(walk, dtype=np.uint64)
        anc = (store.get_ancestors(ids, stops, time_stamp=time_stamp, parents=parents) if parents
               else store.get_ancestors(ids, stops, time_stamp=time_stamp))
        found = {s: dict(zip(walk, anc[s].tolist())) for s in stops}
    # in sorted node order, as when every node was walked
    ancestor_at = {s: {n: k[n] if n in k else found[s][n] for n in order} for s, k in zip(stops, known)}
    for s in stops:
        reads.keep_ancestors(s, found[s])
    out = []
    for stop, own, others, lower in partial:
        at = ancestor_at[stop]
        mine = {n: at[n] for n in [*own, *others]}
        used = {stop} | {s for s, _ in lower.values()}
        out.append(Neighbourhood(stop, own, others, mine, lower, {s: ancestor_at[s] for s in used}))
    return out


def fetch_neighbourhood(store, coords, time_stamp=None) -> Neighbourhood:
    """``fetch_neighbourhoods`` for one chunk."""
    return fetch_neighbourhoods(store, [coords], time_stamp=time_stamp)[0]


def upper_neighbours(layout: ChunkLayout, coords) -> list[tuple[int, list[int]]]:
    """``(axis, coords)`` of the chunks one above on each axis, inside the dataset."""
    bounds = layout.layer_chunk_bounds(2)
    out = []
    for axis in range(3):
        up = [int(c) + (a == axis) for a, c in enumerate(coords)]
        if up[axis] < int(bounds[axis]):
            out.append((axis, up))
    return out


def fetch_with_upper(store, coords, time_stamp=None, reads: GraphReads | None = None
                     ) -> tuple[Neighbourhood, list[tuple[int, list[int], Neighbourhood]]]:
    """What meshing one chunk reads from the graph, in one batch: its neighbourhood, and
    ``(axis, coords, neighbourhood)`` of each upper neighbour (``l2.neighbour_planes``)."""
    upper = upper_neighbours(store.layout, coords)
    hood, *hoods = fetch_neighbourhoods(store, [coords] + [up for _, up in upper], time_stamp=time_stamp,
                                        reads=reads)
    return hood, [(axis, up, h) for (axis, up), h in zip(upper, hoods)]


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
        # Placeholders lie in the overlap (the last planes): work on the block from one plane
        # before the mask's lowest voxel on each axis to the end, so "last plane" and "just inside
        # it" keep their meaning and the component loop touches a sliver instead of the block.
        low = tuple(max(int(np.argmax(mask.any(axis=tuple(b for b in range(3) if b != axis)))) - 1, 0)
                    for axis in range(3))
        part = (slice(low[0], None), slice(low[1], None), slice(low[2], None))  # views: written through
        _resolve_components(seg[part], mask[part], np.asarray(sorted(candidates), dtype=np.uint64), fallback.get(a, 0))
    return seg


def _resolve_components(seg: np.ndarray, mask: np.ndarray, allowed: np.ndarray, fallback: int) -> None:
    """``resolve_placeholders`` for one placeholder's voxels ``mask`` (in place on ``seg``)."""
    comps = cc3d.connected_components(mask, connectivity=6)
    for c in range(1, int(comps.max()) + 1):
        comp = comps == c
        behind = [np.empty(0, np.uint64)]
        for axis in range(3):
            if seg.shape[axis] > 1:  # labels just inside the last plane, where C touches it
                last = np.take(comp, -1, axis=axis)
                behind.append(np.take(seg, -2, axis=axis)[last])
        behind = np.concatenate(behind)
        hits = np.intersect1d(np.unique(behind), allowed)
        seg[comp] = hits[0] if len(hits) else fallback


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
