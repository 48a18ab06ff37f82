"""Placement arithmetic, shard consumers and the runtime's input checks, without Ray."""

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.errors import ConfigError
from raymesh.runs.job import MeshJob
from raymesh.placement import (MAX_PARTS, NODE_BYTES_PER_CHILD_BYTE, TASK_BASE_BYTES, TaskRequest, layer_resources, node_limit,
                               stitch_parts, stitch_request, unsatisfiable)
from raymesh.stitch import consumer_nodes, plan_chunk
from support import SYNTH_CHUNK, SYNTH_RES

GiB = 2**30


def test_requests_are_clipped_to_the_budget():
    assert stitch_request(0, 4 * GiB) == TASK_BASE_BYTES
    assert stitch_request(10 * GiB, 2 * GiB) == 2 * GiB


def test_chunks_split_so_each_part_holds_half_the_work():
    MiB = 2**20
    budget = TASK_BASE_BYTES + 8 * MiB  # 8 MiB of work per task: 4 for a part's fragments
    assert stitch_parts(0, budget) == 1
    assert stitch_parts(4 * MiB, budget) == 1
    assert stitch_parts(4 * MiB + 1, budget) == 2
    assert stitch_parts(30 * MiB, budget) == 8
    assert stitch_parts(10**12, budget) == MAX_PARTS
    assert stitch_parts(1, TASK_BASE_BYTES // 2) == MAX_PARTS  # no work left at all


def test_node_limit_is_half_the_work_over_the_node_factor_unless_set():
    assert node_limit(TASK_BASE_BYTES + 2 * NODE_BYTES_PER_CHILD_BYTE * 1000) == 1000
    assert node_limit(TASK_BASE_BYTES // 2) == 0
    assert node_limit(2 * GiB, max_stitch_bytes=123) == 123
    assert MeshConfig(graph="sqlite:///x", max_stitch_bytes="64MiB").max_stitch_bytes == 64 * 2**20


def test_highmem_resource_from_the_threshold_layer_up():
    assert layer_resources(4, 5, "big") == {}
    assert layer_resources(5, 5, "big") == {"big": 1.0}
    assert layer_resources(7, None, "big") == {}


def test_unsatisfiable_names_the_shortfall():
    nodes = [{"memory": 8 * GiB, "CPU": 4}, {"memory": 64 * GiB, "CPU": 4, "raymesh_highmem": 1}]
    assert unsatisfiable(TaskRequest(32 * GiB, {"raymesh_highmem": 1.0}), nodes) is None
    assert "no node has the custom resource 'other'" in unsatisfiable(TaskRequest(GiB, {"other": 1.0}), nodes)
    assert "asks for 96.00 GiB" in unsatisfiable(TaskRequest(96 * GiB), nodes)
    # Memory and resource must be on the same node.
    assert unsatisfiable(TaskRequest(32 * GiB, {"CPU": 4}), nodes) is None
    assert unsatisfiable(TaskRequest(32 * GiB, {"CPU": 5}), nodes) is not None
    assert unsatisfiable(TaskRequest(32 * GiB, {"small": 1}), nodes + [{"memory": GiB, "CPU": 1, "small": 1}]) \
        is not None


def test_unsatisfiable_counts_cpus():
    """A head with no task CPUs fits nothing, however much memory it has (issue 23)."""
    head = {"memory": 64 * GiB, "CPU": 0.0, "raymesh_highmem": 1}
    assert "no node offers 1 CPU" in unsatisfiable(TaskRequest(GiB), [head])
    assert unsatisfiable(TaskRequest(GiB), [head, {"memory": 2 * GiB, "CPU": 1}]) is None
    assert "biggest node with a CPU offers 2.00 GiB" in unsatisfiable(TaskRequest(8 * GiB),
                                                                       [head, {"memory": 2 * GiB, "CPU": 1}])


def test_bad_placement_settings_are_config_errors():
    from raymesh.config import load_config

    with pytest.raises(ConfigError, match="'highmem_resource'"):
        load_config(None, graph="sqlite:///x.sqlite", highmem_resource="has space")
    with pytest.raises(ConfigError, match="'chunks_per_task'"):
        load_config(None, graph="sqlite:///x.sqlite", chunks_per_task=0)


def test_unreachable_ray_address_is_a_clear_error_without_waiting():
    from actors.ray_executor import RayExecutor

    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        RayExecutor(address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="is not auto, host:port"):
        RayExecutor(address="somewhere")


@pytest.fixture(scope="module")
def job(synthetic, tmp_path_factory):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path_factory.mktemp("consumers")), resolution=SYNTH_RES,
                    chunk_size=SYNTH_CHUNK, agglomeration=agg)
    return MeshJob(MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", time_stamp=2e9))


def test_consumers_invert_the_stitching_plan(job):
    """Every (child fragment, reading node) pair of the plans of layers 3 and 4 is found from below."""
    layout = job.meta.layout
    read_by = {}
    for layer in (3, 4):
        for _, coords in job.iter_chunks(layer):
            plan = plan_chunk(job.store, layer, int(layout.chunk_id(layer, *coords)), job.time_stamp)
            for node, descendants in plan.descendants.items():
                for d in descendants:
                    read_by[d] = node
    assert read_by, "the synthetic graph stitches something"
    fragments = np.array(sorted(read_by), dtype=np.uint64)
    found = consumer_nodes(job.store, fragments, job.time_stamp)
    assert dict(zip(fragments.tolist(), found.tolist())) == read_by
    assert any(layout.get_chunk_layer(n) - layout.get_chunk_layer(d) > 1 for d, n in read_by.items()), \
        "the graph has skip connections, so some shards are read two layers up"


def test_consumer_chunks_stay_inside_the_job(job):
    layout = job.meta.layout
    l2_nodes = [n for _, c in job.iter_chunks(2)
                for n in job.store.range_read_chunk(int(layout.chunk_id(2, *c)), job.time_stamp)]
    chunks = job.consumer_chunks(l2_nodes)
    assert chunks and {layer for layer, _ in chunks} <= {3, 4}
    only3 = MeshJob(job.config.model_copy(update={"layers": [2, 3]}))
    assert {layer for layer, _ in only3.consumer_chunks(l2_nodes)} == {3}


def test_python_api_takes_a_dict_a_yaml_path_or_a_config(job, tmp_path):
    import yaml

    import raymesh

    settings = {"graph": job.config.graph, "layers": [2], "mip": 0, "executor": "serial", "time_stamp": 2e9}
    first = raymesh.run(settings, progress=False, force=True)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(settings))
    second = raymesh.run(str(path), progress=False)
    third = raymesh.run(MeshConfig(**settings), progress=False, layers=[2, 3])
    assert first.layers[0].chunks == second.layers[0].chunks == job.count_chunks(2)
    assert first.layers[0].fragments > 0 and second.layers[0].chunks_skipped == job.count_chunks(2)
    assert [s.layer for s in third.layers] == [2, 3]
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        raymesh.run({**settings, "bogus": 1}, progress=False)


def test_a_local_ray_that_times_out_starting_is_tried_again(monkeypatch):
    """Ray's start-up time-outs on a loaded machine are retried; other errors are not; the last
    time-out says what to do (issue 19)."""
    import ray

    from actors import ray_executor

    calls = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", flaky)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray_executor.time, "sleep", lambda s: None)
    ray_executor.start_local_ray(num_cpus=1)
    assert len(calls) == 3
    calls.clear()

    def always(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    monkeypatch.setattr(ray, "init", always)
    with pytest.raises(RuntimeError, match="did not start .* in 3 tries; the machine may be overloaded"):
        ray_executor.start_local_ray(num_cpus=1)

    def other(**kwargs):
        raise ValueError("bad argument")

    monkeypatch.setattr(ray, "init", other)
    with pytest.raises(ValueError, match="bad argument"):
        ray_executor.start_local_ray(num_cpus=1)


def test_lower_layers_ask_for_the_general_groups_resource_on_a_two_group_cluster():
    """Issue 23: a layer-2 task fits a big-memory node too; asking for a sliver of a resource only
    the general group carries keeps it (and an autoscaler's new nodes) off the highmem group."""
    from raymesh.placement import GENERAL_UNITS

    assert layer_resources(2, 5, "big", "small") == {"small": GENERAL_UNITS}
    assert layer_resources(4, 5, "big", "small") == {"small": GENERAL_UNITS}
    assert layer_resources(5, 5, "big", "small") == {"big": 1.0}
    assert layer_resources(2, None, "big", "small") == {}  # one kind of node: nothing asked
    assert layer_resources(2, 5, "big", None) == {}
    assert MeshConfig(graph="sqlite:///x.sqlite").general_resource == "raymesh_general"
    # A general node carrying one unit runs as many such tasks as it has CPUs.
    request = TaskRequest(GiB, layer_resources(2, 5, "big", "small"))
    assert unsatisfiable(request, [{"memory": 8 * GiB, "CPU": 8, "small": 1}]) is None
    assert "'small'" in unsatisfiable(request, [{"memory": 64 * GiB, "CPU": 4, "big": 4}])


def test_a_request_matches_the_autoscalers_bundle_of_it():
    request = TaskRequest(270160432, {"raymesh_highmem": 1.0})
    assert request.bundle() == {"CPU": 1.0, "memory": 270160432.0, "raymesh_highmem": 1.0}
    assert request.is_bundle({"raymesh_highmem": 1.0, "memory": 270160432.0, "CPU": 1.0})
    assert not request.is_bundle({"memory": 270160432.0, "CPU": 1.0})
    assert not request.is_bundle({"raymesh_highmem": 1.0, "memory": 2 * 270160432.0, "CPU": 1.0})
