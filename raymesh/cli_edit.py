"""Proofreading subcommands: ``raymesh edit``, ``raymesh remesh`` and ``raymesh watch``."""

from __future__ import annotations

import argparse
import json
import sys


def node_id(text: str) -> int:
    """A node or supervoxel id on the command line: a decimal uint64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a node id (a decimal integer)") from None
    if not 0 < value < 2**64:
        raise argparse.ArgumentTypeError(f"{text} is not a node id (ids are 1 .. 2**64-1)")
    return value


def time_stamp(text: str) -> float:
    """POSIX seconds: a finite number within the years datetime can hold."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time (POSIX seconds, e.g. 1700000000)") from None
    if not math.isfinite(value) or not -62135596800 < value < 253402300800:
        raise argparse.ArgumentTypeError(f"{text} is not a time (POSIX seconds between 1970 and 9999)")
    return value


def seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_commands(sub) -> None:
    e = sub.add_parser("edit", help="merge or split supervoxels in a graph, as PCG's edits do",
                       description="Merge two objects (adds an edge between two supervoxels) or split one (removes "
                       "a minimum edge cut between two of its supervoxels), writing new nodes at the edit's time as "
                       "PCG does. The message goes to stderr; --json prints the new roots and nodes on stdout.")
    e.add_argument("kind", choices=["merge", "split"], help="merge two objects, or split one")
    e.add_argument("sv_a", type=node_id, metavar="SV_A", help="a supervoxel id (layer 1)")
    e.add_argument("sv_b", type=node_id, metavar="SV_B", help="another supervoxel id")
    e.add_argument("--graph", required=True, metavar="URL", help="graph store URL (required)")
    e.add_argument("--time-stamp", type=time_stamp, metavar="T",
                   help="POSIX seconds of the edit, after the graph's last change (default: now)")
    e.add_argument("--json", action="store_true", help="print the operation, new roots and new nodes as JSON on stdout")

    r = sub.add_parser("remesh", help="mesh nodes created by edits into <mesh dir>/dynamic/",
                       description="Mesh the nodes edits created (new layer-2 nodes and their new ancestors) with "
                       "the graph's recorded mesh settings, into <mesh dir>/dynamic/, where CloudVolume and the PCG "
                       "server look first. Needs a `raymesh mesh` run that wrote the graph meta.")
    r.add_argument("--graph", required=True, metavar="URL", help="graph store URL (required)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--since", type=time_stamp, metavar="T",
                   help="nodes made after T, POSIX seconds (default: after initial_ts, i.e. every edit so far)")
    g.add_argument("--roots", type=node_id, nargs="+", metavar="ID",
                   help="new nodes under these roots (default: --since's)")
    g.add_argument("--l2", type=node_id, nargs="+", metavar="ID",
                   help="these layer-2 nodes and their new ancestors (default: --since's)")
    _runtime_args(r)
    r.add_argument("--force", action="store_true", help="rewrite fragments already in dynamic/ (default: skip them)")
    r.add_argument("--json", action="store_true", help="print the remesh summary as JSON on stdout")

    w = sub.add_parser("watch", help="follow the edit log and remesh each edit once, as it arrives",
                       description="Poll the graph's edit log and remesh each new edit's nodes once; the place is kept "
                       "in <mesh dir>/raymesh_watch.json, so a restarted watch goes on where it stopped. Ctrl-C "
                       "stops after the edit in progress. One line per edit on stderr.")
    w.add_argument("--graph", required=True, metavar="URL", help="graph store URL (required)")
    w.add_argument("--interval", type=seconds, default=2.0, metavar="SECONDS",
                   help="seconds between polls of the edit log (default: %(default)s)")
    w.add_argument("--once", action="store_true", help="remesh the pending edits and exit (default: keep watching)")
    _runtime_args(w)


def _runtime_args(p) -> None:
    p.add_argument("--workers", type=positive_int, help="CPUs of the local Ray this starts (with --executor ray; "
                   "default: all)")
    p.add_argument("--address", help="Ray cluster for --executor ray: auto, ray://HEAD:10001 or HEAD:6379 "
                   "(default: start a local Ray)")
    p.add_argument("--executor", choices=["ray", "serial"], default="serial",
                   help="serial (in this process: an edit touches a few chunks) or ray (default: %(default)s)")


def remesher_for(graph: str, force: bool = False, executor: str = "serial", workers=None, address=None):
    """A ``Remesher`` with the graph's recorded mesh parameters (custom_data['mesh'])."""
    from raymesh.config import MeshConfig
    from raymesh.graph import open_store
    from raymesh.runs.job import MeshJob
    from raymesh.remesh import Remesher

    settings = open_store(graph).meta.mesh_settings()
    config = MeshConfig(graph=graph, mip=settings.get("mip"), max_error=settings.get("max_error", 40.0),
                        mesh_dir=settings.get("dir", "graphene_meshes"), executor=executor, workers=workers,
                        address=address)
    return Remesher(MeshJob(config), force=force)


def _executor(args):
    if args.executor == "serial":
        return None
    from raymesh.driver import ray_executor

    return ray_executor(args.address, args.workers)


def cmd_edit(args) -> int:
    from raymesh.edits import merge, split
    from raymesh.graph import open_store

    from raymesh.cli import Output

    store = open_store(args.graph)
    result = (merge if args.kind == "merge" else split)(store, args.sv_a, args.sv_b, args.time_stamp)
    out = Output()
    out.say(f"operation {result.operation_id}: {result.kind} {result.supervoxels[0]} {result.supervoxels[1]}: "
            f"roots {result.old_roots} -> {result.new_roots}")
    if args.json:
        out.data(json.dumps({"operation": result.operation_id, "new_roots": result.new_roots,
                             "new_nodes": {str(k): v for k, v in result.new_nodes.items()}}))
    return 0


def _report(summary, prefix: str = "") -> None:
    from raymesh.cli import Output

    out = Output()
    out.say(f"{prefix}remeshed {sum(summary.written.values())} fragments into dynamic/ "
            f"({summary.skipped} already there, {summary.missing} descendants without a mesh, "
            f"{summary.unstitched} nodes left to their children's meshes, "
            f"{len(summary.failures)} failures) in {summary.seconds:.2f} s")
    if summary.lod_written:
        out.say(f"{prefix}and {sum(summary.lod_written.values())} LOD-chain meshes into lod_dynamic/")
    out.error(*(f"  failed: {failure}" for failure in summary.failures))


def cmd_remesh(args) -> int:
    remesher = remesher_for(args.graph, force=args.force, executor=args.executor)
    if args.l2:
        nodes = remesher.nodes_for_l2(args.l2)
    elif args.roots:
        nodes = remesher.new_nodes_under(args.roots, remesher.initial_ms - 1)
    else:
        nodes = remesher.nodes_since(args.since)
    executor = _executor(args)
    try:
        summary = remesher.run(nodes, executor)
    finally:
        if executor is not None:
            executor.shutdown()
    _report(summary)
    if args.json:
        from dataclasses import asdict

        from raymesh.cli import Output

        Output().data(json.dumps(asdict(summary)))
    return 1 if summary.failures else 0


CURSOR = "raymesh_watch.json"


def cmd_watch(args) -> int:
    """Poll the edit log; remesh each edit's new nodes once; remember the last edit remeshed in
    the mesh directory, so a restarted watch goes on where it stopped.

    Ctrl-C (or SIGTERM) sets a flag rather than raising inside a storage or graph call: the edit
    in progress is finished and recorded, then the watch stops."""
    import signal
    import threading

    remesher = remesher_for(args.graph, executor=args.executor)
    bucket = remesher.job.bucket
    raw = bucket.read(CURSOR)
    last = json.loads(raw)["last_operation"] if raw else 0
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor = _executor(args)
    print(f"watching {args.graph} from operation {last + 1} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while not stop.is_set():
            for op in remesher.job.store.operations(after=last):
                summary = remesher.run(remesher.nodes_for_operations([op]), executor)
                _report(summary, prefix=f"operation {op['id']} ({op['kind']}): ")
                last = op["id"]
                bucket.write(CURSOR, json.dumps({"last_operation": last}).encode())
                if stop.is_set():
                    break
            if args.once:
                return 0
            stop.wait(args.interval)
        print(f"stopped after operation {last}", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            executor.shutdown()


COMMANDS = {"edit": cmd_edit, "remesh": cmd_remesh, "watch": cmd_watch}
