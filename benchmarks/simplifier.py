"""The layer-2 simplifiers side by side: zmesh's (PCG's) and meshoptimizer's (issue 19).

    python -m benchmarks.simplifier [--quick] [--repeats 1] [--no-closed]

On the real volume (64^3 chunks, 8x8x40 nm, max_error 40), blocks read and remapped once as in
``benchmarks/l2_rate.py``, then for each simplifier in one run:

- kernel rate: ``l2.mesh_block`` (marching cubes + simplification + Draco) over every block, no
  I/O; the two simplifiers alternate block by block (which goes first alternates too), so load on
  the machine falls on both alike. Median over ``--repeats``.
- quality against the unsimplified marching-cubes surface of each layer-2 node (the same mesher,
  reduction factor 0), on every block with ``--quick`` and every 4th on the full volume
  (``--quality-every``): sampled distance both ways (points area-sampled on one surface plus its
  vertices, exact point-to-triangle distance to the other: ``simplified -> mc`` is how far the
  output strays, ``mc -> simplified`` what it drops), p99 and max against max_error; the area
  ratio; triangles (before Draco) on those blocks. Draco bytes come from the kernel run (all
  blocks).
- objects closed: the whole graph meshed through its top layer with each simplifier (serial), and
  the objects wholly inside the volume counted closed at layer 2 and at the top layer, as a viewer
  loads them (``tests/stitch_checks.closed_interior_objects``). ``--no-closed`` skips it.

``meshopt_wins_every_figure`` is true when meshopt's kernel rate is at least twice zmesh's, its
distances (p99 and max, both ways) and its area error are no larger than zmesh's, its triangles
and bytes no more, and it closes as many interior objects.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks.common import emit, real_labels_or_exit
from raymesh.geometry.distance import mesh_distance, surface_points, triangle_areas

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIMPLIFIERS = ("zmesh", "meshopt")
RESOLUTION = (8, 8, 40)
CHUNK = (64, 64, 64)


def kernel_rates(blocks, grid, repeats: int, max_error: float) -> tuple[dict, dict]:
    """Seconds per simplifier for ``mesh_block`` over every block (median of repeats), and the
    fragments' bytes and count."""
    from raymesh.layer2.mesh import mesh_block

    runs = {s: [] for s in SIMPLIFIERS}
    out = {s: {"bytes": 0, "fragments": 0, "failures": 0} for s in SIMPLIFIERS}
    for rep in range(repeats):
        spent = dict.fromkeys(SIMPLIFIERS, 0.0)
        for i, (c, block) in enumerate(blocks.items()):
            cid = int(grid.layout.chunk_id(2, *c))
            order = SIMPLIFIERS if (i + rep) % 2 == 0 else SIMPLIFIERS[::-1]
            for s in order:
                t0 = time.perf_counter()
                result = mesh_block(block, grid.chunk_offset(cid), grid.resolution, grid.chunk_settings(cid),
                                    max_error=max_error, chunk_id=cid, simplifier=s)
                spent[s] += time.perf_counter() - t0
                if rep == 0:
                    out[s]["bytes"] += sum(len(v) for v in result.fragments.values())
                    out[s]["fragments"] += len(result.fragments)
                    out[s]["failures"] += len(result.failures)
        for s in SIMPLIFIERS:
            runs[s].append(spent[s])
    return {s: statistics.median(v) for s, v in runs.items()}, out


def quality(blocks, grid, max_error: float, points_per_faces: int, seed: int = 0) -> dict:
    """Distances, area and triangles of each simplifier's meshes against the unsimplified
    marching-cubes mesh of the same node (before the offset and Draco)."""
    from raymesh.layer2.mesh import simplified_meshes

    rng = np.random.default_rng(seed)
    dist = {s: {"out": [], "back": []} for s in SIMPLIFIERS}
    area = {s: 0.0 for s in SIMPLIFIERS}
    tris = {s: 0 for s in SIMPLIFIERS}
    worst_area = {s: 0.0 for s in SIMPLIFIERS}
    mc_area, mc_tris, nodes, empty = 0.0, 0, 0, {s: 0 for s in SIMPLIFIERS}
    for block in blocks.values():
        mc = {label: (v, f) for label, v, f in simplified_meshes(block, grid.resolution, max_error, 0)}
        outs = {s: {label: (v, f) for label, v, f in simplified_meshes(block, grid.resolution, max_error,
                                                                         simplifier=s)} for s in SIMPLIFIERS}
        for label, (v0, f0) in mc.items():
            a0 = triangle_areas(v0, f0).sum()
            mc_area += a0
            mc_tris += len(f0)
            nodes += 1
            back = surface_points(v0, f0, len(f0) // points_per_faces, rng)
            for s in SIMPLIFIERS:
                v, f = outs[s].get(label, (np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint32)))
                tris[s] += len(f)
                a = triangle_areas(v, f).sum() if len(f) else 0.0
                area[s] += a
                if a0 > 0:
                    worst_area[s] = max(worst_area[s], abs(a / a0 - 1))
                if not len(f):
                    empty[s] += 1
                    dist[s]["back"].append(np.full(len(back), np.inf))
                    continue
                dist[s]["out"].append(mesh_distance(surface_points(v, f, max(len(f) // 2, 8), rng), v0, f0))
                dist[s]["back"].append(mesh_distance(back, v, f, k=32))
    out = {"nodes": nodes, "mc_triangles": mc_tris}
    for s in SIMPLIFIERS:
        fig = {"triangles": tris[s], "area_ratio": round(area[s] / mc_area, 4),
               "worst_node_area_error": round(worst_area[s], 4), "empty_nodes": empty[s]}
        for way, name in (("out", "simplified_to_mc"), ("back", "mc_to_simplified")):
            d = np.concatenate(dist[s][way])
            fig[name] = {"p99_nm": round(float(np.percentile(d, 99)), 2),
                         "p999_nm": round(float(np.percentile(d, 99.9)), 2),
                         "max_nm": round(float(d.max()), 2),
                         "over_max_error": int((d > max_error).sum()), "points": int(len(d))}
        out[s] = fig
    return out


def closed_objects(labels, max_error: float) -> dict:
    """Interior objects closed at layer 2 and at the top layer, meshing the graph with each
    simplifier (serial), plus each run's seconds and failures."""
    from benchmarks.stitch_quality import _shard_reader
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.volume import read_block
    from stitch_checks import closed_interior_objects

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        g = build_graph(labels, tmp, resolution=RESOLUTION, chunk_size=CHUNK)
        layers = list(range(2, g.n_layers + 1))
        sv = None
        for s in SIMPLIFIERS:
            config = MeshConfig(graph=g.store_url, layers=layers, mip=0, time_stamp=2e9, executor="serial",
                                max_error=max_error, simplifier=s, mesh_dir=f"meshes_{s}")
            t0 = time.perf_counter()
            summary = run(config, progress=False)
            seconds = time.perf_counter() - t0
            job = MeshJob(config)
            if sv is None:
                meta = job.store.meta
                sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
            read, has_mesh = _shard_reader(job, layers)
            fig = {"seconds": round(seconds, 1), "failures": sum(len(x.failures) for x in summary.layers)}
            for layer in (layers[0], layers[-1]):
                closed, inside = closed_interior_objects(job, sv, read, layer, has_mesh)
                fig[f"layer{layer}"] = {"closed": closed, "inside": inside}
            out[s] = fig
    return out


def wins(fig: dict) -> bool:
    z, m = fig["quality"]["zmesh"], fig["quality"]["meshopt"]
    ok = fig["kernel"]["meshopt_over_zmesh_rate"] >= 2.0
    for way in ("simplified_to_mc", "mc_to_simplified"):
        ok &= m[way]["p99_nm"] <= z[way]["p99_nm"] and m[way]["max_nm"] <= z[way]["max_nm"]
    ok &= abs(m["area_ratio"] - 1) <= abs(z["area_ratio"] - 1)
    ok &= m["triangles"] <= z["triangles"] and m["empty_nodes"] <= z["empty_nodes"]
    ok &= fig["kernel"]["meshopt"]["bytes"] <= fig["kernel"]["zmesh"]["bytes"]
    if "closed" in fig:
        for key, value in fig["closed"]["zmesh"].items():
            if key.startswith("layer"):
                ok &= fig["closed"]["meshopt"][key]["closed"] >= value["closed"]
    return bool(ok)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 256x256x128 crop")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-error", type=float, default=40.0)
    ap.add_argument("--points-per-faces", type=int, default=8,
                    help="one area sample per this many marching-cubes faces (plus every vertex)")
    ap.add_argument("--quality-every", type=int, default=None,
                    help="measure quality on every Nth block (default: 1 with --quick, 4 on the full volume)")
    ap.add_argument("--no-closed", action="store_true", help="skip meshing the graph for closed objects")
    ap.add_argument("--meshopt-fit", type=float, default=None,
                    help="the factor of meshopt's target error (default: raymesh.simplify.MESHOPT_ERROR_FIT)")
    args = ap.parse_args()
    import raymesh.simplify

    if args.meshopt_fit is not None:
        raymesh.simplify.MESHOPT_ERROR_FIT = args.meshopt_fit
    labels = real_labels_or_exit("simplifier", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.runs.job import MeshJob
    from raymesh.layer2.mesh import read_l2_block
    from raymesh.layer2.remap import fetch_neighbourhood, remap_chunk

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=RESOLUTION, chunk_size=CHUNK)
        job = MeshJob(MeshConfig(graph=g.store_url, mip=0, force=True, executor="serial"))
        grid = job.grid
        chunks = [c for _, c in job.iter_chunks(2)]
        blocks = {c: np.asarray(remap_chunk(read_l2_block(job.meta, grid, c), fetch_neighbourhood(job.store, c)))
                  for c in chunks}
    voxels = sum(b.size for b in blocks.values())
    seconds, output = kernel_rates(blocks, grid, args.repeats, args.max_error)
    kernel = {s: {"seconds": round(seconds[s], 2), "mvox_per_s": round(voxels / seconds[s] / 1e6, 3), **output[s]}
              for s in SIMPLIFIERS}
    kernel["meshopt_over_zmesh_rate"] = round(seconds["zmesh"] / seconds["meshopt"], 2)
    every = args.quality_every or (1 if args.quick else 4)
    sampled = {c: b for i, (c, b) in enumerate(blocks.items()) if i % every == 0}
    figures = {"kernel": kernel, "quality": dict(quality(sampled, grid, args.max_error, args.points_per_faces),
                                                 blocks=len(sampled))}
    if not args.no_closed:
        figures["closed"] = closed_objects(labels, args.max_error)
    figures["meshopt_wins_every_figure"] = wins(figures)
    figures["seconds"] = round(time.perf_counter() - t_start, 1)
    emit("simplifier", figures, {
        "volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape), "chunk_size": list(CHUNK),
        "resolution": list(RESOLUTION), "mip": 0, "max_error": args.max_error, "chunks": len(chunks),
        "repeats": args.repeats, "quick": args.quick, "quality_every": every, "workers": 1,
        "points_per_faces": args.points_per_faces, "meshopt_error_fit": raymesh.simplify.MESHOPT_ERROR_FIT,
        "meshopt_target_error_nm": round(raymesh.simplify.meshopt_target_error(args.max_error, RESOLUTION), 2),
        "meshoptimizer": metadata.version("meshoptimizer")})


if __name__ == "__main__":
    main()
