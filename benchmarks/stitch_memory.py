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
- "bounded_<W>MiB": raymesh with a budget that binds here (``--work-mib`` W above the worker's base), as
  the Ray runtime runs a chunk: one task plans it from the minishard indices and either stitches
  it or, when its nodes' fragments exceed half the work, cuts the plan into parts balanced by cost;
  each part is a task of its own. Nodes over the node limit (half the work over the node factor)
  are left to their children. Its per-task peak is the largest over the planning task and the
  parts. Its layers are stitched from the same layer-2 shards into their own directory.
Figures: per-layer working memory of each mode, its growth per layer, and the layer's stitching
time (all chunks, 2 workers); for "bounded" also the parts per chunk, the nodes left unstitched,
the measured node factor (stitching memory per byte of a node's fragments, which the node limit
assumes is at most 48), and how many more fragments a viewer loads for the volume's roots at the
top layer.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing as mp
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path


from benchmarks.common import emit, real_labels_or_exit


_LIBC = ctypes.CDLL("libc.so.6")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peaks(fn):
    """Run ``fn`` twice: once for its peak RSS above the RSS before it (the kernel's peak mark is
    reset first, Linux clear_refs 5; this counts Draco's C++ buffers), once traced (tracemalloc's
    own bookkeeping would inflate the RSS). Freed heap is handed back to the system first
    (malloc_trim), or reusing it would hide part of the peak. Returns the last result, the RSS
    and traced peaks."""
    gc.collect()
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_bytes("VmRSS")
    fn()
    rss = _status_bytes("VmHWM") - start
    gc.collect()
    tracemalloc.start()
    result = fn()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, rss, traced


def _mib(n: float) -> float:
    return round(n / 2**20, 2)


def _stitch_in_fresh_process(config_json: str, layer: int, coords, whole: bool, out: "mp.Queue") -> None:
    from raymesh.config import MeshConfig
    from raymesh.runs.job import MeshJob
    from raymesh.formats.mesh_layout import shard_key

    job = MeshJob(MeshConfig.model_validate_json(config_json))
    _ = job.store, job.grid, job.bucket
    t0 = time.perf_counter()
    job.stitch_chunk(layer, coords, reader=job.fragment_reader(whole_shards=whole))  # warm-up
    seconds = time.perf_counter() - t0
    result, rss, traced = _peaks(lambda: job.stitch_chunk(layer, coords, reader=job.fragment_reader(whole_shards=whole)))
    layout = job.meta.layout
    data = job.bucket.read(shard_key(layout, layer, int(layout.chunk_id(layer, *coords))))
    out.put({"working_mib": _mib(traced), "rss_mib": _mib(rss), "seconds": round(seconds, 3),
             "bytes_read": result.stats.bytes_read, "shard_bytes": len(data), "shard": data})


def _parts_in_fresh_process(config_json: str, layer: int, coords, out: "mp.Queue") -> None:
    """The chunk's task as the Ray runtime runs it (plan; stitch, or split), then every part one
    after another, each with its own peaks; and the node factor of its biggest nodes."""
    from raymesh.config import MeshConfig
    from raymesh.runs.job import MeshJob
    from raymesh.stitch import StitchPlan, stitch_node

    job = MeshJob(MeshConfig.model_validate_json(config_json))
    _ = job.store, job.grid, job.bucket
    plans = job.plan_parts(layer, coords)  # warm-up
    if len(plans) > 1:
        job.stitch_part(plans[0])
    t0 = time.perf_counter()
    first, rss, traced = _peaks(lambda: job.stitch_chunk(layer, coords, split=True))
    peaks = [(rss, traced)]
    unstitched, nodes = len(first.stats.unstitched), first.stats.nodes if not first.split else 0
    for plan in first.split or []:
        piece, rss, traced = _peaks(lambda: job.stitch_part(plan))
        peaks.append((rss, traced))
        unstitched += len(piece.stats.unstitched)
        nodes += piece.stats.nodes
        del piece
    seconds = time.perf_counter() - t0
    # Memory of stitching the chunk's biggest nodes under the limit, per byte of their fragments.
    reader = job.fragment_reader()
    plan = StitchPlan(layer, plans[0].chunk_id, {n: d for p in plans for n, d in p.descendants.items()})
    sizes = {n: sum(reader.size(d) for d in desc) for n, desc in plan.descendants.items()}
    factors = []
    for n in sorted((n for n in sizes if 0 < sizes[n] <= job.node_limit), key=sizes.get)[-3:]:
        frags = [(d, f) for d, f in ((d, reader.read(d)) for d in plan.descendants[n]) if f]
        _, rss, traced = _peaks(lambda: stitch_node(job.grid, plan.chunk_id, n, frags))
        factors.append((rss / sizes[n], traced / sizes[n]))
    out.put({"working_mib": _mib(max(t for _, t in peaks)), "rss_mib": _mib(max(r for r, _ in peaks)),
             "parts": max(1, len(first.split or [])),
             "planning_task_mib": {"traced": _mib(peaks[0][1]), "rss": _mib(peaks[0][0])},
             "nodes": nodes, "unstitched": unstitched, "seconds": round(seconds, 3),
             "part_working_mib": [_mib(t) for _, t in peaks[1:]], "part_rss_mib": [_mib(r) for r, _ in peaks[1:]],
             "node_factor": {"rss": round(max(f for f, _ in factors), 1), "traced": round(max(f for _, f in factors), 1)}
             if factors else None})


def measure(config, layer: int, coords, whole: bool, split: bool = False) -> dict:
    ctx = mp.get_context("spawn")  # tensorstore forbids fork
    queue = ctx.Queue()
    if split:
        target, args = _parts_in_fresh_process, (config.model_dump_json(), layer, coords, queue)
    else:
        target, args = _stitch_in_fresh_process, (config.model_dump_json(), layer, coords, whole, queue)
    proc = ctx.Process(target=target, args=args)
    proc.start()
    result = queue.get()
    proc.join()
    return result


def biggest_chunk(job, layer: int, key_of=None):
    """The chunk of ``layer`` whose children's shards hold the most bytes (``key_of(layout, layer,
    chunk)``: where a child's shard is; default its ``initial/`` shard)."""
    from raymesh.formats.mesh_layout import shard_key

    key_of = key_of or shard_key
    layout = job.meta.layout
    sizes = {}
    for _, coords in job.iter_chunks(layer):
        total = 0
        for child in layout.children_chunk_ids(int(layout.chunk_id(layer, *coords))):
            data = job.bucket.read(key_of(layout, layer - 1, int(child)))
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
    ap.add_argument("--work-mib", type=float, nargs="+", default=[4.0, 16.0],
                    help="budgets above the worker's base for the bounded modes (default 4 and 16 MiB)")
    args = ap.parse_args()
    labels = real_labels_or_exit("stitch_memory", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.placement import TASK_BASE_BYTES
    from raymesh.storage import local_path

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        top = g.n_layers
        config = MeshConfig(graph=g.store_url, layers=list(range(2, top + 1)), mip=0, time_stamp=2e9,
                            executor="ray", workers=2, force=True)
        summary = run(config, progress=False)
        job = MeshJob(config)
        bounded = {}  # mode -> (config, job, layer summaries)
        for work in args.work_mib:
            mode = f"bounded_{work:g}MiB"
            b_config = config.model_copy(update={"mesh_dir": mode, "force": False,
                                                 "memory_budget": TASK_BASE_BYTES + int(work * 2**20)})
            b_job = MeshJob(b_config)
            shutil.copytree(Path(local_path(job.bucket.base)) / "initial" / "2",
                            Path(local_path(b_job.bucket.base)) / "initial" / "2")
            # Layer 2 is found done (the same shards); the driver hands them to the layer above
            # through the shard caches.
            bounded[mode] = (b_config, b_job, {s.layer: s for s in run(b_config, progress=False).layers})
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
            for mode, (b_config, b_job, b_layers) in bounded.items():
                b_coords, b_child_bytes = biggest_chunk(b_job, layer)
                bound = measure(b_config, layer, b_coords, whole=False, split=True)
                bound.update({"chunk": list(b_coords), "child_shard_bytes": b_child_bytes,
                              "layer_seconds_2_workers": b_layers[layer].seconds,
                              "layer_unstitched": b_layers[layer].unstitched,
                              "layer_chunks_split": b_layers[layer].chunks_split})
                per_layer[layer][mode] = bound
        layers = sorted(per_layer)
        modes = ("whole_shards", "stream", *bounded)

        def table(metric: str) -> dict:
            return {mode: {str(k): per_layer[k][mode][metric] for k in layers} for mode in modes}

        def growth(metric: str) -> dict:
            return {mode: {str(b): round(per_layer[b][mode][metric] / max(per_layer[a][mode][metric], 0.1), 2)
                           for a, b in zip(layers, layers[1:])} for mode in modes}

        figures = {
            "working_mib": table("working_mib"),
            "rss_mib": table("rss_mib"),
            "growth_per_layer": growth("working_mib"),
            "rss_growth_per_layer": growth("rss_mib"),
            "budget_mib": config.memory_budget / 2**20,
            "bounded": {mode: {"work_mib": (b_config.memory_budget - TASK_BASE_BYTES) / 2**20,
                               "node_limit_bytes": b_job.node_limit,
                               "under_budget": {metric: all(per_layer[k][mode][metric] * 2**20
                                                            <= b_config.memory_budget - TASK_BASE_BYTES
                                                            for k in layers) for metric in ("working_mib", "rss_mib")},
                               "unstitched_per_layer": {str(k): per_layer[k][mode]["layer_unstitched"] for k in layers},
                               "top_layer_fragments": viewer_fragments(b_job, top)}
                        for mode, (b_config, b_job, _) in bounded.items()},
            "top_layer_fragments_stream": viewer_fragments(job, top),
            "per_layer": per_layer,
            "layer2_seconds_2_workers": summary.layers[0].seconds,
        }
        emit("stitch_memory", figures, {"volume": "connectomics.npy 512^3" + (" crop 256x256x128" if args.quick else ""),
                                        "chunk": [64, 64, 64], "resolution": [8, 8, 40], "mip": 0,
                                        "layers": config.layers, "bounded_work_mib": args.work_mib})


if __name__ == "__main__":
    main()
