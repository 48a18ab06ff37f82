"""The ``raymesh`` command line. Flags follow PCG's meshing_batch.py where they overlap."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _add_build_graph(sub) -> None:
    p = sub.add_parser("build-graph", help="build a ChunkedGraph (segmentation + hierarchy) from labels")
    p.add_argument("--labels", required=True, help="precomputed URL, .npy, .npz or .ckl.gz label volume")
    p.add_argument("--resolution", type=float, nargs=3, required=True, metavar=("RX", "RY", "RZ"))
    p.add_argument("--chunk-size", type=int, nargs=3, required=True, metavar=("CX", "CY", "CZ"))
    p.add_argument("--out", required=True, help="output folder (gets ws/ and graph.sqlite)")
    p.add_argument("--agglomeration", help="JSON {label: object} or two-column .npy/.csv")
    p.add_argument("--store", help="graph store URL (default sqlite://OUT/graph.sqlite)")
    p.add_argument("--mips", type=int, default=1, help="2x2x1 downsampled scales to add (default 1)")
    p.add_argument("--graph-id", help="graph (table) name; default the folder name")


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic demo label volume (.npz) and agglomeration")
    p.add_argument("--out", required=True, help="folder for labels.npz and agglomeration.json")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48))
    p.add_argument("--objects", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic dataset -> graph -> meshes, all local (the README's first command)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--workers", type=int, default=2, help="local Ray CPUs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raymesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build_graph(sub)
    _add_synth(sub)
    _add_demo(sub)
    from raymesh.cli_mesh import add_mesh_commands

    add_mesh_commands(sub)
    from raymesh.cli_edit import add_edit_commands

    add_edit_commands(sub)
    return parser


def cmd_build_graph(args) -> int:
    from raymesh.builder import build_graph
    from raymesh.volume import load_agglomeration, load_labels

    labels = load_labels(args.labels)
    agg = load_agglomeration(args.agglomeration) if args.agglomeration else None
    summary = build_graph(labels, args.out, resolution=args.resolution, chunk_size=args.chunk_size,
                          agglomeration=agg, store_url=args.store, graph_id=args.graph_id,
                          downsample_mips=args.mips)
    verb = "already built" if summary.already_built else f"built in {summary.seconds:.1f} s"
    print(f"graph {verb}: {summary.store_url}")
    for layer, n in summary.node_counts.items():
        print(f"  layer {layer}: {n} nodes")
    print(json.dumps(summary.to_dict()))
    return 0


def cmd_synth(args) -> int:
    import os

    import numpy as np

    from raymesh.synthetic import branching_tubes

    labels, agg = branching_tubes(tuple(args.shape), n_objects=args.objects, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "labels.npz"), labels=labels)
    with open(os.path.join(args.out, "agglomeration.json"), "w") as f:
        json.dump({str(k): v for k, v in agg.items()}, f)
    print(f"wrote {args.out}/labels.npz ({labels.shape}, {len(agg)} labels) and agglomeration.json")
    return 0


def cmd_demo(args) -> int:
    from raymesh.demo import run_demo

    return run_demo(args.out, workers=args.workers)


COMMANDS = {"build-graph": cmd_build_graph, "synth": cmd_synth, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    from raymesh.errors import USER_ERRORS

    parser = build_parser()
    args = parser.parse_args(argv)
    from raymesh.cli_edit import EDIT_COMMANDS
    from raymesh.cli_mesh import MESH_COMMANDS

    handler = {**COMMANDS, **MESH_COMMANDS, **EDIT_COMMANDS}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as exc:
        print(f"raymesh {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
