"""Ray Client against a head with token authentication on, as the README sets one up (Ray >= 2.59
turns it on by default for local clusters): the demo graph meshes through
``--address ray://...`` with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from ``ray get-auth-token``,
to the same shards as a run in this process; without the token, or with a wrong one, raymesh
stops at once with exit status 2 and names what to set.

The head runs on 127.0.0.1 with its own HOME (its token file) and temp dir. It is stopped by
stopping the processes it started (found by a marker in their environment): ``ray stop`` would
stop every Ray on the machine, other tests' and users' too.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from raymesh.builder import build_graph
from raymesh.demo import DEMO_CHUNK, DEMO_RESOLUTION

BIN = Path(sys.executable).parent
TIME_STAMP = "2000000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path) -> dict:
    """This environment without any Ray address or token, and a HOME without ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")
    return env


def _stop(marker: str) -> None:
    """Stop every process the head started (they inherit its environment); a few rounds, as the
    raylet may start an agent while the first round stops it."""
    for _ in range(5):
        procs = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("RAYMESH_TEST_HEAD") == marker and p.status() != psutil.STATUS_ZOMBIE:
                    procs.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        if not procs:
            return
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(1)


@pytest.fixture(scope="module")
def head():
    """`ray start --head` with token authentication, the README's recipe: RAY_AUTH_MODE=token,
    `ray get-auth-token --generate`, then the head; the token read back with `ray get-auth-token`."""
    if not (BIN / "ray").exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    root = Path(tempfile.mkdtemp(prefix="rmauth", dir="/tmp"))  # short: Ray's socket paths are limited
    marker = uuid.uuid4().hex
    env = _clean_env(root / "head_home")
    (root / "head_home").mkdir()
    env.update(RAY_AUTH_MODE="token", RAYMESH_TEST_HEAD=marker)
    client_port, gcs_port = _free_port(), _free_port()
    try:
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                       check=True, timeout=60)
        token = subprocess.run([str(BIN / "ray"), "get-auth-token"], env=env, capture_output=True, text=True,
                               check=True, timeout=60).stdout.strip()
        assert len(token) >= 32, token
        out = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                              "--port", str(gcs_port), "--ray-client-server-port", str(client_port),
                              "--num-cpus", "1", "--include-dashboard=false", "--object-store-memory",
                              str(200 * 2**20), "--temp-dir", str(root / "t"), "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        yield {"address": f"ray://127.0.0.1:{client_port}", "gcs": f"127.0.0.1:{gcs_port}", "token": token}
    finally:
        _stop(marker)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    labels, agg = synthetic
    return build_graph(labels, str(tmp_path_factory.mktemp("auth_demo")), resolution=DEMO_RESOLUTION,
                       chunk_size=DEMO_CHUNK, agglomeration=agg, graph_id="demo")


def _mesh(graph, env: dict, *extra: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "raymesh"), "mesh", "--graph", graph.store_url, "--layers", "2-4",
                           "--time-stamp", TIME_STAMP, *extra], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def test_without_the_token_the_client_is_told_what_to_set(head, graph, tmp_path):
    env = _clean_env(tmp_path)
    proc, seconds = _mesh(graph, env, "--address", head["address"], "--mesh-dir", "refused")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in ("requires token authentication", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN",
                   "ray get-auth-token", head["address"]):
        assert needle in lines[0], (needle, lines[0])
    assert seconds < 30, "no waiting for Ray Client's 30 s connection timeout"
    assert proc.stdout == ""

    wrong = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token")
    proc, _ = _mesh(graph, wrong, "--address", head["address"], "--mesh-dir", "refused")
    assert proc.returncode == 2 and "refused this client's token (from RAY_AUTH_TOKEN)" in proc.stderr, proc.stderr

    proc, seconds = _mesh(graph, env, "--address", head["gcs"], "--mesh-dir", "refused")  # a GCS address
    assert proc.returncode == 2 and f"the Ray cluster at {head['gcs']} requires token authentication" in proc.stderr
    assert seconds < 30, "no waiting for Ray's 20 s of GCS retries"


def test_the_demo_meshes_through_ray_client_with_the_token(head, graph, tmp_path):
    env = dict(_clean_env(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head["token"])
    # raymesh itself connects again when Ray's proxy fails to start the per-client server
    # (actors.ray_executor.connect_ray): no retry here
    proc, _ = _mesh(graph, env, "--address", head["address"], "--mesh-dir", "client", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # stdout is the summary JSON alone
    assert summary["executor"] == "RayExecutor"
    assert [layer["layer"] for layer in summary["layers"]] == [2, 3, 4]
    assert not any(layer["failures"] for layer in summary["layers"])
    assert f"running on the Ray cluster at {head['address']}" in proc.stderr
    for noise in ("Token authentication is enabled", "client_builder.py", "INFO "):
        assert noise not in proc.stderr, (noise, proc.stderr[-2000:])

    local, _ = _mesh(graph, _clean_env(tmp_path), "--executor", "serial", "--mesh-dir", "local", "--quiet")
    assert local.returncode == 0, local.stderr
    ws = Path(graph.segmentation[len("file://"):])
    a, b = ws / "client" / "initial", ws / "local" / "initial"
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.shard"))
    assert names and names == sorted(str(p.relative_to(b)) for p in b.rglob("*.shard"))
    assert all(filecmp.cmp(a / n, b / n, shallow=False) for n in names), "the same shards as a local run"


# What Ray's proxy answered in CI when the per-client server it had started was already a zombie
# (Ray 2.5x, proxier.start_specific_server), and what it answers when that server exits at once.
_ZOMBIE = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \".../proxier.py\", "
           "line 765, in Datapath\n    if not self.proxy_manager.start_specific_server(\n  ...\n"
           "psutil.ZombieProcess: PID still exists but it's a zombie (pid=16577)")
_FAILED = "Initialization failure from server:\nStarting Ray client server failed. See ray_client_server_23000.err"


def test_only_the_proxys_own_start_up_failures_are_connected_again():
    from actors.ray_executor import client_server_flaked

    assert client_server_flaked(ConnectionAbortedError(_ZOMBIE))
    assert client_server_flaked(ConnectionAbortedError(_FAILED))
    for final in ("ray client connection timeout", "Authentication failed: invalid token",
                  "Initialization failure from server:\nray.exceptions.RuntimeEnvSetupError: pip failed"):
        assert not client_server_flaked(ConnectionError(final)), final
