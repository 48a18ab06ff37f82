"""Supervoxel segmentation reads and writes (neuroglancer precomputed).

Arrays are indexed ``[x, y, z]`` in voxels of one mip, with absolute coordinates (the scale's
voxel offset included), the convention CloudVolume and PCG use.

Two readers, chosen once per (url, mip) from the scale's info (``_open_scale``):

- tensorstore's ``neuroglancer_precomputed`` driver, where it reads the data natively: the
  ``raw`` and ``compressed_segmentation`` encodings, sharded or not, whose chunk files are stored
  under their plain names. It is the fast path, and it writes the project's own segmentations.
- CloudVolume, for what tensorstore would misread or cannot decode: the ``compresso`` and
  ``crackle`` encodings, and unsharded scales on ``file://`` whose chunk files CloudVolume
  (CloudFiles) stored compressed under a suffix (``<chunk>.gz``, ``.br``, ``.zstd``: its default on
  local disk). tensorstore looks for ``<chunk>``, finds nothing and reads the fill value 0, silently.
  On GCS and S3 CloudFiles keeps the chunk names and records the compression as the objects'
  Content-Encoding, so only ``file://`` scales are looked at for suffixes (cheaply: a few dozen
  directory entries).

Any other encoding is a :class:`SegmentationError`. Shard files that were compressed whole
(``<n>.shard.gz``, as CloudVolume writes a sharded scale given ``compress="gzip"``) can be read by
neither (both read shards by byte ranges), and are a :class:`SegmentationError` too.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

from raymesh.storage import Bucket, StorageError, local_path, normalize_url


class SegmentationError(ValueError):
    """A missing or unusable segmentation (no info, no such mip, wrong type)."""


def read_info(path: str) -> dict[str, Any]:
    """The precomputed ``info`` JSON of a segmentation; a clear error when it is not there."""
    url = normalize_url(path)
    try:
        data = Bucket(url).read("info")
    except StorageError as exc:
        raise SegmentationError(f"cannot read the segmentation at {url}: {exc}") from exc
    if data is None:
        raise SegmentationError(
            f"no segmentation at {url} (its 'info' file is missing); check the graph's watershed "
            "path or build the graph again"
        )
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise SegmentationError(f"the info file at {url} is not JSON: {exc}") from exc


# Encodings each reader decodes; a scale with any other encoding is refused.
TENSORSTORE_ENCODINGS = ("raw", "compressed_segmentation")
CLOUDVOLUME_ENCODINGS = ("compresso", "crackle")
# CloudFiles' suffixes for compressed files on local disk (cloudfiles.interfaces).
COMPRESSION_SUFFIXES = (".gz", ".br", ".zstd", ".xz", ".bz2")
# Stores CloudVolume reads that tensorstore URLs can also name (not tensorstore's memory://).
CLOUDVOLUME_SCHEMES = ("file://", "gs://", "s3://", "http://", "https://")
SCAN_LIMIT = 48  # directory entries looked at for suffixed chunk files (a scale can hold millions)


def suffixed_chunk_file(url: str, key: str, limit: int = SCAN_LIMIT) -> str | None:
    """A compression-suffixed file among the first ``limit`` entries of a ``file://`` scale dir.

    Lazily scanned (``os.scandir``), so a directory of millions of chunks costs a few dozen
    entries; ``info`` and hidden files are skipped. None for other stores (GCS and S3 keep chunk
    names and say the compression in Content-Encoding) and for a missing directory.
    """
    root = local_path(url)
    if root is None:
        return None
    try:
        entries = os.scandir(os.path.join(root, key))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with entries:
        for seen, entry in enumerate(entries):
            if seen >= limit:
                break
            name = entry.name
            if name == "info" or name.startswith("."):
                continue
            if name.endswith(COMPRESSION_SUFFIXES):
                return name
    return None


class _TensorstoreScale:
    reader = "tensorstore"

    def __init__(self, url: str, mip: int):
        spec = {"driver": "neuroglancer_precomputed", "kvstore": url, "scale_index": mip}
        try:
            self.store = ts.open(spec, read=True, open=True).result()
        except Exception as exc:
            raise SegmentationError(f"cannot open mip {mip} of the segmentation at {url}: {exc}") from exc

    def read(self, start: tuple[int, ...], end: tuple[int, ...]) -> np.ndarray:
        (x0, y0, z0), (x1, y1, z1) = start, end
        return np.asarray(self.store[x0:x1, y0:y1, z0:z1, 0].read().result(), dtype=np.uint64)


class _CloudVolumeScale:
    """CloudVolume as the reader: one process, no progress bars, missing chunks read 0.

    Built from the info already read (and an empty provenance), so opening it reads nothing more;
    ``secrets=None`` lets CloudFiles find the usual credentials for gs:// and s3:// without asking.
    About 2x tensorstore's time on unsharded chunks; on sharded ones (compresso, crackle) each
    block pays about 0.3 s on file://, as CloudFiles' thread pools poll every 0.1 s.
    """

    reader = "cloudvolume"

    def __init__(self, url: str, mip: int, info: dict[str, Any]):
        import copy

        from cloudvolume import CloudVolume  # imported here: only scales that need it pay for it
        try:
            self.cv = CloudVolume(
                url.rstrip("/"), mip=mip, info=copy.deepcopy(info), provenance={}, progress=False,
                fill_missing=True, bounded=True, parallel=1, cache=False, lru_bytes=0,
                secrets=None, max_redirects=0, codec_threads=1,
            )
        except Exception as exc:
            raise SegmentationError(f"cannot open mip {mip} of the segmentation at {url}: {exc}") from exc
        self.mip = mip

    def read(self, start: tuple[int, ...], end: tuple[int, ...]) -> np.ndarray:
        from cloudvolume import Bbox

        block = self.cv.download(Bbox(start, end), mip=self.mip, parallel=1)
        return np.ascontiguousarray(np.asarray(block)[..., 0], dtype=np.uint64)


@lru_cache(maxsize=32)
def _open_scale(url: str, mip: int) -> _TensorstoreScale | _CloudVolumeScale:
    """The reader for one mip (see the module docstring), decided once and kept open."""
    info = read_info(url)
    scales = info.get("scales") or []
    if not 0 <= mip < len(scales):
        raise SegmentationError(f"the segmentation at {url} has no mip {mip} ({len(scales)} scales)")
    scale = scales[mip]
    encoding = scale.get("encoding")
    if encoding not in TENSORSTORE_ENCODINGS + CLOUDVOLUME_ENCODINGS:
        raise SegmentationError(
            f"mip {mip} of the segmentation at {url} has encoding {encoding!r}, which raymesh cannot "
            f"read; segmentation encodings it reads: {', '.join(TENSORSTORE_ENCODINGS + CLOUDVOLUME_ENCODINGS)}"
        )
    suffixed = suffixed_chunk_file(url, scale.get("key", ""))
    if scale.get("sharding"):
        if suffixed is not None:
            raise SegmentationError(
                f"mip {mip} of the segmentation at {url} is sharded and its shard files are compressed "
                f"whole (e.g. {suffixed!r}); neither tensorstore nor CloudVolume reads shards stored so "
                "(they read byte ranges): decompress them (e.g. gunzip) or write them with compress=False"
            )
        native = encoding in TENSORSTORE_ENCODINGS
    else:
        native = encoding in TENSORSTORE_ENCODINGS and suffixed is None
    if native:
        return _TensorstoreScale(url, mip)
    if not url.startswith(CLOUDVOLUME_SCHEMES):
        raise SegmentationError(
            f"mip {mip} of the segmentation at {url} ({encoding!r}) needs CloudVolume, which does not "
            f"read {url.split('://')[0]}:// stores"
        )
    return _CloudVolumeScale(url, mip, info)


def read_block(path: str, mip: int, start: Sequence[int], end: Sequence[int]) -> np.ndarray:
    """Voxels ``[start, end)`` of one mip as a uint64 ``[x, y, z]`` array; missing chunks read 0."""
    scale = _open_scale(normalize_url(path), int(mip))
    start, end = tuple(int(v) for v in start), tuple(int(v) for v in end)
    if any(b <= a for a, b in zip(start, end)):
        return np.zeros([max(b - a, 0) for a, b in zip(start, end)], dtype=np.uint64)
    return scale.read(start, end)


def write_segmentation(
    path: str,
    labels: np.ndarray,
    *,
    resolution: Sequence[float],
    voxel_offset: Sequence[int] = (0, 0, 0),
    chunk_size: Sequence[int] = (64, 64, 64),
    downsample_mips: int = 0,
    encoding: str = "compressed_segmentation",
) -> dict[str, Any]:
    """Write a uint64 segmentation, and ``downsample_mips`` 2x2x1 mode-downsampled scales.

    Returns the resulting info. The 2x2x1 pyramid is what PCG's segmentation readers assume.
    """
    url = normalize_url(path)
    labels = np.asarray(labels, dtype=np.uint64)
    res = np.asarray(resolution, dtype=np.float64)
    off = np.asarray(voxel_offset, dtype=np.int64)
    base = None
    for mip in range(downsample_mips + 1):
        factor = np.array([2**mip, 2**mip, 1])
        scale = {
            "resolution": (res * factor).tolist(),
            "chunk_size": [int(c) for c in chunk_size],
            "size": [int(v) for v in -(-np.array(labels.shape) // factor)],
            "voxel_offset": [int(v) for v in off // factor],
            "encoding": encoding,
        }
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 8]
        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": url,
            "scale_metadata": scale,
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
            "create": True,
            "open": True,
        }
        store = ts.open(spec).result()
        if mip == 0:
            store[..., 0].write(labels).result()
            base = store
        else:
            down = ts.downsample(base, [2**mip, 2**mip, 1, 1], "mode")
            store[..., 0].write(down[..., 0].read().result()).result()
    _open_scale.cache_clear()
    return read_info(url)


def load_labels(src: str) -> np.ndarray:
    """A whole label volume from ``.npy``, ``.npz`` (first array), ``.ckl.gz``/``.ckl`` (crackle)
    or a precomputed segmentation URL (mip 0)."""
    import gzip
    import os

    lower = src.lower()
    local = src[len("file://"):] if src.startswith("file://") else src
    if lower.endswith((".npy", ".npz", ".ckl", ".ckl.gz")) and not os.path.exists(local):
        raise SegmentationError(f"label file {src} does not exist")
    if lower.endswith(".npy"):
        return np.load(local, mmap_mode="r")
    if lower.endswith(".npz"):
        with np.load(local) as data:
            key = "labels" if "labels" in data.files else data.files[0]
            return data[key]
    if lower.endswith((".ckl.gz", ".ckl")):
        import crackle

        with open(local, "rb") as f:
            raw = f.read()
        return crackle.decompress(gzip.decompress(raw) if lower.endswith(".gz") else raw)
    info = read_info(src)
    scale = info["scales"][0]
    off = np.asarray(scale["voxel_offset"])
    return read_block(src, 0, off, off + np.asarray(scale["size"]))


def load_agglomeration(path: str) -> dict[int, int]:
    """``{label: object}`` from JSON (an object) or a two-column ``.npy``/``.csv`` file."""
    import json as _json

    if path.endswith(".json"):
        with open(path) as f:
            return {int(k): int(v) for k, v in _json.load(f).items()}
    arr = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",", dtype=np.uint64, ndmin=2)
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise SegmentationError(f"agglomeration {path} must have two columns (label, object), got shape {arr.shape}")
    return {int(a): int(b) for a, b in arr}
