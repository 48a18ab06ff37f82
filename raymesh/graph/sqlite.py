"""The embedded graph store: one SQLite file, the default for laptops, demos and tests.

It keeps PCG's data model, not its byte encoding: node rows with one immutable children cell
(its timestamp is the node's creation time), parent cells that accumulate with edits, and
meta versions. The file is opened in WAL mode, so many processes (Ray workers) read it at once
while one writes. Ids are stored as SQLite integers: with 8 layer bits and fewer than 128 layers
the top bit is always 0, so uint64 ids fit the signed 64-bit column unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Iterable, Sequence

import numpy as np

from raymesh.graph.base import GraphError, GraphStore, TimeStamp, read_ms, write_ms
from raymesh.graph.meta import GraphMeta
from raymesh.volume import read_info

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (ts INTEGER PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, children BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS parents (
    node INTEGER NOT NULL, ts INTEGER NOT NULL, parent INTEGER NOT NULL, PRIMARY KEY (node, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL, supervoxels BLOB NOT NULL,
    new_roots BLOB NOT NULL, added BLOB NOT NULL, removed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cross_edges (
    node INTEGER NOT NULL, layer INTEGER NOT NULL, ts INTEGER NOT NULL, edges BLOB NOT NULL,
    PRIMARY KEY (node, layer, ts)
) WITHOUT ROWID;
"""

_BATCH = 20_000


def _blob(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, dtype="<u8").tobytes()


def _ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64)


def _local_ws(watershed: str) -> str | None:
    """The normalised filesystem path of a local segmentation (``file://`` URL or absolute
    path), else None."""
    if watershed.startswith("file://"):
        path = watershed[len("file://"):]
    elif "://" not in watershed and os.path.isabs(watershed):
        path = watershed
    else:
        return None
    return os.path.normpath(path)


def relative_watershed(watershed: str, folder: str) -> str:
    """``watershed`` as stored in a graph file in ``folder``: a path relative to the folder when
    the segmentation lies in it or below it (``ws``), else unchanged (other folders, buckets)."""
    path = _local_ws(watershed)
    if path is None:
        return watershed
    folder = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([path, folder]) != folder:
        return watershed
    return os.path.relpath(path, folder).replace(os.sep, "/")


def resolve_watershed(watershed: str, folder: str) -> str:
    """The absolute URL of a stored watershed path: relative paths are taken from the graph
    file's folder (``ws`` -> ``file:///that/folder/ws``); URLs and absolute paths (graphs built
    before paths were stored relative) are returned as they are."""
    if not isinstance(watershed, str):
        raise TypeError(f"watershed path {watershed!r} is not a string")
    if "://" in watershed or os.path.isabs(watershed):
        return watershed
    return "file://" + os.path.normpath(os.path.join(os.path.abspath(folder), watershed))


class SQLiteStore(GraphStore):
    """``sqlite:///abs/path/graph.sqlite`` (or ``sqlite://relative/path``)."""

    def __init__(self, path: str, *, create: bool = False):
        if not path:
            raise GraphError("the graph URL sqlite:// names no file; use sqlite:///abs/path/graph.sqlite")
        self.path = os.path.abspath(os.path.expanduser(path))
        self.url = f"sqlite://{self.path}"
        if os.path.isdir(self.path):
            inside = os.path.join(self.path, "graph.sqlite")
            hint = (f"; did you mean sqlite://{inside}?" if os.path.isfile(inside)
                    else "; pass the path of the .sqlite file (raymesh build-graph writes OUT/graph.sqlite)")
            raise GraphError(f"{self.path} is a folder, not a SQLite graph file{hint}")
        if not create and not os.path.exists(self.path):
            raise GraphError(
                f"unknown graph: no SQLite graph at {self.path}; build one with "
                "`raymesh build-graph` or check the --graph URL"
            )
        self._local = threading.local()
        self._meta: GraphMeta | None = None
        if create:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                con = self._con()
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
                con.commit()
            except (OSError, sqlite3.Error) as exc:
                raise GraphError(f"cannot create a SQLite graph at {self.path}: {exc}; "
                                 "choose a writable location for --out/--store") from exc

    def __reduce__(self):  # connections do not pickle: Ray workers reopen the file
        return (SQLiteStore, (self.path,))

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60, isolation_level="DEFERRED")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ---- meta -------------------------------------------------------------------------------
    def has_meta(self) -> bool:
        try:
            return self._con().execute("SELECT 1 FROM meta LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:
            return False

    def raw_meta(self) -> dict | None:
        """The newest meta, with a watershed path stored relative to this file resolved to an
        absolute ``file://`` URL (so a copied graph folder reads its own segmentation)."""
        try:
            row = self._con().execute("SELECT value FROM meta ORDER BY ts DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise GraphError(f"{self.path} is not a raymesh SQLite graph ({exc}); check the --graph URL") from exc
        if not row:
            return None
        try:
            raw = json.loads(row[0])
            ds = raw["data_source"]
            ds["watershed"] = resolve_watershed(ds["watershed"], os.path.dirname(self.path))
        except (ValueError, TypeError, KeyError) as exc:
            raise GraphError(f"{self.path} holds an unreadable graph meta ({exc!r}); rebuild the graph") from exc
        return raw

    @property
    def meta(self) -> GraphMeta:
        if self._meta is None:
            raw = self.raw_meta()
            if raw is None:
                raise GraphError(f"unknown graph: {self.path} has no graph meta; build the graph first")
            info = read_info(raw["data_source"]["watershed"])
            try:
                self._meta = GraphMeta.from_dict(raw, info)
            except (KeyError, TypeError, ValueError) as exc:
                raise GraphError(f"{self.path} holds an unreadable graph meta ({exc!r}); rebuild the graph") from exc
        return self._meta

    def update_meta(self, meta: GraphMeta, time_stamp: TimeStamp = None) -> None:
        """A new meta version. A local watershed segmentation in this file's folder (or below it)
        is stored relative to the folder, so the folder can be copied or moved whole."""
        con = self._con()
        ms = write_ms(time_stamp)
        last = con.execute("SELECT MAX(ts) FROM meta").fetchone()[0]
        ms = max(ms, (last or 0) + 1)  # versions must not collide when written in one millisecond
        d = meta.to_dict()
        d["data_source"]["watershed"] = relative_watershed(d["data_source"]["watershed"], os.path.dirname(self.path))
        con.execute("INSERT INTO meta VALUES (?, ?)", (ms, json.dumps(d, sort_keys=True)))
        con.commit()
        self._meta = None

    # ---- reads ------------------------------------------------------------------------------
    def range_read_chunk(self, chunk_id: int, time_stamp: TimeStamp = None) -> dict[int, np.ndarray]:
        layout = self.layout
        layer = int(layout.get_chunk_layer(chunk_id))
        lo = int(layout.get_chunk_id(chunk_id))
        hi = lo | layout.segment_id_limit(layer)
        rows = self._con().execute(
            "SELECT id, children FROM nodes WHERE id BETWEEN ? AND ? AND ts <= ? ORDER BY id",
            (lo, hi, read_ms(time_stamp)),
        ).fetchall()
        return {int(i): _ids(c) for i, c in rows}

    def _batched(self, sql: str, ids, *params):
        """Rows of ``sql`` run over ids in batches; the ids arrive as a JSON array bound to
        ``json_each(?)`` (no parameter-count limit), after any leading ``params``."""
        ids = [int(v) for v in ids]
        con = self._con()
        for i in range(0, len(ids), _BATCH):
            yield from con.execute(sql, (*params, json.dumps(ids[i : i + _BATCH])))

    def _children(self, node_ids: np.ndarray) -> dict[int, np.ndarray]:
        rows = self._batched("SELECT n.id, n.children FROM json_each(?) j JOIN nodes n ON n.id = j.value", node_ids)
        return {int(nid): _ids(blob) for nid, blob in rows}

    def _parents(self, node_ids: np.ndarray, ms: int) -> np.ndarray:
        rows = self._batched(
            "SELECT (SELECT parent FROM parents WHERE node = j.value AND ts <= ? "
            "ORDER BY ts DESC LIMIT 1) FROM json_each(?) j ORDER BY j.key", node_ids, ms)
        return np.array([r[0] or 0 for r in rows], dtype=np.uint64).reshape(len(node_ids))

    def get_node_timestamps(self, node_ids: Iterable[int]) -> np.ndarray:
        ids = [int(v) for v in node_ids]
        found = dict(self._batched("SELECT n.id, n.ts FROM json_each(?) j JOIN nodes n ON n.id = j.value", ids))
        return np.array([found.get(i, 0) for i in ids], dtype=np.int64)

    def get_cross_edges(self, l2_ids: Iterable[int], time_stamp: TimeStamp = None) -> dict[int, dict[int, np.ndarray]]:
        ids = [int(v) for v in l2_ids]
        out: dict[int, dict[int, np.ndarray]] = {i: {} for i in ids}
        rows = self._batched(
            "SELECT c.node, c.layer, c.edges FROM cross_edges c "
            "WHERE c.ts <= ? AND c.node IN (SELECT value FROM json_each(?)) ORDER BY c.ts", ids, read_ms(time_stamp))
        for nid, layer, blob in rows:
            out[int(nid)][int(layer)] = _ids(blob).reshape(-1, 2)  # newest cell wins
        return out

    # ---- the edit log -------------------------------------------------------------------------
    def log_operation(self, kind, supervoxels, new_roots, ms, added=None, removed=None) -> int:
        con = self._con()
        con.executescript(SCHEMA)  # graphs built before the log existed get the table now
        empty = np.empty((0, 2), np.uint64)
        cur = con.execute("INSERT INTO operations (ts, kind, supervoxels, new_roots, added, removed) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (int(ms), kind, _blob(supervoxels), _blob(new_roots),
                           _blob(empty if added is None else added), _blob(empty if removed is None else removed)))
        con.commit()
        return int(cur.lastrowid)

    def operations(self, after: int = 0) -> list[dict]:
        try:
            rows = self._con().execute("SELECT id, ts, kind, supervoxels, new_roots, added, removed FROM operations "
                                       "WHERE id > ? ORDER BY id", (int(after),)).fetchall()
        except sqlite3.OperationalError:  # no edit log yet
            return []
        return [{"id": int(i), "ms": int(ts), "kind": kind, "supervoxels": _ids(s), "new_roots": _ids(r),
                 "added": _ids(a).reshape(-1, 2), "removed": _ids(d).reshape(-1, 2)}
                for i, ts, kind, s, r, a, d in rows]

    def _built_ms(self) -> int:
        row = self._con().execute("SELECT MIN(ts) FROM meta").fetchone()
        return int(row[0] or 0)

    # ---- writes -----------------------------------------------------------------------------
    def write_nodes(self, node_ids: np.ndarray, children: Sequence[np.ndarray], time_stamp: TimeStamp) -> None:
        ms = write_ms(time_stamp)
        con = self._con()
        con.executemany(
            "INSERT INTO nodes VALUES (?, ?, ?)",
            ((int(n), ms, _blob(c)) for n, c in zip(node_ids, children)),
        )
        con.executemany(
            "INSERT OR REPLACE INTO parents VALUES (?, ?, ?)",
            ((int(c), ms, int(n)) for n, cs in zip(node_ids, children) for c in cs),
        )
        con.commit()

    def write_cross_edges(self, l2_ids: np.ndarray, layers: np.ndarray, edges: Sequence[np.ndarray],
                          time_stamp: TimeStamp) -> None:
        ms = write_ms(time_stamp)
        con = self._con()
        con.executemany(
            "INSERT OR REPLACE INTO cross_edges VALUES (?, ?, ?, ?)",
            ((int(n), int(l), ms, _blob(e)) for n, l, e in zip(l2_ids, layers, edges)),
        )
        con.commit()
