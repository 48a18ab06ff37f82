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


SMALL_JOB_CHUNKS = 64  # chunks (all layers) below which a local run skips starting Ray


def make_executor(config: MeshConfig, chunks: int | None = None) -> Executor:
    """The executor a config asks for; ``auto`` runs a job of fewer than ``SMALL_JOB_CHUNKS``
    chunks in this process when there is no cluster to join (an address, or a Ray job's
    RAY_ADDRESS): a local Ray takes longer to start and stop than such a job takes to run."""
    import os

    if config.executor == "auto" and chunks is not None and chunks < SMALL_JOB_CHUNKS \
            and not config.address and not os.environ.get("RAY_ADDRESS"):
        return SerialExecutor()
    if config.executor == "serial":
        return SerialExecutor()
    from actors.ray_executor import RayExecutor

    return RayExecutor(address=config.address, num_cpus=config.workers)


def run(config: MeshConfig, executor: Executor | None = None, progress: bool = True) -> RunSummary:
    """Run a meshing job to completion. The Python API for notebooks (also over Ray Client).

    A layer with failures ends the run there: stitching on top of it would make parents that
    miss part of their object and look done. ``RunSummary.failed`` says so; a plain rerun redoes
    exactly the failed chunks (their failure records) and carries on.
    """
    job = MeshJob(config)
    job.validate()
    job.begin()
    own_executor = executor is None
    executor = executor or make_executor(job.config, sum(job.count_chunks(layer) for layer in job.config.layers))
    summary = RunSummary(graph=config.graph, mesh_path=job.mesh_url)
    summary.executor = type(executor).__name__
    if isinstance(executor, SerialExecutor) and own_executor and config.executor == "auto":
        summary.executor = "serial (small job)"
    t_job = time.perf_counter()
    try:
        for i, layer in enumerate(job.config.layers):
            t0 = time.perf_counter()
            layer_summary = LayerSummary(layer)
            total = job.count_chunks(layer)
            bar = _progress(total, f"layer {layer}", progress)
            for stats in executor.run_layer(job, layer):
                layer_summary.add(stats)
                bar.update(1)
            bar.close()
            layer_summary.seconds = round(time.perf_counter() - t0, 3)
            gap = coverage_gap(layer_summary)
            if gap:
                layer_summary.failures.append(gap)
            summary.layers.append(layer_summary)
            if layer_summary.failures:
                summary.not_run = job.config.layers[i + 1:]
                break
            summary.graph_meta = job.write_metadata(layer)
    finally:
        executor.end_job()
        if own_executor:
            executor.shutdown()
    summary.seconds = round(time.perf_counter() - t_job, 3)
    return summary


def coverage_gap(layer: LayerSummary) -> str | None:
    """A layer that meshed nodes but wrote not one fragment (checked from the counts its chunks
    report): whatever the cause, it is not a finished layer."""
    done = layer.chunks - layer.chunks_skipped
    meshable = layer.nodes - layer.unstitched
    if done and meshable > 0 and layer.fragments == 0:
        return (f"layer {layer.layer}: {done} chunks with {meshable} nodes to mesh and not one mesh written; "
                "the segmentation or the child shards hold nothing these nodes can be meshed from")
    return None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, file=sys.stderr)
