"""Graph build of the real volume: wall time and peak memory (issue 2).

    python -m benchmarks.build_graph [--quick]

--quick builds a 256x256x128 crop. The baseline beside the build is the bare supervoxel step
(chunk-local connected components), so the ratio says how much the hierarchy adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from benchmarks.common import emit, load_real_or_exit, peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    labels = load_real_or_exit("build_graph")
    if args.quick:
        labels = np.asfortranarray(labels[128:384, 128:384, 192:320])
    from raymesh.builder import build_graph, make_supervoxels
    from raymesh.graph.ids import ChunkLayout

    chunk = (64, 64, 64)
    t0 = time.perf_counter()
    make_supervoxels(labels, ChunkLayout.from_voxels(labels.shape, chunk), chunk)
    sv_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        summary = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=chunk)
    emit("build_graph", {
        "build_seconds": round(summary.seconds, 2),
        "supervoxel_step_seconds": round(sv_seconds, 2),
        "build_over_supervoxel_step": round(summary.seconds / sv_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "nodes_per_layer": summary.node_counts,
    }, {"volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape), "chunk_size": list(chunk),
        "resolution": [8, 8, 40], "quick": args.quick})


if __name__ == "__main__":
    main()
