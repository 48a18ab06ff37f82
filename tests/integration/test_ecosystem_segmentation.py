"""The real volume's graph meshed from its segmentation as CloudVolume rewrites it (gzip'd
compressed_segmentation chunks on a local disk, and sharded precomputed): the same shards, byte
for byte, as from raymesh's own segmentation.

The graph is the session's real graph; each variant is a copy of its SQLite file beside a
segmentation CloudVolume wrote (a graph records a segmentation beside it relative to itself).
CloudVolume writes only the chunks (or shards) that the range and its overlap read; the rest of
the volume is missing, as after delete_black_uploads.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.graph import open_store
from raymesh.storage import local_path
from raymesh.volume import read_block
from support import cloudvolume_write, file_tree

pytestmark = pytest.mark.real_data

# One layer-3 chunk (2x2x2 chunks at layer 2) whose +1 voxel overlap reaches across every axis's
# shard boundary of the sharded variant (shards of 256x256x128 voxels, chunks of 64^3): the reads
# cross chunk files and shard files alike.
RANGE = ([2, 2, 0], [4, 4, 2])


@pytest.fixture(scope="module")
def original(real_graph):
    store = open_store(real_graph.store_url)
    meta = store.meta
    labels = read_block(meta.segmentation_path, 0, meta.voxel_offset_at(0), meta.voxel_offset_at(0) + meta.size_at(0))
    config = MeshConfig(graph=real_graph.store_url, layers=[2, 3], chunk_start=RANGE[0], chunk_end=RANGE[1],
                        executor="serial", mip=0, time_stamp=2e9, graph_meta="skip")
    assert not run(config, progress=False).failed
    mesh = os.path.join(local_path(meta.segmentation_path), "graphene_meshes", "initial")
    return labels, meta, file_tree(mesh)


@pytest.mark.parametrize("sharded", [False, True], ids=["gzip-chunks", "sharded"])
def test_cloudvolume_segmentation_meshes_to_the_same_shards(real_graph, original, tmp_path, sharded):
    labels, meta, shards = original
    folder = tmp_path / "variant"
    folder.mkdir()
    shutil.copy(real_graph.store_url[len("sqlite://"):], folder / "graph.sqlite")
    scale = meta.scale(0)
    chunk = np.asarray(scale["chunk_sizes"][0])
    region = (np.asarray(RANGE[0]) * chunk, (np.asarray(RANGE[1]) + 1) * chunk)  # the range and its overlap
    cv = cloudvolume_write(f"file://{folder}/ws", labels, "compressed_segmentation", resolution=scale["resolution"],
                           chunk=chunk, offset=scale["voxel_offset"], sharded=sharded, region=region)
    names = os.listdir(folder / "ws" / cv.info["scales"][0]["key"])
    if sharded:
        assert list(cv.image.shard_shape(0)) == [256, 256, 128], "RANGE's reads cross the shard boundaries"
    assert names and all(n.endswith(".shard" if sharded else ".gz") for n in names), names[:5]

    url = f"sqlite://{folder}/graph.sqlite"
    variant = open_store(url).meta
    assert variant.segmentation_path.rstrip("/") == f"file://{folder}/ws", "the copy reads its own segmentation"
    lo = variant.voxel_offset_at(0) + region[0]
    read = read_block(variant.segmentation_path, 0, lo, lo + region[1] - region[0])
    assert np.array_equal(read, labels[tuple(slice(a, b) for a, b in zip(*region))]), "voxel for voxel"

    config = MeshConfig(graph=url, layers=[2, 3], chunk_start=RANGE[0], chunk_end=RANGE[1], executor="serial",
                        mip=0, time_stamp=2e9, graph_meta="skip")
    summary = run(config, progress=False)
    assert not summary.failed, [layer.failures for layer in summary.layers]
    assert summary.layers[0].fragments > 50
    assert file_tree(folder / "ws" / "graphene_meshes" / "initial") == shards
