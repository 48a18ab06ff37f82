"""``raymesh verify`` and ``raymesh mesh --repair``: check a mesh dir, redo what the report names."""

from __future__ import annotations

import json

from raymesh.errors import ConfigError


def add_verify_command(sub) -> None:
    p = sub.add_parser("verify", help="check that a mesh dir is complete and sound (exit 0 only then)",
                       description="Checks every chunk's shard (coverage against the graph, fragments decode on "
                       "their chunk's Draco grid and lie in their chunk, no unmerged seams), roots as a viewer "
                       "loads them (interior objects closed), edits' fragments in dynamic/, and the metadata. "
                       "Exit status 0 only when everything checked holds; 1 with a report naming each problem.")
    p.add_argument("--graph", required=True, help="graph store URL (sqlite:///..., bigtable://...; required)")
    p.add_argument("--mesh-dir", default="graphene_meshes", help="mesh dir below the segmentation (default: %(default)s)")
    p.add_argument("--layers", help="layers to check, e.g. 2-7 (default: 2 up to the highest layer meshed)")
    p.add_argument("--chunk-start", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="first chunk of the first layer checked (with --chunk-end; default: all chunks)")
    p.add_argument("--chunk-end", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="chunk range end, not included (with --chunk-start)")
    p.add_argument("--roots", type=int, nargs="+", metavar="ID",
                   help="roots to check as a viewer loads them (default: up to --max-roots of the graph's roots)")
    p.add_argument("--max-roots", type=int, default=200, help="roots checked when --roots is not given (default: %(default)s)")
    p.add_argument("--sample", type=float, default=1.0,
                   help="fraction of chunks checked, a fixed hash of their position (default: %(default)s, all)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON to FILE, what --repair reads "
                   "(- for stdout; default: none)")
    p.add_argument("--html", metavar="FILE", help="write a report page with plots to FILE (default: none)")
    p.add_argument("--executor", choices=["ray", "serial"], default="ray",
                   help="run chunk checks on Ray or in this process (default: %(default)s)")
    p.add_argument("--workers", type=int, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--address", help="Ray cluster: auto, ray://HEAD:10001 or HEAD:6379; with token authentication "
                   "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (default: start a local Ray)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only the problems found (the exit status says the rest)")


def cmd_verify(args) -> int:
    from raymesh.config import layers_flag as parse_layers
    from raymesh.config import load_config
    from raymesh.driver import make_executor
    from raymesh.runs.job import MeshJob
    from raymesh.verify.report import to_html, to_json
    from raymesh.verify.runner import verify

    if not 0 < args.sample <= 1:
        raise ConfigError(f"--sample {args.sample} must be a fraction in (0, 1]")
    probe = MeshJob(load_config(None, graph=args.graph, mesh_dir=args.mesh_dir))
    record = probe.resolve_record(must_exist=True)
    layers = parse_layers(args.layers) if args.layers else list(range(2, max(2, record.max_layer) + 1))
    config = load_config(None, graph=args.graph, mesh_dir=args.mesh_dir, layers=layers,
                         chunk_start=args.chunk_start, chunk_end=args.chunk_end, executor=args.executor,
                         workers=args.workers, address=args.address)
    job = MeshJob(config)
    job.validate()
    executor = make_executor(config, quiet=args.quiet)
    try:
        report = verify(job, layers, executor, roots=args.roots, sample=args.sample, max_roots=args.max_roots)
    finally:
        executor.shutdown()
    from raymesh.cli import Output

    out = Output(args.quiet)  # people: stderr; the JSON report: stdout with --json -
    if args.json == "-":
        out.data(to_json(report))
    elif args.json:
        with open(args.json, "w") as f:
            f.write(to_json(report))
    if args.html:
        with open(args.html, "w") as f:
            f.write(to_html(report))
    out.say(*(f"layer {t.layer}: {t.chunks} chunks, {t.fragments} fragments of {t.expected} nodes to mesh, "
              f"{t.bytes} bytes, {t.problems} problems" for t in report.layers))
    out.say(f"roots: {report.roots_checked} checked, {report.roots_closed} of {report.roots_interior} interior "
            f"objects closed; {report.dynamic_checked} nodes made by edits checked")
    if report.ok:
        out.say(f"verified: {report.mesh_path} is complete and sound ({report.seconds:.1f} s)")
        return 0
    out.error(*(f"  {kind}: {n}" for kind, n in sorted(report.by_kind().items())))
    out.error(*(f"  problem: {p.kind}: {p.detail}" for p in report.problems[:20]))
    more = f"; all of them in {args.json}" if args.json and args.json != "-" else "; --json FILE lists them all"
    out.error(f"{len(report.problems)} problems{more}. `raymesh mesh --graph {args.graph} --repair REPORT.json` "
              "redoes what the report names")
    return 1


def repair_targets(report: dict) -> tuple[dict[int, set[tuple[int, ...]]], dict[int, list[int]], bool, list[str]]:
    """From a verify report: chunks to redo by layer, edit nodes to remesh by layer, whether the
    metadata needs rewriting, and the problems no redo can fix (named for the operator)."""
    from raymesh.verify.checks import CHUNK_KINDS

    chunks: dict[int, set[tuple[int, ...]]] = {}
    dynamic: dict[int, list[int]] = {}
    metadata, left = False, []
    for p in report.get("problems", []):
        kind = p.get("kind")
        if kind in CHUNK_KINDS and p.get("chunk") is not None:
            chunks.setdefault(int(p["layer"]), set()).add(tuple(int(c) for c in p["chunk"]))
        elif kind == "missing_dynamic":
            dynamic.setdefault(int(p["layer"]), []).append(int(p["node"]))
        elif kind == "metadata":
            metadata = True
        else:
            left.append(f"{kind}: {p.get('detail')}")
    return chunks, dynamic, metadata, left


def repair(config, report_path: str, progress: bool = True):
    """Redo exactly what a verify report names: each named chunk gets a failure record, then a
    plain run over the layers involved (bottom first) redoes those chunks (and only those, with
    any others found unsound); edits' nodes are remeshed; the metadata is rewritten."""
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob

    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the verify report {report_path}: {exc}") from exc
    if not isinstance(report, dict) or "problems" not in report:
        raise ConfigError(f"{report_path} is not a raymesh verify report (no 'problems'); write one with "
                          "`raymesh verify --json FILE`")
    chunks, dynamic, metadata, left = repair_targets(report)
    job = MeshJob(config)
    job.begin()
    for layer, coords in sorted((layer, c) for layer, cs in chunks.items() for c in cs):
        job.record_outcome(layer, coords, [f"named by the verify report {report_path}"])
    summary = None
    if chunks:
        layers = list(range(min(chunks), max(chunks) + 1))
        summary = run(config.model_copy(update={"layers": layers, "chunk_start": None, "chunk_end": None,
                                                 "force": False}), progress=progress)
    if dynamic:
        from raymesh.cli_edit import remesher_for

        remesher_for(config.graph, force=True).run(dynamic)
    if metadata and not chunks:
        job.write_metadata(job.record.max_layer)
    return summary, left
