"""A cluster-wide cap on concurrent graph reads.

PCG's meshing guide warns that too many meshing workers reading the ChunkedGraph at once slow the
Bigtable cluster down for every proofreader. One small async actor holds a semaphore; each
store read (a batched Bigtable request) takes a slot through ``RayReadGate``, which the job
carries to every worker. Nothing in ``raymesh/`` knows it is Ray: a store just calls
``read_gate()`` as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import ray

_WAITERS: ThreadPoolExecutor | None = None
_WAITERS_LOCK = threading.Lock()


def _wait_off_main_thread(ref):
    """``ray.get(ref)`` from a helper thread. A task's main thread that blocks in ``ray.get``
    hands its CPU back to the raylet, which starts another worker process for a queued task;
    the wait for a read slot is short, so that worker then sits idle and is killed, and the next
    wait starts another: every new worker opens its graph store, reads the meta and imports the
    meshing stack again, and keeps no reads (issue 19: 136 workers started for one layer of 512
    chunks). Ray only does this for the main thread, so the wait happens on another."""
    global _WAITERS
    with _WAITERS_LOCK:
        if _WAITERS is None:
            _WAITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="raymesh-read-gate")
    return _WAITERS.submit(ray.get, ref).result()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=100_000)
class ReadGate:
    def __init__(self, limit: int) -> None:
        self._sem = asyncio.Semaphore(limit)
        self.limit = limit
        self._inside = 0
        self.peak = 0

    async def acquire(self) -> None:
        await self._sem.acquire()
        self._inside += 1
        self.peak = max(self.peak, self._inside)

    async def release(self) -> None:
        self._inside -= 1
        self._sem.release()

    async def stats(self) -> dict:
        return {"limit": self.limit, "inside": self._inside, "peak": self.peak}


class RayReadGate:
    """Picklable handle: ``with gate(): ...`` holds one of the cluster's read slots."""

    def __init__(self, limit: int):
        self.actor = ReadGate.remote(limit)

    @contextlib.contextmanager
    def __call__(self):
        _wait_off_main_thread(self.actor.acquire.remote())
        try:
            yield
        finally:
            self.actor.release.remote()

    def stats(self) -> dict:
        return ray.get(self.actor.stats.remote())

    def close(self) -> None:
        ray.kill(self.actor)
