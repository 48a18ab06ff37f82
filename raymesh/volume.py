"""Supervoxel segmentation reads and writes (neuroglancer precomputed, via tensorstore).

Arrays are indexed ``[x, y, z]`` in voxels of one mip, with absolute coordinates (the scale's
voxel offset included), the convention CloudVolume and PCG use.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

from raymesh.storage import Bucket, StorageError, normalize_url


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


@lru_cache(maxsize=32)
def _open_scale(url: str, mip: int) -> ts.TensorStore:
    spec = {"driver": "neuroglancer_precomputed", "kvstore": url, "scale_index": mip}
    try:
        return ts.open(spec, read=True, open=True).result()
    except Exception as exc:
        raise SegmentationError(f"cannot open mip {mip} of the segmentation at {url}: {exc}") from exc


def read_block(path: str, mip: int, start: Sequence[int], end: Sequence[int]) -> np.ndarray:
    """Voxels ``[start, end)`` of one mip as a uint64 ``[x, y, z]`` array; missing chunks read 0."""
    store = _open_scale(normalize_url(path), int(mip))
    (x0, y0, z0), (x1, y1, z1) = (tuple(int(v) for v in start), tuple(int(v) for v in end))
    block = store[x0:x1, y0:y1, z0:z1, 0].read().result()
    return np.asarray(block, dtype=np.uint64)


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

        raw = open(local, "rb").read()
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
