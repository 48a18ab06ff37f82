"""read_block on segmentations written by CloudVolume itself, against CloudVolume's own reads.

Every variant CloudVolume writes: encodings raw, compressed_segmentation, compresso and crackle;
chunk files gzip'd (its default on local disk, ``<chunk>.gz``), brotli'd, zstd'd or plain;
unsharded and sharded; two mips with their own chunk sizes and voxel offsets. tensorstore alone
reads ``<chunk>.gz`` as missing (zeros), so every comparison also checks the block is not all 0.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from cloudvolume import Bbox, CloudVolume

from raymesh import volume
from raymesh.volume import SegmentationError, read_block
from support import REAL_VOLUME, cloudvolume_write

SHAPE = (64, 48, 40)
OFFSET = (3, 5, 7)
RES = (8, 8, 40)
CHUNK = (32, 32, 32)
ENCODINGS = ("raw", "compressed_segmentation", "compresso", "crackle")
NATIVE = ("raw", "compressed_segmentation")  # what tensorstore decodes itself

# Boxes in voxels from the volume's corner: inside one chunk, straddling chunks, at the far edge,
# the all-zero (never written) first chunk, one voxel, the whole volume.
BOXES = [
    ((2, 3, 4), (20, 21, 22)),
    ((20, 25, 28), (45, 40, 37)),
    ((30, 30, 30), (34, 34, 34)),
    ((40, 30, 20), (64, 48, 40)),
    ((0, 0, 0), (32, 32, 32)),
    ((63, 47, 39), (64, 48, 40)),
    ((0, 0, 0), SHAPE),
]
# Fewer for sharded scales: CloudVolume's sharded reads cost about 0.2 s each on file:// (its
# CloudFiles thread pools poll every 0.1 s), and both sides of each comparison pay it.
SHARDED_BOXES = [BOXES[i] for i in (1, 3, 4, 6)]


def structured_labels(shape, seed=0, n=40) -> np.ndarray:
    """Voronoi cells of random seeds with PCG-sized uint64 ids (most above 2**32), background
    in a slab, and the first 32^3 chunk all zero (so it is never written)."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, shape, size=(n, 3))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    nearest = np.argmin(((grid[:, None, :] - seeds[None]) ** 2 * (1, 1, 4)).sum(-1), axis=1)
    ids = rng.integers(2**33, 2**63, size=n, dtype=np.uint64)
    ids[:4] = rng.integers(1, 2**31, size=4)  # some small ids too
    ids[4] = 0
    labels = ids[nearest].reshape(shape)
    labels[:, :, 36:38] = 0
    labels[:32, :32, :32] = 0
    labels[40:44, 10:12, 5:9] = np.uint64(2**64 - 2)  # a top-of-range id
    return labels


LABELS = structured_labels(SHAPE)


def cv_write(url, labels, encoding, *, compress=None, chunk=CHUNK, offset=OFFSET, sharded=False,
             data_encoding="gzip"):
    return cloudvolume_write(url, labels, encoding, resolution=RES, compress=compress, chunk=chunk, offset=offset,
                             sharded=sharded, data_encoding=data_encoding, shard_chunks=4)


def reference(url, mip, start, end) -> np.ndarray:
    cv = CloudVolume(url, mip=mip, progress=False, fill_missing=True, secrets=None)
    (x0, y0, z0), (x1, y1, z1) = start, end
    return np.asarray(cv[x0:x1, y0:y1, z0:z1])[..., 0]


def assert_reads_like_cloudvolume(url, mip=0, offset=OFFSET, boxes=BOXES, labels=LABELS):
    for lo, hi in boxes:
        start, end = np.add(offset, lo), np.add(offset, hi)
        got = read_block(url, mip, start, end)
        want = reference(url, mip, start, end)
        assert got.dtype == np.uint64 and got.shape == tuple(np.subtract(hi, lo))
        assert np.array_equal(got, want), f"mip {mip} box {lo}-{hi} differs from CloudVolume's read"
        if mip == 0:
            assert np.array_equal(got, labels[tuple(slice(a, b) for a, b in zip(lo, hi))])
        if np.any(labels[tuple(slice(a, b) for a, b in zip(lo, hi))]) or mip:
            assert np.any(got), f"box {lo}-{hi} read as all zeros"
    assert not multiprocessing.active_children(), "no reader processes"


def reader(url, mip=0) -> str:
    return volume._open_scale(url if url.endswith("/") else url + "/", mip).reader


@pytest.mark.parametrize("compress", [None, "br", "zstd", False], ids=["gzip", "br", "zstd", "plain"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_unsharded_written_by_cloudvolume(tmp_path, encoding, compress):
    url = f"file://{tmp_path}/seg"
    cv_write(url, LABELS, encoding, compress=compress)
    names = os.listdir(tmp_path / "seg" / "8_8_40")
    suffix = {None: ".gz", "br": ".br", "zstd": ".zstd", False: ""}[compress]
    assert names and all(n.endswith(suffix) for n in names)
    assert "3-35_5-37_7-39" + suffix not in names, "the all-zero chunk is not written: it reads as missing"
    assert_reads_like_cloudvolume(url)
    native = encoding in NATIVE and compress is False
    assert reader(url) == ("tensorstore" if native else "cloudvolume")


@pytest.mark.parametrize("data_encoding", ["gzip", "raw"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sharded_written_by_cloudvolume(tmp_path, encoding, data_encoding):
    url = f"file://{tmp_path}/seg"
    cv_write(url, LABELS, encoding, chunk=(16, 16, 16), sharded=True, data_encoding=data_encoding)
    names = sorted(os.listdir(tmp_path / "seg" / "8_8_40"))
    assert len(names) > 1 and all(n.endswith(".shard") for n in names), names
    assert_reads_like_cloudvolume(url, boxes=SHARDED_BOXES)
    assert reader(url) == ("tensorstore" if encoding in NATIVE else "cloudvolume")


@pytest.mark.parametrize("encoding,compress,native", [
    ("raw", False, True),
    ("compressed_segmentation", False, True),
    ("compressed_segmentation", None, False),
    ("crackle", "br", False),
])
def test_two_mips_with_own_chunks_and_offsets(tmp_path, encoding, compress, native):
    url = f"file://{tmp_path}/seg"
    cv = cv_write(url, LABELS, encoding, compress=compress)
    cv.add_scale((2, 2, 1), chunk_size=(16, 16, 8))
    offset1 = (11, 13, 17)
    cv.info["scales"][1]["voxel_offset"] = list(offset1)
    cv.commit_info()
    mip1 = np.ascontiguousarray(LABELS[::2, ::2, :])  # mip 1 content: a 2x2x1 subsampling
    kwargs = {} if compress is None else {"compress": compress}
    out1 = CloudVolume(url, mip=1, progress=False, secrets=None, **kwargs)
    out1[Bbox(offset1, np.add(offset1, mip1.shape))] = mip1
    boxes1 = [((0, 0, 0), mip1.shape), ((5, 7, 6), (20, 19, 30)), ((15, 15, 7), (32, 24, 40)),
              ((31, 23, 39), (32, 24, 40))]
    assert_reads_like_cloudvolume(url, 0)
    assert_reads_like_cloudvolume(url, 1, offset=offset1, boxes=boxes1, labels=mip1)
    for lo, hi in boxes1:
        got = read_block(url, 1, np.add(offset1, lo), np.add(offset1, hi))
        assert np.array_equal(got, mip1[tuple(slice(a, b) for a, b in zip(lo, hi))])
    expect = "tensorstore" if native else "cloudvolume"
    assert reader(url, 0) == reader(url, 1) == expect


@pytest.mark.parametrize("encoding", ["jpeg", "fpzip"])
def test_unsupported_encoding_is_a_segmentation_error(tmp_path, encoding):
    url = f"file://{tmp_path}/seg"
    info = CloudVolume.create_new_info(1, "segmentation", "uint64", "raw", list(RES), list(OFFSET),
                                       list(SHAPE), chunk_size=list(CHUNK))
    info["scales"][0]["encoding"] = encoding
    CloudVolume(url, info=info, progress=False, secrets=None).commit_info()
    with pytest.raises(SegmentationError, match=f"encoding '{encoding}'"):
        read_block(url, 0, OFFSET, np.add(OFFSET, 8))


def test_missing_mip_is_a_segmentation_error(tmp_path):
    url = f"file://{tmp_path}/seg"
    cv_write(url, LABELS, "raw", compress=False)
    with pytest.raises(SegmentationError, match="no mip 3"):
        read_block(url, 3, OFFSET, np.add(OFFSET, 8))


def test_whole_file_compressed_shards_are_refused(tmp_path):
    """CloudVolume's sharded write with compress='gzip' stores ``<n>.shard.gz``, which neither it
    nor tensorstore can read back (shards are read by byte range): refuse, do not read zeros."""
    url = f"file://{tmp_path}/seg"
    cv_write(url, LABELS, "compressed_segmentation", compress="gzip", chunk=(16, 16, 16), sharded=True)
    assert all(n.endswith(".shard.gz") for n in os.listdir(tmp_path / "seg" / "8_8_40"))
    with pytest.raises(SegmentationError, match=r"\.shard\.gz"):
        read_block(url, 0, OFFSET, np.add(OFFSET, 8))


def test_suffix_scan_is_short_and_skips_info_and_hidden_files(tmp_path, monkeypatch):
    scale = tmp_path / "seg" / "k"
    scale.mkdir(parents=True)
    for name in ("info", ".tmp-1.gz", "0-32_0-32_0-32"):
        (scale / name).write_bytes(b"")
    url = f"file://{tmp_path}/seg/"
    assert volume.suffixed_chunk_file(url, "k") is None
    (scale / "32-64_0-32_0-32.br").write_bytes(b"")
    assert volume.suffixed_chunk_file(url, "k") == "32-64_0-32_0-32.br"
    assert volume.suffixed_chunk_file(url, "missing") is None
    assert volume.suffixed_chunk_file("gs://bucket/seg/", "k") is None

    pulled = []

    class Endless:  # a scale dir with no end: the scan must stop by itself
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            i = 0
            while True:
                pulled.append(i)
                yield type("Entry", (), {"name": f"{i}-{i + 1}_0-1_0-1"})()
                i += 1

    monkeypatch.setattr(volume.os, "scandir", lambda path: Endless())
    assert volume.suffixed_chunk_file(url, "k") is None
    assert len(pulled) <= volume.SCAN_LIMIT + 1


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_VOLUME.exists(),
                    reason=f"real volume not present at {REAL_VOLUME} (only in the project's shared data)")
@pytest.mark.parametrize("sharded", [False, True], ids=["gzip-chunks", "sharded"])
def test_real_crop_written_by_cloudvolume(tmp_path, real_labels, sharded):
    crop = np.ascontiguousarray(real_labels[192:320, 192:320, 192:320], dtype=np.uint64)
    offset = (64, 128, 32)
    url = f"file://{tmp_path}/seg"
    cv_write(url, crop, "compressed_segmentation", chunk=(64, 64, 64), offset=offset, sharded=sharded)
    names = os.listdir(tmp_path / "seg" / "8_8_40")
    assert all(n.endswith(".shard" if sharded else ".gz") for n in names)
    boxes = [((0, 0, 0), (65, 65, 65)), ((63, 63, 63), (128, 128, 128)), ((30, 40, 50), (100, 90, 80)),
             ((0, 0, 0), (128, 128, 128))]
    assert_reads_like_cloudvolume(url, offset=offset, boxes=boxes, labels=crop)
    assert reader(url) == ("tensorstore" if sharded else "cloudvolume")
