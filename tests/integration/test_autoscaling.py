"""The KubeRay cluster of kuberay/raycluster.yaml, scaled down, on Ray's local autoscaling cluster
(the fake multi-node provider: the autoscaler KubeRay runs, v2, with nodes started as local
processes), meshing through the root layer (issue 23).

Node types come from the manifest through KubeRay's own translation of a RayCluster into an
autoscaling config (``ray.autoscaler._private.kuberay.autoscaling_config``): a head with no task
CPUs, a ``general`` group and a ``highmem`` group, both from 0. Each group is scaled to one CPU per
node, its memory and custom resources by the same factor, and capped at two and one nodes.

Every assertion about scaling reads the autoscaler's own record: its instance manager's log of
each instance (type, queued, running, stop requested and why) and its state in the GCS (the nodes,
what keeps a node busy), set beside the driver's record of when each layer started and ended.

Ray 2.60's wheel lacks the fake provider's base config (``fake_multi_node/example.yaml``, which
``AutoscalingCluster`` reads), and its provider refuses ``memory`` among a node type's resources
(it hands them to ``ray start --resources``): this module starts the head itself with a config of
its own, and ``MemoryOfferingProvider`` starts each node with ``memory`` as KubeRay does, from the
node type (the container's limit), so tasks' ``memory=`` requests can be satisfied.

The monitor process imports this module by name to find the provider: keep its top-level imports
light.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

try:  # the provider class is defined only where Ray's fake provider is importable
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FakeMultiNodeProvider
except ImportError:  # pragma: no cover
    FakeMultiNodeProvider = object
    FAKE_HEAD_NODE_ID = ""

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MiB = 2**20
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's node type
CAPS = {"general": 2, "highmem": 1}  # nodes per group on this machine (the manifest: 64 and 8)
IDLE_TIMEOUT_MIN = 0.1  # the manifest's idleTimeoutSeconds is 120
NODE_STORE = 100 * MiB  # object store per node (KubeRay: 30% of the container's memory)
HIGHMEM_LAYER = 4


class MemoryOfferingProvider(FakeMultiNodeProvider):
    """The fake multi-node provider, starting each node with the ``memory`` of its node type as
    Ray's memory resource (``ray start --memory``), as KubeRay does from the container's limit,
    instead of passing it on as a custom resource (which Ray refuses)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray

        resources = dict(resources)
        memory = resources.pop("memory", None)
        with self.lock:  # the base class builds RayParams by attribute lookup, under this lock too
            params = ray._private.parameter.RayParams
            ray._private.parameter.RayParams = functools.partial(params, memory=memory)
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                ray._private.parameter.RayParams = params


def manifest_node_types() -> dict:
    """kuberay/raycluster.yaml as KubeRay's autoscaler sees it: its own translation of the RayCluster
    (resources from each group's container limits and rayStartParams)."""
    import yaml
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = yaml.safe_load((REPO / "kuberay" / "raycluster.yaml").read_text())
    cr["metadata"].setdefault("namespace", "default")
    return _derive_autoscaling_config_from_ray_cr(cr)


def scaled_config(gcs_address: str) -> dict:
    """The manifest's cluster with each worker group at one CPU per node (memory and custom
    resources scaled alike) and capped at ``CAPS`` nodes, on the fake provider."""
    derived = manifest_node_types()
    types = {}
    for name, spec in derived["available_node_types"].items():
        if name == derived["head_node_type"]:
            continue
        res = spec["resources"]
        factor = 1.0 / res["CPU"]
        # the autoscaler takes whole units only: a custom resource keeps at least one
        scaled = {k: int(v * factor) if k in ("CPU", "memory") else max(1, round(v * factor))
                  for k, v in res.items()}
        types[name] = {"resources": {**scaled, "object_store_memory": NODE_STORE}, "node_config": {},
                       "min_workers": spec["min_workers"], "max_workers": min(spec["max_workers"], CAPS[name])}
    head = derived["available_node_types"][derived["head_node_type"]]["resources"]
    types[HEAD_TYPE] = {"resources": {"CPU": head["CPU"]}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "raymesh-fake", "max_workers": sum(CAPS.values()),
        "provider": {"type": "external", "module": f"{Path(__file__).stem}.MemoryOfferingProvider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address,
                     "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID},
        "available_node_types": types, "head_node_type": HEAD_TYPE,
        "upscaling_speed": derived["upscaling_speed"], "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """A head with no task CPUs and the autoscaler v2 on the fake provider; the driver connected.
    Yields the head node; afterwards stops every process it started, by id."""
    import socket

    import psutil
    import ray
    import ray._private.services
    from ray.cluster_utils import Cluster

    if FakeMultiNodeProvider is object:
        pytest.skip("this Ray has no fake multi-node provider")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="rmas", dir="/tmp")  # short: Ray's socket paths are limited
    config = Path(temp) / "autoscaling.json"
    config.write_text(json.dumps(scaled_config(f"{ray._private.services.get_node_ip_address()}:{port}")))
    head_cpus = json.loads(config.read_text())["available_node_types"][HEAD_TYPE]["resources"]["CPU"]
    path = os.pathsep.join([str(HERE), str(HERE.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    # What `ray start --head` under KubeRay (and AutoscalingCluster(autoscaler_v2=True)) sets: the
    # monitor, the GCS and the nodes the provider starts inherit it.
    with _env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_enable_autoscaler_v2="1",
              RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
              RAY_NODE_TYPE_NAME=HEAD_TYPE, PYTHONPATH=path, RAY_USAGE_STATS_ENABLED="0"):
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "autoscaling_config": str(config), "num_cpus": head_cpus, "include_dashboard": False,
            "object_store_memory": NODE_STORE, "gcs_server_port": port, "temp_dir": temp,
            # shards go to the object store (the nodes'), not inline to the driver
            "_system_config": {"max_direct_call_object_size": 64}})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        from actors import autoscaler

        deadline = time.monotonic() + 120
        while (view := autoscaler.read()) is None or not view.version:  # the autoscaler has reported
            if time.monotonic() > deadline:
                err = Path(cluster.head_node.get_logs_dir_path()) / "monitor.err"
                raise AssertionError(f"the autoscaler did not come up: {err.read_text()[-3000:]}")
            time.sleep(1)
        yield cluster.head_node
    finally:
        mine = psutil.Process().children(recursive=True)  # the head's and the provider's nodes
        ray.shutdown()
        cluster.shutdown()
        alive = [p for p in mine if p.is_running()]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, left = psutil.wait_procs(alive, timeout=15)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Crop:
    url: str
    layers: list[int]
    time_stamp: float
    reference: object | None  # a MeshConfig whose shards a fixed set of workers made, if any


@pytest.fixture(scope="module")
def crop_graph(request, tmp_path_factory, synthetic) -> Crop:
    """A copy of the session's real crop (256x256x128, 4x4x2 chunks of 64^3, root at layer 4,
    already meshed on a fixed local Ray: the reference), or, without the project's shared data,
    the synthetic dataset (also 4 layers; no reference yet). Requested before
    ``autoscaling_cluster``, so the session's crop is meshed on its own local Ray, not here."""
    from raymesh.builder import build_graph
    from support import REAL_VOLUME, SYNTH_CHUNK, SYNTH_RES

    out = tmp_path_factory.mktemp("autoscaling")
    if REAL_VOLUME.exists():
        from real_crop import copy_meshed_crop

        crop = request.getfixturevalue("real_crop_meshed")
        return Crop(copy_meshed_crop(crop, out / "crop"), list(crop.config.layers), crop.config.time_stamp,
                    crop.config)
    labels, agg = synthetic
    g = build_graph(labels, str(out), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                    graph_id="autoscaling")
    return Crop(g.store_url, list(range(2, g.n_layers + 1)), 2e9, None)


_LINE = re.compile(r"^(\S+ \S+)\s+INFO instance_manager\.py:\d+ -- (New instance (\w+)|Update instance (\w+)->(\w+)) "
                   r"\(id=([^,]+), type=([^,]+), cloud_instance_id=([^,]*), ray_id=[^)]*\): ?(.*)$")


def instance_record(logs_dir: str) -> dict[str, dict]:
    """The autoscaler's record of each instance from its instance manager's log (monitor.log): type,
    cloud id (the Ray node id on the fake provider), and per status the time it was entered and why."""
    out: dict[str, dict] = {}
    with open(os.path.join(logs_dir, "monitor.log")) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            stamp, _, new, _, to, iid, kind, cloud, why = m.groups()
            when = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            entry = out.setdefault(iid, {"type": kind, "cloud": "", "status": {}})
            entry["cloud"] = cloud or entry["cloud"]
            entry["status"].setdefault(new or to, (when, why))
    return out


def _brief(workers: dict) -> list:
    """Instances as (type, cloud id tail, [(status, seconds into the run, why)]) for messages."""
    start = min((t for e in workers.values() for t, _ in e["status"].values()), default=0)
    return [(e["type"], e["cloud"][-5:], [(k, round(t - start, 1), why[:60]) for k, (t, why) in e["status"].items()])
            for e in workers.values()]


def _kill_node(node_id: str) -> None:
    """Kill a worker node's raylet, as a lost node (its other processes go with it)."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.name() == "raylet" and f"--node_id={node_id}" in p.cmdline():
                p.kill()
                return
    raise AssertionError(f"no raylet of node {node_id} among this test's processes")


def test_kuberay_cluster_scales_by_layer_on_the_local_autoscaler(crop_graph, autoscaling_cluster):
    from actors import autoscaler
    from actors.ray_executor import RayExecutor
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from support import all_shards

    t0 = time.time()
    layers = crop_graph.layers  # through the root layer
    assert max(layers) >= HIGHMEM_LAYER
    base = dict(graph=crop_graph.url, layers=layers, mip=0, time_stamp=crop_graph.time_stamp,
                highmem_layer=HIGHMEM_LAYER)
    serial = crop_graph.reference
    if serial is None:
        serial = MeshConfig(**base, executor="serial", mesh_dir="serial_meshes")
        run(serial, progress=False)
    t_serial = time.time() - t0
    # placement_timeout bounds the wait for nodes, so a broken autoscaler fails the test, not hangs it
    config = MeshConfig(**base, mesh_dir="autoscaled_meshes", placement_timeout=180)

    marks: dict[tuple[int, str], float] = {}
    killed: dict = {}

    class Recorded(RayExecutor):
        """Records when each layer's first task goes in and its last comes back; before the first
        highmem layer, kills a general node that the autoscaler records as holding objects."""

        def run_layer(self, job, layer):
            if layer == HIGHMEM_LAYER:
                view = autoscaler.read()
                holding = [n for n in view.nodes if n["type"] == "general"
                           and any("object_store_memory" in a for a in n["activity"])]
                assert holding, f"no general node holds shards before layer {layer}: {view.nodes}"
                killed.update(holding[0])
                _kill_node(holding[0]["node_id"])
            marks[layer, "start"] = time.time()
            yield from super().run_layer(job, layer)
            marks[layer, "end"] = time.time()

    executor = Recorded()
    summary = run(config, executor=executor, progress=False)
    t_run = time.time() - t0 - t_serial

    # No task lost: every layer complete, the same bytes as a run on a fixed set of workers.
    assert [s.failures for s in summary.layers] == [[] for _ in layers]
    assert all_shards(MeshJob(config), layers) == all_shards(MeshJob(serial), layers)

    # Wait for the cluster to shrink back to its head: every worker instance the autoscaler
    # started, it has terminated (its instance manager's record).
    deadline = time.monotonic() + 240
    while True:
        record = instance_record(autoscaling_cluster.get_logs_dir_path())
        workers = {iid: e for iid, e in record.items() if e["type"] != HEAD_TYPE}
        if workers and all("TERMINATED" in e["status"] for e in workers.values()):
            break
        assert time.monotonic() < deadline, f"the cluster did not shrink: {_brief(workers)}"
        time.sleep(2)
    queued = {iid: e["status"]["QUEUED"][0] for iid, e in workers.items() if "QUEUED" in e["status"]}
    top = HIGHMEM_LAYER

    # General nodes were added for layer 2, while it ran.
    general = [iid for iid, e in workers.items() if e["type"] == "general"]
    assert any(marks[2, "start"] <= queued[i] <= marks[2, "end"] for i in general), (marks, _brief(workers))
    # A highmem node was added, and none before a task at or above highmem_layer was pending.
    highmem = [iid for iid, e in workers.items() if e["type"] == "highmem"]
    assert highmem and min(queued[i] for i in highmem) >= marks[top, "start"], (marks, _brief(workers))
    # Idle nodes were removed by the autoscaler for being idle: no general node while layer 2 ran
    # (a general node may go during layer 3 once the shards it held are read), no highmem node
    # before the top layer was done. The node killed while it held cached shards was removed too,
    # and the run lost nothing by it.
    for iid in general + highmem:
        status = workers[iid]["status"]
        assert "TERMINATED" in status, (iid, _brief(workers))
        if workers[iid]["cloud"] == killed["node_id"]:
            continue
        when, why = status["RAY_STOP_REQUESTED"]
        assert "idle" in why, (iid, _brief(workers))
        last_layer = max(layers) if workers[iid]["type"] == "highmem" else 2
        assert when >= marks[last_layer, "end"], (iid, marks, _brief(workers))
    assert any(workers[i]["cloud"] == killed["node_id"] for i in general), (killed["node_id"], _brief(workers))
    print(f"autoscaling: serial {t_serial:.1f} s, autoscaled run {t_run:.1f} s, "
          f"{len(general)} general and {len(highmem)} highmem instances, resubmitted {executor.resubmitted}")


def test_a_request_no_node_type_fits_fails_on_the_autoscalers_verdict(crop_graph, autoscaling_cluster):
    """A top layer asking for a resource no node type carries: the job fails within seconds with
    the autoscaler's verdict, not after a timeout, and no node is added for it."""
    from actors.ray_executor import RayExecutor
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.errors import ConfigError

    config = MeshConfig(graph=crop_graph.url, layers=[2], mip=0, time_stamp=crop_graph.time_stamp, highmem_layer=2,
                        highmem_resource="raymesh_gpu", mesh_dir="never_placed")
    before = instance_record(autoscaling_cluster.get_logs_dir_path())
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"layer 2 cannot be placed: the cluster's autoscaler has no node type "
                                          r"that fits its tasks \(CPU 1, memory 0\.\d\d GiB, raymesh_gpu 1;"):
        run(config, executor=RayExecutor(), progress=False)
    assert time.monotonic() - t0 < 60
    assert instance_record(autoscaling_cluster.get_logs_dir_path()).keys() == before.keys()
