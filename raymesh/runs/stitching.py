"""The stitching kind of chunk task: a higher-layer chunk's shard from its children's fragments,
streamed node by node (``raymesh.stitch``), whole or split over several tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from raymesh.formats.mesh_layout import shard_key
from raymesh.placement import stitch_work
from raymesh.runs.summary import ChunkOutput, ChunkStats
from raymesh.storage import RangeError

if TYPE_CHECKING:
    from raymesh.stitch import StitchPlan

SPOOL_BYTES = 2**20  # finished fragments held in memory before spilling to a temporary file


class StitchedPart:
    """Fragments of one slice of a chunk's nodes, packed in one buffer (cheap to ship through Ray)."""

    def __init__(self) -> None:
        self.stats: ChunkStats | None = None
        self.nodes: list[int] = []
        self.sizes: list[int] = []
        self._pieces: list[bytes] = []
        self.data = np.zeros(0, dtype=np.uint8)

    def add(self, node: int, value: bytes) -> None:
        self.nodes.append(int(node))
        self.sizes.append(len(value))
        self._pieces.append(value)

    def __getstate__(self):
        data = np.frombuffer(b"".join(self._pieces), dtype=np.uint8) if self._pieces else self.data
        return {"stats": self.stats, "nodes": self.nodes, "sizes": self.sizes, "data": data}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._pieces = []

    def fragments(self):
        if self._pieces:
            yield from zip(self.nodes, self._pieces)
            return
        offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        for node, lo, hi in zip(self.nodes, offsets[:-1], offsets[1:]):
            yield node, bytes(self.data[lo:hi])


class StitchChunks:
    """``MeshJob``'s stitching task body (a mixin: ``store``, ``grid``, ``bucket``, ``sharding``
    and the failure records come from the job)."""

    def open_shard(self, layer: int, chunk_id: int):
        """A ranged reader over a chunk's shard in storage (None for a missing file)."""
        key = shard_key(self.meta.layout, layer, chunk_id)
        return lambda start, stop: self.bucket.read_range(key, start, stop)

    def fragment_reader(self, whole_shards: bool = False):
        from raymesh.stitch import FragmentReader, WholeShardReader

        if whole_shards:
            layout = self.meta.layout
            return WholeShardReader(layout, self.sharding,
                                    lambda layer, chunk: self.bucket.read(shard_key(layout, layer, chunk)))
        return FragmentReader(self.meta.layout, self.sharding, self.open_shard)

    def stitch_chunk(self, layer: int, coords, reader=None, shards: dict[int, np.ndarray] | None = None,
                     keep_shard: bool = False, split: bool = False) -> ChunkOutput:
        """Stitch one chunk node by node into its shard, streaming: one node's children decoded at
        a time, finished fragments spooled to a temporary file, the shard written whole at the end.

        With ``split`` (the Ray runtime), a chunk whose nodes need more than one task's work is
        not stitched here: the answer carries its plan cut into parts (``ChunkOutput.split``), for
        tasks that run ``stitch_part`` in parallel and one that merges them (``write_parts``).
        Planning once here means each part holds only its own nodes and minishard tables.
        """
        plan, reader, hits = self._plan(layer, coords, reader, shards)
        if split:
            pieces = self._split(plan, reader)
            if len(pieces) > 1:
                stats = ChunkStats(layer, tuple(coords), nodes=len(plan.descendants), parts=len(pieces))
                return ChunkOutput(stats, split=pieces)
            order = list(pieces[0].descendants)
        else:
            from raymesh.formats.sharding import canonical_order

            order = canonical_order(plan.descendants, self.sharding(layer))
        builder = self._shard_builder(layer)
        try:
            stats = self._stitch_nodes(builder, plan, order, reader, hits)
            out = self._write_shard(builder, stats, layer, coords, keep_shard)
        finally:
            builder.close()
        self._lod_after(out.stats, layer, coords, plan)
        return out

    def plan_parts(self, layer: int, coords, parts: int | None = None,
                   shards: dict[int, np.ndarray] | None = None) -> list[StitchPlan]:
        """The chunk's plan cut into ``parts`` (default: as many as the memory budget needs; one
        when it fits), each a run of canonical order balanced by cost."""
        plan, reader, _ = self._plan(layer, coords, None, shards)
        return self._split(plan, reader, parts)

    def stitch_part(self, plan: StitchPlan, shards: dict[int, np.ndarray] | None = None) -> "StitchedPart":
        """The nodes of one part of a split chunk (``plan_parts``), in the plan's order: its
        fragments come back to be merged by ``write_parts``."""
        reader, hits = self._reader(None, shards)
        out = StitchedPart()
        out.stats = self._stitch_nodes(out, plan, list(plan.descendants), reader, hits)
        return out

    def write_parts(self, layer: int, coords, parts: list["StitchedPart"], keep_shard: bool = False) -> ChunkOutput:
        """The chunk's one shard from its parts, in order (each part is a run of canonical order,
        so the bytes equal a single task's)."""
        builder = self._shard_builder(layer)
        stats = ChunkStats(layer, tuple(coords))
        try:
            for piece in parts:
                for node, value in piece.fragments():
                    builder.add(node, value)
                for name in ("nodes", "missing", "shard_reads", "cache_reads", "bytes_read"):
                    setattr(stats, name, getattr(stats, name) + getattr(piece.stats, name))
                stats.failures += piece.stats.failures
                stats.unstitched += piece.stats.unstitched
            stats.parts = len(parts)
            out = self._write_shard(builder, stats, layer, coords, keep_shard)
        finally:
            builder.close()
        self._lod_after(out.stats, layer, coords, None)
        return out

    def _shard_builder(self, layer: int):
        """Finished fragments are spooled out as they come: the shard is ~8x bigger each layer,
        so keeping it in memory would make a task grow with the layer, as PCG's does."""
        from raymesh.formats.sharding import ShardBuilder

        budget = self.config.memory_budget
        return ShardBuilder(self.sharding(layer), spool_bytes=max(1, min(budget // 4, SPOOL_BYTES)))

    def _reader(self, reader, shards):
        hits: set[int] = set()
        if reader is None:
            reader = self.fragment_reader() if not shards else self._cached_reader(shards, hits)
        return reader, hits

    def _plan(self, layer: int, coords, reader, shards):
        from raymesh.stitch import plan_chunk

        chunk = int(self.meta.layout.chunk_id(layer, *coords))
        plan = plan_chunk(self.store, layer, chunk, self.time_stamp)
        reader, hits = self._reader(reader, shards)
        reader.preload(d for desc in plan.descendants.values() for d in desc)
        return plan, reader, hits

    def _split(self, plan, reader, parts: int | None = None) -> list[StitchPlan]:
        """Parts from the minishard indices alone: nodes over the node limit cost nothing (they
        are not stitched), the others their children's fragment bytes."""
        from raymesh.placement import stitch_parts
        from raymesh.formats.sharding import canonical_order
        from raymesh.stitch import node_cost, split_plan

        limit = self.node_limit
        cost = {n: (c if c <= limit else 0) for n, c in node_cost(plan, reader).items()}
        parts = parts or stitch_parts(sum(cost.values()), self.config.memory_budget)
        return split_plan(plan, canonical_order(plan.descendants, self.sharding(plan.layer)), cost, parts)

    def _stitch_nodes(self, sink, plan, order: list[int], reader, cache_hits: set[int]) -> ChunkStats:
        from raymesh.stitch import stitch_nodes

        coords = tuple(int(c) for c in self.meta.layout.get_chunk_coordinates(plan.chunk_id))
        stats = ChunkStats(plan.layer, coords, nodes=len(order))
        for result in stitch_nodes(self.grid, plan, order, reader, limit=self.node_limit):
            stats.missing += result.missing
            if result.unstitched:
                stats.unstitched.append(result.node)
            elif result.failure:
                stats.failures.append(result.failure)
                if result.bad_child:
                    self.mark_failed(result.bad_child, f"the fragment of node {result.bad_child} did not decode "
                                     f"when layer {plan.layer} chunk {list(coords)} was stitched")
            else:
                sink.add(result.node, result.data)
        stats.cache_reads = len(cache_hits)
        stats.shard_reads = reader.stats.shard_files - len(cache_hits)
        stats.bytes_read = reader.stats.bytes_read
        return stats

    @property
    def node_limit(self) -> int:
        """Child-fragment bytes above which a node keeps no mesh of its own (placement.node_limit)."""
        from raymesh.placement import node_limit

        return node_limit(self.config.memory_budget, self.config.max_stitch_bytes)

    def _write_shard(self, builder, stats: ChunkStats, layer: int, coords, keep_shard: bool) -> ChunkOutput:
        key = self.shard_path(layer, coords)
        if stats.failures:
            self.record_outcome(layer, coords, stats.failures)
        stats.fragments = len(builder)
        if keep_shard and builder.data_bytes > stitch_work(self.config.memory_budget) // 2:
            # Handing the shard to the caches means assembling it in this task's memory; past half
            # the work its readers take their fragments from storage instead (by ranged reads).
            keep_shard = False
        if keep_shard and len(builder):
            # The caches want the bytes; assemble them once and write that same buffer.
            data = np.concatenate([np.frombuffer(p, dtype=np.uint8) for p in builder.pieces()])
            stats.bytes_written = self.bucket.write_pieces(key, [memoryview(data)])
        else:
            data = None
            stats.bytes_written = self.bucket.write_pieces(key, builder.pieces())
        stats.shard_bytes = stats.bytes_written
        if not stats.failures:
            self.record_outcome(layer, coords, [])
        return self._output(stats, data, list(builder.keys), keep_shard)

    def _cached_reader(self, shards: dict[int, np.ndarray], hits: set[int]):
        """A fragment reader that serves the shards it was handed (zero-copy views of the object
        store) and falls back to storage for the others (a lost cache, a chunk from an older run)."""
        from raymesh.stitch import FragmentReader

        def open_shard(layer: int, chunk: int):
            data = shards.get(chunk)
            if data is None:
                return self.open_shard(layer, chunk)
            hits.add(chunk)

            def read(start: int, stop: int) -> bytes:
                if start > len(data) or stop > len(data):
                    raise RangeError(f"bytes [{start}:{stop}] are past the end of a {len(data)}-byte shard")
                return bytes(data[start:stop])
            return read

        return FragmentReader(self.meta.layout, self.sharding, open_shard)
