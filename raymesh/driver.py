"""Orchestration: plan a job, run its layers in order on an executor, write metadata, report.

The driver streams chunks lazily to the executor and consumes results as they finish; each layer
completes before the next starts (stitching reads the layer below).
"""

from __future__ import annotations

import sys
import time

from raymesh.config import MeshConfig
from raymesh.executors import Executor, SerialExecutor
from raymesh.job import LayerSummary, MeshJob, RunSummary


def make_executor(config: MeshConfig) -> Executor:
    if config.executor == "serial":
        return SerialExecutor()
    from actors.ray_executor import RayExecutor

    return RayExecutor(address=config.address, num_cpus=config.workers)


def run(config: MeshConfig, executor: Executor | None = None, progress: bool = True) -> RunSummary:
    """Run a meshing job to completion. The Python API for notebooks (also over Ray Client)."""
    job = MeshJob(config)
    job.validate()
    own_executor = executor is None
    executor = executor or make_executor(config)
    summary = RunSummary(graph=config.graph, mesh_path=job.mesh_url)
    t_job = time.perf_counter()
    try:
        for layer in config.layers:
            t0 = time.perf_counter()
            layer_summary = LayerSummary(layer)
            total = job.count_chunks(layer)
            bar = _progress(total, f"layer {layer}", progress)
            for stats in executor.run_layer(job, layer):
                layer_summary.add(stats)
                bar.update(1)
            bar.close()
            layer_summary.seconds = round(time.perf_counter() - t0, 3)
            summary.layers.append(layer_summary)
            summary.graph_meta = job.write_metadata(max_layer=layer)
    finally:
        executor.end_job()
        if own_executor:
            executor.shutdown()
    summary.seconds = round(time.perf_counter() - t_job, 3)
    return summary


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, file=sys.stderr)
