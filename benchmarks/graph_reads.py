"""Hierarchy reads per chunk against the Bigtable emulator (issue 6).

    python -m benchmarks.graph_reads [--quick]

Builds the real volume's graph into the emulator (started here on 127.0.0.1), then for every
layer-2 chunk does the graph reads meshing does (the chunk, its 7 upper and up to 7 lower
neighbours, and the ancestor walk) and for every chunk of the top stitched layer the stitching
plan; reports round trips and read time per chunk. The same reads against the SQLite copy of the graph run beside them for scale.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, real_labels_or_exit


def _emulator():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import find_cbtemulator

    binary = find_cbtemulator()
    if binary is None:
        emit("graph_reads", {}, {"skipped": "Bigtable emulator (cbtemulator) not found"})
        raise SystemExit(0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-host", "127.0.0.1", "-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ["BIGTABLE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    return proc


def _per_chunk(store, work, chunks) -> dict:
    trips, seconds = [], []
    for chunk in chunks:
        store.round_trips = 0
        t0 = time.perf_counter()
        work(chunk)
        seconds.append(time.perf_counter() - t0)
        trips.append(getattr(store, "round_trips", 0))
    return {"chunks": len(chunks), "round_trips_mean": round(statistics.mean(trips), 2),
            "round_trips_max": max(trips), "ms_per_chunk_median": round(1000 * statistics.median(seconds), 2),
            "ms_per_chunk_max": round(1000 * max(seconds), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    labels = real_labels_or_exit("graph_reads", args.quick)
    proc = _emulator()
    try:
        from raymesh.builder import build_graph
        from raymesh.graph import open_store
        from raymesh.remap import fetch_with_upper
        from raymesh.stitch import plan_chunk

        figures = {}
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64),
                            store_url="bigtable://bench/pychunkedgraph/real")
            figures["build_seconds_bigtable"] = round(time.perf_counter() - t0, 1)
            local = build_graph(labels, os.path.join(out, "sqlite"), resolution=(8, 8, 40), chunk_size=(64, 64, 64))
            for kind, url in (("bigtable", g.store_url), ("sqlite", local.store_url)):
                store = open_store(url)
                layout = store.layout
                top = layout.n_layers - 1 if layout.n_layers > 3 else layout.n_layers
                ts = 2e9
                l2 = list(layout.iter_chunk_coords(2))
                figures[f"{kind}_layer2"] = _per_chunk(
                    store, lambda c: fetch_with_upper(store, c, time_stamp=ts), l2)
                tops = [int(layout.chunk_id(top, *c)) for c in layout.iter_chunk_coords(top)]
                figures[f"{kind}_layer{top}"] = _per_chunk(
                    store, lambda c: plan_chunk(store, top, c, ts), tops)
    finally:
        proc.terminate()
    emit("graph_reads", figures, {"volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape),
                                  "chunk_size": [64, 64, 64], "quick": args.quick,
                                  "store": "Bigtable emulator on 127.0.0.1 (cbtemulator)"})


if __name__ == "__main__":
    main()
