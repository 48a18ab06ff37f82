"""Meshing subcommands: ``raymesh mesh`` and ``raymesh info``."""

from __future__ import annotations

import argparse
import json


def _default(name: str):
    from raymesh.config import MeshConfig

    return MeshConfig.model_fields[name].default


def add_commands(sub) -> None:
    p = sub.add_parser(
        "mesh", help="mesh layers of a graph into PCG's sharded format",
        description="Mesh a ChunkedGraph: layer 2 from the segmentation, higher layers stitched from the layer "
        "below, into <segmentation>/<mesh dir>/initial/<layer>/ as PCG writes them. Every setting can also come "
        "from a YAML --config (same names, underscores: max_error, chunk_start, ...); flags override it. "
        "Progress and the summary go to stderr; --json or --summary-json - puts the summary JSON on stdout. "
        "Exit status: 0 done, 1 some chunks failed (rerun the same command to redo them), 2 bad input.")
    p.add_argument("--graph", metavar="URL",
                   help="graph store: sqlite:///abs/path/graph.sqlite (sqlite://rel/path.sqlite for a relative "
                   "path) or bigtable://PROJECT/INSTANCE/TABLE (PCG's table). Required, here or in --config")
    p.add_argument("--config", metavar="YAML", help="job config file (examples in configs/); flags override its "
                   "settings (default: none, flags only)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layer", type=int, metavar="N",
                   help="mesh this one layer; the layers below it must be done (default: layer 2)")
    g.add_argument("--layers", metavar="RANGE",
                   help="layers to mesh, in order: a range 2-7 or a list 2,3 (default: 2, or the config's)")
    g.add_argument("--max-layer", type=int, metavar="N",
                   help="mesh layers 2 to N, the same as --layers 2-N (default: layer 2 only)")
    p.add_argument("--chunk-start", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="mesh only a box of chunks of the first layer meshed, from this chunk (included) to "
                   "--chunk-end (not included); higher layers mesh the chunks above the box. A box reaching "
                   "outside the layer is clipped to it, with a note (default: all chunks)")
    p.add_argument("--chunk-end", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="the box's far corner, not included (with --chunk-start)")
    p.add_argument("--mip", type=int, metavar="M", help="segmentation mip to mesh; it must exist in the "
                   "segmentation (default: the mip the graph's custom_data['mesh'] records, else 0)")
    p.add_argument("--max-error", type=float, metavar="NM", help="zmesh simplification error bound in nm "
                   f"(default: {_default('max_error'):g}, PCG's)")
    p.add_argument("--simplifier", choices=["zmesh", "meshopt"],
                   help="layer-2 simplification: zmesh (PCG's) or meshopt (meshoptimizer: about 2.9x faster, fewer "
                   "triangles, measured as close to the marching-cubes surface; not PCG's bytes). A mesh dir keeps the "
                   f"one it was made with (default: {_default('simplifier')})")
    p.add_argument("--mesh-dir", metavar="DIR", help="mesh folder below the segmentation "
                   f"(default: {_default('mesh_dir')}, PCG's)")
    p.add_argument("--time-stamp", type=float, metavar="T",
                   help="graph state to mesh, POSIX seconds (default: now; a mesh dir keeps the time stamp of its "
                   "first run)")
    p.add_argument("--dust-threshold", type=int, metavar="VOXELS",
                   help="drop objects of fewer voxels than this from a layer-2 chunk unless they reach its upper "
                   "faces (PCG's dust threshold; default: none dropped)")
    p.add_argument("--memory-budget", metavar="SIZE", help="memory one task may ask Ray for, e.g. 512MiB, 16GiB "
                   "(default: 2GiB)")
    p.add_argument("--max-stitch-bytes", metavar="SIZE",
                   help="most child-fragment bytes one node is stitched from; bigger nodes keep no mesh and "
                   "viewers load their children's (default: (memory budget - 256MiB) / 320, 5.6MiB for 2GiB)")
    p.add_argument("--workers", type=int, metavar="N", help="CPUs of the local Ray this starts (default: all of "
                   "this machine's; ignored with --address)")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to run on: auto (the cluster this machine is part of), ray://HEAD:10001 (Ray "
                   "Client) or HEAD:6379. A cluster with token authentication needs RAY_AUTH_MODE=token and "
                   "RAY_AUTH_TOKEN set here (default: start a local Ray; inside `ray job submit`, the job's cluster)")
    p.add_argument("--executor", choices=["auto", "ray", "serial"],
                   help="where chunks run: ray; serial (in this process, one after another: debugging); or auto: "
                   "Ray, except a job of under 64 chunks with no --address, which runs in this process "
                   f"(default: {_default('executor')})")
    p.add_argument("--graph-meta", choices=["auto", "write", "dry-run", "skip"],
                   help="record custom_data['mesh'] in the graph meta at the end: write, dry-run (print the change), "
                   "skip, or auto: write for SQLite, dry-run for Bigtable (default: auto)")
    p.add_argument("--max-graph-reads", type=int, metavar="N", help="graph reads in flight across the whole Ray "
                   f"cluster; Bigtable is shared with proofreading (default: {_default('max_graph_reads')})")
    p.add_argument("--chunks-per-task", type=int, metavar="N",
                   help=f"chunks one Ray task meshes in a row (default: {_default('chunks_per_task')})")
    p.add_argument("--highmem-layer", type=int, metavar="N",
                   help="layers from N up also ask Ray for one unit of the big-memory resource "
                   f"{_default('highmem_resource')} (default: none do)")
    p.add_argument("--placement-timeout", type=float, metavar="SECONDS",
                   help="how long to wait for a node that fits a task (an autoscaler adding one) before failing "
                   f"(default: {_default('placement_timeout'):g}: fail at once)")
    p.add_argument("--lod-chain", dest="lod_chain", action=argparse.BooleanOptionalAction, default=None,
                   help="also write the LOD chain for layers 3 and up: each node's mesh simplified from its "
                   "children's (error budget lod_error * 2^(L-2) nm), into <mesh dir>/lod/, for `raymesh export "
                   "--format precomputed` (multi-resolution, stock Neuroglancer); initial/ is unchanged "
                   f"(default: {'on' if _default('lod_chain') else 'off'})")
    p.add_argument("--lod-error", type=float, metavar="NM", help="base of the LOD error budget: layer L's LOD "
                   "stays within NM * 2^(L-2) of the layer-2 surface (default: --max-error)")
    p.add_argument("--force", action="store_true", default=None,
                   help="redo chunks already written (default: skip them, redo only failed or damaged ones)")
    p.add_argument("--repair", metavar="REPORT",
                   help="redo exactly what a `raymesh verify --json` report names (chunks, edits' fragments, "
                   "metadata), bottom layer first (default: mesh, not repair)")
    p.add_argument("--json", action="store_true",
                   help="print the run summary as one JSON object on stdout (same as --summary-json -)")
    p.add_argument("--summary-json", metavar="FILE",
                   help="also write the run summary JSON to FILE; - for stdout (default: no JSON)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only errors (failed chunks, refused input): no progress, notes or summary")

    from raymesh.verify.command import add_verify_command

    add_verify_command(sub)

    i = sub.add_parser("info", help="print the graphene info a PCG server would serve for the graph (JSON, stdout)")
    i.add_argument("--graph", required=True, metavar="URL", help="graph store URL (required)")
    i.add_argument("--mesh-dir", metavar="DIR", help="mesh folder named in the info (default: the graph's recorded "
                   "one, else graphene_meshes)")


def config_from_args(args):
    from raymesh.config import load_config

    return load_config(args.config, from_flags=True, graph=args.graph, layer=args.layer, layers=args.layers,
                       max_layer=args.max_layer, chunk_start=args.chunk_start,
                       chunk_end=args.chunk_end, mip=args.mip, max_error=args.max_error, simplifier=args.simplifier,
                       mesh_dir=args.mesh_dir, time_stamp=args.time_stamp,
                       dust_threshold=args.dust_threshold, workers=args.workers, address=args.address,
                       executor=args.executor, force=args.force, memory_budget=args.memory_budget,
                       max_stitch_bytes=args.max_stitch_bytes,
                       chunks_per_task=args.chunks_per_task, highmem_layer=args.highmem_layer,
                       placement_timeout=args.placement_timeout, graph_meta=args.graph_meta,
                       max_graph_reads=args.max_graph_reads, lod_chain=args.lod_chain, lod_error=args.lod_error)


def summary_lines(summary) -> list[str]:
    """The run summary for people (stderr)."""
    lines = []
    for layer in summary.layers:
        lines.append(f"layer {layer.layer}: {layer.chunks} chunks ({layer.chunks_skipped} already done), "
                     f"{layer.fragments} meshes of {layer.nodes} nodes, {layer.bytes_written} bytes, "
                     f"{len(layer.failures)} failures, {layer.seconds:.1f} s")
        if layer.layer > 2:
            lines.append(f"  read {layer.bytes_read} bytes of child shards: {layer.shard_reads} from storage, "
                         f"{layer.cache_reads} from the object store; "
                         f"{layer.missing} layer-2 descendants without a mesh; {layer.unstitched} nodes left to "
                         "their children's meshes (over the node limit, or above such a node)")
        if layer.lod_fragments or (layer.layer > 2 and layer.lod_seconds):
            lines.append(f"  LOD chain: {layer.lod_fragments} meshes, {layer.lod_faces} triangles, "
                         f"{layer.lod_bytes} bytes, {layer.lod_seconds:.1f} s of the layer's time")
            if layer.lod_unsimplified:
                lines.append(f"  LOD chain: {layer.lod_unsimplified} meshes kept unsimplified (their checked collapse "
                             "ran out of rounds; within budget, but as big as their inputs)")
        lines.extend(f"  redone: {why}" for why in layer.redone)
    if summary.graph_meta:
        lines.append(summary.graph_meta)
    where = {"RayExecutor": "on Ray", "SerialExecutor": "in this process",
             "serial (small job)": "in this process: a small job is done faster than a local Ray starts; "
             "--executor ray runs it on Ray"}.get(summary.executor, summary.executor)
    lines.append(f"meshes: {summary.mesh_path} ({summary.seconds:.1f} s {where})")
    return lines


def failure_lines(summary) -> list[str]:
    """What failed, and what to do: errors, printed even with --quiet."""
    lines = [f"layer {layer.layer}: failed: {failure}" for layer in summary.layers for failure in layer.failures]
    if summary.not_run:
        lines.append(f"layers {summary.not_run} not run: a layer below had failures. Fix them and rerun the same "
                     "command; it redoes exactly the failed chunks and carries on")
    return lines


def emit_json(args, text: str, out) -> None:
    """Machine output: on stdout with --json or --summary-json -, else into --summary-json FILE."""
    if args.json or args.summary_json == "-":
        out.data(text)
    if args.summary_json and args.summary_json != "-":
        with open(args.summary_json, "w") as f:
            f.write(text)


def cmd_mesh(args) -> int:
    from raymesh.cli import Output
    from raymesh.driver import run

    out = Output(args.quiet)
    if args.repair:
        from raymesh.verify.command import repair

        summary, left = repair(config_from_args(args), args.repair, progress=not args.quiet)
        for why in left:
            out.error(f"not repairable by redoing chunks: {why}")
        if summary is None:
            out.say("repaired: nothing to redo but what the report names outside chunks")
            return 1 if left else 0
    else:
        summary = run(config_from_args(args), progress=not args.quiet)
    out.say(*summary_lines(summary))
    out.error(*failure_lines(summary))
    emit_json(args, summary.to_json(), out)
    return 1 if summary.failed else 0


def cmd_info(args) -> int:
    from raymesh.graph import open_store
    from raymesh.formats.mesh_layout import graphene_info

    from raymesh.cli import Output

    Output().data(json.dumps(graphene_info(open_store(args.graph).meta, args.mesh_dir), indent=2))
    return 0


def cmd_verify(args) -> int:
    from raymesh.verify.command import cmd_verify as run_verify

    return run_verify(args)


COMMANDS = {"mesh": cmd_mesh, "info": cmd_info, "verify": cmd_verify}
