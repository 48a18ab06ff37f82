"""The integration layer: a real local Ray (2 CPUs, small object store), shut down after use."""

import pytest


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from actors.ray_executor import start_local_ray

    start_local_ray(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
                    log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
