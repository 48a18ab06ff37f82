"""A merge and a split on the real crop, remeshed on Ray, read back as a viewer reads them."""

import datetime as dt
import os

import numpy as np
import pytest

from raymesh.cli_edit import remesher_for
from raymesh.edits import merge, split
from raymesh.runs.job import MeshJob
from raymesh.volume import read_block
from readback import cloudvolume_reader
from real_crop import CROP_T0 as T0, copy_meshed_crop
from stitch_checks import assert_stitched_like_layer2, closed_interior_objects, interior_roots, prefetch
from support import file_tree


@pytest.mark.real_data
def test_merge_and_split_on_the_real_crop(ray_local, real_crop_meshed, tmp_path):
    """On a copy of the session's crop (built at T0, meshed through layer 4 on Ray 30 s later)."""
    from actors.ray_executor import RayExecutor

    url = copy_meshed_crop(real_crop_meshed, tmp_path / "crop")
    config = real_crop_meshed.config.model_copy(update={"graph": url})
    job = MeshJob(config)
    store = job.store
    mesh_root = job.bucket.base.removeprefix("file://")
    initial = file_tree(os.path.join(mesh_root, "initial"))

    meta = store.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    inside_before = interior_roots(store, sv)
    svs = np.unique(sv[sv > 0])
    roots = np.asarray(store.get_roots(svs))
    # Merge two interior objects; split the interior object with the most supervoxels.
    by_size = sorted(inside_before, key=lambda r: -(roots == r).sum())
    big, x, y = by_size[0], by_size[1], by_size[2]
    merge(store, int(svs[roots == x][0]), int(svs[roots == y][0]), T0 + dt.timedelta(minutes=1))
    members = svs[roots == big]
    split(store, int(members[0]), int(members[-1]), T0 + dt.timedelta(minutes=2))

    remesher = remesher_for(store.url)
    nodes = remesher.nodes_since(None)
    summary = remesher.run(nodes, RayExecutor())
    assert not summary.failures and summary.missing == 0
    assert file_tree(os.path.join(mesh_root, "initial")) == initial, "untouched meshes are not rewritten"
    written = {int(n.split(":")[0]) for n in os.listdir(os.path.join(mesh_root, "dynamic"))}
    assert written and written <= {n for ids in nodes.values() for n in ids}

    read = cloudvolume_reader(store)
    now = np.asarray(store.get_roots(svs))
    changed = sorted(set(now[np.isin(roots, [big, x, y])].tolist()))
    assert len(changed) >= 3, "one merged object and at least two split parts"
    prefetch(job, changed, (2, 3, 4), read)
    for root in changed:
        assert_stitched_like_layer2(job, root, (3, 4), read)
    closed, inside = closed_interior_objects(job, sv, read, 4)
    # Before the edits all are closed (test_stitch_ray); remeshing with the node-subset remap and
    # the caps keeps them so.
    assert inside > 100 and closed == inside, f"{closed} of {inside} interior objects closed after the edits"
