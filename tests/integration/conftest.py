"""The integration layer: a real local Ray (2 CPUs, small object store), shut down after use, and
the real crop meshed once for the tests that read it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from real_crop import CROP, CROP_T0, MeshedCrop

RAY_OPTIONS = dict(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
                   ignore_reinit_error=True)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from actors.ray_executor import start_local_ray

    start_local_ray(**RAY_OPTIONS)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_crop(real_labels) -> np.ndarray:
    return np.asfortranarray(real_labels[CROP])


@pytest.fixture(scope="session")
def real_crop_meshed(real_crop, tmp_path_factory) -> MeshedCrop:
    """256x256x128 of the real volume built at ``CROP_T0`` and meshed through layer 4 on a local
    Ray, once for the session: several tests read this one output (it took each of them ~20-40 s
    to make its own). Tests that change it work on ``copy_meshed_crop``."""
    import ray

    from actors.ray_executor import RayExecutor, start_local_ray
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run

    folder = tmp_path_factory.mktemp("real_crop")
    g = build_graph(real_crop, str(folder), resolution=(8, 8, 40), chunk_size=(64, 64, 64), graph_id="real",
                    time_stamp=CROP_T0)
    config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0,
                        time_stamp=(CROP_T0 + dt.timedelta(seconds=30)).timestamp())
    started = not ray.is_initialized()  # session fixtures come before a module's ray_local
    if started:
        start_local_ray(**RAY_OPTIONS)
    try:
        summary = run(config, executor=RayExecutor(), progress=False)
    finally:
        if started:
            ray.shutdown()
    return MeshedCrop(real_crop, folder, g, config, summary)
