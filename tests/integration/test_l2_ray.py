"""Layer 2 on a real local Ray cluster, read back with CloudVolume's graphene client."""

import numpy as np
import pytest

from l2_checks import assert_within_chunk
from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.graph import open_store
from raymesh.runs.job import MeshJob
from readback import cloudvolume_for
from support import SYNTH_CHUNK, SYNTH_RES


def all_l2_nodes(store):
    layout = store.layout
    ids = []
    for c in layout.iter_chunk_coords(2):
        ids += list(store.range_read_chunk(layout.chunk_id(2, *c)))
    return ids


def test_cloudvolume_reads_every_l2_mesh(ray_local, synthetic, tmp_path):
    from actors.ray_executor import RayExecutor

    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    summary = run(MeshConfig(graph=g.store_url, mip=0), executor=RayExecutor(), progress=False)
    assert summary.layers[0].failures == []
    store = open_store(g.store_url)
    ids = all_l2_nodes(store)
    meshes = cloudvolume_for(store).mesh.get_meshes_on_bypass(ids, allow_missing=True)
    assert sorted(meshes) == sorted(ids)
    job = MeshJob(MeshConfig(graph=g.store_url, mip=0))
    for node in ids:
        assert len(meshes[node].faces) > 0
    for _, coords in job.iter_chunks(2):
        assert_within_chunk(job, coords)


@pytest.mark.real_data
def test_real_crop_layer2(real_crop_meshed):
    """A 256x256x128 crop of the real volume (the session's, meshed on Ray): every layer-2 node
    read back by CloudVolume."""
    from l2_checks import assert_matches_direct_zmesh

    g, config = real_crop_meshed.graph, real_crop_meshed.config
    layer = real_crop_meshed.summary.layers[0]
    assert layer.failures == [] and layer.fragments == g.node_counts[2]
    store = open_store(g.store_url)
    ids = all_l2_nodes(store)
    meshes = cloudvolume_for(store).mesh.get_meshes_on_bypass(ids, allow_missing=True)
    assert len(meshes) == len(ids)
    job = MeshJob(config)
    for coords in [(0, 0, 0), (1, 2, 1), (3, 3, 1)]:
        assert_within_chunk(job, coords)
        assert assert_matches_direct_zmesh(job, coords) > 0
