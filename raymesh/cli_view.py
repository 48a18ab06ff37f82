"""Seeing the meshes: ``raymesh view`` (stock Neuroglancer) and ``raymesh export`` (mesh files)."""

from __future__ import annotations

import argparse
import os

from raymesh.cli_edit import node_id, positive_int
from raymesh.errors import ConfigError


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 for any free port, up to 65535)")
    return value


def export_formats() -> list[str]:
    from raymesh.export import FORMATS

    return sorted(FORMATS)


def add_commands(sub) -> None:
    v = sub.add_parser("view", help="serve a graph's meshes to stock Neuroglancer (read-only, on 127.0.0.1)",
                       description="A small read-only web server: the Neuroglancer client (from the neuroglancer "
                       "package), the part of PCG's API that its graphene:// datasource reads, and the "
                       "segmentation folder. Prints a URL that opens the graph with some roots selected.")
    v.add_argument("--graph", required=True, help="graph store URL (sqlite:///..., bigtable://...)")
    v.add_argument("--port", type=port_number, default=0, help="TCP port (default 0: any free port)")
    v.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else is reachable from other machines)")
    v.add_argument("--roots", type=node_id, nargs="+", metavar="ID", help="roots to select (default: the largest)")
    v.add_argument("--top", type=positive_int, default=4,
                   help="without --roots: how many of the largest roots (by fragment bytes) to select (default 4)")
    v.add_argument("--mesh-dir", help="mesh dir below the segmentation (default: the graph's recorded one)")
    v.add_argument("--precomputed", metavar="DIR", help="show this `raymesh export --format precomputed` folder "
                   "(multi-resolution meshes: Neuroglancer picks the level of detail by zoom) instead of the "
                   "graph's graphene meshes (default: graphene)")
    v.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also answer cross-origin requests from this web origin (e.g. another Neuroglancer "
                   "deployment); repeatable")
    v.add_argument("--log-requests", action="store_true", help="print each request to stderr")
    v.add_argument("--open", action="store_true", help="open the URL in the default browser")

    e = sub.add_parser("export", help="write roots' meshes (as a viewer loads them) to mesh files",
                       description="One file per root, <root>.<format>: the root's fragments from PCG's verified "
                       "manifest (initial shards, or dynamic/ after edits) merged by position, in nm.")
    e.add_argument("--graph", required=True, help="graph store URL (sqlite:///..., bigtable://...)")
    which = e.add_mutually_exclusive_group(required=False)
    which.add_argument("--roots", type=node_id, nargs="+", metavar="ID", help="roots (or any nodes of layer >= 2)")
    which.add_argument("--top", type=positive_int, metavar="N", help="the N largest roots (by fragment bytes)")
    e.add_argument("--format", required=True, choices=export_formats(), help="file format")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--mesh-dir", help="mesh dir below the segmentation (default: the graph's recorded one)")
    e.add_argument("--sharded", action="store_true", help="precomputed: one sharded file set keyed by segment id "
                   "(neuroglancer_uint64_sharded_v1) instead of two files per root")
    e.add_argument("--time-stamp", type=float, metavar="T", help="precomputed without --roots: export every root "
                   "of the graph at T, POSIX seconds (default: the time stamp the meshes were made at)")


def cmd_view(args) -> int:
    from raymesh.serve import serve

    for origin in args.allow_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(f"--allow-origin {origin}: an origin is scheme://host[:port], e.g. https://example.org")
    return serve(args.graph, port=args.port, bind=args.bind, mesh_dir=args.mesh_dir, roots=args.roots,
                 top=args.top, allow_origins=args.allow_origin, log_requests=args.log_requests,
                 open_browser=args.open, precomputed=args.precomputed)


def cmd_export(args) -> int:
    from raymesh.export import export_roots

    import sys

    roots = args.roots
    if roots is None and args.top is None and args.format != "precomputed":
        raise ConfigError(f"--format {args.format} needs --roots or --top (only precomputed exports every root)")
    if roots is None and args.top is not None:
        from raymesh.export.fragments import ViewerMeshes

        roots = [root for root, _ in ViewerMeshes(args.graph, args.mesh_dir).largest_roots(args.top)]
    done = export_roots(args.graph, roots, args.format, args.out, mesh_dir=args.mesh_dir, sharded=args.sharded,
                        time_stamp=args.time_stamp)
    for item in done:  # people read these: stderr (stdout stays for machine output)
        if item.lods is not None:
            per_lod = ", ".join(f"LOD {k}: {n} cells {f} faces" for k, (n, f) in
                                enumerate(zip(item.lods["fragments"], item.lods["faces"])))
            print(f"{item.path}: root {item.root}, {item.lods['lods']} LODs ({per_lod})", file=sys.stderr)
            continue
        print(f"{item.path}: root {item.root}, {item.fragments} fragment(s), {item.vertices} vertices, "
              f"{item.faces} faces (nm)", file=sys.stderr)
    if done and done[0].lods is not None:
        print(f"precomputed segmentation (meshes only): {os.path.abspath(args.out)}; in Neuroglancer: "
              f"precomputed://<where it is served>/{os.path.basename(os.path.abspath(args.out))}", file=sys.stderr)
    return 0


COMMANDS = {"view": cmd_view, "export": cmd_export}
