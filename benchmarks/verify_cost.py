"""What ``raymesh verify`` costs beside the meshing it checks (issue 18: under 10% at full coverage).

    python -m benchmarks.verify_cost [--quick] [--layers 2-5] [--roots N]

Builds the real volume (64^3 chunks, 8x8x40 nm; ``--quick``: its 256x256x128 crop), meshes the
layers serially in this process, then verifies them serially at full coverage (every chunk; up to
``--roots`` roots as a viewer loads them), one after the other on the same machine, and prints
both times and their ratio, with verify's breakdown (chunk checks, roots, metadata and edits).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from benchmarks.common import emit, real_labels_or_exit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 256x256x128 crop")
    parser.add_argument("--layers", default="2-5", help="layers meshed and verified (default 2-5)")
    parser.add_argument("--roots", type=int, default=200, help="roots checked as a viewer loads them")
    args = parser.parse_args(argv)

    from raymesh.builder import build_graph
    from raymesh.config import layers_flag as parse_layers
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.executors import SerialExecutor
    from raymesh.runs.job import MeshJob
    from raymesh.verify.runner import verify

    name = "verify_cost"
    labels = real_labels_or_exit(name, args.quick)
    layers = parse_layers(args.layers)
    work = tempfile.mkdtemp(prefix="raymesh-verify-cost-")
    try:
        graph = build_graph(labels, work, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        layers = [layer for layer in layers if layer <= graph.n_layers]
        config = MeshConfig(graph=graph.store_url, layers=layers, executor="serial", mip=0)
        t0 = time.perf_counter()
        summary = run(config, progress=False)
        mesh_s = time.perf_counter() - t0
        assert not summary.failed, summary.layers
        job = MeshJob(config)
        t0 = time.perf_counter()
        report = verify(job, layers, SerialExecutor(), max_roots=args.roots)
        verify_s = time.perf_counter() - t0
        emit(name, {
            "mesh_seconds": round(mesh_s, 2), "verify_seconds": round(verify_s, 2),
            "verify_over_mesh": round(verify_s / mesh_s, 4),
            "problems": len(report.problems), "by_kind": report.by_kind(),
            "chunks": {t.layer: t.chunks for t in report.layers},
            "fragments": {t.layer: t.fragments for t in report.layers},
            "roots_checked": report.roots_checked, "interior_closed": [report.roots_closed, report.roots_interior],
        }, {"quick": args.quick, "layers": layers, "roots": args.roots, "executor": "serial (both)"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
