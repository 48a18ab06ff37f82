"""The graph store contract: PCG's read primitives over the hierarchy, as of a timestamp.

Method names follow PyChunkedGraph's ``ChunkedGraph`` so its users recognise them. Every backend
(SQLite, Bigtable) implements the few abstract primitives; the traversals (roots at a stop layer,
chunk helpers) are written once here on top of them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from abc import ABC, abstractmethod
from typing import Iterable, Sequence

import numpy as np

from raymesh.graph.ids import ChunkLayout
from raymesh.graph.meta import GraphMeta

TimeStamp = dt.datetime | float | int | None


class GraphError(ValueError):
    """An unknown graph, an unknown node, or a store that cannot be used as asked."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def to_datetime(time_stamp: TimeStamp) -> dt.datetime:
    """None -> now; POSIX seconds -> UTC; naive datetimes are taken as UTC (as PCG does)."""
    if time_stamp is None:
        return utcnow()
    if isinstance(time_stamp, dt.datetime):
        return time_stamp if time_stamp.tzinfo else time_stamp.replace(tzinfo=dt.timezone.utc)
    try:
        return dt.datetime.fromtimestamp(float(time_stamp), tz=dt.timezone.utc)
    except (ValueError, OverflowError, OSError, TypeError) as exc:
        raise GraphError(f"time stamp {time_stamp!r} is not a time: give POSIX seconds (UTC) between "
                         "1970 and 9999, e.g. 1700000000") from exc


def write_ms(time_stamp: TimeStamp) -> int:
    """Cell timestamp of a write: whole milliseconds, rounded down (PCG get_valid_timestamp)."""
    t = to_datetime(time_stamp)
    return int(t.timestamp() * 1_000_000) // 1000


def read_ms(time_stamp: TimeStamp) -> int:
    """Inclusive read bound "cells <= T" in whole milliseconds: T rounded up (PCG time filter)."""
    t = to_datetime(time_stamp)
    us = int(round(t.timestamp() * 1_000_000))
    return -(-us // 1000)


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


class GraphStore(ABC):
    """Read (and, for builders and edits, write) access to one ChunkedGraph."""

    url: str
    # Every backend request runs inside ``read_gate()``; the Ray runtime sets a cluster-wide cap.
    read_gate = staticmethod(contextlib.nullcontext)

    # ---- primitives each backend implements ---------------------------------------------------
    @property
    @abstractmethod
    def meta(self) -> GraphMeta: ...

    @abstractmethod
    def raw_meta(self) -> dict | None:
        """The newest stored meta as a plain dict (no segmentation read), None if there is none."""

    @abstractmethod
    def range_read_chunk(self, chunk_id: int, time_stamp: TimeStamp = None) -> dict[int, np.ndarray]:
        """Every node of the chunk created <= T, with its children (PCG ``range_read_chunk``)."""

    def range_read_chunks(self, chunk_ids: Iterable[int], time_stamp: TimeStamp = None
                          ) -> list[dict[int, np.ndarray]]:
        """``range_read_chunk`` of several chunks; backends with round trips batch it."""
        return [self.range_read_chunk(int(c), time_stamp=time_stamp) for c in chunk_ids]

    def range_read_chunks_with_parents(self, chunk_ids: Iterable[int], time_stamp: TimeStamp = None
                                       ) -> tuple[list[dict[int, np.ndarray]], dict[int, int]]:
        """``range_read_chunks``, and the parent at T (0: none) of the nodes it lists where the
        backend reads it with them at no extra cost (Bigtable: the same rows); ``{}`` otherwise.
        Hand the parents to ``get_ancestors``/``get_roots`` (``parents=``) to skip reading them."""
        return self.range_read_chunks(chunk_ids, time_stamp=time_stamp), {}

    def _parents_known(self, node_ids: np.ndarray, ms: int, known: dict[int, int] | None) -> np.ndarray:
        """``_parents`` that reads only the ids ``known`` (parents at the same ``ms``) lacks."""
        if not known:
            return self._parents(node_ids, ms)
        out = np.fromiter((known.get(n, 0) for n in node_ids.tolist()), dtype=np.uint64, count=len(node_ids))
        unknown = np.fromiter((n not in known for n in node_ids.tolist()), dtype=bool, count=len(node_ids))
        if unknown.any():
            out[unknown] = self._parents(node_ids[unknown], ms)
        return out

    @abstractmethod
    def _children(self, node_ids: np.ndarray) -> dict[int, np.ndarray]:
        """Newest children cell of each id; ids without a row are absent."""

    @abstractmethod
    def _parents(self, node_ids: np.ndarray, ms: int) -> np.ndarray:
        """Newest parent cell <= ms of each id, 0 where there is none."""

    @abstractmethod
    def get_node_timestamps(self, node_ids: Iterable[int]) -> np.ndarray:
        """Creation time (the children cell's timestamp) in ms; 0 for unknown ids."""

    @abstractmethod
    def write_nodes(
        self, node_ids: np.ndarray, children: Sequence[np.ndarray], time_stamp: TimeStamp
    ) -> None:
        """Write new nodes (children cells) and the matching parent cells on their children."""

    @abstractmethod
    def write_cross_edges(self, l2_ids: np.ndarray, layers: np.ndarray, edges: Sequence[np.ndarray],
                          time_stamp: TimeStamp) -> None:
        """Store the atomic cross-chunk edges (sv pairs) of layer-2 nodes, per edge layer."""

    @abstractmethod
    def get_cross_edges(self, l2_ids: Iterable[int], time_stamp: TimeStamp = None) -> dict[int, dict[int, np.ndarray]]:
        """``{l2: {layer: (n, 2) sv pairs}}`` for the given layer-2 nodes."""

    @abstractmethod
    def update_meta(self, meta: GraphMeta, time_stamp: TimeStamp = None) -> None:
        """Write the meta as a new cell (PCG update_graph_meta); readers take the newest."""

    # ---- the edit log (operations), for edits, remeshing and watch ---------------------------
    @abstractmethod
    def log_operation(self, kind: str, supervoxels: np.ndarray, new_roots: np.ndarray, ms: int,
                      added: np.ndarray | None = None, removed: np.ndarray | None = None) -> int:
        """Append an edit to the operation log; returns its operation id (1, 2, ...)."""

    @abstractmethod
    def operations(self, after: int = 0) -> list[dict]:
        """Logged edits with id > ``after``, oldest first: ``{"id", "kind", "ms", "supervoxels",
        "new_roots", "added", "removed"}``."""

    def last_write_ms(self) -> int:
        """Cell time of the graph's latest change: its newest edit, else the meta's first version."""
        ops = self.operations()
        return max(ops[-1]["ms"] if ops else 0, self._built_ms())

    @abstractmethod
    def _built_ms(self) -> int:
        """Cell time of the oldest meta version (the end of ingest or build)."""

    def close(self) -> None:  # pragma: no cover - optional for backends
        pass

    def reading(self):
        """A context for a batch of dependent reads (a chunk's range read, then its ancestor
        walk): backends with a read gate take one slot for all of them. A no-op here."""
        return contextlib.nullcontext()

    def share_reads(self, token: str | None) -> None:
        """Let stores of this process given the same ``token`` answer reads from what the others
        read (the caller vouches the graph as of the time stamps read does not change while the
        token is in use: one meshing job). A no-op for backends whose reads are cheap."""

    def prepare(self, layout: ChunkLayout) -> None:
        """Called by builders before the first write (the meta, which defines the layout, is
        written last). Backends that derive rows from ids (Bigtable's counters) keep it."""

    # ---- PCG-named conveniences -------------------------------------------------------------
    @property
    def layout(self) -> ChunkLayout:
        return self.meta.layout

    def get_chunk_id(self, node_id: int | None = None, layer: int | None = None,
                     x: int | None = None, y: int | None = None, z: int | None = None) -> int:
        """Chunk id of a node, or of ``(layer, x, y, z)``."""
        if node_id is not None:
            return int(self.layout.get_chunk_id(node_id))
        if None in (layer, x, y, z):
            raise GraphError("get_chunk_id needs node_id, or layer, x, y and z")
        return int(self.layout.chunk_id(layer, x, y, z))

    def get_chunk_layer(self, node_ids):
        return self.layout.get_chunk_layer(node_ids)

    def get_chunk_coordinates(self, node_id: int) -> np.ndarray:
        return self.layout.get_chunk_coordinates(node_id)

    def get_children(self, node_ids, flatten: bool = False):
        """A single id -> its children array; several -> ``{id: children}`` (PCG semantics)."""
        if np.isscalar(node_ids):
            return self._children(np.array([node_ids], dtype=np.uint64)).get(
                int(node_ids), np.empty(0, dtype=np.uint64)
            )
        ids = np.asarray(node_ids, dtype=np.uint64)
        found = self._children(ids)
        out = {int(i): found.get(int(i), np.empty(0, dtype=np.uint64)) for i in ids}
        if flatten:
            return np.concatenate(list(out.values())) if out else np.empty(0, dtype=np.uint64)
        return out

    def get_parents(self, node_ids, time_stamp: TimeStamp = None, fail_to_zero: bool = False):
        """Parent of each id as of T. Missing parents raise unless ``fail_to_zero``."""
        scalar = np.isscalar(node_ids)
        ids = np.atleast_1d(np.asarray(node_ids, dtype=np.uint64))
        parents = self._parents(ids, read_ms(time_stamp)) if len(ids) else np.empty(0, np.uint64)
        if not fail_to_zero:
            missing = ids[(parents == 0) & (ids != 0)]
            if len(missing):
                raise GraphError(f"no parent for node(s) {missing[:5].tolist()} at {time_stamp}")
        return int(parents[0]) if scalar else parents

    def get_roots(self, node_ids, stop_layer: int | None = None, time_stamp: TimeStamp = None,
                  ceil: bool = True, fail_to_zero: bool = False, parents: dict[int, int] | None = None):
        """Ancestor of each id at ``stop_layer`` (default: true roots), as of T.

        A parent can sit several layers above its child (skip connections); with ``ceil`` the
        first ancestor at or above the stop layer is returned, else the last one at or below it.
        ``parents``: parents at T already read (``range_read_chunks_with_parents``), not read again.
        """
        scalar = np.isscalar(node_ids)
        result = np.atleast_1d(np.asarray(node_ids, dtype=np.uint64)).copy()
        stop = self.meta.layer_count if stop_layer is None else int(stop_layer)
        ms = read_ms(time_stamp)
        layout = self.layout
        done = result == 0
        for _ in range(stop + 1):
            active = np.flatnonzero(~done & (layout.get_chunk_layer(result) < stop))
            if not len(active):
                break
            uniq, inverse = np.unique(result[active], return_inverse=True)
            found = self._parents_known(uniq, ms, parents)[inverse]
            missing = found == 0
            if missing.any() and not fail_to_zero:
                bad = result[active][missing]
                raise GraphError(f"node(s) {bad[:5].tolist()} have no parent at {time_stamp}")
            if not ceil:
                over = ~missing & (layout.get_chunk_layer(found) > stop)
                done[active[over]] = True
                found = np.where(over, result[active], found)
            result[active] = found
            done[active[missing]] = True
        return int(result[0]) if scalar else result

    def get_ancestors(self, node_ids, stop_layers, time_stamp: TimeStamp = None,
                      parents: dict[int, int] | None = None) -> dict[int, np.ndarray]:
        """``get_roots(ids, stop_layer=s, ceil=True, fail_to_zero=True)`` for several ``s`` in one
        walk up the hierarchy (a layer-2 chunk needs its own stop layer and its lower neighbours').
        ``parents``: parents at T already read (``range_read_chunks_with_parents``)."""
        ids = np.asarray(node_ids, dtype=np.uint64)
        stops = sorted({int(s) for s in stop_layers})
        out = {s: np.zeros(len(ids), dtype=np.uint64) for s in stops}
        if not len(ids) or not stops:
            return out
        ms = read_ms(time_stamp)
        layout = self.layout
        current = ids.copy()
        alive = current != 0
        for _ in range(stops[-1] + 2):
            layers = layout.get_chunk_layer(current)
            for s in stops:
                hit = alive & (out[s] == 0) & (layers >= s)
                out[s][hit] = current[hit]
            active = np.flatnonzero(alive & (layers < stops[-1]))
            if not len(active):
                break
            uniq, inverse = np.unique(current[active], return_inverse=True)
            found = self._parents_known(uniq, ms, parents)[inverse]
            current[active] = found
            alive[active[found == 0]] = False
        return out
