"""Stitching memory per layer: streaming (raymesh) against holding every child shard (PCG) (issue 4).

    python -m benchmarks.stitch_memory [--quick]

Meshes the real volume (64^3 chunks, 8x8x40 nm) layer by layer to its top layer. Then, for each
layer >= 3, the chunk with the most child-shard bytes is stitched again in a fresh process per
mode, and that process reports its own peak memory above what it held before stitching (imports,
graph and job opened): Python and numpy allocations traced while stitching (tracemalloc; the
decoded arrays are numpy), plus the growth of its peak RSS. "whole_shards" is PCG's way: every child shard read whole and kept. Both modes
write byte-identical shards (checked). Figures: per-layer working memory of each mode, its growth
per layer, and the layer's total stitching time (all chunks, streaming, one process).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
import tracemalloc


from benchmarks.common import emit, real_labels_or_exit


def _stitch_in_fresh_process(config_json: str, layer: int, coords, whole: bool, out: "mp.Queue") -> None:
    from raymesh.config import MeshConfig
    from raymesh.job import MeshJob
    from raymesh.mesh_layout import shard_key

    job = MeshJob(MeshConfig.model_validate_json(config_json))
    _ = job.store, job.grid, job.bucket
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    job.stitch_chunk(layer, coords, reader=job.fragment_reader(whole_shards=whole))  # warm-up, untraced
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    stats = job.stitch_chunk(layer, coords, reader=job.fragment_reader(whole_shards=whole)).stats
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    layout = job.meta.layout
    data = job.bucket.read(shard_key(layout, layer, int(layout.chunk_id(layer, *coords))))
    out.put({"working_mib": round(traced_peak / 2**20, 2), "rss_growth_mib": round((peak - before) / 1024, 1),
             "seconds": round(seconds, 3),
             "bytes_read": stats.bytes_read, "shard_bytes": len(data), "shard": data})


def measure(config, layer: int, coords, whole: bool) -> dict:
    ctx = mp.get_context("spawn")  # tensorstore forbids fork
    queue = ctx.Queue()
    proc = ctx.Process(target=_stitch_in_fresh_process, args=(config.model_dump_json(), layer, coords, whole, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def biggest_chunk(job, layer: int):
    """The chunk of ``layer`` whose children's shards hold the most bytes."""
    from raymesh.mesh_layout import shard_key

    layout = job.meta.layout
    sizes = {}
    for _, coords in job.iter_chunks(layer):
        total = 0
        for child in layout.children_chunk_ids(int(layout.chunk_id(layer, *coords))):
            data = job.bucket.read(shard_key(layout, layer - 1, int(child)))
            total += len(data) if data else 0
        sizes[coords] = total
    return max(sizes, key=sizes.get), max(sizes.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 256x256x128 crop (4 layers)")
    args = ap.parse_args()
    labels = real_labels_or_exit("stitch_memory", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.job import MeshJob

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        top = g.n_layers
        config = MeshConfig(graph=g.store_url, layers=list(range(2, top + 1)), mip=0, time_stamp=2e9,
                            executor="ray", workers=2, force=True)
        summary = run(config, progress=False)
        job = MeshJob(config)
        per_layer = {}
        for layer_summary in summary.layers[1:]:
            layer = layer_summary.layer
            coords, child_bytes = biggest_chunk(job, layer)
            stream = measure(config, layer, coords, whole=False)
            whole = measure(config, layer, coords, whole=True)
            assert stream.pop("shard") == whole.pop("shard"), "both modes write the same shard"
            per_layer[layer] = {"chunk": list(coords), "child_shard_bytes": child_bytes,
                                "stream": stream, "whole_shards": whole,
                                "layer_seconds_2_workers": layer_summary.seconds,
                                "layer_chunks": layer_summary.chunks}
        layers = sorted(per_layer)
        growth = {mode: {str(b): round(per_layer[b][mode]["working_mib"] / max(per_layer[a][mode]["working_mib"], 0.1), 2)
                         for a, b in zip(layers, layers[1:])} for mode in ("stream", "whole_shards")}
        figures = {
            "working_mib": {mode: {str(k): per_layer[k][mode]["working_mib"] for k in layers}
                            for mode in ("stream", "whole_shards")},
            "growth_per_layer": growth,
            "max_growth_stream": max(growth["stream"].values(), default=None),
            "max_growth_whole_shards": max(growth["whole_shards"].values(), default=None),
            "budget_mib": config.memory_budget / 2**20,
            "per_layer": per_layer,
            "layer2_seconds_2_workers": summary.layers[0].seconds,
        }
        emit("stitch_memory", figures, {"volume": "connectomics.npy 512^3" + (" crop 256x256x128" if args.quick else ""),
                                        "chunk": [64, 64, 64], "resolution": [8, 8, 40], "mip": 0,
                                        "layers": config.layers})


if __name__ == "__main__":
    main()
