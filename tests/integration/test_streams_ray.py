"""A run on a local Ray prints what raymesh means to print and nothing of Ray's a user cannot act on
(Ray 2.59+'s "Token authentication is enabled for this Ray cluster" notice, its INFO lines, blank
lines): people's lines on stderr, the JSON alone on stdout, nothing at all with --quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from raymesh.builder import build_graph
from raymesh.demo import DEMO_CHUNK, DEMO_RESOLUTION

BIN = Path(sys.executable).parent


def test_a_local_ray_run_prints_only_raymesh(synthetic, tmp_path):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path / "demo"), resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK,
                    agglomeration=agg, graph_id="demo")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    argv = [str(BIN / "raymesh"), "mesh", "--graph", g.store_url, "--layers", "2-4", "--executor", "ray",
            "--workers", "1"]
    proc = subprocess.run(argv + ["--json"], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["executor"] == "RayExecutor"
    err = proc.stderr
    assert err.startswith("running on a local Ray (1 CPUs)\n"), err[:500]
    for noise in ("Token authentication", "INFO", "Started a local Ray instance"):
        assert noise not in err, (noise, err[-2000:])
    lines = err.split("\n")[:-1]
    assert all(line.replace("\r", "").strip() for line in lines), f"a blank line on stderr:\n{err!r}"
    assert "layer 4: 1 chunks" in err and "meshes: " in err

    quiet = subprocess.run(argv + ["--quiet", "--json", "--mesh-dir", "quiet"], env=env, capture_output=True,
                           text=True, timeout=400)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == "", quiet.stderr[-2000:]
    assert [layer["layer"] for layer in json.loads(quiet.stdout)["layers"]] == [2, 3, 4]
