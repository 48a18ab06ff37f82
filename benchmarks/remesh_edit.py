"""Seconds from one proofreading edit to its fragments in dynamic/, on the demo data (issue 8).

    python -m benchmarks.remesh_edit [--edits 6]

The demo graph is built and meshed through its root layer; then merges and splits alternate on
two objects, each followed by the library call a proofreading server would make (find the new
nodes, mesh and stitch them, write dynamic/), serially in this process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import emit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=6)
    args = ap.parse_args()
    from raymesh.builder import build_graph
    from raymesh.cli_edit import remesher_for
    from raymesh.config import MeshConfig
    from raymesh.demo import DEMO_CHUNK, DEMO_RESOLUTION
    from raymesh.driver import run
    from raymesh.edits import merge, split
    from raymesh.graph import open_store
    from raymesh.synthetic import branching_tubes
    from raymesh.volume import read_block

    labels, agg = branching_tubes()
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK, agglomeration=agg,
                        time_stamp=t0)
        layers = list(range(2, g.n_layers + 1))
        run(MeshConfig(graph=g.store_url, layers=layers, mip=0, executor="serial",
                       time_stamp=(t0 + dt.timedelta(seconds=30)).timestamp()), progress=False)
        store = open_store(g.store_url)
        meta = store.meta
        sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
        svs = np.unique(sv[sv > 0])
        roots = np.asarray(store.get_roots(svs))
        first, second = np.unique(roots)[:2]
        a, b = int(svs[roots == first][0]), int(svs[roots == second][0])
        edit_s, remesh_s, total_s, fragments = [], [], [], []
        for i in range(args.edits):
            when = t0 + dt.timedelta(minutes=i + 1)
            start = time.perf_counter()
            (merge if i % 2 == 0 else split)(store, a, b, when)
            edited = time.perf_counter()
            remesher = remesher_for(g.store_url)
            ops = store.operations()[-1:]
            summary = remesher.run(remesher.nodes_for_operations(ops))
            done = time.perf_counter()
            edit_s.append(edited - start)
            remesh_s.append(done - edited)
            total_s.append(done - start)
            fragments.append(sum(summary.written.values()))
    emit("remesh_edit", {
        "edit_to_fragments_seconds_median": round(statistics.median(total_s), 3),
        "edit_to_fragments_seconds_max": round(max(total_s), 3),
        "edit_seconds_median": round(statistics.median(edit_s), 3),
        "remesh_seconds_median": round(statistics.median(remesh_s), 3),
        "fragments_per_edit": fragments,
    }, {"data": "demo (branching tubes)", "chunk_size": list(DEMO_CHUNK), "layers": layers,
        "edits": args.edits, "kinds": "merge/split alternating", "executor": "serial, in process",
        "store": "sqlite"})


if __name__ == "__main__":
    main()
