"""Executors: how tasks run, kept apart from what they compute (webknossos cluster_tools style).

The driver hands an executor a function and a stream of items and consumes results as they
finish. ``SerialExecutor`` runs them in-process, in order, for debugging and unit tests; the Ray
executor lives in ``actors/`` so the library never imports Ray.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...

    def run_layer(self, job, layer: int) -> Iterator: ...

    def end_job(self) -> None: ...

    def shutdown(self) -> None: ...


class SerialExecutor:
    """Runs each item in this process, one after another: the same task bodies, no Ray, for
    debugging and unit tests. Child shards come from storage (there is no object store)."""

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        for item in items:
            yield fn(item)

    def run_layer(self, job, layer: int) -> Iterator:
        return self.imap_unordered(job.run_chunk, job.iter_chunks(layer))

    def end_job(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
