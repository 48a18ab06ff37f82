"""Stitching memory per layer: streaming (raymesh) against holding every child shard (PCG) (issue 4).

    python -m benchmarks.stitch_memory [--quick]

Meshes the real volume (64^3 chunks, 8x8x40 nm) layer by layer to its top layer. Then, for each
layer >= 3, the chunk with the most child-shard bytes is stitched again in a fresh process per
mode, and that process reports its own peak memory above what it held before stitching (imports,
graph and job opened): Python and numpy allocations traced while stitching (tracemalloc; the
decoded arrays are numpy; Draco's own C++ buffers are not traced), plus the growth of its peak RSS.

Modes, side by side in one run:
- "whole_shards": PCG's way, every child shard read whole and kept, one task per chunk;
- "stream": raymesh with the default 2 GiB budget, which nothing on a volume this small reaches:
  one task per chunk, fragments read by key; both write byte-identical shards (checked);
- "bounded": raymesh with a budget that binds here (``--work-mib`` above the worker's base): the
  chunk is split over the tasks the driver would start, balanced by cost, and nodes over the node
  limit are left to their children. Its per-task peak is the largest over the chunk's parts. Its
  layers are stitched from the same layer-2 shards into their own directory.
Figures: per-layer working memory of each mode, its growth per layer, and the layer's stitching
time (all chunks, 2 workers); for "bounded" also the parts per chunk, the nodes left unstitched,
and how many more fragments a viewer loads for the volume's roots at the top layer.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path


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


def _parts_in_fresh_process(config_json: str, layer: int, coords, parts: int, out: "mp.Queue") -> None:
    """Every part of a split chunk, one after another, each with its own traced peak."""
    from raymesh.config import MeshConfig
    from raymesh.job import MeshJob

    job = MeshJob(MeshConfig.model_validate_json(config_json))
    _ = job.store, job.grid, job.bucket
    job.stitch_part(layer, coords, 0, parts)  # warm-up, untraced
    peaks, unstitched, nodes = [], 0, 0
    t0 = time.perf_counter()
    for k in range(parts):
        tracemalloc.start()
        piece = job.stitch_part(layer, coords, k, parts)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        unstitched += len(piece.stats.unstitched)
        nodes += piece.stats.nodes
        del piece
    out.put({"working_mib": round(max(peaks) / 2**20, 2), "parts": parts, "nodes": nodes,
             "unstitched": unstitched, "seconds": round(time.perf_counter() - t0, 3),
             "part_working_mib": [round(p / 2**20, 2) for p in peaks]})


def measure(config, layer: int, coords, whole: bool, parts: int | None = None) -> dict:
    ctx = mp.get_context("spawn")  # tensorstore forbids fork
    queue = ctx.Queue()
    if parts is not None:
        target, args = _parts_in_fresh_process, (config.model_dump_json(), layer, coords, parts, queue)
    else:
        target, args = _stitch_in_fresh_process, (config.model_dump_json(), layer, coords, whole, queue)
    proc = ctx.Process(target=target, args=args)
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


def viewer_fragments(job, layer: int) -> dict:
    """Fragments the verified manifests list for every root at ``layer``: in all, and for the root
    that needs the most."""
    import numpy as np

    from raymesh.manifest import manifest_nodes, shard_has_mesh

    store = job.store
    roots = set()
    for _, coords in job.iter_chunks(2):
        rows = store.range_read_chunk(int(job.meta.layout.chunk_id(2, *coords)), time_stamp=job.time_stamp)
        if rows:
            roots.update(np.asarray(store.get_roots(np.array(sorted(rows), np.uint64))).tolist())
    has_mesh = shard_has_mesh(job)
    counts = [len(manifest_nodes(store, root, layer, has_mesh)) for root in sorted(roots)]
    return {"roots": len(counts), "fragments": int(sum(counts)), "most_for_one_root": max(counts, default=0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 256x256x128 crop (4 layers)")
    ap.add_argument("--work-mib", type=float, default=4.0,
                    help="the bounded mode's budget above the worker's base (default 4 MiB)")
    args = ap.parse_args()
    labels = real_labels_or_exit("stitch_memory", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.job import MeshJob
    from raymesh.placement import TASK_BASE_BYTES, stitch_parts
    from raymesh.storage import local_path

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        top = g.n_layers
        config = MeshConfig(graph=g.store_url, layers=list(range(2, top + 1)), mip=0, time_stamp=2e9,
                            executor="ray", workers=2, force=True)
        summary = run(config, progress=False)
        job = MeshJob(config)
        bounded = config.model_copy(update={"mesh_dir": "bounded", "force": False,
                                             "memory_budget": TASK_BASE_BYTES + int(args.work_mib * 2**20)})
        bounded_job = MeshJob(bounded)
        shutil.copytree(Path(local_path(job.bucket.base)) / "initial" / "2",
                        Path(local_path(bounded_job.bucket.base)) / "initial" / "2")
        # Layer 2 is found done (the same shards); the driver hands them to the layer above through
        # the shard caches, which is what tells it how big each chunk is and how to split it.
        bounded_layers = {s.layer: s for s in run(bounded, progress=False).layers}
        per_layer = {}
        for layer_summary in summary.layers[1:]:
            layer = layer_summary.layer
            coords, child_bytes = biggest_chunk(job, layer)
            stream = measure(config, layer, coords, whole=False)
            whole = measure(config, layer, coords, whole=True)
            assert stream.pop("shard") == whole.pop("shard"), "both modes write the same shard"
            bounded_summary = bounded_layers[layer]
            b_coords, b_child_bytes = biggest_chunk(bounded_job, layer)
            parts = stitch_parts(b_child_bytes, bounded.memory_budget)
            bound = measure(bounded, layer, b_coords, whole=False, parts=parts)
            bound.update({"chunk": list(b_coords), "child_shard_bytes": b_child_bytes,
                          "layer_seconds_2_workers": bounded_summary.seconds,
                          "layer_unstitched": bounded_summary.unstitched,
                          "layer_chunks_split": bounded_summary.chunks_split})
            per_layer[layer] = {"chunk": list(coords), "child_shard_bytes": child_bytes,
                                "stream": stream, "whole_shards": whole, "bounded": bound,
                                "layer_seconds_2_workers": layer_summary.seconds,
                                "layer_chunks": layer_summary.chunks}
        layers = sorted(per_layer)
        modes = ("stream", "whole_shards", "bounded")
        growth = {mode: {str(b): round(per_layer[b][mode]["working_mib"] / max(per_layer[a][mode]["working_mib"], 0.1), 2)
                         for a, b in zip(layers, layers[1:])} for mode in modes}
        figures = {
            "working_mib": {mode: {str(k): per_layer[k][mode]["working_mib"] for k in layers} for mode in modes},
            "growth_per_layer": growth,
            "max_growth_stream": max(growth["stream"].values(), default=None),
            "max_growth_whole_shards": max(growth["whole_shards"].values(), default=None),
            "max_growth_bounded": max(growth["bounded"].values(), default=None),
            "budget_mib": config.memory_budget / 2**20,
            "bounded_work_mib": args.work_mib,
            "bounded_node_limit_bytes": bounded_job.node_limit,
            "bounded_under_budget": all(per_layer[k]["bounded"]["working_mib"] <= args.work_mib for k in layers),
            "top_layer_fragments": {"stream": viewer_fragments(job, top), "bounded": viewer_fragments(bounded_job, top)},
            "per_layer": per_layer,
            "layer2_seconds_2_workers": summary.layers[0].seconds,
        }
        emit("stitch_memory", figures, {"volume": "connectomics.npy 512^3" + (" crop 256x256x128" if args.quick else ""),
                                        "chunk": [64, 64, 64], "resolution": [8, 8, 40], "mip": 0,
                                        "layers": config.layers})


if __name__ == "__main__":
    main()
