"""Higher-layer stitching of one chunk (pcg-compat.md 7): child fragments in, merged fragments out.

Streaming, unlike PCG: a node's child fragments are located in their shards by key (the minishard
index says where and how big each is) and read and decoded only while that node is stitched, so a
task never holds every child shard of its chunk. ``plan_chunk`` does the graph reads,
``FragmentReader`` the shard reads, ``stitch_node`` the geometry (pure: bytes in, bytes out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from raymesh.formats.draco import DracoError, DracoSettings, MeshGrid, decode, encode, snap
from raymesh.errors import MeshingError
from raymesh.graph.ids import ChunkLayout
from raymesh.formats.mesh_layout import shard_key
from raymesh.formats.sharding import (ShardError, ShardingSpec, decode_value, disassemble_shard, minishard_table,
                                     shard_table)
from raymesh.storage import RangeError


@dataclass
class StitchPlan:
    """Which nodes of a chunk get a mesh, and from which meshed descendants (pcg-compat.md 7.1)."""

    layer: int
    chunk_id: int
    descendants: dict[int, list[int]]  # node -> nearest meshed descendant of each child, in order


def plan_chunk(store, layer: int, chunk_id: int, time_stamp=None) -> StitchPlan:
    """Nodes with more than one child and a root, and their children's downstream multi-child nodes.

    PCG lists the chunk without a time filter (10.20); raymesh lists it at the job's timestamp so
    nodes created by later edits are left to remeshing.
    """
    layout: ChunkLayout = store.layout
    rows = store.range_read_chunk(chunk_id, time_stamp=time_stamp)
    ids = np.array(sorted(rows), dtype=np.uint64)
    if len(ids):
        if layer < layout.n_layers:
            roots = np.asarray(store.get_roots(ids, time_stamp=time_stamp, fail_to_zero=True))
        else:
            roots = ids
        ids = ids[(roots != 0) & np.array([len(rows[int(i)]) > 1 for i in ids], dtype=bool)]
    children = {int(n): [int(c) for c in rows[int(n)]] for n in ids}
    # Follow single-child chains down, a batch of graph reads per step, not one per node.
    resolved: dict[int, int] = {}
    pending = sorted({c for kids in children.values() for c in kids if layout.get_chunk_layer(c) > 2})
    step = {c: c for c in pending}  # original child -> current candidate
    while step:
        kids = store.get_children(np.array(sorted(set(step.values())), dtype=np.uint64))
        nxt = {}
        for orig, cur in step.items():
            below = kids[cur]
            if len(below) == 0:
                raise MeshingError(f"node {cur} (layer {layout.get_chunk_layer(cur)}) has no children; the "
                                   f"graph is inconsistent below layer {layer} chunk "
                                   f"{layout.get_chunk_coordinates(chunk_id).tolist()}")
            if len(below) == 1 and layout.get_chunk_layer(int(below[0])) > 2:
                nxt[orig] = int(below[0])
            else:
                resolved[orig] = int(below[0]) if len(below) == 1 else cur
        step = nxt
    descendants = {n: [resolved.get(c, c) for c in kids] for n, kids in children.items()}
    return StitchPlan(layer, int(chunk_id), descendants)


# ---- reading child fragments --------------------------------------------------------------------

@dataclass
class ReadStats:
    shard_files: int = 0  # distinct child shards touched
    range_reads: int = 0
    bytes_read: int = 0


class FragmentReader:
    """Child fragments by node id, read with ranged reads from the shards of lower layers.

    ``open_shard(layer, chunk_id)`` returns a range reader ``read(start, stop)`` for that chunk's
    shard (None-returning for a missing file); storage by default, or in-memory bytes from a
    shard cache. Minishard indices are read once per task and reused.
    """

    def __init__(self, layout: ChunkLayout, sharding: Callable[[int], ShardingSpec],
                 open_shard: Callable[[int, int], Callable[[int, int], bytes | None]],
                 key_of: Callable[[ChunkLayout, int, int], str] = shard_key):
        self.layout = layout
        self.key_of = key_of  # the shard's path, for messages
        self.sharding = sharding
        self._open_shard = open_shard
        self._readers: dict[int, Callable] = {}
        self._tables: dict[tuple[int, int], np.ndarray] = {}
        self.stats = ReadStats()

    def preload(self, nodes: Iterable[int]) -> None:
        """Nothing to do: fragments are read when asked for (``WholeShardReader`` loads here)."""

    def close(self) -> None:
        """Nothing to let go of (``SpooledShardReader`` has a scratch file)."""

    def _where(self, chunk: int) -> str:
        layer = int(self.layout.get_chunk_layer(chunk))
        return f"layer {layer} chunk {self.layout.get_chunk_coordinates(chunk).tolist()}"

    def _reader(self, chunk: int) -> Callable:
        if chunk not in self._readers:
            raw = self._open_shard(int(self.layout.get_chunk_layer(chunk)), chunk)

            def read(start: int, stop: int, _raw=raw) -> bytes | None:
                self.stats.range_reads += 1
                try:
                    data = _raw(start, stop)
                except RangeError as exc:
                    raise MeshingError(f"the shard of {self._where(chunk)} is truncated ({exc}); rerun layer "
                                       f"{self.layout.get_chunk_layer(chunk)} for that chunk with --force") from exc
                self.stats.bytes_read += len(data) if data else 0
                return data

            self._readers[chunk] = read
            self.stats.shard_files += 1
        return self._readers[chunk]

    def locate(self, node: int) -> tuple[int, int] | None:
        """``(start, size)`` of a node's fragment in its chunk's shard; None when it has none."""
        chunk = int(self.layout.get_chunk_id(node))
        layer = int(self.layout.get_chunk_layer(node))
        spec = self.sharding(layer)
        mini = int(spec.minishard_of(np.array([node], dtype=np.uint64))[0])
        key = (chunk, mini)
        if key not in self._tables:
            try:
                table = minishard_table(self._reader(chunk), mini, spec)
            except ShardError as exc:
                raise MeshingError(f"the shard of {self._where(chunk)} is corrupt ({exc}); "
                                   f"rerun layer {layer} for that chunk with --force") from exc
            if table is None:
                raise MeshingError(f"{self._where(chunk)} has no shard file ({self.key_of(self.layout, layer, chunk)}): "
                                   f"run layer {layer} before the layers above it")
            self._tables[key] = table
        table = self._tables[key]
        hit = np.flatnonzero(table[:, 0] == np.uint64(node)) if len(table) else []
        if not len(hit):
            return None
        return int(table[hit[0], 1]), int(table[hit[0], 2])

    def size(self, node: int) -> int:
        where = self.locate(node)
        return where[1] if where else 0

    def read(self, node: int, where: tuple[int, int] | None = None) -> bytes | None:
        """A node's fragment (None without one); ``where``: its ``locate`` answer, when known."""
        where = where or self.locate(node)
        if where is None:
            return None
        start, size = where
        chunk = int(self.layout.get_chunk_id(node))
        data = self._reader(chunk)(start, start + size)
        if data is None or len(data) != size:
            raise MeshingError(f"the shard of {self._where(chunk)} is truncated (fragment of {node}); "
                               f"rerun layer {self.layout.get_chunk_layer(node)} for that chunk with --force")
        return data


class WholeShardReader(FragmentReader):
    """Every child shard read whole, once, and kept (PCG's way, and the stitching benchmark's
    baseline): a few reads instead of one per fragment, for a task that needs nearly every
    fragment of its child shards.

    ``whole(chunk)`` picks the chunks read whole; the others' fragments are read by range
    (``open_shard``, as ``FragmentReader``): a LOD task needs every fragment of its chunk's
    children but only the odd fragment of the lower layers' shards (a node whose children skip a
    layer), and a whole layer-2 shard is the biggest file of all."""

    def __init__(self, layout, sharding, read_whole: Callable[[int, int], bytes | None], key_of=shard_key,
                 open_shard: Callable[[int, int], Callable[[int, int], bytes | None]] | None = None,
                 whole: Callable[[int], bool] | None = None):
        super().__init__(layout, sharding, open_shard or (lambda layer, chunk: lambda start, stop: None), key_of)
        self._read_whole = read_whole
        self._whole = whole or (lambda chunk: True)
        self._values: dict[int, dict[int, bytes]] = {}

    def preload(self, nodes: Iterable[int]) -> None:
        for chunk in sorted({int(self.layout.get_chunk_id(n)) for n in nodes}):
            if not self._whole(chunk):
                continue
            layer = int(self.layout.get_chunk_layer(chunk))
            data = self._read_whole(layer, chunk)
            self.stats.shard_files += 1
            if data is None:
                raise MeshingError(f"{self._where(chunk)} has no shard file ({self.key_of(self.layout, layer, chunk)}): "
                                   f"run layer {layer} before the layers above it")
            self.stats.bytes_read += len(data)
            self._keep(chunk, layer, data)

    def _keep(self, chunk: int, layer: int, data: bytes) -> None:
        self._values[chunk] = disassemble_shard(data, self.sharding(layer))

    def locate(self, node: int):
        values = self._values.get(int(self.layout.get_chunk_id(node)))
        if values is None:
            return super().locate(node)
        return (0, len(values[node])) if node in values else None

    def read(self, node: int, where=None) -> bytes | None:
        values = self._values.get(int(self.layout.get_chunk_id(node)))
        if values is None:
            return super().read(node, where)
        return values.get(node)


class SpooledShardReader(WholeShardReader):
    """``WholeShardReader`` whose shards, each read whole once (a few reads, not one per fragment:
    what keeps remote storage's latency out of a task), are kept in an unlinked local scratch file
    instead of memory, their fragments read back by offset. A task holds one shard at a time,
    however big its children's are: a root-layer LOD task held every child shard (2.7 MiB of the
    real volume's 512^3, half that task's peak; on a bigger dataset, the whole layer below). Call
    ``close`` when done (the file also goes when the reader is collected)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._scratch = None

    def _keep(self, chunk: int, layer: int, data: bytes) -> None:
        import tempfile

        try:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryFile(prefix="raymesh-shards-")
            base = self._scratch.seek(0, 2)
            self._scratch.write(data)
            self._scratch.flush()
        except OSError as exc:
            raise MeshingError(f"the local copy of the shard of {self._where(chunk)} ({len(data)} bytes) could not "
                               f"be written to {tempfile.gettempdir()} ({exc}): free space there or point TMPDIR "
                               "at a disk that has it") from exc
        table = shard_table(data, self.sharding(layer))
        table[:, 1] += np.uint64(base)
        self._values[chunk] = table

    def _entry(self, chunk: int, node: int) -> tuple[int, int] | None:
        """``(start in the scratch file, size)`` of a node's value in a spooled shard."""
        table = self._values[chunk]
        i = int(np.searchsorted(table[:, 0], np.uint64(node)))
        if i == len(table) or int(table[i, 0]) != node:
            return None
        return int(table[i, 1]), int(table[i, 2])

    def locate(self, node: int):
        chunk = int(self.layout.get_chunk_id(node))
        if chunk not in self._values:
            return FragmentReader.locate(self, node)
        entry = self._entry(chunk, node)
        return None if entry is None else (0, entry[1])

    def read(self, node: int, where=None) -> bytes | None:
        import os

        chunk = int(self.layout.get_chunk_id(node))
        if chunk not in self._values:
            return FragmentReader.read(self, node, where)
        entry = self._entry(chunk, node)
        if entry is None:
            return None
        start, size = entry
        data = os.pread(self._scratch.fileno(), size, start)
        if len(data) != size:
            raise MeshingError(f"the local copy of the shard of {self._where(chunk)} is short (fragment of {node}); "
                               "is the scratch disk full?")
        return decode_value(data, self.sharding(int(self.layout.get_chunk_layer(chunk))))

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None


# ---- geometry -----------------------------------------------------------------------------------

def lift_fragment(grid: MeshGrid, vertices: np.ndarray, settings: DracoSettings, node: int,
                  layer: int) -> tuple[np.ndarray, DracoSettings]:
    """Snap a fragment of ``node`` layer by layer up to ``layer``'s grid (pcg-compat.md 7.4).

    Returns the vertices snapped through layer ``layer - 1`` and the settings of the layer-``layer``
    chunk; the final encode performs the last snap.
    """
    layout = grid.layout
    own = int(layout.get_chunk_layer(node))
    cur = settings
    for parent_layer in range(own + 1, layer + 1):
        cur = grid.next_layer_settings(cur, int(layout.parent_chunk_id(node, parent_layer)))
        if parent_layer < layer:
            vertices = snap(vertices, cur)
    return vertices, cur


def seam_planes(grid: MeshGrid, chunk_id: int) -> np.ndarray:
    """The parent's three interior mid-planes as its children's grid puts them (7.5 step 2)."""
    layout = grid.layout
    layer = int(layout.get_chunk_layer(chunk_id))
    coords = layout.get_chunk_coordinates(chunk_id)
    corner = int(layout.chunk_id(layer - 1, *(2 * coords + 1)))
    s = grid.chunk_settings(corner)
    origin = np.asarray(s.origin, dtype=np.float64)
    return origin + s.bin * np.floor((grid.chunk_offset(corner) - origin) / s.bin + 0.5)


def on_planes(vertices: np.ndarray, planes, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Which vertices lie on one of ``planes`` (per axis: a value or values), exactly or within
    ``tolerance`` (per axis). Many values are looked up by bisection, not one pass each."""
    out = np.zeros(len(vertices), dtype=bool)
    for axis in range(3):
        values = np.sort(np.atleast_1d(np.asarray(planes[axis], dtype=np.float64)))
        if not len(values):
            continue
        col = vertices[:, axis]
        if tolerance is None:  # stitching's case: no float temporaries beside a whole node's mesh
            out |= (col == values[0]) if len(values) == 1 else np.isin(col, values)
            continue
        i = np.searchsorted(values, col)
        near = np.minimum(np.abs(col - values[np.maximum(i - 1, 0)]),
                          np.abs(col - values[np.minimum(i, len(values) - 1)]))
        out |= near <= tolerance[axis]
    return out


def merge_across_boundaries(parts: list[tuple[np.ndarray, np.ndarray]], planes,
                            return_off: bool = False, tolerance: np.ndarray | None = None):
    """Concatenate fragments and merge vertices lying exactly on a mid-plane (7.5 steps 1-5).

    Vertices off the planes keep their order; on-plane vertices are deduplicated by exact position
    (lexicographically sorted) and appended after them. This is a stitching task's largest
    allocation (a node's whole mesh decoded), so ``parts`` is emptied once concatenated (the
    caller's list: its arrays are freed before the merge allocates more), and faces are int32,
    offset in place (Draco's indices are 32-bit anyway). ``return_off``: also the off-plane
    vertices' indices in the concatenation, in their merged order (the merged mesh's first ones).
    ``planes``: one value per axis, or a sequence of values per axis (the LOD chain's units);
    ``tolerance`` (per axis): a vertex within it of a plane counts as on it (values whose
    vertices were snapped to a grid after the planes were taken).
    """
    vertices = np.concatenate([v for v, _ in parts]).astype(np.float64, copy=False)
    faces = np.empty((sum(len(f) for _, f in parts), 3), dtype=np.int32)
    at, offset = 0, 0
    for v, f in parts:
        block = faces[at:at + len(f)]
        block[...] = f
        block += offset
        at, offset = at + len(f), offset + len(v)
    parts.clear()
    if not len(vertices):
        return (vertices, faces, np.zeros(0, dtype=np.int64)) if return_off else (vertices, faces)
    aligned = on_planes(vertices, planes, tolerance)
    off = np.flatnonzero(~aligned)
    on = np.flatnonzero(aligned)
    del aligned
    uniq, inverse = np.unique(vertices[on], axis=0, return_inverse=True)
    new_index = np.empty(len(vertices), dtype=np.int32)
    new_index[off] = np.arange(len(off), dtype=np.int32)
    new_index[on] = len(off) + inverse.reshape(-1)
    merged = np.empty((len(off) + len(uniq), 3), dtype=np.float64)
    np.take(vertices, off, axis=0, out=merged[:len(off)], mode="clip")  # "raise" buffers a copy
    merged[len(off):] = uniq
    del vertices, uniq, inverse
    faces = new_index[faces]  # np.take would widen the int32 indices to a 64-bit copy
    return (merged, faces, off) if return_off else (merged, faces)


def stitch_node(grid: MeshGrid, chunk_id: int, node: int, fragments: list[tuple[int, bytes]]) -> bytes:
    """One node's mesh from its descendants' fragments: lift, merge across seams, encode."""
    layer = int(grid.layout.get_chunk_layer(chunk_id))
    parts = []
    settings = None
    for desc, data in fragments:
        try:
            frag = decode(data)
        except DracoError as exc:
            raise ChildFragmentError(desc, exc) from exc
        vertices, s = lift_fragment(grid, frag.vertices, frag.settings, desc, layer)
        settings = settings or s  # the first fragment's chain sets the output grid (7.4)
        parts.append((vertices, frag.faces))
        del frag
    if settings is None:
        raise DracoError(f"node {node} has no child fragments")
    vertices, faces = merge_across_boundaries(parts, seam_planes(grid, chunk_id))
    return encode(vertices, faces, settings)


# ---- one chunk, node by node --------------------------------------------------------------------

@dataclass
class NodeResult:
    node: int
    data: bytes | None
    failure: str | None = None
    missing: int = 0  # layer-2 descendants without a fragment (tolerated, as PCG does)
    unstitched: str | None = None  # why the node keeps no mesh of its own (its children stand in)
    bad_child: int | None = None  # the descendant whose fragment did not decode (its chunk must be redone)


class ChildFragmentError(DracoError):
    """A child's fragment that does not decode: the child's chunk is what must be redone."""

    def __init__(self, child: int, exc: Exception):
        super().__init__(str(exc))
        self.child = int(child)


def node_inputs(layout, plan: StitchPlan, node: int, reader: FragmentReader, limit: int | None = None
                ) -> tuple[list[tuple[int, tuple[int, int] | None]], int, str | None]:
    """Where each descendant of ``node`` has its fragment, how many layer-2 ones have none, and
    why the node is left unstitched (None: it is stitched), from the minishard indices alone.
    Stitching and ``raymesh verify`` decide alike through this one function."""
    where = [(desc, reader.locate(desc)) for desc in plan.descendants[node]]
    missing = sum(1 for desc, at in where if at is None and layout.get_chunk_layer(desc) == 2)
    high = [desc for desc, at in where if at is None and layout.get_chunk_layer(desc) > 2]
    total = sum(at[1] for _, at in where if at is not None)
    if high:
        return where, missing, f"descendant {high[0]} (layer {layout.get_chunk_layer(high[0])}) has no mesh"
    if limit is not None and total > limit:
        return where, missing, f"its children's fragments ({total} bytes) exceed the node limit ({limit} bytes)"
    return where, missing, None


def stitch_nodes(grid: MeshGrid, plan: StitchPlan, nodes: Iterable[int], reader: FragmentReader,
                 limit: int | None = None) -> Iterable[NodeResult]:
    """Stitch ``nodes`` of the plan one at a time; only one node's fragments are decoded at once.

    A node is left unstitched, not shrunk, when its children's fragments total more than
    ``limit`` bytes or when a descendant above layer 2 has no mesh (it was unstitched itself, or
    failed): a mesh built from the rest would hide part of the object from every viewer, while
    without it PCG's verified manifest serves the children's fragments. Both are decided from the
    minishard indices, before any fragment is read. A layer-2 descendant without a fragment (a
    node too small to mesh) is tolerated, as PCG does.
    """
    layout = grid.layout
    for node in nodes:
        where, missing, unstitched = node_inputs(layout, plan, node, reader, limit)
        if unstitched:
            yield NodeResult(node, None, None, missing, unstitched)
            continue
        frags = [(desc, reader.read(desc, at)) for desc, at in where if at is not None]
        if not frags:
            yield NodeResult(node, None, f"{node}: none of its {len(where)} descendants has a mesh", missing)
            continue
        try:
            yield NodeResult(node, stitch_node(grid, plan.chunk_id, node, frags), None, missing)
        except ChildFragmentError as exc:
            layer, coords = int(layout.get_chunk_layer(exc.child)), layout.get_chunk_coordinates(exc.child).tolist()
            redo = " ".join(map(str, coords)) + " --chunk-end " + " ".join(str(c + 1) for c in coords)
            yield NodeResult(node, None, f"{node}: the fragment of its descendant {exc.child} in layer {layer} chunk "
                             f"{coords} does not decode ({exc}); that chunk is marked failed: redo it (a plain rerun "
                             f"from layer {layer}, or `raymesh mesh --layer {layer} --chunk-start {redo} --force`), "
                             f"then this one", missing, bad_child=exc.child)
        except DracoError as exc:
            yield NodeResult(node, None, f"{node} failed to merge: {exc}", missing)


def node_cost(plan: StitchPlan, reader: FragmentReader) -> dict[int, int]:
    """Bytes of child fragments per node (known from the minishard indices, no fragment read)."""
    return {n: sum(reader.size(d) for d in desc) for n, desc in plan.descendants.items()}


def balanced_slice(order: list[int], cost: dict[int, int], part: int, parts: int) -> list[int]:
    """Part ``part`` of ``parts`` contiguous runs of ``order`` with about equal cost.

    A node goes to the part its cost's midpoint falls in, so the runs keep canonical order and
    the merged shard equals a single task's. Each node counts at least 1 so runs of nodes that
    cost nothing to stitch (over the node limit) still spread.
    """
    weights = np.array([max(1, cost.get(n, 0)) for n in order], dtype=np.float64)
    if not len(weights):
        return []
    mid = np.cumsum(weights) - weights / 2
    which = np.minimum((mid * parts / weights.sum()).astype(np.int64), parts - 1)
    return [n for n, k in zip(order, which) if k == part]


def split_plan(plan: StitchPlan, order: list[int], cost: dict[int, int], parts: int) -> list[StitchPlan]:
    """The plan cut into ``parts`` plans of contiguous runs of ``order`` (``balanced_slice``), each
    listing its nodes in that order: what each task of a split chunk stitches."""
    return [StitchPlan(plan.layer, plan.chunk_id, {n: plan.descendants[n] for n in balanced_slice(order, cost, k, parts)})
            for k in range(parts)]


def consumer_nodes(store, nodes: np.ndarray, time_stamp=None) -> np.ndarray:
    """For each meshed node, the node whose stitching reads its fragment (0 for none).

    That is the first ancestor with more than one child: single-child parents are never meshed
    (7.1), and ``plan_chunk`` descends through them to this node. It is the inverse of the plan,
    so a shard cache can tell, when a shard is written, which higher chunks will read it and
    release it after the last of them ran. A few batched graph reads per chunk.
    """
    nodes = np.asarray(nodes, dtype=np.uint64)
    result = np.zeros(len(nodes), dtype=np.uint64)
    current = nodes.copy()
    active = np.ones(len(nodes), dtype=bool)
    for _ in range(store.layout.n_layers + 1):
        if not active.any():
            break
        parents = np.asarray(store.get_parents(current[active], time_stamp=time_stamp, fail_to_zero=True),
                             dtype=np.uint64)
        uniq = np.unique(parents[parents != 0])
        kids = store.get_children(uniq) if len(uniq) else {}
        multi = np.array([p != 0 and len(kids[int(p)]) > 1 for p in parents], dtype=bool)
        idx = np.flatnonzero(active)
        result[idx[multi]] = parents[multi]
        done = multi | (parents == 0)
        current[idx] = parents
        active[idx[done]] = False
    return result
