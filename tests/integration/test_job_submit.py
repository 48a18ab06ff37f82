"""`ray job submit` of the demo config against a real head started with `ray start --head` on
127.0.0.1 (the way a user runs one job per dataset), read back with CloudVolume."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from raymesh.builder import build_graph
from raymesh.config import load_config
from raymesh.demo import DEMO_CHUNK, DEMO_RESOLUTION
from raymesh.runs.job import MeshJob
from raymesh.manifest import manifest_nodes
from raymesh.volume import read_block
from readback import cloudvolume_reader

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A Ray head on loopback, in its own temp dir so no other test's ray.init() finds it."""
    if not (BIN / "ray").exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    temp = tempfile.mkdtemp(prefix="rmhead", dir="/tmp")  # short: Ray's socket paths are limited
    port, dash = _free_port(), _free_port()
    # Ray >= 2.59 enables token authentication on local clusters: give the head and the job CLI
    # one token of their own, as a user would (ray-security/token-auth).
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
           "--object-store-memory", str(200 * 2**20), "--temp-dir", temp, "--disable-usage-stats",
           "--ray-client-server-port", str(_free_port())]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        # `ray stop` would stop every Ray on the machine; stop only the processes of this head.
        procs = [p for p in psutil.process_iter(["cmdline"]) if any(temp in a for a in (p.info["cmdline"] or []))]
        for p in procs:
            p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=3)  # what ignores SIGTERM is killed
        for p in alive:
            p.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_demo_config_through_ray_job_submit(head, synthetic, tmp_path):
    address, env = head
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK, agglomeration=agg,
                    graph_id="demo")
    entrypoint = ["raymesh", "mesh", "--config", str(REPO / "configs" / "demo.yaml"), "--graph", g.store_url,
                  "--address", "auto", "--json", "--time-stamp", "2000000000"]
    deadline = time.monotonic() + 300  # slow to come up on a loaded 2-core machine (180 s was not enough once)
    not_up_yet = ("Connection refused", "No available agent")
    while True:  # the dashboard's job API and agent come up a little after `ray start` returns
        out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--", *entrypoint],
                             env=env, capture_output=True, text=True, timeout=400)
        text = out.stdout + out.stderr
        if out.returncode == 0 or time.monotonic() > deadline or not any(m in text for m in not_up_yet):
            break
        time.sleep(3)
    assert out.returncode == 0 and "succeeded" in out.stdout, (out.stdout[-3000:], out.stderr[-3000:])
    # the job's log holds both of raymesh's streams: the summary for people, then its JSON
    assert "layer 4:" in out.stdout and "0 failures" in out.stdout
    assert '"executor": "RayExecutor"' in out.stdout and "Token authentication" not in out.stdout

    config = load_config(str(REPO / "configs" / "demo.yaml"), graph=g.store_url, time_stamp=2e9)
    job = MeshJob(config)
    store = job.store
    read = cloudvolume_reader(store)
    top = max(config.layers)
    meta = store.meta
    seg = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    roots = sorted(set(np.asarray(store.get_roots(np.unique(seg[seg > 0]))).tolist()))
    assert len(roots) == 6
    for root in roots:
        nodes = manifest_nodes(store, root, top)
        meshes = read(nodes)
        assert nodes and all(len(m.vertices) and len(m.faces) for m in meshes), root
