"""The driver at connectome scale: one layer of ~10 million chunks with a no-op task body (issue 5).

    python -m benchmarks.driver_scale [--chunks 10000000] [--chunks-per-task 2000]

Everything of the real Ray runtime runs (lazy chunk iteration, batching, the bounded window,
placement checks, per-chunk stats back to the driver and summed into the layer summary) except
the meshing itself. Reports the driver's peak RSS (sampled) and the chunk submission rate.
Target: driver memory under 1 GiB.
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
from dataclasses import dataclass, field

from benchmarks.common import emit


@dataclass
class _Config:
    layers: list = field(default_factory=lambda: [2])
    chunks_per_task: int = 2000
    shard_cache: bool = False
    memory_budget: int = 2**30
    placement_timeout: float = 0.0
    highmem_layer: int | None = None
    highmem_resource: str = "raymesh_highmem"


class NoopJob:
    """What the runtime needs from a ``MeshJob``, over a cube of chunks, with a task body that
    does nothing but return the chunk's stats."""

    def __init__(self, side: int, chunks_per_task: int):
        self.side = side
        self.config = _Config(chunks_per_task=chunks_per_task)

    def iter_chunks(self, layer: int):
        for coords in itertools.product(range(self.side), repeat=3):
            yield layer, coords

    def task_request(self, layer: int, child_bytes: int = 0):
        from raymesh.placement import TaskRequest

        return TaskRequest(64 * 2**20)

    def mesh_chunk(self, item, shards=None, keep_shard=False):
        from raymesh.runs.job import ChunkOutput, ChunkStats

        layer, coords = item
        return ChunkOutput(ChunkStats(layer, coords))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=10_000_000)
    ap.add_argument("--chunks-per-task", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import psutil
    import ray

    from actors.ray_executor import RayExecutor
    from raymesh.runs.job import LayerSummary

    side = round(args.chunks ** (1 / 3))
    side += side ** 3 < args.chunks
    job = NoopJob(side, args.chunks_per_task)
    ray.init(num_cpus=args.workers, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor()
    me = psutil.Process(os.getpid())
    rss_start = me.memory_info().rss
    peak = [rss_start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = LayerSummary(2)
    t0 = time.perf_counter()
    for stats in executor.run_layer(job, 2):
        summary.add(stats)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    executor.shutdown()
    emit("driver_scale", {
        "chunks": summary.chunks, "seconds": round(seconds, 1),
        "chunks_per_second": round(summary.chunks / seconds),
        "tasks_per_second": round(summary.chunks / args.chunks_per_task / seconds, 1),
        "driver_peak_rss_mib": round(peak[0] / 2**20, 1),
        "driver_rss_growth_mib": round((peak[0] - rss_start) / 2**20, 1),
        "under_1_gib": peak[0] < 2**30,
    }, {"chunks_requested": args.chunks, "cube_side": side, "chunks_per_task": args.chunks_per_task,
        "workers": args.workers, "window": executor.window, "task_body": "no-op (stats only)"})


if __name__ == "__main__":
    main()
