"""Layer-2 speedup from 1 to 2 Ray workers on the real volume (issue 5; target >= 1.8x).

    python -m benchmarks.l2_speedup [--quick]

One graph, then the whole layer 2 through the Ray runtime with ``num_cpus=1`` and with
``num_cpus=2`` (a fresh local Ray each, ``--force`` so every chunk is meshed), measured side by
side in one run; the shards of both runs are compared byte for byte.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.common import emit, real_labels_or_exit


def _layer2(config, workers: int) -> tuple[float, dict]:
    import ray

    from actors.ray_executor import RayExecutor
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.formats.mesh_layout import shard_key

    ray.init(num_cpus=workers, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor()
        # Warm the worker pool (imports, graph and segmentation handles) outside the timing.
        list(executor.imap_unordered(_warm, range(workers * 2)))
        t0 = time.perf_counter()
        run(config, executor=executor, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    job = MeshJob(config)
    layout = job.meta.layout
    shards = {c: job.bucket.read(shard_key(layout, 2, int(layout.chunk_id(2, *c)))) for _, c in job.iter_chunks(2)}
    return seconds, shards


def _warm(_):
    import importlib

    for module in ("DracoPy", "tensorstore", "zmesh", "raymesh.layer2.mesh"):
        importlib.import_module(module)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    labels = real_labels_or_exit("l2_speedup", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        config = MeshConfig(graph=g.store_url, layers=[2], mip=0, force=True, time_stamp=2e9)
        one, shards_one = _layer2(config, 1)
        two, shards_two = _layer2(config, 2)
    emit("l2_speedup", {
        "one_worker_seconds": round(one, 1), "two_worker_seconds": round(two, 1),
        "speedup": round(one / two, 3), "shards_identical": shards_one == shards_two,
    }, {"volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape), "chunk_size": [64, 64, 64],
        "chunks": len(shards_one), "quick": args.quick, "chunks_per_task": config.chunks_per_task})


if __name__ == "__main__":
    main()
