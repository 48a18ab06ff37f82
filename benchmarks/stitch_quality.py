"""Stitched output as viewers see it, for every root of the real volume (issues 4 and 8).

    python -m benchmarks.stitch_quality [--quick] [--work-mib W]

Meshes the real volume (64^3 chunks, 8x8x40 nm) through its top layer, with the default budget
and, side by side, with ``--work-mib`` of work per task (a node limit that binds here, so some
nodes keep no mesh and the verified manifest serves their children). For every root, at every
layer, it loads the fragments PCG's verified manifest lists and checks them against the root's
layer-2 meshes with the test suite's check (``tests/stitch_checks.assert_stitched_like_layer2``:
same surface faces, same open and non-manifold edges, no unmerged vertices on internal chunk
planes), and it counts the objects wholly inside the volume that are closed (each edge in exactly
two faces). Fragments are read from the shards once per layer, not per root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, real_labels_or_exit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _shard_reader(job, layers):
    """``read(nodes)`` and ``has_mesh(node)`` over every shard of ``layers``, loaded once."""
    from raymesh.formats.draco import decode
    from raymesh.formats.sharding import disassemble_shard

    values: dict[int, bytes] = {}
    for layer in layers:
        for _, coords in job.iter_chunks(layer):
            data = job.bucket.read(job.shard_path(layer, coords))
            if data is not None:
                values.update(disassemble_shard(data, job.sharding(layer)))
    decoded: dict[int, object] = {}

    def read(nodes):
        out = []
        for n in nodes:
            if n not in decoded:
                decoded[n] = decode(values[n]) if n in values else None
            out.append(decoded[n])
        return out

    def has_mesh(node: int) -> bool:
        return int(node) in values

    return read, has_mesh


def check(job, sv, layers) -> dict:
    import numpy as np

    from stitch_checks import assert_stitched_like_layer2, closed_interior_objects

    t0 = time.perf_counter()
    store = job.store
    read, has_mesh = _shard_reader(job, layers)
    roots = sorted(set(np.asarray(store.get_roots(np.unique(sv[sv > 0]))).tolist()))
    failed = []
    for root in roots:
        try:
            assert_stitched_like_layer2(job, root, layers[1:], read, has_mesh)
        except AssertionError as exc:
            failed.append(f"{root}: {str(exc).splitlines()[0][:200]}")
    closed = {str(layer): dict(zip(("closed", "inside"), closed_interior_objects(job, sv, read, layer, has_mesh)))
              for layer in layers}
    return {"roots": len(roots), "roots_unlike_layer2": len(failed), "first_failures": failed[:5],
            "interior_closed": closed, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 256x256x128 crop (4 layers)")
    ap.add_argument("--work-mib", type=float, default=16.0, help="the bounded run's work per task (MiB)")
    args = ap.parse_args()
    labels = real_labels_or_exit("stitch_quality", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.placement import TASK_BASE_BYTES
    from raymesh.storage import local_path
    from raymesh.volume import read_block

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        layers = list(range(2, g.n_layers + 1))
        config = MeshConfig(graph=g.store_url, layers=layers, mip=0, time_stamp=2e9, executor="ray", workers=2)
        summary = run(config, progress=False)
        job = MeshJob(config)
        bounded = config.model_copy(update={"mesh_dir": "bounded",
                                             "memory_budget": TASK_BASE_BYTES + int(args.work_mib * 2**20)})
        b_job = MeshJob(bounded)
        shutil.copytree(Path(local_path(job.bucket.base)) / "initial" / "2",
                        Path(local_path(b_job.bucket.base)) / "initial" / "2")
        b_summary = run(bounded, progress=False)
        import numpy as np

        meta = job.store.meta
        sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
        figures = {
            "default_budget": check(job, sv, layers),
            f"bounded_{args.work_mib:g}MiB": dict(check(b_job, sv, layers),
                                                  unstitched={str(s.layer): s.unstitched for s in b_summary.layers}),
            "failures": sum(len(s.failures) for s in summary.layers + b_summary.layers),
        }
        emit("stitch_quality", figures, {"volume": "connectomics.npy 512^3" + (" crop 256x256x128" if args.quick else ""),
                                         "chunk": [64, 64, 64], "resolution": [8, 8, 40], "layers": layers,
                                         "work_mib": args.work_mib})


if __name__ == "__main__":
    main()
