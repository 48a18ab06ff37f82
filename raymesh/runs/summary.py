"""What a task tells the driver about a chunk, and what the driver tells the user about a run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

@dataclass
class ChunkStats:
    layer: int
    chunk: tuple[int, int, int]
    nodes: int = 0
    fragments: int = 0
    bytes_written: int = 0
    failures: list[str] = field(default_factory=list)
    skipped: bool = False
    seconds: float = 0.0
    shard_reads: int = 0  # shard files read from storage (child shards; own shard when resumed)
    cache_reads: int = 0  # child shards handed over from the object store
    bytes_read: int = 0  # child shard bytes read (stitching)
    shard_bytes: int = 0  # size of this chunk's shard, written now or found from a previous run
    missing: int = 0  # descendants without a fragment in an existing child shard
    unstitched: list[int] = field(default_factory=list)  # nodes left to their children's meshes
    parts: int = 1  # tasks the chunk's nodes were split over (stitching, past the memory budget)
    redone: str = ""  # why a chunk a previous run wrote was done again (it failed, its shard is unsound)
    lod_fragments: int = 0  # LOD-chain meshes written (layers 3 and up)
    lod_bytes: int = 0  # size of the chunk's LOD shard
    lod_faces: int = 0  # triangles in them
    lod_unsimplified: int = 0  # LOD meshes whose checked collapse ran out of rounds: input kept whole
    lod_seconds: float = 0.0


@dataclass
class LayerSummary:
    layer: int
    chunks: int = 0
    chunks_skipped: int = 0
    nodes: int = 0
    fragments: int = 0
    bytes_written: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shard_reads: int = 0
    cache_reads: int = 0
    bytes_read: int = 0
    missing: int = 0
    unstitched: int = 0  # nodes over the node limit (or above one), left to their children's meshes
    chunks_split: int = 0  # chunks whose nodes were split over several tasks
    redone: list[str] = field(default_factory=list)  # chunks of earlier runs done again, and why
    lod_fragments: int = 0
    lod_bytes: int = 0
    lod_faces: int = 0
    lod_unsimplified: int = 0
    lod_seconds: float = 0.0

    def add(self, s: ChunkStats) -> None:
        self.chunks += 1
        if s.redone:
            self.redone.append(f"chunk {s.chunk}: {s.redone}")
        self.chunks_skipped += int(s.skipped)
        self.nodes += s.nodes
        self.fragments += s.fragments
        self.bytes_written += s.bytes_written
        self.failures.extend(f"chunk {s.chunk}: {f}" for f in s.failures)
        self.shard_reads += s.shard_reads
        self.cache_reads += s.cache_reads
        self.bytes_read += s.bytes_read
        self.missing += s.missing
        self.unstitched += len(s.unstitched)
        self.chunks_split += int(s.parts > 1)
        self.lod_fragments += s.lod_fragments
        self.lod_bytes += s.lod_bytes
        self.lod_faces += s.lod_faces
        self.lod_unsimplified += s.lod_unsimplified
        self.lod_seconds += s.lod_seconds


@dataclass
class RunSummary:
    graph: str
    mesh_path: str
    layers: list[LayerSummary] = field(default_factory=list)
    seconds: float = 0.0
    graph_meta: str = ""  # what happened to the graph's custom_data["mesh"]
    not_run: list[int] = field(default_factory=list)  # layers left out because one below failed
    executor: str = ""  # where the chunks ran

    @property
    def failed(self) -> bool:
        return any(layer.failures for layer in self.layers) or bool(self.not_run)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class ChunkOutput:
    """A task's answer for one chunk: its stats and, for the shard caches, the shard's bytes with
    the chunks of this job that will read them (none when no later layer does)."""

    stats: ChunkStats
    shard: np.ndarray | None = None
    consumers: list[tuple[int, int]] = field(default_factory=list)  # (layer, chunk id)
    split: list | None = None  # the chunk was not stitched: its plan in parts (StitchPlan each)
