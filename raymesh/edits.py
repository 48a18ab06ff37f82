"""Proofreading edits, merge and split, shaped the way PCG's edits shape the graph (pcg-compat.md 2.8).

An edit never changes a node: it writes new nodes at the edit's timestamp, with new parent cells
on their children, so every answer "as of T" before the edit is unchanged. Which nodes are new:

1. The edited object(s) are regrouped from their supervoxels with the same rules as ingest
   (``builder.group_hierarchy``: layer-2 nodes are in-chunk components; a layer-L node groups
   layer-(L-1) nodes over their layer-(L-1) edges; a lone node's parent skips to the lowest layer
   where it still has cross edges).
2. Bottom up, a regrouped node whose children (and, at layer 2, cross edges) equal those of an
   existing node of the object keeps that node's id; every other node gets a new id from its
   chunk's counter. So exactly the nodes on the paths from the edit to the new roots are new,
   as in PCG.

Supervoxel connectivity: cross-chunk edges come from the store (the layer-2 nodes' atomic cross
edges); inside a layer-2 node only its connectedness matters, except near a split, where the real
face contacts are read from the supervoxel segmentation (raymesh's builder made them the same
way; PCG keeps them in edge files). A merge adds one edge; a split removes a minimum edge cut
between the two supervoxels within PCG's split bounding box (unit capacities: PCG weighs by
affinity, which a label volume does not have).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raymesh.errors import EditError
from raymesh.graph.base import GraphError, write_ms


@dataclass
class EditResult:
    operation_id: int
    kind: str  # "merge" | "split"
    supervoxels: tuple[int, int]
    time_stamp: float  # POSIX seconds of the edit (whole milliseconds)
    old_roots: list[int]
    new_roots: list[int]
    new_nodes: dict[int, list[int]] = field(default_factory=dict)  # layer -> ids created


def merge(store, sv_a: int, sv_b: int, time_stamp=None) -> EditResult:
    """Join the objects of two supervoxels (PCG ``add_edges``)."""
    return _edit(store, "merge", int(sv_a), int(sv_b), time_stamp)


def split(store, sv_a: int, sv_b: int, time_stamp=None) -> EditResult:
    """Separate two supervoxels of one object along a minimum cut (PCG ``remove_edges``)."""
    return _edit(store, "split", int(sv_a), int(sv_b), time_stamp)


# ---- the edit ----------------------------------------------------------------------------------

def _edit(store, kind: str, sv_a: int, sv_b: int, time_stamp) -> EditResult:
    layout = store.layout
    ms = write_ms(time_stamp)
    svs = np.array([sv_a, sv_b], dtype=np.uint64)
    if sv_a == sv_b:
        raise EditError(f"{kind} needs two different supervoxels, got {sv_a} twice")
    not_sv = [int(s) for s in svs if layout.get_chunk_layer(s) != 1]
    if not_sv:
        raise EditError(f"{not_sv} are not supervoxel (layer-1) ids; {kind} takes two supervoxels")
    last = _latest_write_ms(store)
    if ms <= last:
        raise EditError(f"edit time {ms / 1000:.3f} is not after the graph's last change ({last / 1000:.3f}); "
                        "edits are appended in time order")
    roots = np.asarray(store.get_roots(svs, time_stamp=ms / 1000, fail_to_zero=True), dtype=np.uint64)
    unknown = [int(s) for s, r in zip(svs, roots) if r == 0]
    if unknown:
        raise EditError(f"unknown supervoxel id(s) {unknown}: not in graph {store.meta.graph_id}")
    if kind == "merge" and roots[0] == roots[1]:
        raise EditError(f"supervoxels {sv_a} and {sv_b} are already one object (root {int(roots[0])}); "
                        "nothing to merge")
    if kind == "split" and roots[0] != roots[1]:
        raise EditError(f"supervoxels {sv_a} and {sv_b} are in different objects ({int(roots[0])}, "
                        f"{int(roots[1])}); a split separates two supervoxels of one object")
    old_roots = sorted({int(r) for r in roots})
    tree = _subtree(store, old_roots)
    sv_ids = np.array(sorted(tree.sv_to_l2), dtype=np.uint64)
    region = _split_region(store, sv_a, sv_b) if kind == "split" else None
    pairs, elayers, cuttable = _edges(store, tree, sv_ids, ms, region)
    added = removed = None
    if kind == "merge":
        from raymesh.builder import edge_layers

        added = np.array([sorted((sv_a, sv_b))], dtype=np.uint64)
        pairs = np.concatenate([pairs, added])
        elayers = np.concatenate([elayers, edge_layers(added, layout)])
    else:
        keep = _min_cut_keep(sv_ids, pairs, cuttable, sv_a, sv_b)
        removed = pairs[~keep]
        pairs, elayers = pairs[keep], elayers[keep]
    from raymesh.builder import group_hierarchy

    grouped = group_hierarchy(layout, sv_ids, pairs, elayers)
    new_nodes, new_roots = _write_new_nodes(store, tree, grouped, ms)
    op = store.log_operation(kind, svs, np.array(new_roots, dtype=np.uint64), ms, added, removed)
    return EditResult(op, kind, (sv_a, sv_b), ms / 1000, old_roots, sorted(new_roots), new_nodes)


@dataclass
class _Subtree:
    nodes: dict[int, dict[frozenset, int]]  # layer -> {children: node}
    children: dict[int, np.ndarray]  # node -> children (every node of the edited objects)
    sv_to_l2: dict[int, int]
    l2_cross: dict[int, dict[int, np.ndarray]]


def _subtree(store, roots: list[int]) -> _Subtree:
    """Every node below the roots, one batched read per layer."""
    layout = store.layout
    children: dict[int, np.ndarray] = {}
    frontier = np.array(roots, dtype=np.uint64)
    while len(frontier):
        kids = store.get_children(frontier)
        children.update(kids)
        nxt = np.concatenate([k for k in kids.values()] or [np.empty(0, np.uint64)])
        frontier = nxt[layout.get_chunk_layer(nxt) > 1] if len(nxt) else nxt
    nodes: dict[int, dict[frozenset, int]] = {}
    sv_to_l2 = {}
    for node, kids in children.items():
        layer = int(layout.get_chunk_layer(node))
        nodes.setdefault(layer, {})[frozenset(int(k) for k in kids)] = node
        if layer == 2:
            sv_to_l2.update(dict.fromkeys((int(k) for k in kids), node))
    l2 = sorted(n for n in children if layout.get_chunk_layer(n) == 2)
    return _Subtree(nodes, children, sv_to_l2, store.get_cross_edges(l2))


SPLIT_BOUNDING_OFFSET = (240, 240, 24)  # PCG's default custom_data["split_bounding_offset"], voxels


def _split_region(store, sv_a: int, sv_b: int) -> set[tuple[int, int, int]]:
    """Layer-2 chunks within PCG's split bounding offset of the two supervoxels' chunks: only
    there may a split cut edges (as PCG's mincut graph is limited to that box)."""
    layout = store.layout
    offset = np.asarray(store.meta.custom_data.get("split_bounding_offset", SPLIT_BOUNDING_OFFSET))
    reach = -(-offset // np.asarray(store.meta.chunk_size))
    coords = layout.get_chunk_coordinates(np.array([sv_a, sv_b], dtype=np.uint64))
    lo = coords.min(axis=0) - reach
    hi = coords.max(axis=0) + reach
    return {tuple(c) for c in np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)],
                                                   indexing="ij"), -1).reshape(-1, 3).tolist()}


def _edges(store, tree: _Subtree, sv_ids: np.ndarray, ms: int, region: set | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edited objects' supervoxel edges, their layers, and which of them a split may cut.

    Cross edges come from the store. Inside a layer-2 node the edges only need to keep it
    connected, so a star over its supervoxels stands in for them (no segmentation read), except
    in the split region, where the real face contacts are read from the segmentation because
    the cut may pass through them.
    """
    from raymesh.builder import edge_layers

    layout = store.layout
    cross = [pairs for per_layer in tree.l2_cross.values() for pairs in per_layer.values() if len(pairs)]
    cross = np.concatenate(cross) if cross else np.empty((0, 2), np.uint64)
    cross = cross[np.isin(cross[:, 1], sv_ids)]  # edges to other objects are not the object's
    inner = [np.empty((0, 2), np.uint64)]
    for l2, kids in tree.children.items():
        if layout.get_chunk_layer(l2) != 2 or len(kids) < 2:
            continue
        if region is not None and tuple(layout.get_chunk_coordinates(l2).tolist()) in region:
            inner.append(_in_chunk_contacts(store, l2, kids))
        else:
            kids = np.sort(kids)
            inner.append(np.stack([np.repeat(kids[:1], len(kids) - 1), kids[1:]], axis=1))
    edges = {tuple(p) for p in np.sort(np.concatenate([cross, *inner]), axis=1).tolist()}
    # Earlier edits, in order: merges may join supervoxels that do not touch (PCG's fake edges),
    # splits removed contacts that the segmentation still shows.
    members = set(sv_ids.tolist())
    for op in store.operations():
        if op["ms"] >= ms:
            break
        edges.update(tuple(sorted(p)) for p in op["added"].tolist() if p[0] in members and p[1] in members)
        edges.difference_update(tuple(sorted(p)) for p in op["removed"].tolist())
    pairs = np.array(sorted(edges), dtype=np.uint64).reshape(-1, 2)
    if region is None:
        cuttable = np.zeros(len(pairs), dtype=bool)
    else:
        inside = [np.array([tuple(c) in region for c in layout.get_chunk_coordinates(pairs[:, i]).tolist()], bool)
                  if len(pairs) else np.zeros(0, bool) for i in (0, 1)]
        cuttable = inside[0] | inside[1]
    return pairs, edge_layers(pairs, layout), cuttable


def _in_chunk_contacts(store, l2: int, kids: np.ndarray) -> np.ndarray:
    """Face contacts between a layer-2 node's supervoxels, from the segmentation."""
    from raymesh.builder import contact_pairs
    from raymesh.volume import read_block

    meta = store.meta
    cs = np.asarray(meta.chunk_size)
    lo = store.layout.get_chunk_coordinates(l2) * cs + meta.voxel_offset_at(0)
    hi = np.minimum(lo + cs, meta.voxel_offset_at(0) + meta.size_at(0))
    block = read_block(meta.segmentation_path, 0, lo, hi)
    members = np.isin(block, kids)
    return contact_pairs(np.where(members, block, 0), members.astype(np.uint64))


def _min_cut_keep(sv_ids: np.ndarray, pairs: np.ndarray, cuttable: np.ndarray, source: int, sink: int) -> np.ndarray:
    """Mask of edges kept after removing a minimum cut of cuttable edges between the two."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n = len(sv_ids)
    big = int(cuttable.sum()) + 1  # more than every cuttable edge together: never cut
    a = np.searchsorted(sv_ids, pairs[:, 0])
    b = np.searchsorted(sv_ids, pairs[:, 1])
    weight = np.where(cuttable, 1, big).astype(np.int32)
    cap = csr_matrix((np.concatenate([weight, weight]), (np.concatenate([a, b]), np.concatenate([b, a]))),
                     shape=(n, n))
    s, t = int(np.searchsorted(sv_ids, source)), int(np.searchsorted(sv_ids, sink))
    result = maximum_flow(cap, s, t)
    if result.flow_value >= big:
        raise EditError(f"supervoxels {source} and {sink} are connected outside the split region (their chunks "
                        "plus custom_data['split_bounding_offset']); no cut there separates them")
    residual = (cap - result.flow).tocsr()
    residual.data[residual.data <= 0] = 0
    residual.eliminate_zeros()
    side = np.zeros(n, dtype=bool)
    side[breadth_first_order(residual, s, directed=True, return_predecessors=False)] = True
    return side[a] == side[b]


def _write_new_nodes(store, tree: _Subtree, grouped, ms: int) -> tuple[dict[int, list[int]], list[int]]:
    """Keep the ids of regrouped nodes that match existing ones; write the rest, bottom up."""
    layout = store.layout
    rename: dict[int, int] = {}  # grouped (temporary) id -> final id
    new_nodes: dict[int, list[int]] = {}
    allocator = _StoreAllocator(store)
    cross_new: dict[int, dict[int, np.ndarray]] = {}  # grouped layer-2 id -> {edge layer: pairs}
    for node, layer, pairs in zip(grouped.cross_l2, grouped.cross_layer, grouped.cross_pairs):
        cross_new.setdefault(int(node), {})[int(layer)] = pairs
    for layer in sorted(grouped.layers):
        ids, kids = grouped.layers[layer]
        existing = tree.nodes.get(layer, {})
        fresh_ids, fresh_kids, fresh_temps = [], [], []
        for temp, children in zip(ids, kids):
            final_children = np.array(sorted(rename.get(int(c), int(c)) for c in children), dtype=np.uint64)
            old = existing.get(frozenset(final_children.tolist()))
            if old is not None and (layer != 2 or _same_cross(tree.l2_cross.get(old, {}), cross_new.get(int(temp), {}))):
                rename[int(temp)] = old
                continue
            chunk = int(layout.get_chunk_id(int(temp)))
            rename[int(temp)] = new_id = allocator.next(layer, chunk)
            fresh_ids.append(new_id)
            fresh_kids.append(final_children)
            fresh_temps.append(int(temp))
        if fresh_ids:
            order = np.argsort(fresh_ids)
            store.write_nodes(np.array(fresh_ids, dtype=np.uint64)[order], [fresh_kids[i] for i in order], ms / 1000)
            new_nodes[layer] = sorted(fresh_ids)
        if layer == 2 and fresh_ids:
            l2s, layers_, edges = [], [], []
            for node, temp in sorted(zip(fresh_ids, fresh_temps)):
                for elayer, pairs in sorted(cross_new.get(temp, {}).items()):
                    l2s.append(node)
                    layers_.append(elayer)
                    edges.append(pairs)
            if l2s:
                store.write_cross_edges(np.array(l2s, np.uint64), np.array(layers_), edges, ms / 1000)
    top = layout.n_layers
    new_roots = sorted(rename[int(t)] for t in grouped.layers.get(top, (np.empty(0, np.uint64), []))[0])
    return new_nodes, new_roots


def _same_cross(old: dict[int, np.ndarray], new: dict[int, np.ndarray]) -> bool:
    if sorted(old) != sorted(k for k, v in new.items() if len(v)):
        return False
    return all(np.array_equal(_sorted_pairs(old[k]), _sorted_pairs(new[k])) for k in old)


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.uint64).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


class _StoreAllocator:
    """New segment ids above the ones a chunk already has (PCG's counters, 2.10)."""

    def __init__(self, store):
        self.store = store
        self.layout = store.layout
        self.used: dict[int, int] = {}

    def next(self, layer: int, chunk: int) -> int:
        from raymesh.builder import ROOT_COUNTERS

        if chunk not in self.used:
            existing = self.store.range_read_chunk(chunk)
            segs = [int(self.layout.get_segment_id(n)) for n in existing]
            top = max(segs, default=0)
            if layer == self.layout.n_layers:
                self.used[chunk] = (top // ROOT_COUNTERS - 1) * ROOT_COUNTERS + top % ROOT_COUNTERS + 1 if top else 0
            else:
                self.used[chunk] = top
        rank = self.used[chunk]
        self.used[chunk] += 1
        if layer == self.layout.n_layers:
            seg = (rank // ROOT_COUNTERS + 1) * ROOT_COUNTERS + rank % ROOT_COUNTERS
        else:
            seg = rank + 1
        if seg > self.layout.segment_id_limit(layer):
            raise GraphError(f"chunk {chunk} of layer {layer} has no segment ids left")
        return int(self.layout.node_id(chunk, seg))


def _latest_write_ms(store) -> int:
    return int(store.last_write_ms())


__all__ = ["merge", "split", "EditError", "EditResult"]
