"""Hierarchy reads per chunk against the Bigtable emulator (issue 6).

    python -m benchmarks.graph_reads [--quick]

Builds the real volume's graph into the emulator (started here on 127.0.0.1), then for every
layer-2 chunk does the graph reads meshing does (the chunk, its 7 upper and up to 7 lower
neighbours, and the ancestor walk) and for every chunk of the stitched layers the stitching
plan; reports round trips, rows and read time per chunk. The same reads against the SQLite copy of the graph run beside them for scale.
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


def start_emulator(name: str = "graph_reads") -> subprocess.Popen:
    """The Bigtable emulator on a free port of 127.0.0.1, with BIGTABLE_EMULATOR_HOST set for
    this process (and Ray workers it starts); a skipped JSON line and exit 0 where it is missing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import find_cbtemulator

    binary = find_cbtemulator()
    if binary is None:
        emit(name, {}, {"skipped": "Bigtable emulator (cbtemulator) not found"})
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


def per_chunk(store, work, chunks) -> dict:
    """Round trips, rows and milliseconds of ``work(chunk)`` for each chunk, summarised."""
    trips, rows, seconds = [], [], []
    for chunk in chunks:
        store.round_trips = 0
        store.rows_read = 0
        t0 = time.perf_counter()
        work(chunk)
        seconds.append(time.perf_counter() - t0)
        trips.append(getattr(store, "round_trips", 0))
        rows.append(getattr(store, "rows_read", 0))
    return {"chunks": len(chunks), "round_trips_mean": round(statistics.mean(trips), 2),
            "round_trips_max": max(trips), "rows_mean": round(statistics.mean(rows), 1),
            "ms_per_chunk_median": round(1000 * statistics.median(seconds), 2),
            "ms_per_chunk_mean": round(1000 * statistics.mean(seconds), 2),
            "ms_per_chunk_max": round(1000 * max(seconds), 2)}


def graph_read_figures(store, kind: str, ts: float = 2e9) -> dict:
    """The graph reads of meshing, chunk by chunk: every layer-2 chunk's (its neighbourhood, its
    upper neighbours' and the ancestor walk, ``fetch_with_upper``) and every chunk's stitching
    plan on the layers above, up to the top stitched layer."""
    from raymesh.layer2.remap import fetch_with_upper
    from raymesh.stitch import plan_chunk

    layout = store.layout
    top = layout.n_layers - 1 if layout.n_layers > 3 else layout.n_layers
    figures = {f"{kind}_layer2": per_chunk(store, lambda c: fetch_with_upper(store, c, time_stamp=ts),
                                           list(layout.iter_chunk_coords(2)))}
    for layer in range(3, top + 1):
        chunks = [int(layout.chunk_id(layer, *c)) for c in layout.iter_chunk_coords(layer)]
        figures[f"{kind}_layer{layer}"] = per_chunk(store, lambda c: plan_chunk(store, layer, c, ts), chunks)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    labels = real_labels_or_exit("graph_reads", args.quick)
    proc = start_emulator()
    try:
        from raymesh.builder import build_graph
        from raymesh.graph import open_store

        figures = {}
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64),
                            store_url="bigtable://bench/pychunkedgraph/real")
            figures["build_seconds_bigtable"] = round(time.perf_counter() - t0, 1)
            local = build_graph(labels, os.path.join(out, "sqlite"), resolution=(8, 8, 40), chunk_size=(64, 64, 64))
            for kind, url in (("bigtable", g.store_url), ("sqlite", local.store_url)):
                figures.update(graph_read_figures(open_store(url), kind))
    finally:
        proc.terminate()
    emit("graph_reads", figures, {"volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape),
                                  "chunk_size": [64, 64, 64], "quick": args.quick,
                                  "store": "Bigtable emulator on 127.0.0.1 (cbtemulator)"})


if __name__ == "__main__":
    main()
