"""The real volume's graph meshed from its segmentation as CloudVolume rewrites it (gzip'd
compressed_segmentation chunks on a local disk, and sharded precomputed): the same shards, byte
for byte, as from raymesh's own segmentation.

The graph is the session's real graph; each variant is a copy of its SQLite file beside a
segmentation CloudVolume wrote (a graph records a segmentation beside it relative to itself).
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

# A 4x4x2-chunk block at layer 2 (two layer-3 chunks): every chunk's overlap reaches a neighbour.
RANGE = ([2, 2, 2], [6, 6, 4])


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
    cv = cloudvolume_write(f"file://{folder}/ws", labels, "compressed_segmentation", resolution=scale["resolution"],
                      chunk=scale["chunk_sizes"][0], offset=scale["voxel_offset"], sharded=sharded)
    names = os.listdir(folder / "ws" / cv.info["scales"][0]["key"])
    assert names and all(n.endswith(".shard" if sharded else ".gz") for n in names), names[:5]

    url = f"sqlite://{folder}/graph.sqlite"
    variant = open_store(url).meta
    assert variant.segmentation_path.rstrip("/") == f"file://{folder}/ws", "the copy reads its own segmentation"
    lo, hi = variant.voxel_offset_at(0), variant.voxel_offset_at(0) + variant.size_at(0)
    assert np.array_equal(read_block(variant.segmentation_path, 0, lo, hi), labels), "voxel for voxel"

    config = MeshConfig(graph=url, layers=[2, 3], chunk_start=RANGE[0], chunk_end=RANGE[1], executor="serial",
                        mip=0, time_stamp=2e9, graph_meta="skip")
    summary = run(config, progress=False)
    assert not summary.failed, [layer.failures for layer in summary.layers]
    assert summary.layers[0].fragments > 100
    assert file_tree(folder / "ws" / "graphene_meshes" / "initial") == shards
