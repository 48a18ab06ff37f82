"""PyChunkedGraph's Bigtable tables, read (and written) in PCG's own schema (pcg-compat.md 2).

``bigtable://PROJECT/INSTANCE/TABLE``. With ``BIGTABLE_EMULATOR_HOST`` set, google-cloud-bigtable
talks to the emulator instead (tests, demos). Every read is batched (at most 1000 row keys per
request, PCG's MAX_ROW_KEY_COUNT), counted in ``round_trips``, and passes through ``read_gate``,
which the Ray runtime replaces with a cluster-wide limit so meshing cannot swamp the Bigtable
cluster that proofreaders use.

One client per table and process: the stores opened on a URL in a process share one client, the
table check and the meta (a Ray worker opens the store once, not once per task). Each store object
keeps its own ``read_gate`` and counters, so one job's gate never applies to another's reads.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
import warnings
from typing import Iterable, Sequence

import numpy as np

from raymesh.graph.base import GraphError, GraphStore, TimeStamp, ms_to_datetime, read_ms, write_ms
from raymesh.graph.meta import GraphMeta
from raymesh.volume import read_info

FAMILY_HIERARCHY = "0"  # children, parents, meta, version (keeps every version)
FAMILY_COUNTER = "1"  # id counters (one version)
FAMILY_LOG = "2"  # operation logs
FAMILY_EDGES = "3"  # cross-chunk edges
ROW_BATCH = 1000  # row keys per read request (PCG MAX_ROW_KEY_COUNT)
MUTATION_BATCH = 2000  # rows per mutate_rows call (PCG)
ROOT_COUNTERS = 256
ZSTD_LEVEL = 22


def pad(node_id: int) -> bytes:
    """Row key of a node: 20-digit zero-padded decimal (2.2)."""
    return b"%.20d" % int(node_id)


def counter_key(chunk_id: int, counter: int | None = None) -> bytes:
    key = b"i" + pad(chunk_id)
    return key if counter is None else key + b"_%d" % counter


def _ids_value(ids: np.ndarray) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(np.ascontiguousarray(ids, dtype="<u8").tobytes())


_DECOMPRESSORS = threading.local()


def _ids_from(value: bytes) -> np.ndarray:
    decompressor = getattr(_DECOMPRESSORS, "zstd", None)
    if decompressor is None:
        import zstandard

        decompressor = _DECOMPRESSORS.zstd = zstandard.ZstdDecompressor()
    return np.frombuffer(decompressor.decompress(value), dtype="<u8").astype(np.uint64)


# google-cloud-bigtable warns "Connecting to Bigtable emulator at HOST" (a RuntimeWarning) for every
# client it makes: noise nobody can act on (BIGTABLE_EMULATOR_HOST was set on purpose). Only that
# message is silenced; every other warning still shows.
_EMULATOR_WARNING = r"Connecting to Bigtable emulator at "


def _quiet_emulator_warning() -> None:
    # Idempotent (warnings drops an identical filter before adding it again); repeated per client
    # because test runners restore the warning filters between tests.
    warnings.filterwarnings("ignore", message=_EMULATOR_WARNING, category=RuntimeWarning)


class _Connection:
    """A client on one table: shared by every store opened on the URL in this process (or owned
    by one store opened to build the table). Holds what never changes while it is open: that the
    table exists, and the meta (until a store of this process writes a new one)."""

    def __init__(self, project: str, instance: str, table_id: str, shared: bool):
        from google.auth import exceptions as auth_exc
        from google.cloud import bigtable

        _quiet_emulator_warning()
        try:
            self.client = bigtable.Client(project=project, admin=True)
        except auth_exc.GoogleAuthError as exc:
            raise GraphError(f"cannot open bigtable://{project}/{instance}/{table_id}: no Google Cloud "
                             f"credentials ({exc}); run `gcloud auth application-default login`, set "
                             "GOOGLE_APPLICATION_CREDENTIALS, or BIGTABLE_EMULATOR_HOST for the emulator") from exc
        self.table = self.client.instance(instance).table(table_id)
        self.shared = shared
        self.users = 0
        self.closed = False
        self.meta_parts: tuple[dict, dict] | None = None  # (raw meta, segmentation info)
        self.lock = threading.Lock()
        from collections import OrderedDict

        self.snapshots: OrderedDict[str, _Snapshot] = OrderedDict()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.close()

    def snapshot(self, token: str, budget: int) -> "_Snapshot":
        with self.lock:
            snap = self.snapshots.pop(token, None) or _Snapshot(budget)
            self.snapshots[token] = snap  # most recent last
            while len(self.snapshots) > SNAPSHOTS_KEPT:
                self.snapshots.popitem(last=False)
            return snap

    def forget(self) -> None:
        """A store of this process wrote to the table: read the meta and every row again."""
        with self.lock:
            self.meta_parts = None
            for snap in self.snapshots.values():
                snap.clear()


SNAPSHOTS_KEPT = 2  # jobs whose reads a worker process keeps at once (a worker rarely mixes two)
SNAPSHOT_BYTES = 64 * 2**20  # chunk rows a process keeps per job (least recently used go first)
SNAPSHOT_IDS = 1_000_000  # parents and children kept per job before they are dropped and read again


class _Snapshot:
    """What the stores given one token (``BigtableStore.share_reads``) read as of a time stamp,
    kept for each other: the nodes (and parents) of chunks, parents of other nodes, children.
    Its user vouches that the graph as of those time stamps does not change while it is in use
    (a meshing job: every task reads one time stamp, the graph state its meshes show)."""

    def __init__(self, budget: int):
        from collections import OrderedDict

        self.budget = budget
        self.lock = threading.Lock()
        self.chunks: OrderedDict = OrderedDict()  # (ms, chunk) -> (nodes, parents or None, bytes)
        self.bytes = 0
        self.parents: dict[int, dict[int, int]] = {}  # ms -> node -> parent (0: none)
        self.children: dict[int, np.ndarray] = {}
        self.hits = 0

    def clear(self) -> None:
        with self.lock:
            self.chunks.clear()
            self.bytes = 0
            self.parents.clear()
            self.children.clear()

    def get_chunk(self, ms: int, chunk: int, with_parents: bool):
        with self.lock:
            entry = self.chunks.get((ms, chunk))
            if entry is None or (with_parents and entry[1] is None):
                return None
            self.chunks.move_to_end((ms, chunk))
            self.hits += 1
            return entry

    def put_chunk(self, ms: int, chunk: int, nodes: dict, parents: dict | None) -> None:
        for kids in nodes.values():
            kids.flags.writeable = False  # shared by every reader of the snapshot
        size = 256 + sum(kids.nbytes + 160 for kids in nodes.values())
        with self.lock:
            old = self.chunks.pop((ms, chunk), None)
            if old is not None:
                self.bytes -= old[2]
            self.chunks[(ms, chunk)] = (nodes, parents, size)
            self.bytes += size
            while self.bytes > self.budget and len(self.chunks) > 1:
                self.bytes -= self.chunks.popitem(last=False)[1][2]
        if parents:
            self.put_parents(ms, parents)

    def get_parents(self, ms: int, ids: list[int]) -> dict[int, int]:
        with self.lock:
            known = self.parents.get(ms, {})
            return {n: known[n] for n in ids if n in known}

    def put_parents(self, ms: int, parents: dict[int, int]) -> None:
        with self.lock:
            if sum(map(len, self.parents.values())) + len(parents) > SNAPSHOT_IDS:
                self.parents.clear()  # all time stamps together stay bounded
            self.parents.setdefault(ms, {}).update(parents)

    def get_children(self, ids) -> dict[int, np.ndarray]:
        with self.lock:
            return {n: self.children[n] for n in ids if n in self.children}

    def put_children(self, found: dict[int, np.ndarray]) -> None:
        for kids in found.values():
            kids.flags.writeable = False
        with self.lock:
            if len(self.children) + len(found) > SNAPSHOT_IDS:
                self.children.clear()
            self.children.update(found)


class _GateSession:
    """One slot of a read gate, taken when first needed (``BigtableStore.reading``)."""

    def __init__(self, gate):
        self._gate = gate
        self._held = None

    def hold(self) -> None:
        if self._held is None:
            held = self._gate()
            held.__enter__()
            self._held = held

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.__exit__(None, None, None)


_SHARED: dict[tuple[int, str], _Connection] = {}  # (pid, url): a forked child opens its own
_SHARED_LOCK = threading.Lock()


def _check_table(conn: _Connection, url: str, table_id: str, instance: str, project: str) -> bool:
    from google.api_core import exceptions as gexc

    try:
        return conn.table.exists()
    except gexc.GoogleAPIError as exc:  # call errors, and RetryError when it cannot connect
        raise GraphError(f"cannot reach Bigtable for {url}: {exc}; check the project, instance "
                         "and credentials (or BIGTABLE_EMULATOR_HOST for the emulator)") from exc


def _shared_connection(project: str, instance: str, table_id: str, url: str) -> _Connection:
    """The process's client on ``url``, made (and the table checked) on first use."""
    key = (os.getpid(), url)
    with _SHARED_LOCK:
        conn = _SHARED.get(key)
        if conn is not None and not conn.closed:
            conn.users += 1
            return conn
    conn = _Connection(project, instance, table_id, shared=True)
    try:
        exists = _check_table(conn, url, table_id, instance, project)
    except BaseException:
        conn.close()
        raise
    if not exists:
        conn.close()
        raise GraphError(f"unknown graph: no table {table_id!r} in Bigtable instance {instance!r} of project "
                         f"{project!r} (or no such instance); check the --graph URL bigtable://PROJECT/INSTANCE/TABLE")
    with _SHARED_LOCK:
        other = _SHARED.get(key)
        if other is not None and not other.closed:  # another thread opened it meanwhile
            conn.close()
            conn = other
        else:
            _SHARED[key] = conn
        conn.users += 1
    return conn


def _forget(url: str) -> None:
    """A store of this process wrote to the table: the shared connection reads everything again."""
    with _SHARED_LOCK:
        conn = _SHARED.get((os.getpid(), url))
    if conn is not None:
        conn.forget()


def close_shared(url: str | None = None) -> None:
    """Close this process's shared clients (of ``url``, or all); stores still using one fail."""
    with _SHARED_LOCK:
        keys = [k for k in _SHARED if k[0] == os.getpid() and (url is None or k[1] == url)]
        conns = [_SHARED.pop(k) for k in keys]
    for conn in conns:
        conn.close()


class BigtableStore(GraphStore):
    def __init__(self, project: str, instance: str, table_id: str, *, create: bool = False):
        self.project, self.instance_id, self.table_id = project, instance, table_id
        self.url = f"bigtable://{project}/{instance}/{table_id}"
        self.round_trips = 0  # read requests made by this store object
        self.rows_read = 0  # rows they returned (the emulator streams one message per row)
        self.read_seconds = 0.0  # time spent in them, waits for the read gate included
        self.gate_seconds = 0.0  # of which waiting for a slot of the read gate
        self._meta: GraphMeta | None = None
        self._build_layout = None
        self._closed = False
        self._snapshot: _Snapshot | None = None
        self._session: _GateSession | None = None
        if create:
            # A builder's store: its own client, never shared (the table may not exist yet).
            self._conn = _Connection(project, instance, table_id, shared=False)
            try:
                exists = _check_table(self._conn, self.url, table_id, instance, project)
            except BaseException:
                self._conn.close()
                raise
            _forget(self.url)
        else:
            self._conn = _shared_connection(project, instance, table_id, self.url)
        self._client, self._table = self._conn.client, self._conn.table
        if create:
            self._prepare_for_build(exists)

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> "BigtableStore":
        parts = url.partition("://")[2].strip("/").split("/")
        if len(parts) != 3 or not all(parts):
            raise GraphError(f"Bigtable graph URL {url!r} must be bigtable://PROJECT/INSTANCE/TABLE")
        return cls(*parts, create=create)

    def __reduce__(self):  # clients do not pickle: Ray workers open their own
        return (BigtableStore, (self.project, self.instance_id, self.table_id))

    def share_reads(self, token: str | None, budget: int = SNAPSHOT_BYTES) -> None:
        """Keep what this store reads for every store of this process given the same ``token``,
        and read from what they kept (``None``: stop). The caller vouches that the graph as of
        the time stamps it reads does not change while the token is in use; a meshing job (one
        time stamp for all its tasks) passes one token to all its tasks, so a worker reads each
        chunk's rows once, not once for each chunk around it. Only rows this process has not
        read go to Bigtable (and through ``read_gate``); any write by a store of this process
        empties what was kept."""
        self._snapshot = None if token is None else self._conn.snapshot(str(token), int(budget))

    def close(self) -> None:
        """Done with this store. A builder's client closes; a shared one closes (and the next
        open makes a fresh one) when every store of this process opened on it is closed."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if not conn.shared:
            conn.close()
            return
        with _SHARED_LOCK:
            conn.users -= 1
            last = conn.users <= 0
            if last and _SHARED.get((os.getpid(), self.url)) is conn:
                del _SHARED[(os.getpid(), self.url)]
        if last:
            conn.close()

    # ---- table set-up (builders) ----------------------------------------------------------
    def _prepare_for_build(self, exists: bool) -> None:
        """A new table with PCG's column families; an existing one without a meta row is an
        interrupted build and is emptied (a complete graph is never touched here)."""
        from google.cloud.bigtable import column_family

        if not exists:
            # Family 0 keeps every version (parents change with edits; meta versions).
            self._table.create(column_families={
                FAMILY_HIERARCHY: None, FAMILY_COUNTER: column_family.MaxVersionsGCRule(1),
                FAMILY_LOG: None, FAMILY_EDGES: None,
            })
        elif self.raw_meta() is None:
            self._table.truncate(timeout=120)
        else:
            raise GraphError(f"{self.url} already holds a graph; choose another table or delete it")
        self._write_rows([self._row(b"version", FAMILY_HIERARCHY, b"version", _version().encode(), None)])

    # ---- low-level reads --------------------------------------------------------------------
    def _read(self, **kwargs):
        t0 = time.perf_counter()
        try:
            if self._session is not None:  # one slot for all the reads of the session
                self._session.hold()
                self.gate_seconds += time.perf_counter() - t0
                self.round_trips += 1
                rows = list(self._table.read_rows(**kwargs))
            else:
                with self.read_gate():
                    self.gate_seconds += time.perf_counter() - t0
                    self.round_trips += 1
                    rows = list(self._table.read_rows(**kwargs))
        finally:
            self.read_seconds += time.perf_counter() - t0
        self.rows_read += len(rows)
        return rows

    @contextlib.contextmanager
    def reading(self):
        """Reads made inside take one slot of ``read_gate`` between them, at the first that goes
        to Bigtable, given back at the end (a task waits for the cluster's gate once per batch of
        dependent reads rather than once per read; still at most the cap reading at once)."""
        if self._session is not None:  # nested: the outer session holds the slot
            yield
            return
        self._session = session = _GateSession(self.read_gate)
        try:
            yield
        finally:
            self._session = None
            session.release()

    def _read_keys(self, keys: Sequence[bytes], filter_) -> dict[bytes, object]:
        from google.cloud.bigtable.row_set import RowSet

        out = {}
        for i in range(0, len(keys), ROW_BATCH):
            row_set = RowSet()
            for key in keys[i:i + ROW_BATCH]:
                row_set.add_row_key(key)
            for row in self._read(row_set=row_set, filter_=filter_):
                out[row.row_key] = row
        return out

    @staticmethod
    def _column(family: str, qualifier: bytes | tuple[bytes, ...], end_ms: int | None = None, newest: bool = True):
        """Cells of one column (or of each of several), <= ``end_ms``, the newest only. Exact
        column ranges rather than regular expressions: the emulator compiles a regex filter again
        for every row it filters (4-5x its cost per row), and Bigtable needs no regex here."""
        from google.cloud.bigtable import row_filters as rf

        qualifiers = (qualifier,) if isinstance(qualifier, bytes) else tuple(qualifier)
        columns = [rf.ColumnRangeFilter(family, q, q) for q in qualifiers]
        parts = [columns[0] if len(columns) == 1 else rf.RowFilterUnion(filters=columns)]
        if end_ms is not None:
            # Bigtable's range end is exclusive; "cells <= T" ends one millisecond after T.
            parts.append(rf.TimestampRangeFilter(rf.TimestampRange(end=ms_to_datetime(end_ms + 1))))
        if newest:
            parts.append(rf.CellsColumnLimitFilter(1))
        return parts[0] if len(parts) == 1 else rf.RowFilterChain(filters=parts)  # a chain takes two or more

    def _newest_cell(self, key: bytes, qualifier: bytes):
        """The newest family-0 cell of one row and column (meta, version), or None."""
        rows = self._read_keys([key], self._column(FAMILY_HIERARCHY, qualifier))
        return self._cell(rows[key], FAMILY_HIERARCHY, qualifier) if key in rows else None

    @staticmethod
    def _cell(row, family: str, qualifier: bytes):
        cells = row.cells.get(family, {}).get(qualifier, [])
        return cells[0] if cells else None

    # ---- meta -------------------------------------------------------------------------------
    def raw_meta(self) -> dict | None:
        from raymesh.graph.pcg_meta import loads_meta

        cell = self._newest_cell(b"meta", b"meta")
        return None if cell is None else loads_meta(cell.value)

    @property
    def meta(self) -> GraphMeta:
        """Read once per process and table (with the segmentation's info), each store getting its
        own copy; read again after a store of this process writes a new meta."""
        if self._meta is None:
            conn = self._conn
            with conn.lock:
                if conn.meta_parts is None:
                    raw = self.raw_meta()
                    if raw is None:
                        raise GraphError(f"unknown graph: {self.url} has no meta row (not a ChunkedGraph table, "
                                         "or its ingest has not finished)")
                    conn.meta_parts = (raw, read_info(raw["data_source"]["watershed"]))
                raw, info = copy.deepcopy(conn.meta_parts)
            self._meta = GraphMeta.from_dict(raw, info)
        return self._meta

    @property
    def version(self) -> str | None:
        """The PCG package version that created the table (row ``version``)."""
        cell = self._newest_cell(b"version", b"version")
        return None if cell is None else cell.value.decode()

    def update_meta(self, meta: GraphMeta, time_stamp: TimeStamp = None) -> None:
        from raymesh.graph.pcg_meta import dumps_meta

        ms = write_ms(time_stamp)
        last = self._newest_cell(b"meta", b"meta")
        ms = max(ms, _cell_ms(last) + 1 if last else 0)  # a new version, never the previous cell
        self._write_rows([self._row(b"meta", FAMILY_HIERARCHY, b"meta", dumps_meta(meta), ms)])
        self._meta = None

    # ---- hierarchy reads --------------------------------------------------------------------
    def _counter_keys(self, chunk_id: int, layer: int) -> list[bytes]:
        if layer == self.layout.n_layers:  # the 256 interleaved root counters (2.10)
            return [counter_key(chunk_id, k) for k in range(ROOT_COUNTERS)]
        return [counter_key(chunk_id)]

    def range_read_chunk(self, chunk_id: int, time_stamp: TimeStamp = None) -> dict[int, np.ndarray]:
        return self.range_read_chunks([chunk_id], time_stamp)[0]

    def range_read_chunks(self, chunk_ids: Iterable[int], time_stamp: TimeStamp = None
                          ) -> list[dict[int, np.ndarray]]:
        """Every node created <= T in each chunk, in one request (``_read_chunks``)."""
        return self._read_chunks(chunk_ids, time_stamp, with_parents=False)[0]

    def range_read_chunks_with_parents(self, chunk_ids: Iterable[int], time_stamp: TimeStamp = None
                                       ) -> tuple[list[dict[int, np.ndarray]], dict[int, int]]:
        """``range_read_chunks`` and each listed node's parent at T, from the same rows."""
        return self._read_chunks(chunk_ids, time_stamp, with_parents=True)

    def _read_chunks(self, chunk_ids: Iterable[int], time_stamp: TimeStamp, with_parents: bool):
        """PCG's range read (2.6 item 1) of several chunks in one request: their counter rows and
        their whole key ranges together, each chunk's nodes then cut at its counter here (the
        same rows PCG's two requests return: an id above the counter was never allocated).

        The row filter keeps the newest ``children`` cell <= T (and ``parents`` cell <= T with
        ``with_parents``) of node rows, and the counter cell of counter rows. Chunks the store's
        snapshot (``share_reads``) holds are not read again."""
        layout = self.layout
        chunks = [(int(layout.get_chunk_id(c)), int(layout.get_chunk_layer(c))) for c in chunk_ids]
        ms = read_ms(time_stamp)
        snap = self._snapshot
        kept = {}
        if snap is not None:
            for chunk, _ in dict.fromkeys(chunks):
                entry = snap.get_chunk(ms, chunk, with_parents)
                if entry is not None:
                    kept[chunk] = entry
        wanted = [(c, layer) for c, layer in dict.fromkeys(chunks) if c not in kept]
        found, parents = self._range_read(wanted, ms, with_parents) if wanted else ({}, {})
        if snap is not None:
            for chunk, _ in wanted:
                nodes = found.get(chunk, {})
                snap.put_chunk(ms, chunk, nodes, {n: parents[n] for n in nodes} if with_parents else None)
        out_parents: dict[int, int] = {}
        for chunk, (nodes, known, _) in kept.items():
            found[chunk] = nodes
            if with_parents:
                out_parents.update(known)
        out_parents.update(parents)
        return [dict(found.get(chunk, {})) for chunk, _ in chunks], out_parents

    def _range_read(self, chunks: list[tuple[int, int]], ms: int, with_parents: bool):
        """``{chunk: {node: children}}`` (nodes in id order) and ``{node: parent}`` of distinct
        ``(chunk id, layer)``s, from one request (two past ``ROW_BATCH`` counter rows)."""
        from google.cloud.bigtable import row_filters as rf
        from google.cloud.bigtable.row_set import RowSet

        layout = self.layout
        counter_keys = sorted({k for chunk, layer in chunks if layer > 1 for k in self._counter_keys(chunk, layer)})
        spans = sorted({(chunk, chunk | layout.segment_id_limit(layer)) for chunk, layer in chunks})
        counter_filter = self._column(FAMILY_COUNTER, b"counter")
        node_filter = self._column(FAMILY_HIERARCHY, (b"children", b"parents") if with_parents else b"children", ms)
        counters: dict[bytes, int] = {}
        rows = []
        row_set = RowSet()
        for lo, hi in spans:
            row_set.add_row_range_from_keys(pad(lo), pad(hi), end_inclusive=True)
        if len(counter_keys) <= ROW_BATCH:
            for key in counter_keys:
                row_set.add_row_key(key)
            filter_ = rf.RowFilterUnion(filters=[node_filter, counter_filter])
        else:  # more counter keys than one request takes: read them on their own first
            for key, row in self._read_keys(counter_keys, counter_filter).items():
                counters[key] = self._counter_value(row)
            filter_ = node_filter
        for row in self._read(row_set=row_set, filter_=filter_):
            if row.row_key.startswith(b"i"):
                counters[row.row_key] = self._counter_value(row)
            else:
                rows.append(row)

        def value(key: bytes) -> int:
            return counters.get(key, 0)

        tops = {}
        for chunk, layer in chunks:
            if layer == 1:
                tops[chunk] = layout.segment_id_limit(1)
            elif layer == layout.n_layers:
                tops[chunk] = max((value(k) * ROOT_COUNTERS + i if value(k) else 0)
                                  for i, k in enumerate(self._counter_keys(chunk, layer)))
            else:
                tops[chunk] = value(counter_key(chunk))
        found: dict[int, dict[int, np.ndarray]] = {}
        parents: dict[int, int] = {}
        for row in rows:  # in key order, that is by node id
            cell = self._cell(row, FAMILY_HIERARCHY, b"children")
            if cell is None:
                continue
            node = int(row.row_key)
            chunk = int(layout.get_chunk_id(node))
            if chunk not in tops or node > (chunk | tops[chunk]):
                continue
            found.setdefault(chunk, {})[node] = _ids_from(cell.value)
            if with_parents:
                up = self._cell(row, FAMILY_HIERARCHY, b"parents")
                parents[node] = 0 if up is None else int(np.frombuffer(up.value, dtype="<u8")[0])
        return found, parents

    def _counter_value(self, row) -> int:
        cell = self._cell(row, FAMILY_COUNTER, b"counter")
        return 0 if cell is None else int.from_bytes(cell.value, "big", signed=True)

    def _children(self, node_ids: np.ndarray) -> dict[int, np.ndarray]:
        uniq = [int(n) for n in np.unique(np.asarray(node_ids, dtype=np.uint64))]
        snap = self._snapshot
        kept = snap.get_children(uniq) if snap is not None else {}
        keys = [pad(n) for n in uniq if n not in kept]
        rows = self._read_keys(keys, self._column(FAMILY_HIERARCHY, b"children")) if keys else {}
        out = {}
        for key, row in rows.items():
            cell = self._cell(row, FAMILY_HIERARCHY, b"children")
            if cell is not None:
                out[int(key)] = _ids_from(cell.value)
        if snap is not None:
            snap.put_children(out)
            out = {n: (kept[n] if n in kept else out[n]) for n in uniq if n in kept or n in out}
        return out

    def _parents(self, node_ids: np.ndarray, ms: int) -> np.ndarray:
        ids = np.asarray(node_ids, dtype=np.uint64)
        uniq = np.unique(ids).tolist()
        snap = self._snapshot
        found = snap.get_parents(ms, uniq) if snap is not None else {}
        keys = [pad(n) for n in uniq if n not in found]
        rows = self._read_keys(keys, self._column(FAMILY_HIERARCHY, b"parents", ms)) if keys else {}
        read = dict.fromkeys((int(k) for k in keys), 0)
        for key, row in rows.items():
            cell = self._cell(row, FAMILY_HIERARCHY, b"parents")
            if cell is not None:
                read[int(key)] = int(np.frombuffer(cell.value, dtype="<u8")[0])
        if snap is not None:
            snap.put_parents(ms, read)
        found.update(read)
        return np.array([found.get(int(n), 0) for n in ids], dtype=np.uint64)

    def get_node_timestamps(self, node_ids: Iterable[int]) -> np.ndarray:
        ids = [int(v) for v in node_ids]
        rows = self._read_keys([pad(n) for n in sorted(set(ids))], self._column(FAMILY_HIERARCHY, b"children"))
        found = {}
        for key, row in rows.items():
            cell = self._cell(row, FAMILY_HIERARCHY, b"children")
            if cell is not None:
                found[int(key)] = _cell_ms(cell)
        return np.array([found.get(i, 0) for i in ids], dtype=np.int64)

    def get_cross_edges(self, l2_ids: Iterable[int], time_stamp: TimeStamp = None) -> dict[int, dict[int, np.ndarray]]:
        from google.cloud.bigtable import row_filters as rf

        ids = [int(v) for v in l2_ids]
        end = ms_to_datetime(read_ms(time_stamp) + 1)
        filter_ = rf.RowFilterChain(filters=[
            rf.FamilyNameRegexFilter(FAMILY_EDGES), rf.ColumnQualifierRegexFilter(rb"^atomic_cross_edges_\d+$"),
            rf.TimestampRangeFilter(rf.TimestampRange(end=end)), rf.CellsColumnLimitFilter(1)])
        rows = self._read_keys([pad(n) for n in sorted(set(ids))], filter_)
        out: dict[int, dict[int, np.ndarray]] = {i: {} for i in ids}
        for key, row in rows.items():
            for qualifier, cells in row.cells.get(FAMILY_EDGES, {}).items():
                layer = int(qualifier.rsplit(b"_", 1)[1])
                out[int(key)][layer] = _ids_from(cells[0].value).reshape(-1, 2)
        return out

    # ---- the edit log (PCG's operation rows: key = padded operation id, family 2) --------------
    def log_operation(self, kind, supervoxels, new_roots, ms, added=None, removed=None) -> int:
        row = self._table.append_row(b"ioperations")
        row.increment_cell_value(FAMILY_COUNTER, b"counter", 1)
        result = row.commit()
        op = int.from_bytes(result[FAMILY_COUNTER][b"counter"][0][0], "big", signed=True)
        empty = np.empty((0, 2), np.uint64)
        key = pad(op)
        cells = {
            b"operation_id": np.array([op], "<u8").tobytes(), b"user": b"raymesh", b"kind": kind.encode(),
            b"source_ids": np.asarray(supervoxels[:1], "<u8").tobytes(),
            b"sink_ids": np.asarray(supervoxels[1:], "<u8").tobytes(),
            b"roots": np.asarray(new_roots, "<u8").tobytes(),
            b"added_edges": np.asarray(empty if added is None else added, "<u8").tobytes(),
            b"removed_edges": np.asarray(empty if removed is None else removed, "<u8").tobytes(),
            b"operation_ts": int(ms).to_bytes(8, "big", signed=True),
        }
        direct = self._table.direct_row(key)
        for qualifier, value in cells.items():
            direct.set_cell(FAMILY_LOG, qualifier, value, timestamp=ms_to_datetime(ms))
        self._write_rows([direct])
        return op

    def operations(self, after: int = 0) -> list[dict]:
        from google.cloud.bigtable import row_filters as rf

        rows = self._read_keys([b"ioperations"], rf.CellsColumnLimitFilter(1))
        cell = self._cell(rows[b"ioperations"], FAMILY_COUNTER, b"counter") if rows else None
        last = 0 if cell is None else int.from_bytes(cell.value, "big", signed=True)
        if last <= after:
            return []
        out = []
        for row in self._read(start_key=pad(after + 1), end_key=pad(last), end_inclusive=True,
                              filter_=rf.RowFilterChain(filters=[rf.FamilyNameRegexFilter(FAMILY_LOG),
                                                                 rf.CellsColumnLimitFilter(1)])):
            c = {q: cells[0].value for q, cells in row.cells.get(FAMILY_LOG, {}).items()}
            ids = lambda q: np.frombuffer(c.get(q, b""), "<u8").astype(np.uint64)  # noqa: E731
            out.append({"id": int(row.row_key), "ms": int.from_bytes(c[b"operation_ts"], "big", signed=True),
                        "kind": c[b"kind"].decode(), "supervoxels": np.concatenate([ids(b"source_ids"), ids(b"sink_ids")]),
                        "new_roots": ids(b"roots"), "added": ids(b"added_edges").reshape(-1, 2),
                        "removed": ids(b"removed_edges").reshape(-1, 2)})
        return out

    def _built_ms(self) -> int:
        rows = self._read_keys([b"meta"], self._column(FAMILY_HIERARCHY, b"meta", newest=False))
        cells = rows[b"meta"].cells[FAMILY_HIERARCHY][b"meta"] if b"meta" in rows else []
        return min((_cell_ms(c) for c in cells), default=0)

    # ---- writes (builders, edits) -------------------------------------------------------------
    def _row(self, key: bytes, family: str, qualifier: bytes, value: bytes, ms: int | None):
        row = self._table.direct_row(key)
        row.set_cell(family, qualifier, value, timestamp=None if ms is None else ms_to_datetime(ms))
        return row

    def _write_rows(self, rows: list) -> None:
        self._conn.forget()
        if not self._conn.shared:
            _forget(self.url)
        for i in range(0, len(rows), MUTATION_BATCH):
            statuses = self._table.mutate_rows(rows[i:i + MUTATION_BATCH])
            failed = [s for s in statuses if s.code != 0]
            if failed:
                raise GraphError(f"writing {len(failed)} rows to {self.url} failed: {failed[0].message}")

    def write_nodes(self, node_ids: np.ndarray, children: Sequence[np.ndarray], time_stamp: TimeStamp) -> None:
        """Children cells on the new nodes, parent cells on their children, and the chunk
        counters raised to cover the new ids (what PCG ingest and edits write, 2.8/2.10)."""
        ms = write_ms(time_stamp)
        rows = []
        for node, kids in zip(node_ids, children):
            rows.append(self._row(pad(node), FAMILY_HIERARCHY, b"children", _ids_value(kids), ms))
            value = np.array([node], dtype="<u8").tobytes()
            rows.extend(self._row(pad(child), FAMILY_HIERARCHY, b"parents", value, ms) for child in kids)
        rows.extend(self._counter_rows(np.asarray(node_ids, dtype=np.uint64)))
        self._write_rows(rows)

    def prepare(self, layout) -> None:
        """Builders call this before writing nodes: counters need the id layout, and the meta
        row that defines it is written last."""
        self._build_layout = layout

    def _counter_rows(self, node_ids: np.ndarray) -> list:
        """Counter cells so range reads see these ids (2.10); a counter never moves down."""
        from google.cloud.bigtable import row_filters as rf

        if not len(node_ids):
            return []
        layout = self._build_layout if self._build_layout is not None else self.layout
        chunks = np.asarray(layout.get_chunk_id(node_ids), dtype=np.uint64)
        segments = np.asarray(layout.get_segment_id(node_ids), dtype=np.uint64)
        wanted: dict[bytes, int] = {}
        for chunk in np.unique(chunks):
            seg = segments[chunks == chunk]
            if int(layout.get_chunk_layer(chunk)) == layout.n_layers:  # the 256 root counters
                for k in np.unique(seg % ROOT_COUNTERS):
                    wanted[counter_key(int(chunk), int(k))] = int((seg[seg % ROOT_COUNTERS == k] // ROOT_COUNTERS).max())
            else:
                wanted[counter_key(int(chunk))] = int(seg.max())
        keys = sorted(wanted)
        current = self._read_keys(keys, rf.CellsColumnLimitFilter(1))
        rows = []
        for key in keys:
            cell = self._cell(current[key], FAMILY_COUNTER, b"counter") if key in current else None
            if cell is None or int.from_bytes(cell.value, "big", signed=True) < wanted[key]:
                rows.append(self._row(key, FAMILY_COUNTER, b"counter", wanted[key].to_bytes(8, "big", signed=True), None))
        return rows

    def write_cross_edges(self, l2_ids: np.ndarray, layers: np.ndarray, edges: Sequence[np.ndarray],
                          time_stamp: TimeStamp) -> None:
        ms = write_ms(time_stamp)
        self._write_rows([self._row(pad(n), FAMILY_EDGES, b"atomic_cross_edges_%d" % int(layer), _ids_value(e), ms)
                          for n, layer, e in zip(l2_ids, layers, edges)])


def _cell_ms(cell) -> int:
    """A cell's timestamp in whole milliseconds (PCG's resolution)."""
    return int(cell.timestamp.timestamp() * 1000)


def _version() -> str:
    from importlib import metadata

    try:
        return "raymesh-" + metadata.version("raymesh")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "raymesh"


__all__ = ["BigtableStore", "pad", "counter_key"]
