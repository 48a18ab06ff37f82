"""The Ray executor: tasks through a bounded in-flight window (ray-notes.md, "Many tasks")."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import ray

from raymesh.errors import ConfigError


def _call(fn, item):
    return fn(item)


class RayExecutor:
    """Connects to (or starts) Ray and runs ``fn(item)`` as retriable tasks.

    ``fn`` is put in the object store once (for a job: its config), not shipped with every task.
    At most ``window`` tasks are pending, so the driver's memory does not grow with the layer.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None, window: int | None = None, max_retries: int = 3):
        self._started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus
                kwargs["object_store_memory"] = object_store_memory or 256 * 2**20
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {address!r}: {exc}; check the address "
                                  "(auto, ray://host:10001) and that the cluster is up") from exc
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.window = window or max(4, 4 * cpus)
        self.max_retries = max_retries
        self._remote = ray.remote(_call).options(max_retries=max_retries)

    def imap_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        fn_ref = ray.put(fn)
        inflight = []
        for item in items:
            inflight.append(self._remote.remote(fn_ref, item))
            if len(inflight) >= self.window:
                done, inflight = ray.wait(inflight, num_returns=1)
                yield _get(done[0])
        while inflight:
            done, inflight = ray.wait(inflight, num_returns=1)
            yield _get(done[0])

    def shutdown(self) -> None:
        if self._started:
            ray.shutdown()
            self._started = False


def _get(ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise cause from None
