"""The Ray runtime on a real local Ray: shard caches, placement errors, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.errors import ConfigError
from raymesh.runs.job import MeshJob
from support import SYNTH_CHUNK, SYNTH_RES, all_shards


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    labels, agg = synthetic
    return build_graph(labels, str(tmp_path_factory.mktemp("runtime")), resolution=SYNTH_RES,
                       chunk_size=SYNTH_CHUNK, agglomeration=agg, graph_id="runtime")


def test_children_come_from_the_object_store_and_one_worker_matches_two(ray_local, graph):
    from actors.ray_executor import RayExecutor

    base = dict(graph=graph.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9, force=True, lod_chain=True)
    # Serial mode has no object store: its storage reads are the child shards each layer needs.
    serial = run(MeshConfig(**base, executor="serial"), progress=False)
    needed = {s.layer: s.shard_reads for s in serial.layers}
    assert needed[3] > 0 and needed[4] > 0
    shards = [all_shards(MeshJob(MeshConfig(**base)), (2, 3, 4))]
    for window, per_task in ((1, 1), (None, 3)):  # one task at a time, vs. both CPUs with batches
        config = MeshConfig(**base, chunks_per_task=per_task)
        summary = run(config, executor=RayExecutor(window=window), progress=False)
        shards.append(all_shards(MeshJob(config), (2, 3, 4)))
        for s in summary.layers[1:]:
            # Every child shard a layer needs is handed over by the caches; none is read again.
            assert (s.shard_reads, s.cache_reads) == (0, needed[s.layer]), s
        assert json.loads(summary.to_json())["layers"][1]["cache_reads"] == needed[3]
    # A cache budget of one byte: the first shard is filed, the rest are read back from storage.
    config = MeshConfig(**base, shard_cache_bytes=1)
    summary = run(config, executor=RayExecutor(), progress=False)
    shards.append(all_shards(MeshJob(config), (2, 3, 4)))
    for s in summary.layers[1:]:
        assert s.shard_reads + s.cache_reads == needed[s.layer] and s.shard_reads > 0, s
    assert shards[0] == shards[1] == shards[2] == shards[3]


def test_chunks_past_the_budget_are_split_over_tasks(ray_local, graph):
    from actors.ray_executor import RayExecutor
    from raymesh.placement import TASK_BASE_BYTES

    base = dict(graph=graph.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9, force=True, lod_chain=True)
    run(MeshConfig(**base, executor="serial"), progress=False)
    serial = all_shards(MeshJob(MeshConfig(**base)), (2, 3, 4))
    # A budget below a stitching task's base estimate: every stitched chunk is split (with the
    # node limit set apart, so every node is still stitched whole).
    config = MeshConfig(**base, memory_budget=int(TASK_BASE_BYTES * 0.75), max_stitch_bytes=2**40)
    summary = run(config, executor=RayExecutor(), progress=False)
    # Every chunk with child meshes to stitch is split (one whose children have none has no work).
    assert summary.layers[0].chunks_split == 0
    assert summary.layers[1].chunks_split > 0 and summary.layers[2].chunks_split == summary.layers[2].chunks
    assert all(not s.failures for s in summary.layers)
    assert all_shards(MeshJob(config), (2, 3, 4)) == serial
    # A layer run on its own (no shard caches to say how big its chunks are): each chunk's task
    # plans it from the minishard indices and splits it all the same.
    alone = config.model_copy(update={"layers": [3]})
    summary = run(alone, executor=RayExecutor(), progress=False)
    assert summary.layers[0].chunks_split > 0 and summary.layers[0].cache_reads == 0
    assert all_shards(MeshJob(alone), (3,)) == {k: v for k, v in serial.items() if k[0] == 3}


def test_missing_custom_resource_fails_fast_naming_the_layer(ray_local, graph):
    from actors.ray_executor import RayExecutor

    config = MeshConfig(graph=graph.store_url, layers=[3], mip=0, time_stamp=2e9, force=True,
                        highmem_layer=3, placement_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"layer 3 cannot be placed: no node has the custom resource 'raymesh_highmem'"):
        run(config, executor=RayExecutor(), progress=False)
    assert time.monotonic() - t0 < 30


def _cli(graph_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raymesh.cli", "mesh", "--graph", graph_url, "--layers", "2-4", "--mip", "0",
            "--time-stamp", "2000000000", "--workers", "2", "--quiet", *extra]


def test_interrupted_run_resumes_to_identical_shards(graph, synthetic, tmp_path):
    """Kill `raymesh mesh` mid-layer 2, rerun it: the finished shards match a clean run's."""
    labels, agg = synthetic
    fresh = build_graph(labels, str(tmp_path / "fresh"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                        agglomeration=agg, graph_id="runtime")
    config = MeshConfig(graph=fresh.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9)
    job = MeshJob(config)
    layer2 = os.path.join(job.bucket.base.removeprefix("file://"), "initial", "2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(fresh.store_url, "--chunks-per-task", "1"), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(layer2) and len([f for f in os.listdir(layer2) if f.endswith(".shard")]) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # a task already running in an orphaned Ray worker may still finish its shard
    done = [f for f in os.listdir(layer2) if f.endswith(".shard")]
    assert 5 <= len(done) < job.count_chunks(2), f"kill landed after {len(done)} shards; cannot test resume"
    out = subprocess.run(_cli(fresh.store_url, "--summary-json", str(tmp_path / "s.json")), env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["layers"][0]["chunks_skipped"] == len(done)
    resumed = all_shards(job, (2, 3, 4))
    clean = MeshConfig(graph=graph.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9, executor="serial", force=True)
    run(clean, progress=False)
    assert resumed == all_shards(MeshJob(clean), (2, 3, 4))


def test_verify_on_ray_reports_what_serial_reports(ray_local, graph):
    """verify's chunk checks run as Ray tasks (the job pickles to the workers) with the same answer."""
    import os

    from actors.ray_executor import RayExecutor
    from raymesh.executors import SerialExecutor
    from raymesh.storage import local_path
    from raymesh.verify.runner import verify

    config = MeshConfig(graph=graph.store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9, mesh_dir="verify_ray",
                        graph_meta="skip")
    assert not run(config, executor=RayExecutor(), progress=False).failed
    folder = os.path.join(local_path(MeshJob(config).mesh_url), "initial", "2")
    os.remove(max((os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getsize))
    on_ray = verify(MeshJob(config), [2, 3, 4], RayExecutor())
    serial = verify(MeshJob(config), [2, 3, 4], SerialExecutor())
    key = lambda r: sorted((p.kind, p.layer, tuple(p.chunk or ()), p.node or 0) for p in r.problems)  # noqa: E731
    assert key(on_ray) == key(serial) and on_ray.by_kind().get("missing_shard") == 1
    assert [(t.chunks, t.fragments, t.expected) for t in on_ray.layers] == \
        [(t.chunks, t.fragments, t.expected) for t in serial.layers]
