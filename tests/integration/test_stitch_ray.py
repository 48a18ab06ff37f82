"""Stitching through the top layer on a real local Ray cluster, read back with CloudVolume."""

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.runs.job import MeshJob
from raymesh.formats.mesh_layout import shard_key
from raymesh.volume import read_block
from stitch_checks import assert_stitched_like_layer2, closed_interior_objects, prefetch
from support import SYNTH_CHUNK, SYNTH_RES
from readback import cloudvolume_reader


def test_layers_identical_between_serial_and_ray(ray_local, synthetic, tmp_path):
    from actors.ray_executor import RayExecutor

    labels, agg = synthetic
    outs = []
    for name, executor in (("one", "serial"), ("two", "ray")):
        g = build_graph(labels, str(tmp_path / name), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                        agglomeration=agg, graph_id="same")
        config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor=executor, time_stamp=2e9)
        run(config, executor=RayExecutor() if executor == "ray" else None, progress=False)
        job = MeshJob(config)
        layout = job.meta.layout
        outs.append({(layer, c): job.bucket.read(shard_key(layout, layer, int(layout.chunk_id(layer, *c))))
                     for layer in (2, 3, 4) for _, c in job.iter_chunks(layer)})
    assert outs[0] == outs[1]
    assert all(v is not None for v in outs[0].values())


@pytest.mark.real_data
def test_real_crop_through_the_top_layer(real_crop_meshed):
    """256x256x128 of the real volume, 4 layers, meshed on Ray (the session's crop): every root as
    a viewer would load it."""
    config, summary = real_crop_meshed.config, real_crop_meshed.summary
    assert [len(s.failures) for s in summary.layers] == [0, 0, 0]
    assert summary.layers[1].missing == summary.layers[2].missing == 0
    job = MeshJob(config)
    store = job.store
    read = cloudvolume_reader(store)
    meta = store.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    roots = sorted(set(np.asarray(store.get_roots(np.unique(sv[sv > 0]))).tolist()))
    prefetch(job, roots, (2, 3, 4), read)  # one CloudVolume call, not three per root
    for root in roots:
        assert_stitched_like_layer2(job, root, (3, 4), read)
    # All 139 closed: 131 without the layer-2 caps, 138 with face caps only (the last one sits on a
    # chunk's lower edge, in cells of the diagonal neighbour: the edge cap closes it).
    closed, inside = closed_interior_objects(job, sv, read, 4)
    assert inside > 100 and closed == inside, f"{closed} of {inside} interior objects closed"
