"""The ``raymesh`` command line. Flags follow PCG's meshing_batch.py where they overlap."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Output:
    """Where a command writes, as Unix tools do: progress and messages for people on stderr (none
    with ``--quiet`` but errors), machine output (JSON) alone on stdout, so ``raymesh ... --json |
    jq`` and ``2>log`` work."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def say(self, *lines: str) -> None:
        """Messages for people: stderr, unless quiet."""
        if not self.quiet:
            for line in lines:
                print(line, file=sys.stderr, flush=True)

    def error(self, *lines: str) -> None:
        """Problems the user must see: stderr, even when quiet."""
        for line in lines:
            print(line, file=sys.stderr, flush=True)

    def data(self, text: str) -> None:
        """Machine output: stdout."""
        print(text, file=sys.stdout, flush=True)


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
    p = sub.add_parser("build-graph", help="build a ChunkedGraph (segmentation + hierarchy) from labels",
                       description="Build a ChunkedGraph from a label volume as PCG's ingest does: the supervoxel "
                       "segmentation into OUT/ws (precomputed) and the hierarchy into a graph store. Rerunning "
                       "on the same input is a no-op. Messages go to stderr; --json prints the summary on stdout.")
    p.add_argument("--labels", required=True, metavar="SRC",
                   help="label volume: a precomputed URL, or a .npy, .npz or .ckl.gz (crackle) file (required)")
    p.add_argument("--resolution", type=float, nargs=3, required=True, metavar=("RX", "RY", "RZ"),
                   help="voxel size in nm at mip 0 (required)")
    p.add_argument("--chunk-size", type=int, nargs=3, required=True, metavar=("CX", "CY", "CZ"),
                   help="layer-2 chunk size in voxels, e.g. 256 256 512 as PCG's datasets (required)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: gets ws/ and graph.sqlite (required)")
    p.add_argument("--agglomeration", metavar="FILE",
                   help="which labels form one object: JSON {label: object} or a two-column .npy/.csv "
                   "(default: each label is its own object)")
    p.add_argument("--store", metavar="URL", help="graph store to write: sqlite:///abs/graph.sqlite or "
                   "bigtable://PROJECT/INSTANCE/TABLE (default: sqlite://OUT/graph.sqlite)")
    p.add_argument("--mips", type=int, default=1, help="2x2x1 downsampled scales to add (default: %(default)s)")
    p.add_argument("--graph-id", help="graph (table) name (default: the --out folder's name)")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON on stdout")


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic demo label volume (.npz) and agglomeration")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for labels.npz and agglomeration.json "
                   "(required)")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"),
                   help="volume size in voxels (default: 96 96 48)")
    p.add_argument("--objects", type=int, default=6, help="branching tubes to draw (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic dataset -> graph -> meshes, all local (the README's first command)",
                       description="Builds a small synthetic dataset of branching tubes, its ChunkedGraph "
                       "(OUT/graph.sqlite, segmentation in OUT/ws) and its meshes, layer 2 up to the root layer. "
                       "Rerunning reuses what is there.")
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="local Ray CPUs, if it runs on Ray (default: %(default)s; the demo is small enough to run "
                   "in this process)")


# Modules that add subcommands: each has ``add_commands(subparsers)`` and ``COMMANDS`` (name ->
# handler). A new group of commands is a new module named here.
COMMAND_MODULES = ("raymesh.cli_mesh", "raymesh.cli_edit", "raymesh.cli_view")


def _command_modules():
    import importlib

    return [importlib.import_module(name) for name in COMMAND_MODULES]


DESCRIPTION = ("Mesh ChunkedGraph (PyChunkedGraph) segmentations on Ray, into the sharded format PCG, CloudVolume "
               "and Neuroglancer read. `raymesh COMMAND -h` explains each command.")


def version() -> str:
    """The installed package's version (its metadata), or the source tree's when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("raymesh")
    except PackageNotFoundError:  # run from a source tree without `pip install`
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="raymesh", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    out = Output()
    verb = "already built" if summary.already_built else f"built in {summary.seconds:.1f} s"
    out.say(f"graph {verb}: {summary.store_url}", *(f"  layer {layer}: {n} nodes"
                                                    for layer, n in summary.node_counts.items()))
    if args.json:
        out.data(json.dumps(summary.to_dict()))
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
    Output().say(f"wrote {args.out}/labels.npz ({labels.shape}, {len(agg)} labels) and agglomeration.json")
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
    except BrokenPipeError:  # `raymesh ... --json | head`: the reader went away; say nothing more
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (*USER_ERRORS, CLIError, *PATH_ERRORS) as exc:
        print(f"raymesh {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
