"""Build a ChunkedGraph from a plain label volume, the way PCG ingest shapes it.

1. Supervoxels: connected components (6-connected) of each label inside each layer-2 chunk, with
   PCG layer-1 ids (the chunk's coordinates in the id, so a voxel's value tells its chunk).
2. Edges: two supervoxels touch across a face and belong to one object (label, or agglomeration
   group). An edge's layer is the highest layer at which the two chunks still differ
   (pcg-compat.md 2.8); layer-1 edges (same chunk) form the layer-2 nodes.
3. Layer L = 3..n: components of the layer-(L-1) nodes over the edges of layer L-1. A component
   of two or more nodes gets a parent at L; a lone node gets its parent at the lowest layer >= L
   where it still has cross edges, or at the root layer ("skip connection").

Pure computation (arrays in, a ``BuiltGraph`` out) is separate from writing, so tests check the
hierarchy without a store, and every store receives the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cc3d
import fastremap
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from raymesh.graph.ids import ChunkLayout

ROOT_COUNTERS = 256


class BuildError(ValueError):
    """Input a graph cannot be built from (wrong dimensionality, dtype, chunk size)."""


@dataclass
class BuiltGraph:
    """A whole hierarchy in memory: what a store's writer receives."""

    layout: ChunkLayout
    supervoxels: np.ndarray | None  # uint64 [x, y, z] supervoxel volume (None: regrouped from edges)
    layers: dict[int, tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=dict)  # L -> (ids, children)
    # Atomic cross edges of layer-2 nodes, one entry per (node, edge layer): (own sv, foreign sv) pairs.
    cross_l2: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    cross_layer: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cross_pairs: list[np.ndarray] = field(default_factory=list)

    def node_counts(self) -> dict[int, int]:
        counts = {1: int(sum(len(c) for c in self.layers[2][1]))} if 2 in self.layers else {}
        counts.update({layer: len(ids) for layer, (ids, _) in sorted(self.layers.items())})
        return counts


def validate_labels(labels: np.ndarray) -> None:
    if not isinstance(labels, np.ndarray):
        raise BuildError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 3:
        raise BuildError(f"labels must be a 3-D [x, y, z] volume, got {labels.ndim}-D shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise BuildError(f"labels must be integers, got dtype {labels.dtype}; cast or relabel the volume "
                         "(e.g. numpy's astype(np.uint32))")
    if labels.size == 0:
        raise BuildError(f"the label volume is empty (shape {labels.shape}); every axis needs at least one voxel")
    if np.issubdtype(labels.dtype, np.signedinteger) and _slab_min(labels) < 0:
        raise BuildError(f"labels must be non-negative (0 is background), got negative values in a "
                         f"{labels.dtype} volume; relabel it")


def _slabs(labels: np.ndarray, target_bytes: int = 1 << 26):
    """``labels`` in slabs along x of about ``target_bytes``: whole-volume passes over a large
    (memory-mapped) volume then never hold a second copy of it."""
    per_x = max(1, labels[:1].nbytes)
    step = max(1, target_bytes // per_x)
    for x0 in range(0, labels.shape[0], step):
        yield labels[x0:x0 + step]


def _slab_min(labels: np.ndarray) -> int:
    return min(int(slab.min()) for slab in _slabs(labels))


def _chunk_block(block: np.ndarray) -> np.ndarray:
    """A block cc3d can take: writable, native byte order (a read-only memory-mapped ``.npy``
    gives read-only views, and cc3d's typed memoryviews refuse those). Copies only this block,
    in the memory order cc3d itself would use (its numbering of components follows it): a
    contiguous block keeps its order, any other is made C-contiguous as cc3d does."""
    if block.flags.writeable and block.dtype.isnative:
        return block
    order = "F" if block.flags.f_contiguous and not block.flags.c_contiguous else "C"
    return np.array(block, dtype=block.dtype.newbyteorder("="), order=order, copy=True)


def validate_chunk_size(chunk_size: Sequence[int]) -> tuple[int, int, int]:
    cs = tuple(int(c) for c in chunk_size)
    if len(cs) != 3 or any(c <= 0 for c in cs):
        raise BuildError(f"chunk size must be three positive integers, got {list(chunk_size)}")
    return cs  # type: ignore[return-value]


def fingerprint(labels: np.ndarray, chunk_size: Sequence[int], resolution: Sequence[float],
                agglomeration: Mapping[int, int] | None) -> str:
    """A digest of everything that determines the graph, to recognise a rebuild of the same one."""
    h = hashlib.sha256()
    h.update(str((labels.shape, str(labels.dtype), list(chunk_size), [float(r) for r in resolution])).encode())
    for slab in _slabs(labels):  # the C-order bytes of the whole volume, without copying it whole
        h.update(np.ascontiguousarray(slab).tobytes())
    if agglomeration:
        items = np.array(sorted(agglomeration.items()), dtype=np.uint64)
        h.update(items.tobytes())
    return h.hexdigest()[:32]


# ---- step 1: supervoxels -------------------------------------------------------------------
def make_supervoxels(labels: np.ndarray, layout: ChunkLayout, chunk_size: Sequence[int]) -> np.ndarray:
    """Chunk-local 6-connected components of each label, numbered with layer-1 ids."""
    sv = np.zeros(labels.shape, dtype=np.uint64)
    cs = np.asarray(chunk_size)
    for cx, cy, cz in layout.iter_chunk_coords(2):
        lo = np.array([cx, cy, cz]) * cs
        hi = np.minimum(lo + cs, labels.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        block = labels[sl]
        if not block.any():
            continue
        block = _chunk_block(block)
        cc, n = cc3d.connected_components(block, connectivity=6, return_N=True, out_dtype=np.uint64)
        if n >= layout.segment_id_limit(1):
            raise BuildError(f"chunk {(cx, cy, cz)} has {n} supervoxels, more than layer-1 ids allow")
        base = np.uint64(layout.chunk_id(1, cx, cy, cz))
        sv[sl] = np.where(cc > 0, cc | base, np.uint64(0))
    return sv


# ---- step 2: contacts ------------------------------------------------------------------------
def contact_pairs(sv: np.ndarray, objects: np.ndarray, slab: int = 64) -> np.ndarray:
    """Unique (a, b) supervoxel pairs, a < b, that share a face and belong to one object.

    Pairs are packed into one uint64 key over dense supervoxel indices: a 1-D unique is far
    cheaper than ``np.unique(axis=0)`` on hundreds of millions of contacts.
    """
    sv_ids = fastremap.unique(sv)
    n = np.uint64(len(sv_ids))
    keys = []
    for axis in range(3):
        size = sv.shape[axis]
        for s0 in range(0, size - 1, slab):
            s1 = min(s0 + slab, size - 1)
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(s0, s1)
            hi[axis] = slice(s0 + 1, s1 + 1)
            a, b = sv[tuple(lo)], sv[tuple(hi)]
            oa, ob = objects[tuple(lo)], objects[tuple(hi)]
            mask = (a != b) & (oa == ob) & (oa != 0)
            if mask.any():
                ia = np.searchsorted(sv_ids, a[mask]).astype(np.uint64)
                ib = np.searchsorted(sv_ids, b[mask]).astype(np.uint64)
                keys.append(fastremap.unique(np.minimum(ia, ib) * n + np.maximum(ia, ib)))
    if not keys:
        return np.empty((0, 2), dtype=np.uint64)
    uniq = fastremap.unique(np.concatenate(keys))
    return np.stack([sv_ids[uniq // n], sv_ids[uniq % n]], axis=1).astype(np.uint64)


def edge_layers(pairs: np.ndarray, layout: ChunkLayout) -> np.ndarray:
    """1 for pairs inside one chunk; else the highest layer at which their chunks still differ."""
    if not len(pairs):
        return np.empty(0, dtype=np.int64)
    ca = layout.get_chunk_coordinates(pairs[:, 0])
    cb = layout.get_chunk_coordinates(pairs[:, 1])
    diff = (ca ^ cb).max(axis=1)
    out = np.ones(len(pairs), dtype=np.int64)
    nz = diff > 0
    out[nz] = 2 + np.floor(np.log2(diff[nz])).astype(np.int64)
    return out


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


# ---- step 3: the hierarchy ---------------------------------------------------------------------
class IdAllocator:
    """Per-chunk segment counters, like PCG's ``i<chunk>`` rows, persistent across layers.

    Skip-connection parents are created in a higher chunk before that chunk's own layer is
    processed, so counters must survive between layers. Root ids use PCG's 256 interleaved
    counters: id = value * 256 + counter (pcg-compat.md 2.10).
    """

    def __init__(self, layout: ChunkLayout):
        self.layout = layout
        self.counters: dict[int, int] = {}

    def allocate(self, layer: int, chunk_ids: np.ndarray) -> np.ndarray:
        """New ids for parents in the given chunks, in input order."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.uint64)
        order = np.argsort(chunk_ids, kind="stable")
        sorted_chunks = chunk_ids[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_chunks)) + 1]
        lengths = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, lengths)
        base = np.zeros(len(order), dtype=np.int64)
        for s0, n in zip(starts, lengths):
            chunk = int(sorted_chunks[s0])
            used = self.counters.get(chunk, 0)
            base[s0:s0 + n] = used
            self.counters[chunk] = used + int(n)
        rank = rank + base
        if layer == self.layout.n_layers:
            segs = (rank // ROOT_COUNTERS + 1) * ROOT_COUNTERS + rank % ROOT_COUNTERS
        else:
            segs = rank + 1
        if len(segs) and segs.max() > self.layout.segment_id_limit(layer):
            raise BuildError(f"too many nodes in one chunk of layer {layer}")
        out = np.empty(len(order), dtype=np.uint64)
        out[order] = sorted_chunks | segs.astype(np.uint64)
        return out


def _group_children(parent_of: np.ndarray, children: np.ndarray, n_parents: int) -> list[np.ndarray]:
    order = np.lexsort((children, parent_of))
    counts = np.bincount(parent_of, minlength=n_parents)
    return np.split(children[order], np.cumsum(counts)[:-1])


def build_hierarchy(labels: np.ndarray, chunk_size: Sequence[int],
                    agglomeration: Mapping[int, int] | None = None,
                    spatial_bits: int = 10) -> BuiltGraph:
    """The full graph (supervoxels, nodes of every layer, cross edges) from a label volume."""
    validate_labels(labels)
    cs = validate_chunk_size(chunk_size)
    layout = ChunkLayout.from_voxels(labels.shape, cs, spatial_bits=spatial_bits)
    objects = labels  # compared only (equal, non-zero): no uint64 copy of the volume without agglomeration
    if agglomeration:
        objects = fastremap.remap(np.asarray(labels, dtype=np.uint64),
                                  {int(k): int(v) for k, v in agglomeration.items()}, preserve_missing_labels=True)
    sv = make_supervoxels(labels, layout, cs)
    pairs = contact_pairs(sv, objects)
    elayer = edge_layers(pairs, layout)
    sv_ids = fastremap.unique(sv)
    sv_ids = sv_ids[sv_ids != 0].astype(np.uint64)
    if not len(sv_ids):
        raise BuildError(f"the label volume has no labelled voxels (all {labels.size} voxels are 0, the "
                         "background); check that --labels is the right volume")
    graph = group_hierarchy(layout, sv_ids, pairs, elayer)
    graph.supervoxels = sv
    return graph


def group_hierarchy(layout: ChunkLayout, sv_ids: np.ndarray, pairs: np.ndarray, elayer: np.ndarray,
                    ids: "IdAllocator | None" = None) -> BuiltGraph:
    """Layer-2 nodes and every layer above from supervoxels and their edges (steps 2-3).

    ``sv_ids`` sorted; ``pairs`` (n, 2) supervoxel edges with their ``elayer``. Ingest runs it on
    the whole volume; an edit runs it on the edited objects (``raymesh.edits``).
    """
    graph = BuiltGraph(layout=layout, supervoxels=None)
    idx = lambda ids_: np.searchsorted(sv_ids, ids_)  # noqa: E731 - position of svs in sv_ids

    # Layer 2: components of each chunk's supervoxels over in-chunk (layer-1) edges.
    inner = pairs[elayer == 1]
    comp = _components(len(sv_ids), idx(inner[:, 0]), idx(inner[:, 1]))
    first_sv = np.full(comp.max() + 1 if len(comp) else 0, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(first_sv, comp, sv_ids)
    # Number components in the order of their smallest supervoxel: deterministic ids.
    comp_order = np.argsort(first_sv, kind="stable")
    rank_of_comp = np.empty_like(comp_order)
    rank_of_comp[comp_order] = np.arange(len(comp_order))
    comp = rank_of_comp[comp]
    # A supervoxel lies in the layer-2 chunk with its own coordinates (pcg-compat.md 2.7).
    l2_chunks = np.atleast_1d(np.asarray(layout.chunk_id_from_coords(
        2, layout.get_chunk_coordinates(first_sv[comp_order])), dtype=np.uint64))
    ids = ids or IdAllocator(layout)
    l2_ids = ids.allocate(2, l2_chunks)
    graph.layers[2] = (l2_ids, _group_children(comp, sv_ids, len(l2_ids)))
    top = l2_ids[comp]  # current highest ancestor of every supervoxel

    # Cross edges per layer-2 node: (own sv, foreign sv) in both directions, by edge layer.
    cross = elayer >= 2
    cp, cl = pairs[cross], elayer[cross]
    both = np.concatenate([cp, cp[:, ::-1]])
    both_layers = np.concatenate([cl, cl])
    owner = top[idx(both[:, 0])]
    order = np.lexsort((both[:, 1], both[:, 0], both_layers, owner))
    both, both_layers, owner = both[order], both_layers[order], owner[order]
    keys = np.stack([owner, both_layers.astype(np.uint64)], axis=1)
    if len(keys):
        uniq, starts = np.unique(keys, axis=0, return_index=True)
        graph.cross_pairs = np.split(both, starts[1:])
        graph.cross_l2, graph.cross_layer = uniq[:, 0], uniq[:, 1].astype(np.int64)
    nodes_at: dict[int, list[np.ndarray]] = {2: [l2_ids]}
    children_at: dict[int, list[list[np.ndarray]]] = {}

    for layer in range(3, layout.n_layers + 1):
        frontier = np.sort(np.concatenate(nodes_at.get(layer - 1, [np.empty(0, np.uint64)])))
        if not len(frontier):
            continue
        fpos = lambda ids: np.searchsorted(frontier, ids)  # noqa: E731
        e = cp[cl == layer - 1]
        ta, tb = top[idx(e[:, 0])], top[idx(e[:, 1])]
        assert np.all(frontier[fpos(ta)] == ta) and np.all(frontier[fpos(tb)] == tb), "broken uplift"
        comp = _components(len(frontier), fpos(ta), fpos(tb))
        sizes = np.bincount(comp)
        # Lowest edge layer >= this layer for every frontier node (for lone nodes' skip parents).
        later = cl >= layer
        lowest = np.full(len(frontier), layout.n_layers, dtype=np.int64)
        if later.any():
            for col in (0, 1):
                owners = top[idx(cp[later, col])]
                inside = frontier[np.minimum(fpos(owners), len(frontier) - 1)] == owners
                np.minimum.at(lowest, fpos(owners[inside]), cl[later][inside])
        n_comp = len(sizes)
        rep = np.full(n_comp, len(frontier), dtype=np.int64)
        np.minimum.at(rep, comp, np.arange(len(frontier)))  # smallest member (frontier is sorted)
        parent_layer = np.where(sizes > 1, layer, lowest[rep])
        new_top = np.zeros(len(frontier), dtype=np.uint64)
        for pl in np.unique(parent_layer):
            sel = np.flatnonzero(parent_layer == pl)
            pchunks = np.atleast_1d(np.asarray(layout.parent_chunk_id(frontier[rep[sel]], int(pl)), dtype=np.uint64))
            pids = ids.allocate(int(pl), pchunks)
            member = np.isin(comp, sel)
            local = np.searchsorted(sel, comp[member])
            nodes_at.setdefault(int(pl), []).append(pids)
            children_at.setdefault(int(pl), []).append(_group_children(local, frontier[member], len(sel)))
            new_top[member] = pids[local]
        # Every frontier node now has a parent: lift the supervoxels below them.
        pos = np.minimum(fpos(top), len(frontier) - 1)
        below = frontier[pos] == top
        top[below] = new_top[pos[below]]
    for layer in range(3, layout.n_layers + 1):
        if layer in nodes_at:
            ids = np.concatenate(nodes_at[layer])
            kids = [k for group in children_at[layer] for k in group]
            order = np.argsort(ids)
            graph.layers[layer] = (ids[order], [kids[i] for i in order])
    return graph


# ---- writing a built graph ---------------------------------------------------------------------
@dataclass
class BuildSummary:
    store_url: str
    segmentation: str
    node_counts: dict[int, int]
    n_layers: int
    seconds: float
    already_built: bool = False

    def to_dict(self) -> dict:
        return {
            "store": self.store_url, "segmentation": self.segmentation, "layers": self.n_layers,
            "nodes_per_layer": {str(k): v for k, v in self.node_counts.items()},
            "seconds": round(self.seconds, 3), "already_built": self.already_built,
        }


def write_graph(graph: BuiltGraph, store, time_stamp) -> None:
    """Write every layer bottom-up, then the cross edges, into an empty store."""
    for layer in sorted(graph.layers):
        ids, kids = graph.layers[layer]
        store.write_nodes(ids, kids, time_stamp)
    if len(graph.cross_l2):
        store.write_cross_edges(graph.cross_l2, graph.cross_layer, graph.cross_pairs, time_stamp)


def build_graph(
    labels: np.ndarray,
    out_dir: str,
    *,
    resolution: Sequence[float],
    chunk_size: Sequence[int],
    agglomeration: Mapping[int, int] | None = None,
    store_url: str | None = None,
    graph_id: str | None = None,
    downsample_mips: int = 1,
    time_stamp=None,
) -> BuildSummary:
    """Build the graph of ``labels`` into ``out_dir`` (``ws`` segmentation + the store).

    Rebuilding the same input into the same folder is a no-op; a different graph already there
    is an error, so a typo in ``--out`` never overwrites someone's graph. The meta row is written
    last: a store without it is an interrupted build and is rebuilt.
    """
    import os
    import time

    from raymesh.graph.base import utcnow
    from raymesh.graph.meta import DataSource, GraphConfig, GraphMeta
    from raymesh.storage import normalize_url
    from raymesh.volume import write_segmentation

    t0 = time.perf_counter()
    validate_labels(labels)
    cs = validate_chunk_size(chunk_size)
    res = [float(r) for r in resolution]
    if len(res) != 3 or not all(0 < r < float("inf") for r in res):
        raise BuildError(f"resolution must be three positive numbers (nm per voxel), got {list(resolution)}")
    mips = _validate_mips(downsample_mips, labels.shape)
    out_url = normalize_url(out_dir)
    local_out = out_url[len("file://"):].rstrip("/") if out_url.startswith("file://") else None
    if local_out is not None:
        _check_out_folder(local_out)
    if store_url is None:
        if local_out is None:
            raise BuildError("--store is required when --out is not a local folder")
        store_url = "sqlite://" + os.path.join(local_out, "graph.sqlite")
    ws_url = out_url + "ws"
    digest = fingerprint(labels, cs, res, agglomeration)

    existing = _existing_meta(store_url)
    if existing is not None and not existing.ws_info and \
            existing.custom_data.get("build", {}).get("fingerprint") == digest:
        existing = None  # the graph is there but its segmentation is gone: build both again
    if existing is not None:
        if existing.custom_data.get("build", {}).get("fingerprint") == digest:
            counts = {int(k): v for k, v in existing.custom_data["build"]["nodes_per_layer"].items()}
            return BuildSummary(store_url, existing.segmentation_path, counts, max(counts),
                                time.perf_counter() - t0, already_built=True)
        raise BuildError(
            f"{store_url} already holds a different graph (built from other labels or settings, "
            f"segmentation {existing.segmentation_path}); choose another --out/--store or delete it"
        )

    graph = build_hierarchy(labels, cs, agglomeration)
    store = _fresh_store(store_url)  # before the segmentation: a store that cannot be made writes nothing
    try:
        write_segmentation(ws_url, graph.supervoxels, resolution=res,
                           chunk_size=[min(c, 64) for c in cs], downsample_mips=mips)
    except (ValueError, RuntimeError, OSError) as exc:
        store.close()
        there = local_out is not None and os.path.exists(os.path.join(local_out, "ws", "info"))
        hint = (f"{local_out}/ws already holds another volume: choose a new --out folder or delete that ws"
                if there else "choose a writable --out folder (a new or empty one, or this graph's own)")
        raise BuildError(f"cannot write the supervoxel segmentation to {ws_url}: {_short(exc)}; {hint}") from exc
    ts = time_stamp or utcnow()
    store.prepare(graph.layout)
    write_graph(graph, store, ts)
    counts = graph.node_counts()
    meta = GraphMeta(
        graph_config=GraphConfig(graph_id=graph_id or _default_graph_id(out_url), chunk_size=cs),
        data_source=DataSource(watershed=ws_url),
        custom_data={"build": {"fingerprint": digest, "nodes_per_layer": {str(k): v for k, v in counts.items()}}},
    )
    store.update_meta(meta, ts)
    _finish_store(store, store_url)
    return BuildSummary(store_url, ws_url, counts, graph.layout.n_layers, time.perf_counter() - t0)


def _validate_mips(mips: int, shape: Sequence[int]) -> int:
    """``--mips``: 0 up to the 2x2x1 downsamplings that bring x and y down to one voxel (at
    least 1, so the default works on any volume)."""
    most = max(1, int(np.ceil(np.log2(max(int(shape[0]), int(shape[1]), 1)))))
    if not 0 <= int(mips) <= most:
        raise BuildError(f"--mips {mips} is out of range: a {shape[0]}x{shape[1]} (x, y) volume takes "
                         f"0 to {most} 2x2x1 downsampled scales")
    return int(mips)


def _check_out_folder(path: str) -> None:
    """``--out`` must be a folder (or not exist yet) that can be created."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise BuildError(f"--out {path} is a file, not a folder; choose a new folder for the graph")
    parent = path
    while not os.path.exists(parent):  # the nearest existing ancestor must be a writable folder
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise BuildError(f"--out {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BuildError(f"--out {path} cannot be created or written: no write permission on {parent}")


def _short(exc: BaseException) -> str:
    """An exception's message without tensorstore's appended JSON spec."""
    text = str(exc).split(" [tensorstore_spec=", 1)[0]
    return " ".join(text.split())


def _default_graph_id(out_url: str) -> str:
    return out_url.rstrip("/").rsplit("/", 1)[-1] or "graph"


def _existing_meta(store_url: str):
    """The meta of the graph already at ``store_url``; None when there is none (no file, no
    table, an interrupted build). A file there that is not a graph is an error, not "none"."""
    import os

    from raymesh.graph import GraphError, open_store

    _check_store_url(store_url)
    try:
        store = open_store(store_url)
    except GraphError:
        path = _sqlite_path(store_url)
        if path is not None and os.path.exists(path):
            raise
        return None
    try:
        raw = store.raw_meta()
    finally:
        store.close()
    if raw is None:
        return None
    from raymesh.graph.meta import GraphMeta
    from raymesh.volume import SegmentationError, read_info

    try:
        info = read_info(raw["data_source"]["watershed"])
    except SegmentationError:
        info = {}
    return GraphMeta.from_dict(raw, info)


def _check_store_url(store_url: str) -> None:
    """A malformed ``--store`` is refused before anything is built or written."""
    from raymesh.graph import SCHEMES, open_store

    scheme, sep, rest = store_url.partition("://")
    if sep and scheme == "bigtable":
        parts = rest.strip("/").split("/")
        if len(parts) != 3 or not all(parts):
            raise BuildError(f"--store {store_url!r} must be bigtable://PROJECT/INSTANCE/TABLE")
    elif (sep and scheme not in SCHEMES) or (not sep and _sqlite_path(store_url) is None):
        open_store(store_url)  # raises its own error naming the schemes


def _sqlite_path(store_url: str) -> str | None:
    scheme, sep, rest = store_url.partition("://")
    if sep:
        return rest if scheme == "sqlite" else None
    return store_url if store_url.endswith((".sqlite", ".db")) else None


def _fresh_store(store_url: str):
    """SQLite builds go to ``<file>.partial`` and are renamed when complete."""
    import os

    from raymesh.graph import open_store

    if store_url.startswith("sqlite://"):
        path = store_url[len("sqlite://"):]
        partial = path + ".partial"
        for p in (partial, partial + "-wal", partial + "-shm", path, path + "-wal", path + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        return open_store("sqlite://" + partial, create=True)
    return open_store(store_url, create=True)


def _finish_store(store, store_url: str) -> None:
    import os

    if store_url.startswith("sqlite://"):
        store._con().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        path = store_url[len("sqlite://"):]
        os.replace(path + ".partial", path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + ".partial" + suffix):
                os.remove(path + ".partial" + suffix)
    else:
        store.close()
