"""The ``raymesh`` command line. Flags follow PCG's meshing_batch.py where they overlap."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem, and where the usage is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} -h`)\n")


# Path errors a user's input causes (a missing file, a folder given for a file, no permission):
# reported as one line like the user errors, wherever they come from.
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML and pydantic messages span several)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    text = str(exc).split(" [tensorstore_spec=", 1)[0]
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or type(exc).__name__


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


# Modules that add subcommands: each has ``add_commands(subparsers)`` and ``COMMANDS`` (name ->
# handler). A new group of commands is a new module named here.
COMMAND_MODULES = ("raymesh.cli_mesh", "raymesh.cli_edit", "raymesh.cli_view")


def _command_modules():
    import importlib

    return [importlib.import_module(name) for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="raymesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build_graph(sub)
    _add_synth(sub)
    _add_demo(sub)
    for module in _command_modules():
        module.add_commands(sub)
    return parser


LABEL_FORMATS = "a precomputed segmentation URL, .npy, .npz or .ckl.gz (crackle) file"


def read_labels(src: str):
    """``--labels``: the volume, or one line saying what is wrong with the file."""
    import os

    from raymesh.volume import SegmentationError, load_labels

    local = src[len("file://"):] if src.startswith("file://") else src
    if "://" not in local and not os.path.exists(local):
        raise CLIError(f"--labels {src} does not exist; --labels takes {LABEL_FORMATS}")
    if "://" not in local and os.path.isdir(local) and not os.path.exists(os.path.join(local, "info")):
        raise CLIError(f"--labels {src} is a folder without a precomputed 'info' file; --labels takes {LABEL_FORMATS}")
    if "://" not in local and os.path.isfile(local) and not local.lower().endswith((".npy", ".npz", ".ckl", ".ckl.gz")):
        raise CLIError(f"--labels {src}: unknown file type; --labels takes {LABEL_FORMATS}")
    try:
        if local.lower().endswith(".npz") and "://" not in local:
            import numpy as np

            with np.load(local) as data:
                if not data.files:
                    raise CLIError(f"--labels {src} holds no arrays; save the volume into it (numpy.savez)")
        labels = load_labels(src)
    except CLIError:
        raise
    except (SegmentationError, *PATH_ERRORS):
        raise
    except Exception as exc:  # numpy, gzip, zipfile and crackle each raise their own types
        raise CLIError(f"--labels {src} is not a readable label volume ({type(exc).__name__}: {one_line(exc)}); "
                       f"--labels takes {LABEL_FORMATS}") from exc
    import numpy as np

    if not isinstance(labels, np.ndarray):
        raise CLIError(f"--labels {src} holds no array (got {type(labels).__name__}); --labels takes {LABEL_FORMATS}")
    return labels


AGGLOMERATION_FORMATS = ("a JSON object {\"label\": object, ...} or a two-column (label, object) .npy or .csv "
                         "of non-negative integers")


def read_agglomeration(path: str) -> dict[int, int]:
    """``--agglomeration``: ``{label: object}``, or one line saying what is wrong with the file."""
    import os

    from raymesh.volume import SegmentationError, load_agglomeration

    if os.path.isdir(path):
        raise CLIError(f"--agglomeration {path} is a folder; it takes {AGGLOMERATION_FORMATS}")
    if not os.path.exists(path):
        raise CLIError(f"--agglomeration {path} does not exist; it takes {AGGLOMERATION_FORMATS}")
    try:
        agg = load_agglomeration(path)
    except SegmentationError:
        raise
    except Exception as exc:  # json, numpy: malformed content
        raise CLIError(f"--agglomeration {path} is malformed ({type(exc).__name__}: {one_line(exc)}); "
                       f"it takes {AGGLOMERATION_FORMATS}") from exc
    bad = [(k, v) for k, v in agg.items() if not (0 <= k < 2**64 and 0 <= v < 2**64)]
    if bad:
        raise CLIError(f"--agglomeration {path} maps {bad[0][0]} -> {bad[0][1]}: labels and objects must be "
                       "integers from 0 to 2**64-1")
    return agg


def cmd_build_graph(args) -> int:
    from raymesh.builder import build_graph

    labels = read_labels(args.labels)
    agg = read_agglomeration(args.agglomeration) if args.agglomeration else None
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

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a file, not a folder; choose a folder for labels.npz")
    try:
        labels, agg = branching_tubes(tuple(args.shape), n_objects=args.objects, seed=args.seed)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "labels.npz"), labels=labels)
    with open(os.path.join(args.out, "agglomeration.json"), "w") as f:
        json.dump({str(k): v for k, v in agg.items()}, f)
    print(f"wrote {args.out}/labels.npz ({labels.shape}, {len(agg)} labels) and agglomeration.json")
    return 0


def cmd_demo(args) -> int:
    from raymesh.demo import run_demo

    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: the demo needs at least 1 local Ray CPU")
    return run_demo(args.out, workers=args.workers)


COMMANDS = {"build-graph": cmd_build_graph, "synth": cmd_synth, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    from raymesh.errors import USER_ERRORS

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (already printed, one line) or -h
        return exc.code if isinstance(exc.code, int) else 2
    handlers = dict(COMMANDS)
    for module in _command_modules():
        handlers.update(module.COMMANDS)
    handler = handlers[args.command]
    try:
        return handler(args)
    except (*USER_ERRORS, CLIError, *PATH_ERRORS) as exc:
        print(f"raymesh {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
