"""Meshing subcommands: ``raymesh mesh`` and ``raymesh info``."""

from __future__ import annotations

import json

from raymesh.errors import ConfigError


def parse_layers(text: str) -> list[int]:
    """``2`` -> [2]; ``2-7`` -> [2..7]; ``2,3,4`` -> [2, 3, 4]."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--layers {text!r} is not a layer, a range like 2-7 or a list like 2,3") from exc


def add_commands(sub) -> None:
    p = sub.add_parser("mesh", help="mesh layers of a graph into PCG's sharded format")
    p.add_argument("--graph", help="graph store URL (sqlite:///..., bigtable://...)")
    p.add_argument("--config", help="YAML job config (configs/); flags override it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layer", type=int, help="one layer")
    g.add_argument("--layers", help="a range like 2-7, or a list like 2,3")
    g.add_argument("--max-layer", type=int, help="layers 2..N")
    p.add_argument("--chunk-start", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--chunk-end", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--mip", type=int)
    p.add_argument("--max-error", type=float)
    p.add_argument("--mesh-dir")
    p.add_argument("--time-stamp", type=float, help="POSIX seconds (graph state to mesh)")
    p.add_argument("--dust-threshold", type=int)
    p.add_argument("--memory-budget", help="memory one stitching task may use (default 2GiB)")
    p.add_argument("--max-stitch-bytes", help="most child-fragment bytes one node is stitched from; bigger "
                   "nodes keep no mesh and viewers load their children's (default: from the budget)")
    p.add_argument("--workers", type=int, help="local Ray CPUs")
    p.add_argument("--address", help="Ray address: auto, ray://host:10001")
    p.add_argument("--graph-meta", choices=["auto", "write", "dry-run", "skip"],
                   help="record custom_data['mesh'] in the graph meta (default: write for SQLite, dry-run for Bigtable)")
    p.add_argument("--max-graph-reads", type=int, help="cluster-wide cap on concurrent graph reads (default 32)")
    p.add_argument("--chunks-per-task", type=int, help="chunks one Ray task meshes in a row (default 1)")
    p.add_argument("--highmem-layer", type=int, help="layers from this one up also ask for the big-memory resource")
    p.add_argument("--placement-timeout", type=float,
                   help="seconds to wait for a node that fits a task (autoscaling clusters); default 0")
    p.add_argument("--executor", choices=["auto", "ray", "serial"],
                   help="where chunks run: ray, serial (this process, for debugging), or auto: Ray, except a job "
                   "of under 64 chunks with no --address, which runs in this process (default: auto)")
    p.add_argument("--force", action="store_true", default=None, help="redo chunks already written")
    p.add_argument("--repair", metavar="REPORT",
                   help="redo exactly what a `raymesh verify --json` report names (chunks, edits' fragments, "
                   "metadata), bottom layer first")
    p.add_argument("--summary-json", help="also write the run summary JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from raymesh.verify.command import add_verify_command

    add_verify_command(sub)

    i = sub.add_parser("info", help="print the graphene info a PCG server would serve for the graph")
    i.add_argument("--graph", required=True)
    i.add_argument("--mesh-dir")


def config_from_args(args):
    from raymesh.config import load_config

    layers = None
    if args.layer is not None:
        layers = [args.layer]
    elif args.layers:
        layers = parse_layers(args.layers)
    elif args.max_layer is not None:
        layers = list(range(2, args.max_layer + 1))
    return load_config(args.config, graph=args.graph, layers=layers, chunk_start=args.chunk_start,
                       chunk_end=args.chunk_end, mip=args.mip, max_error=args.max_error,
                       mesh_dir=args.mesh_dir, time_stamp=args.time_stamp,
                       dust_threshold=args.dust_threshold, workers=args.workers, address=args.address,
                       executor=args.executor, force=args.force, memory_budget=args.memory_budget,
                       max_stitch_bytes=args.max_stitch_bytes,
                       chunks_per_task=args.chunks_per_task, highmem_layer=args.highmem_layer,
                       placement_timeout=args.placement_timeout, graph_meta=args.graph_meta,
                       max_graph_reads=args.max_graph_reads)


def cmd_mesh(args) -> int:
    from raymesh.driver import run

    if args.repair:
        from raymesh.verify.command import repair

        summary, left = repair(config_from_args(args), args.repair, progress=not args.quiet)
        for why in left:
            print(f"not repairable by redoing chunks: {why}")
        if summary is None:
            print("repaired: nothing to redo but what the report names outside chunks")
            return 1 if left else 0
    else:
        summary = run(config_from_args(args), progress=not args.quiet)
    for layer in summary.layers:
        print(f"layer {layer.layer}: {layer.chunks} chunks ({layer.chunks_skipped} already done), "
              f"{layer.fragments} meshes of {layer.nodes} nodes, {layer.bytes_written} bytes, "
              f"{len(layer.failures)} failures, {layer.seconds:.1f} s")
        if layer.layer > 2:
            print(f"  read {layer.bytes_read} bytes of child shards: {layer.shard_reads} from storage, "
                  f"{layer.cache_reads} from the object store; "
                  f"{layer.missing} layer-2 descendants without a mesh; {layer.unstitched} nodes left to their "
                  f"children's meshes (over the node limit, or above such a node)")
        for why in layer.redone:
            print(f"  redone: {why}")
        for failure in layer.failures:
            print(f"  failed: {failure}")
    if summary.not_run:
        print(f"layers {summary.not_run} not run: a layer below had failures. Fix them and rerun the same "
              "command; it redoes exactly the failed chunks and carries on")
    print(summary.graph_meta)
    text = summary.to_json()
    print(text)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            f.write(text)
    return 1 if summary.failed else 0


def cmd_info(args) -> int:
    from raymesh.graph import open_store
    from raymesh.mesh_layout import graphene_info

    print(json.dumps(graphene_info(open_store(args.graph).meta, args.mesh_dir), indent=2))
    return 0


def cmd_verify(args) -> int:
    from raymesh.verify.command import cmd_verify as run_verify

    return run_verify(args)


COMMANDS = {"mesh": cmd_mesh, "info": cmd_info, "verify": cmd_verify}
