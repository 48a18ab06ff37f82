"""Output and input key-value storage on tensorstore's kvstore drivers.

Paths are URLs (``file:///abs``, ``gs://bucket/x``, ``s3://...``, ``memory://``); a bare local
path is turned into ``file://``. Writes go through tensorstore, whose file driver writes a
temporary file and renames it, and whose cloud drivers upload whole objects: every file is
written whole or not at all, which is what lets a killed job resume.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from functools import lru_cache

import tensorstore as ts


class StorageError(RuntimeError):
    """A path that cannot be opened, or a read that failed."""


class RangeError(StorageError):
    """A ranged read past the end of an object (a truncated file)."""


def normalize_url(path: str) -> str:
    """``/a/b`` -> ``file:///a/b/``; URLs keep their scheme. Always ends with a slash (a folder)."""
    if "://" not in path:
        path = "file://" + os.path.abspath(os.path.expanduser(path))
    if path.startswith("precomputed://"):
        path = path[len("precomputed://") :]
    return path.rstrip("/") + "/"


def join(base: str, *parts: str) -> str:
    return normalize_url(base) + "/".join(p.strip("/") for p in parts)


def local_path(url: str) -> str | None:
    """The filesystem path of a ``file://`` URL, else None."""
    url = normalize_url(url)
    return url[len("file://") :].rstrip("/") if url.startswith("file://") else None


def _read_umask() -> int:
    """The process umask (reading it means setting it; done once, at import, before any thread
    of ours writes files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@lru_cache(maxsize=64)
def _kvstore(base: str) -> ts.KvStore:
    try:
        return ts.KvStore.open(base).result()
    except Exception as exc:  # tensorstore raises ValueError for unknown schemes and bad URLs
        raise StorageError(f"cannot open storage {base!r}: {exc}") from exc


class Bucket:
    """A folder in some kvstore: read, write (atomically) and list keys below it."""

    def __init__(self, base: str):
        self.base = normalize_url(base)
        self._kv = _kvstore(self.base)

    def __reduce__(self):  # tensorstore handles do not pickle; reopen on the other side
        return (Bucket, (self.base,))

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            result = self._kv.read(key).result()
        except Exception as exc:
            raise StorageError(f"reading {self.base}{key} failed: {exc}") from exc
        return bytes(result.value) if result.state == "value" else None

    def read_range(self, key: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of an object (one ranged read: a minishard index, a fragment)."""
        try:
            result = self._kv.read(key, byte_range=slice(start, stop)).result()
        except Exception as exc:
            kind = RangeError if "OUT_OF_RANGE" in str(exc) else StorageError
            raise kind(f"reading {self.base}{key}[{start}:{stop}] failed: {exc}") from exc
        return bytes(result.value) if result.state == "value" else None

    def exists(self, key: str) -> bool:
        """Whether the object exists, without fetching its bytes (a zero-length ranged read)."""
        return self.read_range(key, 0, 0) is not None

    def write(self, key: str, data: bytes) -> None:
        try:
            self._kv.write(key, data).result()
        except Exception as exc:
            raise StorageError(f"writing {self.base}{key} failed: {exc}") from exc

    def write_pieces(self, key: str, pieces: Iterable[bytes]) -> int:
        """Write an object given in pieces, whole or not at all; returns its size.

        Local files are streamed to a temporary file beside the target and renamed, so a large
        shard never sits in memory whole. Other stores take whole objects: the pieces are joined.
        """
        path = local_path(self.base)
        if path is None:
            data = b"".join(pieces)
            self.write(key, data)
            return len(data)
        target = os.path.join(path, key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(target))
        size = 0
        try:
            # mkstemp makes the file 0600; give it the mode any new file gets (0644 under umask
            # 022, as tensorstore's own writes do), or other users and file servers cannot read it.
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    f.write(piece)
                    size += len(piece)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return size

    def delete(self, key: str) -> None:
        """Remove one object; nothing happens when it does not exist."""
        try:
            self._kv.delete_range(ts.KvStore.KeyRange(key, key + "\x00")).result()
        except Exception as exc:
            raise StorageError(f"deleting {self.base}{key} failed: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """Keys below the folder that start with ``prefix``, sorted."""
        key_range = ts.KvStore.KeyRange(prefix, prefix + "\xff") if prefix else ts.KvStore.KeyRange()
        keys = self._kv.list(key_range).result()
        return sorted(k.decode() for k in keys)
