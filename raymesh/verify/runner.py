"""Run the checks over a mesh dir on an executor and gather one report.

The chunk checks are the bulk (one task per chunk, the same executors as meshing, so a dataset
of millions of chunks verifies on a cluster); ``sample`` keeps a fixed, position-hashed fraction
of chunks for a statistical answer on a workstation. Roots are checked on the driver.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import partial

from raymesh.errors import ConfigError

from raymesh.verify.checks import (KINDS, ChunkCheck, Problem, RootCheck, check_chunk, check_dynamic,
                                   check_metadata, check_root)


@dataclass
class LayerTally:
    layer: int
    chunks: int = 0
    expected: int = 0
    fragments: int = 0
    bytes: int = 0
    problems: int = 0


@dataclass
class VerifyReport:
    graph: str
    mesh_path: str
    layers: list[LayerTally] = field(default_factory=list)
    sample: float = 1.0
    roots_checked: int = 0
    roots_interior: int = 0
    roots_closed: int = 0
    dynamic_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    root_fragments: list[int] = field(default_factory=list)  # fragments a viewer loads, per checked root
    chunk_problems: dict[str, int] = field(default_factory=dict)  # "layer/x_y_z" -> problems
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["by_kind"] = self.by_kind()
        d["kinds"] = {k: KINDS[k] for k in self.by_kind()}
        return d


def sampled(layer: int, coords, fraction: float) -> bool:
    """Whether a chunk is in the sample: a fixed hash of its position, so reruns agree."""
    if fraction >= 1:
        return True
    key = f"{layer}/{coords[0]}_{coords[1]}_{coords[2]}".encode()
    return zlib.crc32(key) / 2**32 < fraction


def verify(job, layers: list[int], executor, *, roots: list[int] | None = None, sample: float = 1.0,
           max_roots: int = 200, progress=None) -> VerifyReport:
    """Check ``layers`` of the job's mesh dir; ``roots`` (default: up to ``max_roots`` of the
    graph's current roots, a fixed sample) are checked as a viewer loads them."""
    t0 = time.perf_counter()
    job.resolve_record(must_exist=True)
    report = VerifyReport(graph=job.config.graph, mesh_path=job.mesh_url, sample=sample)
    report.problems += check_metadata(job)
    beyond = [layer for layer in layers if layer > job.record.max_layer]
    if beyond:
        report.problems.append(Problem("metadata", f"layers {beyond} are not recorded as meshed (the mesh dir "
                                       f"holds layers 2..{job.record.max_layer}); their chunks are checked anyway"))
    for layer in layers:
        tally = LayerTally(layer)
        items = [(layer, c) for _, c in job.iter_chunks(layer) if sampled(layer, c, sample)]
        for check in executor.imap_unordered(partial(check_chunk, job), items):
            _add(report, tally, check)
            if progress is not None:
                progress(check)
        report.layers.append(tally)
    from raymesh.export.fragments import ViewerMeshes

    try:
        viewer = ViewerMeshes(job.config.graph, job.config.mesh_dir)
    except ConfigError as exc:  # no complete layer yet: nothing a viewer could load
        report.problems.append(Problem("metadata", str(exc)))
        report.seconds = round(time.perf_counter() - t0, 3)
        return report
    dynamic, report.dynamic_checked = check_dynamic(job, viewer)
    report.problems += dynamic
    if roots is None:
        every = viewer.current_roots()
        roots = sorted(every, key=lambda r: zlib.crc32(str(r).encode()))[:max_roots] if sample < 1 or \
            len(every) > max_roots else every
    for root in roots:
        rc: RootCheck = check_root(job, int(root), viewer)
        report.roots_checked += 1
        report.roots_interior += rc.interior
        report.roots_closed += rc.interior and not rc.open_edges
        report.root_fragments.append(rc.fragments)
        report.problems += rc.problems
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _add(report: VerifyReport, tally: LayerTally, check: ChunkCheck) -> None:
    tally.chunks += 1
    tally.expected += check.expected
    tally.fragments += check.fragments
    tally.bytes += check.bytes
    tally.problems += len(check.problems)
    report.problems += check.problems
    if check.problems:
        report.chunk_problems[f"{check.layer}/{'_'.join(map(str, check.chunk))}"] = len(check.problems)
