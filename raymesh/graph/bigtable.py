"""PyChunkedGraph's Bigtable tables, read (and written) in PCG's own schema (pcg-compat.md 2).

``bigtable://PROJECT/INSTANCE/TABLE``. With ``BIGTABLE_EMULATOR_HOST`` set, google-cloud-bigtable
talks to the emulator instead (tests, demos). Every read is batched (at most 1000 row keys per
request, PCG's MAX_ROW_KEY_COUNT), counted in ``round_trips``, and passes through ``read_gate``,
which the Ray runtime replaces with a cluster-wide limit so meshing cannot swamp the Bigtable
cluster that proofreaders use.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from raymesh.graph.base import GraphError, GraphStore, TimeStamp, ms_to_datetime, read_ms, write_ms
from raymesh.meta import GraphMeta
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


def _ids_from(value: bytes) -> np.ndarray:
    import zstandard

    return np.frombuffer(zstandard.ZstdDecompressor().decompress(value), dtype="<u8").astype(np.uint64)


class BigtableStore(GraphStore):
    def __init__(self, project: str, instance: str, table_id: str, *, create: bool = False):
        from google.api_core import exceptions as gexc
        from google.cloud import bigtable

        self.project, self.instance_id, self.table_id = project, instance, table_id
        self.url = f"bigtable://{project}/{instance}/{table_id}"
        self.round_trips = 0
        self._meta: GraphMeta | None = None
        self._build_layout = None
        from google.auth import exceptions as auth_exc

        try:
            self._client = bigtable.Client(project=project, admin=True)
        except auth_exc.GoogleAuthError as exc:
            raise GraphError(f"cannot open {self.url}: no Google Cloud credentials ({exc}); run "
                             "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, "
                             "or BIGTABLE_EMULATOR_HOST for the emulator") from exc
        self._table = self._client.instance(instance).table(table_id)
        try:
            exists = self._table.exists()
        except gexc.GoogleAPIError as exc:  # call errors, and RetryError when it cannot connect
            raise GraphError(f"cannot reach Bigtable for {self.url}: {exc}; check the project, instance "
                             "and credentials (or BIGTABLE_EMULATOR_HOST for the emulator)") from exc
        if not exists and not create:
            raise GraphError(f"unknown graph: no table {table_id!r} in Bigtable instance {instance!r} of project "
                             f"{project!r} (or no such instance); check the --graph URL bigtable://PROJECT/INSTANCE/TABLE")
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

    def close(self) -> None:
        self._client.close()

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
        with self.read_gate():
            self.round_trips += 1
            return list(self._table.read_rows(**kwargs))

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
    def _column(family: str, qualifier: bytes, end_ms: int | None = None, newest: bool = True):
        from google.cloud.bigtable import row_filters as rf

        parts = [rf.FamilyNameRegexFilter(family), rf.ColumnQualifierRegexFilter(b"^" + qualifier + b"$")]
        if end_ms is not None:
            # Bigtable's range end is exclusive; "cells <= T" ends one millisecond after T.
            parts.append(rf.TimestampRangeFilter(rf.TimestampRange(end=ms_to_datetime(end_ms + 1))))
        if newest:
            parts.append(rf.CellsColumnLimitFilter(1))
        return rf.RowFilterChain(filters=parts)

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
        if self._meta is None:
            raw = self.raw_meta()
            if raw is None:
                raise GraphError(f"unknown graph: {self.url} has no meta row (not a ChunkedGraph table, or "
                                 "its ingest has not finished)")
            self._meta = GraphMeta.from_dict(raw, read_info(raw["data_source"]["watershed"]))
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

    def _max_segments(self, chunks: list[tuple[int, int]]) -> list[int]:
        """Highest segment id allocated in each ``(chunk id, layer)``, from the counter rows of
        all of them in one request (2.6 item 1)."""
        from google.cloud.bigtable import row_filters as rf

        keys = sorted({k for chunk, layer in chunks if layer > 1 for k in self._counter_keys(chunk, layer)})
        counter = rf.RowFilterChain(filters=[rf.FamilyNameRegexFilter(FAMILY_COUNTER), rf.CellsColumnLimitFilter(1)])
        rows = self._read_keys(keys, counter) if keys else {}

        def value(key: bytes) -> int:
            cell = self._cell(rows[key], FAMILY_COUNTER, b"counter") if key in rows else None
            return 0 if cell is None else int.from_bytes(cell.value, "big", signed=True)

        out = []
        for chunk, layer in chunks:
            if layer == 1:
                out.append(self.layout.segment_id_limit(1))
            elif layer == self.layout.n_layers:
                out.append(max((value(k) * ROOT_COUNTERS + i if value(k) else 0)
                               for i, k in enumerate(self._counter_keys(chunk, layer))))
            else:
                out.append(value(counter_key(chunk)))
        return out

    def range_read_chunk(self, chunk_id: int, time_stamp: TimeStamp = None) -> dict[int, np.ndarray]:
        return self.range_read_chunks([chunk_id], time_stamp)[0]

    def range_read_chunks(self, chunk_ids: Iterable[int], time_stamp: TimeStamp = None
                          ) -> list[dict[int, np.ndarray]]:
        """Every node created <= T in each chunk: one request for the counters, one for the rows."""
        from google.cloud.bigtable.row_set import RowSet

        layout = self.layout
        chunks = [(int(layout.get_chunk_id(c)), int(layout.get_chunk_layer(c))) for c in chunk_ids]
        tops = self._max_segments(chunks)
        row_set, ranges = RowSet(), []
        for (lo, _), top in zip(chunks, tops):
            if top:
                row_set.add_row_range_from_keys(pad(lo), pad(lo | top), end_inclusive=True)
                ranges.append((lo, lo | top))
        found: dict[int, np.ndarray] = {}
        if ranges:
            for row in self._read(row_set=row_set,
                                  filter_=self._column(FAMILY_HIERARCHY, b"children", read_ms(time_stamp))):
                cell = self._cell(row, FAMILY_HIERARCHY, b"children")
                if cell is not None:
                    found[int(row.row_key)] = _ids_from(cell.value)
        out = []
        for (lo, _), top in zip(chunks, tops):
            out.append({n: c for n, c in sorted(found.items()) if lo <= n <= (lo | top)} if top else {})
        return out

    def _children(self, node_ids: np.ndarray) -> dict[int, np.ndarray]:
        keys = [pad(n) for n in np.unique(np.asarray(node_ids, dtype=np.uint64))]
        rows = self._read_keys(keys, self._column(FAMILY_HIERARCHY, b"children"))
        out = {}
        for key, row in rows.items():
            cell = self._cell(row, FAMILY_HIERARCHY, b"children")
            if cell is not None:
                out[int(key)] = _ids_from(cell.value)
        return out

    def _parents(self, node_ids: np.ndarray, ms: int) -> np.ndarray:
        ids = np.asarray(node_ids, dtype=np.uint64)
        uniq = np.unique(ids)
        rows = self._read_keys([pad(n) for n in uniq], self._column(FAMILY_HIERARCHY, b"parents", ms))
        found = {}
        for key, row in rows.items():
            cell = self._cell(row, FAMILY_HIERARCHY, b"parents")
            if cell is not None:
                found[int(key)] = int(np.frombuffer(cell.value, dtype="<u8")[0])
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
