"""Multi-node behaviour with ``ray.cluster_utils.Cluster``: a worker node dies mid-layer, and a
job asks for more memory than any node has."""

import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.errors import ConfigError
from raymesh.runs.job import MeshJob
from support import SYNTH_CHUNK, SYNTH_RES, all_shards

MiB = 2**20


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    labels, agg = synthetic
    return build_graph(labels, str(tmp_path_factory.mktemp("cluster")), resolution=SYNTH_RES,
                       chunk_size=SYNTH_CHUNK, agglomeration=agg, graph_id="cluster")


def _cluster(head: dict, workers: list[dict], tries: int = 3):
    """A head and workers. On a loaded machine a head can time out while starting (its GCS port
    file, as ``actors.ray_executor.start_local_ray`` retries too, or its raylet registering with
    the GCS: Ray raises a bare ``Exception`` for that one): tried again, up to ``tries``."""
    import time

    import ray
    from ray.cluster_utils import Cluster

    for attempt in range(1, tries + 1):
        try:
            cluster = Cluster(initialize_head=True, connect=True,
                              head_node_args={"include_dashboard": False, "object_store_memory": 80 * MiB, **head})
            break
        except Exception as exc:  # noqa: BLE001 - Ray's raylet timeout is a bare Exception; only it is retried
            if "timed out" not in str(exc).lower() or attempt == tries:
                raise
            ray.shutdown()
            time.sleep(2.0 * attempt)
    nodes = [cluster.add_node(object_store_memory=80 * MiB, **w) for w in workers]
    cluster.wait_for_nodes()
    return cluster, nodes


def test_worker_node_dies_mid_layer_and_shards_match_a_clean_run(graph):
    import ray

    from actors.ray_executor import RayExecutor

    base = dict(graph=graph.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9, force=True, lod_chain=True)
    run(MeshConfig(**base, executor="serial"), progress=False)
    clean = all_shards(MeshJob(MeshConfig(**base)), (2, 3, 4))

    # Shards go to the object store, not inline in the driver, so losing a node loses some of
    # them (and the cache actors placed there): the job must rebuild or re-read them.
    cluster, (_, doomed) = _cluster({"num_cpus": 0, "_system_config": {"max_direct_call_object_size": 64}},
                                    [{"num_cpus": 1}, {"num_cpus": 1}])
    killed = []

    class KillsANode(RayExecutor):
        def run_layer(self, job, layer):
            for i, stats in enumerate(super().run_layer(job, layer)):
                if layer == 3 and i == 1 and not killed:
                    cluster.remove_node(doomed)
                    killed.append(layer)
                yield stats

    try:
        summary = run(MeshConfig(**base), executor=KillsANode(max_retries=5), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed == [3], "the node was removed during layer 3"
    assert [s.failures for s in summary.layers] == [[], [], []]
    assert all_shards(MeshJob(MeshConfig(**base)), (2, 3, 4)) == clean


def test_more_memory_than_any_node_has_is_refused_naming_layer_and_budget(graph):
    import ray

    from actors.ray_executor import RayExecutor

    cluster, _ = _cluster({"num_cpus": 1, "memory": 100 * MiB}, [])
    try:
        config = MeshConfig(graph=graph.store_url, layers=[2], mip=0, force=True, memory_budget="4GiB")
        with pytest.raises(ConfigError, match=r"layer 2 cannot be placed: it asks for 0\.\d\d GiB of memory and "
                                              r"the biggest node with a CPU offers 0\.10 GiB \(memory budget 4\.00 GiB"):
            run(config, executor=RayExecutor(), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_head_without_cpus_and_no_worker_fails_naming_the_layer(graph):
    """A KubeRay-shaped head (no task CPUs) before any worker node is up: the job fails after
    placement_timeout naming the layer, instead of waiting forever (issue 23)."""
    import ray

    from actors.ray_executor import RayExecutor

    cluster, _ = _cluster({"num_cpus": 0}, [])
    try:
        config = MeshConfig(graph=graph.store_url, layers=[2], mip=0, force=True, mesh_dir="no_cpu",
                            placement_timeout=1)
        with pytest.raises(ConfigError, match=r"layer 2 cannot be placed: no node offers 1 CPU for tasks"):
            run(config, executor=RayExecutor(), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
