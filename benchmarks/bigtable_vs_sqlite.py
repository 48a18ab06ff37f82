"""Meshing from Bigtable against meshing from SQLite, side by side (issue 19; target: Bigtable's
time at most 1.25x SQLite's).

    python -m benchmarks.bigtable_vs_sqlite [--quick]

Builds the real volume's graph (``--quick``: its 256x256x128 crop) into the Bigtable emulator
(started here on 127.0.0.1) and into SQLite, over one segmentation, then meshes layers 2-4 with
2 Ray workers from each, one after the other in this run (a fresh local Ray each, workers warmed
up outside the timing; separate mesh dirs; ``graph_meta: skip``). Prints one JSON line: both
times and their ratio, whether the two runs wrote the same shards (sha256 of every file under
each mesh dir's ``initial/``), and where the emulator run's time went: per layer, round trips,
rows and milliseconds of graph reads per chunk inside the Ray tasks against the whole task; and
the same graph reads made chunk by chunk in this process, for both stores
(``benchmarks.graph_reads``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, real_labels_or_exit

LAYERS = [2, 3, 4]
WORKERS = 2
TIME_STAMP = 2e9


def _warm(_):
    import importlib

    for module in ("DracoPy", "tensorstore", "zmesh", "raymesh.layer2.mesh", "raymesh.stitch", "google.cloud.bigtable"):
        importlib.import_module(module)
    return 0


def _mesh(config) -> tuple[float, dict, dict]:
    """Mesh ``config`` on a fresh local Ray of ``WORKERS`` CPUs: seconds, per-layer seconds and
    the executor's profile."""
    import ray

    from actors.ray_executor import RayExecutor
    from raymesh.driver import run

    env = {k: os.environ[k] for k in ("BIGTABLE_EMULATOR_HOST",) if k in os.environ}
    ray.init(num_cpus=WORKERS, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env} if env else None)
    try:
        executor = RayExecutor()
        list(executor.imap_unordered(_warm, range(WORKERS * 2)))  # imports, outside the timing
        t0 = time.perf_counter()
        summary = run(config, executor=executor, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    failures = [f for layer in summary.layers for f in layer.failures]
    if failures or summary.not_run:
        raise SystemExit(f"{config.graph}: meshing failed: {failures[:3]} (not run: {summary.not_run})")
    return seconds, {layer.layer: layer.seconds for layer in summary.layers}, executor.profile.summary()


def _tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the 256x256x128 crop instead of the whole volume")
    args = ap.parse_args()
    labels = real_labels_or_exit("bigtable_vs_sqlite", args.quick)
    from benchmarks.graph_reads import graph_read_figures, start_emulator

    proc = start_emulator("bigtable_vs_sqlite")
    try:
        from raymesh.builder import build_graph
        from raymesh.config import MeshConfig
        from raymesh.graph import open_store

        figures: dict = {}
        with tempfile.TemporaryDirectory() as out:
            # One segmentation (out/ws) for both graphs: the SQLite build finds it already there.
            t0 = time.perf_counter()
            bigtable = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64), graph_id="real",
                                   store_url="bigtable://bench/pychunkedgraph/real")
            figures["build_seconds_bigtable"] = round(time.perf_counter() - t0, 1)
            sqlite = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64), graph_id="real")
            assert bigtable.segmentation == sqlite.segmentation, (bigtable.segmentation, sqlite.segmentation)
            seconds, layers, profiles, trees = {}, {}, {}, {}
            for kind, graph in (("sqlite", sqlite), ("bigtable", bigtable)):
                config = MeshConfig(graph=graph.store_url, layers=LAYERS, mip=0, time_stamp=TIME_STAMP,
                                    executor="ray", workers=WORKERS, graph_meta="skip", force=True,
                                    mesh_dir=f"meshes_{kind}")
                seconds[kind], layers[kind], profiles[kind] = _mesh(config)
                trees[kind] = _tree_digest(Path(out) / "ws" / f"meshes_{kind}" / "initial")
            figures.update({
                "sqlite_seconds": round(seconds["sqlite"], 1), "bigtable_seconds": round(seconds["bigtable"], 1),
                "ratio": round(seconds["bigtable"] / seconds["sqlite"], 3), "target_ratio": 1.25,
                "layer_seconds": layers,
                "shards_identical": trees["sqlite"] == trees["bigtable"] and bool(trees["sqlite"]),
                "shard_files": len(trees["sqlite"]),
                "initial_sha256": hashlib.sha256(repr(sorted(trees["bigtable"].items())).encode()).hexdigest(),
                "bigtable_in_tasks": profiles["bigtable"],
                "sqlite_in_tasks": {layer: {k: v for k, v in p.items() if k in ("chunks", "task_ms_per_chunk")}
                                    for layer, p in profiles["sqlite"].items()},
            })
            reads = {}
            for kind, graph in (("bigtable", bigtable), ("sqlite", sqlite)):
                reads.update(graph_read_figures(open_store(graph.store_url), kind, TIME_STAMP))
            figures["graph_reads_in_process"] = reads
    finally:
        proc.terminate()
    emit("bigtable_vs_sqlite", figures, {
        "volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape), "chunk_size": [64, 64, 64],
        "quick": args.quick, "layers": LAYERS, "workers": WORKERS, "mip": 0,
        "store": "Bigtable emulator on 127.0.0.1 (cbtemulator), against SQLite",
        "note": "the emulator shares this machine's cores with the Ray workers; it streams one message per row"})


if __name__ == "__main__":
    main()
