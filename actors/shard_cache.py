"""Shard caches: written shards stay in the Ray object store until the chunks that read them ran.

A task returns its shard as an ``np.uint8`` array, so the driver owns the object (it outlives every
worker, ray-notes.md "Ownership and loss") and Ray can rebuild it from lineage if a node dies.
The cache actors only hold *references*, filed under each chunk that will read the shard (its
"consumers", computed from the graph when the shard is written). ``take`` hands a consumer its
refs and forgets them, so a shard is freed as soon as its last consumer's task is done; that
also lets an autoscaler remove the node that held it.

Every lookup is allowed to fail: a cache actor that died comes back empty, and a chunk without
refs reads its children from storage, which is the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray

# Answers a dead or restarting cache actor gives: treat as "not cached".
_CACHE_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                 ray.exceptions.GetTimeoutError)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class ShardCache:
    """Refs to shards, filed by consumer chunk: ``{(layer, chunk): [(chunk id, [ref], bytes)]}``."""

    def __init__(self) -> None:
        self._by_consumer: dict[tuple[int, int], list[tuple[int, list, int]]] = {}
        self._held = 0

    def add(self, consumers: list[tuple[int, int]], chunk: int, wrapped_ref: list, nbytes: int) -> None:
        # The ref arrives wrapped in a list so Ray passes the reference, not the bytes.
        for consumer in consumers:
            self._by_consumer.setdefault(tuple(consumer), []).append((chunk, wrapped_ref, nbytes))
            self._held += 1

    def take(self, consumers: list[tuple[int, int]]) -> list[tuple[int, list, int]]:
        out = []
        for consumer in consumers:
            entries = self._by_consumer.pop(tuple(consumer), [])
            self._held -= len(entries)
            out.extend(entries)
        return out

    def held(self) -> int:
        return self._held


@dataclass
class ShardCaches:
    """The driver's handle on a few cache actors; consumers are spread over them by chunk id."""

    n_actors: int = 2
    timeout_s: float = 60.0
    actors: list = field(default_factory=list)
    lost_lookups: int = 0

    def __post_init__(self) -> None:
        self.actors = [ShardCache.remote() for _ in range(self.n_actors)]

    def _actor(self, consumer: tuple[int, int]):
        return self.actors[consumer[1] % len(self.actors)]

    def add(self, consumers: list[tuple[int, int]], chunk: int, ref, nbytes: int) -> None:
        """File ``ref`` (one chunk's shard) under each consumer; fire and forget."""
        groups: dict[int, list] = {}
        for consumer in consumers:
            groups.setdefault(consumer[1] % len(self.actors), []).append(consumer)
        for index, group in groups.items():
            self.actors[index].add.remote(group, chunk, [ref], nbytes)

    def take(self, consumers: list[tuple[int, int]]) -> tuple[list[int], list, int, int]:
        """Chunk ids, refs and total bytes of the cached shards these consumers read, and the
        bytes of the entries released (a shard counts once per consumer it was filed under).

        A shard two consumers of one batch share is handed over once. A cache that cannot answer
        counts as a miss: the task reads those shards from storage.
        """
        groups: dict[int, list] = {}
        for consumer in consumers:
            groups.setdefault(consumer[1] % len(self.actors), []).append(consumer)
        chunks: dict[int, tuple] = {}
        released = 0
        for index, group in groups.items():
            try:
                entries = ray.get(self.actors[index].take.remote(group), timeout=self.timeout_s)
            except _CACHE_ERRORS:
                self.lost_lookups += 1
                continue
            for chunk, wrapped, nbytes in entries:
                chunks.setdefault(chunk, (wrapped[0], nbytes))
                released += nbytes
        ids = sorted(chunks)
        return ids, [chunks[c][0] for c in ids], sum(chunks[c][1] for c in ids), released

    def held(self) -> int:
        """Refs still filed (shards whose consumers have not run); for tests and reports."""
        total = 0
        for actor in self.actors:
            try:
                total += ray.get(actor.held.remote(), timeout=self.timeout_s)
            except _CACHE_ERRORS:
                pass
        return total

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
