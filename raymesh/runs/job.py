"""One meshing job: its plan (validated layers and chunk ranges), the state of each chunk in the
mesh dir, the per-chunk task (dispatched by layer kind: ``runs.layer2``, ``runs.stitching``) and
the metadata written at the end.

A ``MeshJob`` pickles as its config, so Ray tasks receive it cheaply and reopen the store,
segmentation and output on the worker.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Iterator

import numpy as np

from raymesh.config import MeshConfig
from raymesh.formats.draco import MeshGrid
from raymesh.errors import ConfigError
from raymesh.graph import open_store
from raymesh.graph.base import to_datetime, utcnow
from raymesh.formats.mesh_layout import RUN_RECORD, default_sharding, failed_key, mesh_info, mesh_metadata, shard_key
from raymesh.placement import TaskRequest, l2_request, layer_resources, stitch_request
from raymesh.runs.layer2 import Layer2Chunks
from raymesh.runs.lod_chain import LodChunks
from raymesh.runs.stitching import SPOOL_BYTES, StitchChunks, StitchedPart
from raymesh.runs.summary import ChunkOutput, ChunkStats, LayerSummary, RunSummary
from raymesh.formats.sharding import ShardError, ShardingSpec, check_shard
from raymesh.storage import Bucket, RangeError, join

if TYPE_CHECKING:
    from raymesh.runs.record import RunRecord

__all__ = ["MeshJob", "ChunkOutput", "ChunkStats", "LayerSummary", "RunSummary", "StitchedPart", "SPOOL_BYTES",
           "NOT_WRITTEN"]

NOT_WRITTEN = "not written yet"


class MeshJob(Layer2Chunks, StitchChunks, LodChunks):
    """A meshing run's plan and per-chunk task; the task bodies of each layer kind are mixins."""

    def __init__(self, config: MeshConfig, read_gate=None):
        self.config = config
        self.time_stamp = to_datetime(config.time_stamp) if config.time_stamp is not None else utcnow()
        # A context-manager factory every graph read goes through (the Ray runtime's cluster-wide
        # cap on concurrent reads); None: no cap.
        self.read_gate = read_gate
        self.record: RunRecord | None = None  # what the mesh dir holds (``begin``)
        # This job object and its copies on workers: what a process keeps between the job's
        # chunks (the layer-2 remap cache) is kept for this id alone, so a later job in the same
        # process (a rerun after a segmentation file was put back) reads everything afresh.
        self.run_id = uuid.uuid4().hex

    def __reduce__(self):
        return (_restore_job, (self.config, self.time_stamp.timestamp(), self.read_gate, self.run_id))

    # ---- resources opened lazily (also on Ray workers) ----------------------------------------
    @cached_property
    def store(self):
        store = open_store(self.config.graph)
        if self.read_gate is not None:
            store.read_gate = self.read_gate
        return store

    @cached_property
    def meta(self):
        return self.store.meta

    @cached_property
    def mip(self) -> int:
        mip = self.config.mip
        if mip is None:
            mip = int(self.meta.mesh_settings().get("mip", 0))
        if mip >= self.meta.mips:
            raise ConfigError(
                f"mip {mip} does not exist in the segmentation {self.meta.segmentation_path} "
                f"(it has mips 0..{self.meta.mips - 1}); pass --mip with one of those"
            )
        return mip

    @cached_property
    def grid(self) -> MeshGrid:
        return MeshGrid.from_meta(self.meta, self.mip)

    @cached_property
    def mesh_url(self) -> str:
        return join(self.meta.segmentation_path, self.config.mesh_dir)

    @cached_property
    def bucket(self) -> Bucket:
        return Bucket(self.mesh_url)

    def sharding(self, layer: int) -> ShardingSpec:
        override = self.config.sharding.get(layer)
        if override is None:
            return default_sharding(layer)
        return ShardingSpec.from_json(override.model_dump(by_alias=True))

    # ---- plan ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Fail before any work: unknown graph, missing segmentation, bad mip, layers, range."""
        n_layers = self.meta.layer_count
        bad = [layer for layer in self.config.layers if layer > n_layers]
        if bad:
            raise ConfigError(f"layers {bad} do not exist: this graph has layers 2..{n_layers}")
        _ = self.grid
        for layer in self.config.layers:
            self.chunk_range(layer)

    def chunk_range(self, layer: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``[start, end)`` chunk coordinates of a layer; a range outside the layer is an error."""
        bounds = self.meta.layout.layer_chunk_bounds(layer)
        if self.config.chunk_start is None:
            return (0, 0, 0), bounds
        start = tuple(int(v) for v in self.config.chunk_start)
        end = tuple(int(v) for v in self.config.chunk_end)
        if layer != self.config.layers[0]:
            # A range names chunks of the first layer; higher layers cover the same region.
            shift = 2 ** (layer - self.config.layers[0])
            start = tuple(s // shift for s in start)
            end = tuple(min(-(-e // shift), b) for e, b in zip(end, bounds))
        if any(s < 0 or e > b or s >= e for s, e, b in zip(start, end, bounds)):
            raise ConfigError(
                f"chunk range {list(start)}..{list(end)} is outside layer {layer}, whose chunks are "
                f"[0, 0, 0]..{list(bounds)} (end exclusive)"
            )
        return start, end  # type: ignore[return-value]

    def iter_chunks(self, layer: int) -> Iterator[tuple[int, tuple[int, int, int]]]:
        """Chunks of a layer, lazily (a layer can have millions). Layer 2 goes from the last chunk
        to the first: a chunk's upper neighbours are then meshed before it, and the planes of
        theirs it needs (``layer2.mesh.RemapCache``) are still at hand in the process."""
        start, end = self.chunk_range(layer)
        for coords in self.meta.layout.iter_chunk_coords(layer, start, end, descending=layer == 2):
            yield layer, coords

    def count_chunks(self, layer: int) -> int:
        start, end = self.chunk_range(layer)
        return int(np.prod(np.subtract(end, start)))

    def task_request(self, layer: int, child_bytes: int = 0) -> TaskRequest:
        """What one chunk's task asks the scheduler for (memory estimate, big-memory resource)."""
        budget = self.config.memory_budget
        if layer == 2:
            memory = l2_request(np.asarray(self.grid.block_shape(2)) + 1, budget)
        else:
            memory = stitch_request(child_bytes, budget)
        return TaskRequest(memory, layer_resources(layer, self.config.highmem_layer, self.config.highmem_resource,
                                                   self.config.general_resource))

    # ---- the task body ------------------------------------------------------------------------
    def shard_path(self, layer: int, coords) -> str:
        layout = self.meta.layout
        return shard_key(layout, layer, int(layout.chunk_id(layer, *coords)))

    def run_chunk(self, item: tuple[int, tuple[int, int, int]]) -> ChunkStats:
        """Mesh one chunk and write its shard whole (or skip it when a previous run wrote it)."""
        return self.mesh_chunk(item).stats

    def mesh_chunk(self, item: tuple[int, tuple[int, int, int]], shards: dict[int, np.ndarray] | None = None,
                   keep_shard: bool = False, split: bool = False) -> ChunkOutput:
        """``run_chunk`` for the Ray runtime: child shards may come from the object store
        (``shards``: chunk id -> bytes), and with ``keep_shard`` the chunk's own shard comes back
        with the chunks that will read it, so the layer above does not read it from storage."""
        layer, coords = item
        t0 = time.perf_counter()
        key = self.shard_path(layer, coords)
        redo = "" if self.config.force else self.chunk_state(layer, coords)
        if redo is None:
            out = self._resumed(layer, coords, key, keep_shard)
            lod_redo = self.lod_state(layer, coords) if layer > 2 and self.config.lod_chain else None
            if lod_redo is not None:  # stitched by an earlier run without its LOD shard
                self._lod_after(out.stats, layer, coords, None)
                out.stats.redone = lod_redo
                out.stats.seconds = time.perf_counter() - t0
            return out
        if layer > 2:
            out = self.stitch_chunk(layer, coords, shards=shards, keep_shard=keep_shard, split=split)
        else:
            out = self._mesh_l2(coords, keep_shard)
        out.stats.seconds = time.perf_counter() - t0
        out.stats.redone = "" if redo == NOT_WRITTEN else redo
        return out

    def chunk_state(self, layer: int, coords) -> str | None:
        """None when a previous run wrote the chunk whole and without failures; else why it must be
        (re)done. Costs a rerun two ranged reads per finished chunk (``sharding.check_shard``:
        the indices, no fragment) and one for its failure record."""
        key = self.shard_path(layer, coords)

        def read(start: int, stop: int) -> bytes | None:
            try:
                return self.bucket.read_range(key, start, stop)
            except RangeError:
                return b""  # past the end of the file: a short read

        try:
            count = check_shard(read, self.sharding(layer))
        except ShardError as exc:
            return f"its shard {key} is truncated or corrupt ({exc})"
        if count is None:
            return NOT_WRITTEN
        record = self.bucket.read(self.failed_path(layer, coords))
        if record is not None:
            return "it failed in an earlier run: " + "; ".join(_failures_in(record))
        return None

    def failed_path(self, layer: int, coords) -> str:
        layout = self.meta.layout
        return failed_key(layout, layer, int(layout.chunk_id(layer, *coords)))

    def record_outcome(self, layer: int, coords, failures: list[str]) -> None:
        """A chunk with failures keeps a record beside its shard, written before the shard, so a
        plain rerun does it again; a chunk done without failures loses its record after its shard
        is written. Killed in between, the chunk is done again: never a gap marked done."""
        key = self.failed_path(layer, coords)
        if failures:
            self.bucket.write(key, json.dumps({"layer": int(layer), "chunk": [int(c) for c in coords],
                                               "failures": failures}, indent=1).encode())
        else:
            self.bucket.delete(key)  # one request, whether or not there is a record

    def mark_failed(self, node: int, why: str) -> None:
        """Record a failure on the chunk holding ``node``'s fragment (a corrupt fragment found by
        the layer above), so a plain rerun of that layer redoes it."""
        layout = self.meta.layout
        layer = int(layout.get_chunk_layer(node))
        coords = [int(c) for c in layout.get_chunk_coordinates(node)]
        self.record_outcome(layer, coords, [why])

    def _resumed(self, layer: int, coords, key: str, keep_shard: bool) -> ChunkOutput:
        """A chunk a previous run wrote whole. Its shard is loaded for the caches only when a chunk
        of this job that reads it is not done yet (a run resumed mid-layer, or started above 2)."""
        stats = ChunkStats(layer, tuple(coords), skipped=True)
        if not keep_shard:
            return ChunkOutput(stats)
        data = self.bucket.read(key)
        stats.shard_reads, stats.shard_bytes = 1, len(data)
        from raymesh.formats.sharding import disassemble_shard

        nodes = sorted(disassemble_shard(data, self.sharding(layer)))
        out = self._output(stats, data, nodes, keep_shard)
        layout = self.meta.layout
        if all(self.bucket.exists(shard_key(layout, c_layer, c)) for c_layer, c in out.consumers):
            return ChunkOutput(stats)
        return out

    def _output(self, stats: ChunkStats, data, nodes: list[int], keep_shard: bool) -> ChunkOutput:
        if not keep_shard or not nodes:
            return ChunkOutput(stats)
        consumers = self.consumer_chunks(nodes)
        if not consumers:
            return ChunkOutput(stats)
        shard = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        return ChunkOutput(stats, shard, consumers)

    def consumer_chunks(self, nodes: list[int]) -> list[tuple[int, int]]:
        """``(layer, chunk id)`` of the chunks this job stitches that read these nodes' fragments."""
        from raymesh.stitch import consumer_nodes

        layout = self.meta.layout
        consumers = consumer_nodes(self.store, np.array(nodes, dtype=np.uint64), self.time_stamp)
        consumers = consumers[consumers != 0]
        chunks = np.unique(layout.get_chunk_id(consumers)) if len(consumers) else []
        wanted = set(self.config.layers)
        out = []
        for chunk in chunks:
            layer = int(layout.get_chunk_layer(chunk))
            if layer in wanted and self._in_range(layer, layout.get_chunk_coordinates(chunk)):
                out.append((layer, int(chunk)))
        return out

    def _in_range(self, layer: int, coords) -> bool:
        start, end = self.chunk_range(layer)
        return all(s <= int(c) < e for s, c, e in zip(start, coords, end))

    # ---- the run record and metadata ---------------------------------------------------------
    def begin(self) -> "RunRecord":
        """Pin this run to what its mesh dir already holds (``resolve_record``), before any chunk
        runs; a new mesh dir gets its record (and mesh info) now, so an interrupted first run
        resumes at the same time stamp."""
        from raymesh.runs.record import RunRecord

        data = self.bucket.read(RUN_RECORD)
        record = self.resolve_record(data)
        if data is None or RunRecord.from_bytes(data, RUN_RECORD) != record:
            self.bucket.write(RUN_RECORD, record.to_bytes())
        info = self.mesh_info_bytes()
        if self.bucket.read("info") != info:
            self.bucket.write("info", info)
        return record

    def resolve_record(self, data: bytes | None = None, *, must_exist: bool = False) -> "RunRecord":
        """What the mesh dir holds, and this job pinned to it; reads, never writes.

        A mesh dir's meshes all show one graph state made one way: a later run (resumed, partial,
        layer by layer) meshes at the recorded time stamp with the recorded mip and max_error
        unless told otherwise, and one told otherwise is refused rather than mixing two kinds of
        meshes. Without a record, the graph's ``custom_data['mesh']`` for this dir stands in;
        without either, this job's settings make a new record (or, ``must_exist``, an error).
        """
        from raymesh.runs.record import RecordError, RunRecord

        if data is None:
            data = self.bucket.read(RUN_RECORD)
        try:
            record = RunRecord.from_bytes(data, self.mesh_url + RUN_RECORD) if data is not None else None
        except RecordError as exc:
            raise ConfigError(str(exc)) from None
        settings = self.meta.mesh_settings()
        if record is None and settings.get("dir") == self.config.mesh_dir:
            record = RunRecord.from_graph_settings(settings)
        if record is None and must_exist:
            raise ConfigError(f"{self.mesh_url} holds no meshes of this graph (no {RUN_RECORD}, and the graph's "
                              f"custom_data['mesh'] names no mesh dir {self.config.mesh_dir!r}); check --mesh-dir, "
                              "or run `raymesh mesh` first")
        given = self.config.model_fields_set
        if record is not None:
            clashes = record.clashes(mip=self.config.mip if "mip" in given else None,
                                     max_error=self.config.max_error if "max_error" in given else None,
                                     time_stamp=self.config.time_stamp if "time_stamp" in given else None,
                                     simplifier=self.config.simplifier if "simplifier" in given else None)
            if clashes:
                raise ConfigError(
                    f"the mesh dir {self.mesh_url} holds meshes made otherwise; this run asks for "
                    + "; ".join(clashes) + f". Mesh into another --mesh-dir, or delete {self.mesh_url} to start over")
            # A dir with the LOD chain keeps it current (a rerun or repair redoing a chunk without it
            # would leave that chunk's LOD shard stale), unless this run says --no-lod-chain.
            lod_chain = self.config.lod_chain if "lod_chain" in given else (record.lod_chain or self.config.lod_chain)
            record.lod_chain = record.lod_chain or lod_chain
            self.config = self.config.model_copy(update={"mip": record.mip, "max_error": record.max_error,
                                                         "time_stamp": record.time_stamp, "lod_chain": lod_chain,
                                                         "simplifier": record.simplifier})
            self.time_stamp = to_datetime(record.time_stamp)
            for name in ("mip", "grid"):
                self.__dict__.pop(name, None)
        else:
            record = RunRecord(time_stamp=self.time_stamp.timestamp(), mip=self.mip,
                               max_error=float(self.config.max_error), lod_chain=bool(self.config.lod_chain),
                               simplifier=self.config.simplifier)
        self.record = record
        return record

    def mesh_info_bytes(self) -> bytes:
        """The mesh dir's ``info`` as this job writes it (per-layer sharding, mip, chunk size)."""
        shardings = {layer: self.sharding(layer) for layer in range(2, self.meta.layer_count + 1)}
        return json.dumps(mesh_info(self.meta, self.mip, shardings, self.grid.distortion), indent=2).encode()

    def write_metadata(self, layer: int) -> str:
        """After ``layer`` completed without failures: the run record, the segmentation's
        ``mesh``/``mesh_metadata`` and the graph's ``custom_data['mesh']``, each written only when
        it changes. ``max_layer`` only goes up and ``initial_ts`` stays the record's.

        Returns what happened to the graph meta: a PCG table is shared with proofreading, so
        there it is a dry run unless ``graph_meta: write`` asks for it."""
        record = self.record or self.begin()
        if layer > record.max_layer:
            record.max_layer = int(layer)
            self.bucket.write(RUN_RECORD, record.to_bytes())
        grid = self.grid
        uniform = grid.uniform_grid_size(record.max_layer)
        per_layer = {}
        if uniform is None:
            settings = grid.chunk_settings(int(self.meta.layout.chunk_id(2, 0, 0, 0)))
            per_layer[2] = settings.bin
        ws = Bucket(self.meta.segmentation_path)
        info = json.loads(ws.read("info"))
        updated = {**info, "mesh": self.config.mesh_dir,
                   "mesh_metadata": mesh_metadata(uniform, per_layer, record.max_layer)}
        if updated != info:
            ws.write("info", json.dumps(updated, indent=2).encode())
        meta = self.store.meta
        before = meta.custom_data.get("mesh")
        after = {**(before if isinstance(before, dict) and before.get("dir") == self.config.mesh_dir else {}),
                 "max_layer": int(record.max_layer), "mip": int(record.mip), "max_error": float(record.max_error),
                 "dir": self.config.mesh_dir, "initial_ts": record.initial_ts}
        if after == before:
            return "graph meta unchanged: custom_data['mesh'] already records these meshes"
        mode = self.config.graph_meta
        if mode == "auto":
            mode = "dry-run" if self.config.graph.startswith("bigtable://") else "write"
        change = f"custom_data['mesh'] = {json.dumps(after, sort_keys=True)} (was {json.dumps(before, sort_keys=True)})"
        if mode == "skip":
            return "graph meta left as it is (graph_meta: skip)"
        if mode == "dry-run":
            return (f"dry run, graph meta not changed: would write {change} as a new meta cell; "
                    "rerun with --graph-meta write to record it")
        meta.custom_data["mesh"] = after
        self.store.update_meta(meta)
        return f"graph meta: wrote {change}"


def _failures_in(record: bytes) -> list[str]:
    try:
        return [str(f) for f in json.loads(record).get("failures", [])] or ["(no reason recorded)"]
    except (ValueError, AttributeError):
        return ["(its failure record is unreadable)"]


def _restore_job(config: MeshConfig, ts: float, read_gate=None, run_id: str | None = None) -> MeshJob:
    job = MeshJob(config, read_gate)
    job.time_stamp = to_datetime(ts)
    job.run_id = run_id or job.run_id
    return job
