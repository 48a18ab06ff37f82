"""neuroglancer_uint64_sharded_v1: writing whole shards, reading one key (pcg-compat.md section 5).

The writer follows the spec's canonical algorithm (minishards ascending, keys ascending, values
contiguous), which is byte-identical to CloudVolume's ``synthesize_shard`` with raw encodings.
gzip output is made reproducible (mtime 0, fixed level) so shards are byte-identical run to run.
"""

from __future__ import annotations

import gzip
import io
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import mmh3
import numpy as np


class ShardError(ValueError):
    """A shard whose bytes do not parse (truncated, corrupt, or written with another spec)."""


@dataclass(frozen=True)
class ShardingSpec:
    preshift_bits: int = 0
    hash: str = "murmurhash3_x86_128"
    minishard_bits: int = 0
    shard_bits: int = 0
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "raw"

    def __post_init__(self) -> None:
        if self.hash not in ("identity", "murmurhash3_x86_128"):
            raise ShardError(f"unknown shard hash {self.hash!r} (identity or murmurhash3_x86_128)")
        for enc in (self.minishard_index_encoding, self.data_encoding):
            if enc not in ("raw", "gzip"):
                raise ShardError(f"unknown shard encoding {enc!r} (raw or gzip)")
        if self.minishard_bits + self.shard_bits > 64 or min(self.minishard_bits, self.shard_bits) < 0:
            raise ShardError("minishard_bits + shard_bits must be between 0 and 64")

    @classmethod
    def from_json(cls, d: Mapping) -> "ShardingSpec":
        if d.get("@type") != "neuroglancer_uint64_sharded_v1":
            raise ShardError(f"not a neuroglancer_uint64_sharded_v1 spec: {dict(d)}")
        return cls(
            preshift_bits=int(d.get("preshift_bits", 0)), hash=d.get("hash", "identity"),
            minishard_bits=int(d.get("minishard_bits", 0)), shard_bits=int(d.get("shard_bits", 0)),
            minishard_index_encoding=d.get("minishard_index_encoding", "raw"),
            data_encoding=d.get("data_encoding", "raw"),
        )

    def to_json(self) -> dict:
        return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": self.preshift_bits,
                "hash": self.hash, "minishard_bits": self.minishard_bits, "shard_bits": self.shard_bits,
                "minishard_index_encoding": self.minishard_index_encoding,
                "data_encoding": self.data_encoding}

    @property
    def index_bytes(self) -> int:
        return 16 << self.minishard_bits

    def hashed(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64) >> np.uint64(self.preshift_bits)
        if self.hash == "identity":
            return keys
        return np.array([mmh3.hash64(int(k).to_bytes(8, "little"), x64arch=False)[0] & 0xFFFFFFFFFFFFFFFF
                         for k in keys.reshape(-1)], dtype=np.uint64).reshape(keys.shape)

    def minishard_of(self, keys: np.ndarray) -> np.ndarray:
        return self.hashed(keys) & np.uint64((1 << self.minishard_bits) - 1)

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        return (self.hashed(keys) >> np.uint64(self.minishard_bits)) & np.uint64((1 << self.shard_bits) - 1)


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _decode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ShardError(f"a gzip block of the shard is corrupt: {exc}") from exc
    return data


def synthesize_shard(values: Mapping[int, bytes], spec: ShardingSpec) -> bytes:
    """One shard file holding ``{key: value}`` (all keys must belong to the same shard)."""
    builder = ShardBuilder(spec, spool_bytes=2**62)  # never spills: the caller has the values in memory
    for key in canonical_order(values, spec):
        builder.add(key, values[key])
    try:
        return b"".join(builder.pieces())
    finally:
        builder.close()


def canonical_order(keys: Iterable[int], spec: ShardingSpec) -> list[int]:
    """Keys in the order their values sit in a shard: minishard ascending, then key ascending."""
    keys = np.array(sorted(int(k) for k in keys), dtype=np.uint64)
    if not len(keys):
        return []
    order = np.lexsort((keys, spec.minishard_of(keys)))
    return [int(k) for k in keys[order]]


class ShardBuilder:
    """Builds a shard value by value, in canonical order, without holding the values in memory.

    Values are spooled (in memory up to ``spool_bytes``, then a temporary file); ``pieces()``
    yields the finished file in order. The bytes equal ``synthesize_shard`` of the same values.
    """

    def __init__(self, spec: ShardingSpec, spool_bytes: int = 64 * 2**20):
        self.spec = spec
        self._data = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
        self._keys: list[int] = []
        self._minishards: list[int] = []
        self._sizes: list[int] = []
        self._skips: list[int] = []
        self._shard: int | None = None

    def add(self, key: int, value: bytes, skip: int = 0) -> None:
        """Append ``key``'s value. ``skip``: bytes at the value's start that its index entry leaves
        out (Neuroglancer's multi-LOD meshes: fragment data, then the manifest the index points at);
        they need raw data encoding."""
        key = int(key)
        if skip and self.spec.data_encoding != "raw":
            raise ShardError("a value whose index skips bytes needs data_encoding raw")
        as_array = np.array([key], dtype=np.uint64)
        shard = int(self.spec.shard_of(as_array)[0])
        if self._shard is None:
            self._shard = shard
        elif shard != self._shard:
            raise ShardError(f"keys span shards {[self._shard, shard]}; write one file per shard number")
        minishard = int(self.spec.minishard_of(as_array)[0])
        if self._keys and (minishard, key) <= (self._minishards[-1], self._keys[-1]):
            raise ShardError(f"key {key} added out of canonical order (after {self._keys[-1]})")
        encoded = _gzip(value) if self.spec.data_encoding == "gzip" else bytes(value)
        self._data.write(encoded)
        self._keys.append(key)
        self._minishards.append(minishard)
        self._sizes.append(len(encoded))
        self._skips.append(int(skip))

    @property
    def keys(self) -> list[int]:
        return list(self._keys)

    @property
    def data_bytes(self) -> int:
        return int(sum(self._sizes))

    def __len__(self) -> int:
        return len(self._keys)

    def pieces(self, piece_bytes: int = 2**20) -> Iterator[bytes]:
        """Shard index, data region (in pieces), minishard indices. Pieces are small: ``read(n)``
        allocates ``n`` bytes up front, so big ones would be a task's largest allocation."""
        spec = self.spec
        keys = np.array(self._keys, dtype=np.uint64)
        sizes = np.array(self._sizes, dtype=np.uint64)
        minis = np.array(self._minishards, dtype=np.uint64)
        skips = np.array(self._skips, dtype=np.uint64)
        shard_index = np.zeros((1 << spec.minishard_bits, 2), dtype="<u8")
        blobs = []
        data_offset, index_offset = 0, self.data_bytes
        for m in np.unique(minis):
            sel = minis == m
            table = np.zeros((3, int(sel.sum())), dtype="<u8")
            table[0] = np.diff(keys[sel], prepend=np.uint64(0))
            table[1] = skips[sel]  # delta after the previous value's end: 0 when values are contiguous
            table[1, 0] += data_offset
            table[2] = sizes[sel] - skips[sel]
            data_offset += int(sizes[sel].sum())
            raw = table.tobytes()
            blob = _gzip(raw) if spec.minishard_index_encoding == "gzip" else raw
            shard_index[int(m)] = (index_offset, index_offset + len(blob))
            index_offset += len(blob)
            blobs.append(blob)
        yield shard_index.tobytes()
        self._data.seek(0)
        while piece := self._data.read(piece_bytes):
            yield piece
        yield from blobs

    def close(self) -> None:
        self._data.close()


def _parse_minishard(blob: bytes, spec: ShardingSpec) -> np.ndarray:
    raw = _decode(blob, spec.minishard_index_encoding)
    if len(raw) % 24:
        raise ShardError(f"minishard index of {len(raw)} bytes is not a whole [3, n] uint64 table")
    table = np.frombuffer(raw, dtype="<u8").reshape(3, -1).astype(np.uint64)
    keys = np.cumsum(table[0], dtype=np.uint64)
    sizes = table[2]
    starts = np.empty_like(sizes)
    pos = np.uint64(spec.index_bytes)
    for i in range(len(sizes)):
        pos = pos + table[1, i]
        starts[i] = pos
        pos = pos + sizes[i]
    return np.stack([keys, starts, sizes], axis=1)


def minishard_table(read: Callable[[int, int], bytes | None], minishard: int,
                    spec: ShardingSpec) -> np.ndarray | None:
    """``[key, absolute start, size]`` rows of one minishard, reading only what is needed.

    ``read(start, stop)`` fetches a byte range of the shard file (None if the file is missing).
    """
    entry = read(16 * minishard, 16 * minishard + 16)
    if entry is None:
        return None
    if len(entry) != 16:
        raise ShardError("shard file is shorter than its shard index")
    start, end = np.frombuffer(entry, dtype="<u8")
    if start == end:
        return np.empty((0, 3), dtype=np.uint64)
    if end < start:
        raise ShardError(f"shard index entry {minishard} is corrupt ({start} > {end})")
    blob = read(spec.index_bytes + int(start), spec.index_bytes + int(end))
    if blob is None or len(blob) != int(end - start):
        raise ShardError(f"minishard index {minishard} runs past the end of the shard file")
    return _parse_minishard(blob, spec)


def check_shard(read: Callable[[int, int], bytes | None], spec: ShardingSpec) -> int | None:
    """How many values a shard file holds, from its indices alone (no value is read): the shard
    index is whole and ordered, every minishard index decodes, every value lies inside the file
    and outside the minishard indices, and the file ends where its last index ends. None for a
    missing file; ``ShardError`` for a truncated or corrupt one. ``read(start, stop)`` returns
    fewer bytes past the end of the file. Three ranged reads at most: what a rerun pays to trust
    a shard it finds."""
    head = read(0, spec.index_bytes)
    if head is None:
        return None
    if len(head) != spec.index_bytes:
        raise ShardError(f"the file ({len(head)} bytes) is shorter than its shard index ({spec.index_bytes} bytes)")
    entries = np.frombuffer(head, dtype="<u8").reshape(-1, 2)
    if np.any(entries[:, 1] < entries[:, 0]):
        raise ShardError(f"shard index entry {int(np.argmax(entries[:, 1] < entries[:, 0]))} ends before it starts")
    used = entries[entries[:, 1] > entries[:, 0]]
    hi = int(used[:, 1].max()) if len(used) else 0
    if np.any(entries > np.uint64(hi)):
        raise ShardError("the shard index points past the end of its minishard indices")
    if read(spec.index_bytes + hi, spec.index_bytes + hi + 1):
        raise ShardError(f"the file goes on past its last minishard index (byte {spec.index_bytes + hi})")
    if not len(used):
        return 0
    lo = int(used[:, 0].min())
    blob = read(spec.index_bytes + lo, spec.index_bytes + hi)
    if blob is None or len(blob) != hi - lo:
        raise ShardError(f"the file ends before its minishard indices do (byte {spec.index_bytes + hi})")
    count = 0
    for start, end in used.tolist():
        table = _parse_minishard(blob[start - lo:end - lo], spec)
        starts, stops = table[:, 1], table[:, 1] + table[:, 2]
        inside = (starts >= spec.index_bytes) & (stops <= spec.index_bytes + hi)
        clear = (stops <= spec.index_bytes + lo) | (starts >= spec.index_bytes + hi)
        if not np.all(inside & clear):
            raise ShardError("a minishard index points outside the shard's data")
        count += len(table)
    return count


def locate(read: Callable[[int, int], bytes | None], key: int, spec: ShardingSpec) -> tuple[int, int] | None:
    """Absolute ``(start, size)`` of ``key`` inside its shard file, or None when absent."""
    m = int(spec.minishard_of(np.array([key]))[0])
    table = minishard_table(read, m, spec)
    if table is None or not len(table):
        return None
    hit = np.flatnonzero(table[:, 0] == np.uint64(key))
    if not len(hit):
        return None
    return int(table[hit[0], 1]), int(table[hit[0], 2])


def read_value(read: Callable[[int, int], bytes | None], key: int, spec: ShardingSpec) -> bytes | None:
    """One key's value from a shard, without parsing the rest of the file."""
    where = locate(read, key, spec)
    if where is None:
        return None
    start, size = where
    data = read(start, start + size)
    if data is None or len(data) != size:
        raise ShardError(f"value of key {key} runs past the end of the shard file")
    return _decode(data, spec.data_encoding)


def bytes_reader(buf: bytes | memoryview | np.ndarray) -> Callable[[int, int], bytes]:
    """A range reader over shard bytes already in memory (zero-copy until a range is taken)."""
    view = memoryview(np.asarray(buf, dtype=np.uint8) if isinstance(buf, np.ndarray) else buf)

    def read(start: int, stop: int) -> bytes:
        if stop > len(view):
            raise ShardError(f"shard of {len(view)} bytes is truncated (wanted bytes up to {stop})")
        return bytes(view[start:stop])

    return read


def shard_table(buf: bytes | np.ndarray, spec: ShardingSpec) -> np.ndarray:
    """Every key's ``[key, start, size]`` in a shard's bytes (its value still encoded), sorted by
    key: 24 bytes a key, where a dict of tuples of Python ints takes about ten times that (a
    root-layer task keeps one per child shard)."""
    read = bytes_reader(buf)
    tables = []
    for m in range(1 << spec.minishard_bits):
        table = minishard_table(read, m, spec)
        if table is None:
            break
        tables.append(table)
    table = np.concatenate(tables) if tables else np.empty((0, 3), dtype=np.uint64)
    return table[np.argsort(table[:, 0], kind="stable")]


def decode_value(data: bytes, spec: ShardingSpec) -> bytes:
    """A value as stored (``spec.data_encoding``) to its bytes."""
    return _decode(data, spec.data_encoding)


def disassemble_shard(buf: bytes | np.ndarray, spec: ShardingSpec) -> dict[int, bytes]:
    """Every ``{key: value}`` of a shard (what PCG's stitching reads; also for verification)."""
    read = bytes_reader(buf)
    return {key: _decode(read(start, start + size), spec.data_encoding)
            for key, start, size in shard_table(buf, spec).tolist()}


def compute_shard_params_for_hashed(num_labels: int, shard_index_bytes: int = 2**13,
                                    minishard_index_bytes: int = 2**15, min_shards: int = 1) -> tuple[int, int, int]:
    """``(shard_bits, minishard_bits, preshift_bits)`` as CloudVolume/igneous pick them."""
    if num_labels <= 0:
        return (0, 0, 0)
    num_minishards_per_shard = shard_index_bytes / 16
    labels_per_minishard = minishard_index_bytes / 24
    labels_per_shard = num_minishards_per_shard * labels_per_minishard
    if num_labels >= labels_per_shard:
        minishard_bits = int(np.ceil(np.log2(num_minishards_per_shard)))
        shard_bits = int(np.ceil(np.log2(num_labels / (labels_per_minishard * (2**minishard_bits)))))
    elif num_labels >= labels_per_minishard:
        minishard_bits = int(np.ceil(np.log2(num_labels / labels_per_minishard)))
        shard_bits = 0
    else:
        minishard_bits, shard_bits = 0, 0
    capacity = labels_per_shard * (2**shard_bits)
    if num_labels / capacity <= 0.55 and shard_bits > 0:
        shard_bits -= 1  # pack shards to capacity rather than leave them half empty
    min_shard_bits = int(np.ceil(np.log2(min_shards)))
    if shard_bits < min_shard_bits:
        delta = min_shard_bits - shard_bits
        shard_bits, minishard_bits = shard_bits + delta, max(minishard_bits - delta, 0)
    return (int(shard_bits), int(minishard_bits), 0)
