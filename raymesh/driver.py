"""Orchestration: plan a job, run its layers in order on an executor, write metadata, report.

The driver streams chunks lazily to the executor and consumes results as they finish; each layer
completes before the next starts (stitching reads the layer below).
"""

from __future__ import annotations

import logging
import sys
import time

from raymesh.config import MeshConfig
from raymesh.errors import ConfigError
from raymesh.executors import Executor, SerialExecutor
from raymesh.runs.job import LayerSummary, MeshJob, RunSummary


SMALL_JOB_CHUNKS = 64  # chunks (all layers) below which a local run skips starting Ray


def make_executor(config: MeshConfig, chunks: int | None = None, quiet: bool = False) -> Executor:
    """The executor a config asks for; ``auto`` runs a job of fewer than ``SMALL_JOB_CHUNKS``
    chunks in this process when there is no cluster to join (an address, or a Ray job's
    RAY_ADDRESS): a local Ray takes longer to start and stop than such a job takes to run."""
    import os

    if config.executor == "auto" and chunks is not None and chunks < SMALL_JOB_CHUNKS \
            and not config.address and not os.environ.get("RAY_ADDRESS"):
        return SerialExecutor()
    if config.executor == "serial":
        return SerialExecutor()
    return ray_executor(config.address, config.workers, quiet)


def ray_executor(address: str | None = None, workers: int | None = None, quiet: bool = False):
    """A ``RayExecutor`` (connected, or a local Ray started) without Ray's log lines that a user
    cannot act on; says where it runs on stderr unless ``quiet``."""
    import os

    import ray

    quiet_ray_logs()
    from actors.ray_executor import RayExecutor

    if ray.is_initialized():
        where = "the Ray this process is connected to"
    elif address:
        where = f"the Ray cluster at {address}"
    elif os.environ.get("RAY_ADDRESS"):
        where = f"the Ray cluster at {os.environ['RAY_ADDRESS']} (RAY_ADDRESS)"
    else:
        where = "a local Ray"
    executor = RayExecutor(address=address, num_cpus=workers)
    if not quiet:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"running on {where} ({cpus} CPUs)", file=sys.stderr, flush=True)
    return executor


class _DropRecords(logging.Filter):
    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_ray_logs() -> None:
    """Ray's driver-side INFO lines and its notice that a new local cluster turned token
    authentication on (Ray >= 2.59; nothing to do about it: raymesh's own local Ray needs no
    token from the user) are dropped; Ray's warnings and errors still show. Idempotent."""
    import ray  # noqa: F401  (Ray configures its loggers on import)

    for name in ("ray._private.worker", "ray.client_builder", "ray.util.client.worker",
                 "ray.util.client.server.server"):
        logging.getLogger(name).setLevel(logging.WARNING)
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropRecords) for f in auth.filters):
        auth.addFilter(_DropRecords("Token authentication is enabled for this Ray cluster"))


def clip_chunk_range(job: MeshJob) -> str | None:
    """A chunk range that reaches outside the first layer is cut to the part inside (the note to
    print is returned); one with nothing inside is an error that names the layer's chunks."""
    config = job.config
    if config.chunk_start is None:
        return None
    first = config.layers[0]
    if first > job.meta.layer_count:
        return None  # validate() names the layers that exist
    bounds = [int(b) for b in job.meta.layout.layer_chunk_bounds(first)]
    start = [max(0, int(s)) for s in config.chunk_start]
    end = [min(int(e), b) for e, b in zip(config.chunk_end, bounds)]
    asked = f"{' '.join(map(str, config.chunk_start))} .. {' '.join(map(str, config.chunk_end))}"
    if any(s >= e for s, e in zip(start, end)):
        raise ConfigError(f"chunk range {asked} is outside layer {first}, whose chunks are 0 0 0 .. "
                          f"{' '.join(map(str, bounds))} (end not included); choose chunks inside it, or give no "
                          "chunk range to mesh them all")
    if start == list(config.chunk_start) and end == list(config.chunk_end):
        return None
    job.config = config.model_copy(update={"chunk_start": start, "chunk_end": end})
    return (f"note: chunk range {asked} reaches outside layer {first} (chunks 0 0 0 .. {' '.join(map(str, bounds))}); "
            f"meshing the part inside, {' '.join(map(str, start))} .. {' '.join(map(str, end))}")


def run(config: MeshConfig, executor: Executor | None = None, progress: bool = True) -> RunSummary:
    """Run a meshing job to completion. The Python API for notebooks (also over Ray Client).

    A layer with failures ends the run there: stitching on top of it would make parents that
    miss part of their object and look done. ``RunSummary.failed`` says so; a plain rerun redoes
    exactly the failed chunks (their failure records) and carries on.
    """
    job = MeshJob(config)
    note = clip_chunk_range(job)
    if note and progress:
        print(note, file=sys.stderr, flush=True)
    job.validate()
    job.begin()
    own_executor = executor is None
    if executor is None:
        chunks = sum(job.count_chunks(layer) for layer in job.config.layers)
        executor = make_executor(job.config, chunks, quiet=not progress)
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
            # closed however the layer ends, so an error is printed on a line of its own
            with _progress(total, f"layer {layer}", progress) as bar:
                for stats in executor.run_layer(job, layer):
                    layer_summary.add(stats)
                    bar.update(1)
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
    """A live bar on a terminal. In a log (a pipe, a file, `ray job submit`, kubectl logs) a bar's
    carriage returns read as blank lines, so there a plain line now and then instead."""
    if enabled and not _isatty(sys.stderr):
        return _LogProgress(total, desc)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, file=sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _LogProgress:
    """``layer 2: 1200/27000 chunks (4%), 61 s`` every ``every`` seconds; nothing for a layer that
    takes less (the summary follows)."""

    def __init__(self, total: int, desc: str, every: float = 60.0):
        self.total, self.desc, self.every = total, desc, every
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            share = f" ({100 * self.done // self.total}%)" if self.total else ""
            print(f"{self.desc}: {self.done}/{self.total} chunks{share}, {now - self.t0:.0f} s",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
