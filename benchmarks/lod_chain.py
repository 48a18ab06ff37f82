"""The LOD chain against full-resolution stitching, layer by layer to the root layer (issue 20).

    python -m benchmarks.lod_chain [--quick] [--roots 40]

Meshes the real volume (64^3 chunks, 8x8x40 nm; ``--quick``: a 256x256x128 crop) at layer 2 once,
then stitches layers 3 to the top twice from those same layer-2 shards, side by side in one run
and both in this process (one core): without the LOD chain (``--no-lod-chain``, PCG's output) and
with it (``initial/`` byte-identical, checked, plus ``lod/``). Figures per layer:

- seconds of each run, and the LOD chain's share of the whole run (layer 2 included): the cost
  that decides whether the chain is on by default (issue 20: under 25%). Layer 2 is timed first
  and again last, and the mean taken: the machine drifts within the run. The stitching time with
  the chain over without it, per alternated repeat, is the steadier figure;
- per-task peak memory for the layer's heaviest chunk, each in a fresh process (as
  ``benchmarks/stitch_memory.py`` measures it: peak RSS growth and traced numpy peak): full
  resolution stitching against the LOD chain's work on the same chunk, and their growth per layer;
- triangles and bytes of each layer's meshes, full resolution against LOD;
- quality of each LOD for the roots with the most layer-2 fragments (``--roots``): sampled
  distance both ways to the layer-2 surface against the LOD's budget, and interior objects closed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, real_labels_or_exit
from benchmarks.stitch_memory import _mib, _peaks, biggest_chunk, measure


def _lod_in_fresh_process(config_json: str, layer: int, coords, out) -> None:
    from raymesh.config import MeshConfig
    from raymesh.runs.job import MeshJob

    job = MeshJob(MeshConfig.model_validate_json(config_json))
    _ = job.store, job.grid, job.bucket
    job.lod_chunk(layer, coords)  # warm-up (imports, first reads)
    t0 = time.perf_counter()
    stats, rss, traced = _peaks(lambda: job.lod_chunk(layer, coords))
    out.put({"working_mib": _mib(traced), "rss_mib": _mib(rss), "seconds": round((time.perf_counter() - t0) / 2, 3),
             "nodes": stats.lod_fragments})


def measure_lod(config, layer: int, coords) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lod_in_fresh_process, args=(config.model_dump_json(), layer, coords, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def heaviest_lod_chunk(job, layer: int):
    """The chunk of ``layer`` whose LOD inputs (LOD shards below, layer-2 shards for layer 3) are biggest."""
    from raymesh.formats.mesh_layout import lod_chain_key

    return biggest_chunk(job, layer, lod_chain_key)


def layer_triangles(job, layer: int, lod: bool) -> int:
    from raymesh.formats.draco import decode
    from raymesh.formats.mesh_layout import lod_key, shard_key
    from raymesh.formats.sharding import disassemble_shard
    from raymesh.lod.geometry import decode_lod

    layout = job.meta.layout
    total = 0
    for _, coords in job.iter_chunks(layer):
        chunk = int(layout.chunk_id(layer, *coords))
        data = job.bucket.read((lod_key if lod else shard_key)(layout, layer, chunk))
        if data:
            values = disassemble_shard(data, job.sharding(layer)).values()
            total += sum(len((decode_lod(job.grid, chunk, v) if lod else decode(v)).faces) for v in values)
    return total


def quality(graph: str, mesh_dir: str, roots_wanted: int, sv_volume) -> dict:
    """Per LOD, for the roots with the most layer-2 cells: distances to the layer-2 surface (max
    over roots of the sampled maxima, both ways) against the budget, and interior objects closed."""

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from stitch_checks import interior_roots

    from raymesh.export import ViewerMeshes
    from raymesh.export.multilod import MultilodBuilder
    from raymesh.geometry.distance import surface_deviation
    from raymesh.lod.geometry import lod_budget
    from raymesh.verify.geometry import edge_use, merged

    meshes = ViewerMeshes(graph, mesh_dir)
    builder = MultilodBuilder(meshes)
    store = meshes.store
    svs = np.unique(sv_volume[sv_volume > 0])
    roots = np.unique(np.asarray(store.get_roots(svs)))
    inside = interior_roots(store, sv_volume)
    # the roots with the most layer-2 nodes (a cheap proxy for size)
    sized = []
    for root in roots.tolist():
        sized.append((len(builder._cover(int(root), builder._tree(int(root)), 2)), int(root)))
    picked = [r for _, r in sorted(sized, reverse=True)[:roots_wanted]]

    class _Mesh:
        def __init__(self, f):
            self.vertices, self.faces = f.vertices, f.faces

    per_lod: dict[int, dict] = {}
    for root in picked:
        lods = builder.fragments(root)
        whole = [merged([_Mesh(f) for f in frags]) if frags else (np.zeros((0, 3)), np.zeros((0, 3), int))
                 for frags in lods]
        for lod, (v, f) in enumerate(whole):
            entry = per_lod.setdefault(lod, {"roots": 0, "faces": 0, "a_to_b_max": 0.0, "b_to_a_max": 0.0,
                                             "a_to_b_p99_max": 0.0, "b_to_a_p99_max": 0.0, "interior": 0,
                                             "closed": 0, "budget_nm": lod_budget(meshes.job.config.max_error,
                                                                                 lod + 2) if lod else 0.0})
            entry["roots"] += 1
            entry["faces"] += len(f)
            if root in inside and len(f):
                entry["interior"] += 1
                entry["closed"] += int(not (edge_use(f) == 1).any())
                entry["nonmanifold_roots"] = entry.get("nonmanifold_roots", 0) + int((edge_use(f) > 2).any())
            if lod and len(f) and len(whole[0][1]):
                dev = surface_deviation((v, f), whole[0], samples=10000, seed=lod,
                                        refine_above=entry["budget_nm"] / 2)
                entry["a_to_b_max"] = max(entry["a_to_b_max"], round(dev["a_to_b_max"], 2))
                entry["b_to_a_max"] = max(entry["b_to_a_max"], round(dev["b_to_a_max"], 2))
                entry["a_to_b_p99_max"] = max(entry["a_to_b_p99_max"], round(dev["a_to_b_p99"], 2))
                entry["b_to_a_p99_max"] = max(entry["b_to_a_p99_max"], round(dev["b_to_a_p99"], 2))
    for entry in per_lod.values():
        entry["within_budget"] = (entry["budget_nm"] == 0 or
                                  max(entry["a_to_b_max"], entry["b_to_a_max"]) <= entry["budget_nm"])
    return {str(k): v for k, v in sorted(per_lod.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 256x256x128 crop")
    ap.add_argument("--roots", type=int, default=40, help="roots measured for quality (the largest)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="stitching runs of each mode, alternated; the medians decide the LOD chain's share")
    args = ap.parse_args()
    labels = real_labels_or_exit("lod_chain", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.storage import local_path
    from raymesh.volume import read_block

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        top = MeshJob(MeshConfig(graph=g.store_url)).meta.layer_count
        base = dict(graph=g.store_url, mip=0, time_stamp=2e9, executor="serial", graph_meta="skip")
        t0 = time.perf_counter()
        l2 = run(MeshConfig(**base, layers=[2], mesh_dir="layer2"), progress=False)
        l2_seconds = time.perf_counter() - t0
        assert not l2.failed
        layer2_dir = Path(local_path(MeshJob(MeshConfig(**base, mesh_dir="layer2")).mesh_url))
        runs: dict[str, list] = {"full": [], "lod": []}
        for rep in range(args.repeats):  # full, LOD, full, LOD, ...: each from a copy of the layer-2 shards
            for name, on in (("full", False), ("lod", True)):
                mesh_dir = name if rep == args.repeats - 1 else f"{name}{rep}"
                job = MeshJob(MeshConfig(**base, layers=list(range(3, top + 1)), mesh_dir=mesh_dir, lod_chain=on))
                shutil.copytree(layer2_dir, Path(local_path(job.mesh_url)))
                t0 = time.perf_counter()
                summary = run(job.config, progress=False)
                assert not summary.failed, summary.layers
                runs[name].append((summary, time.perf_counter() - t0, job))
                if rep < args.repeats - 1:
                    shutil.rmtree(Path(local_path(job.mesh_url)))
        # layer 2 again, last: the machine's speed drifts by 10-25% within the hour this takes, and
        # the share's denominator is mostly layer 2; the two timings bracket the stitching runs
        again = MeshConfig(**base, layers=[2], mesh_dir="layer2_again")
        t0 = time.perf_counter()
        assert not run(again, progress=False).failed
        l2_times = [l2_seconds, time.perf_counter() - t0]
        shutil.rmtree(Path(local_path(MeshJob(again).mesh_url)))
        l2_seconds = float(np.mean(l2_times))
        shares = [round((lod[1] - full[1]) / (l2_seconds + full[1]), 3) for full, lod in zip(runs["full"], runs["lod"])]
        full_job, lod_job = runs["full"][-1][2], runs["lod"][-1][2]
        stitch_full = float(np.median([r[1] for r in runs["full"]]))
        stitch_lod = float(np.median([r[1] for r in runs["lod"]]))
        last = {name: r[-1][0] for name, r in runs.items()}  # the summaries of the dirs kept
        full_root = Path(local_path(full_job.mesh_url)) / "initial"
        lod_root = Path(local_path(lod_job.mesh_url)) / "initial"
        identical = all((lod_root / p.relative_to(full_root)).read_bytes() == p.read_bytes()
                        for p in full_root.rglob("*.shard"))

        per_layer = {}
        for layer in range(3, top + 1):
            s_full = next(s for s in last["full"].layers if s.layer == layer)
            s_lod = next(s for s in last["lod"].layers if s.layer == layer)
            coords, inputs = heaviest_lod_chunk(lod_job, layer)
            per_layer[str(layer)] = {
                "seconds": {"full": round(s_full.seconds, 2), "with_lod": round(s_lod.seconds, 2),
                            "lod_part": round(s_lod.lod_seconds, 2)},
                "bytes": {"full": s_full.bytes_written, "lod": s_lod.lod_bytes},
                "meshes": {"full": s_full.fragments, "lod": s_lod.lod_fragments, "nodes": s_full.nodes,
                           "unstitched_full": s_full.unstitched, "lod_unsimplified": s_lod.lod_unsimplified},
                "triangles": {"full": layer_triangles(full_job, layer, False), "lod": layer_triangles(lod_job, layer, True)},
                "task_peak": {"chunk": list(coords), "lod_input_bytes": inputs,
                              "full": measure(full_job.config, layer, coords, whole=False),
                              "lod": measure_lod(lod_job.config, layer, coords)},
            }
            per_layer[str(layer)]["task_peak"]["full"].pop("shard", None)
            print(json.dumps({"layer": layer, **per_layer[str(layer)]}), file=sys.stderr, flush=True)
        def growth(metric: str) -> dict:
            """Each layer's task peak over the layer below's, per mode."""
            peak = {layer: per_layer[str(layer)]["task_peak"] for layer in range(3, top + 1)}
            return {mode: {str(layer): round(peak[layer][mode][metric] / max(peak[layer - 1][mode][metric], 0.01), 2)
                           for layer in range(4, top + 1)} for mode in ("full", "lod")}

        rss_growth = growth("rss_mib")
        meta = lod_job.meta
        sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
        figures = {
            "layer2_seconds": round(l2_seconds, 1),
            "layer2_seconds_first_last": [round(t, 1) for t in l2_times],
            "lod_over_stitching_each_repeat": [round(lod[1] / full[1], 3) for full, lod in zip(runs["full"], runs["lod"])],
            "stitch_seconds": {"full": round(stitch_full, 1), "with_lod": round(stitch_lod, 1)},
            "lod_extra_over_whole_run": round((stitch_lod - stitch_full) / (l2_seconds + stitch_full), 3),
            "lod_extra_each_repeat": shares,
            "initial_identical": identical,
            "per_layer": per_layer,
            "task_rss_growth_per_layer": rss_growth,
            "lod_rss_growth_max": max(rss_growth["lod"].values(), default=None),
            "task_working_growth_per_layer": growth("working_mib"),
            "quality": quality(g.store_url, "lod", args.roots, sv),
        }
    emit("lod_chain", figures, {"volume": "connectomics.npy", "crop": "256x256x128" if args.quick else "512^3",
                                "chunk": [64, 64, 64], "resolution": [8, 8, 40], "layers": f"2-{top}",
                                "executor": "serial (one core)", "quality_roots": args.roots,
                                "repeats": args.repeats})


if __name__ == "__main__":
    main()
