"""Layer 2 end to end against the bare kernel on the same blocks (issue 3).

    python -m benchmarks.l2_rate [--quick] [--repeats 3]

End to end = segmentation read + graph remap + zmesh + Draco + shard write, through the job's task
body in this process (one core), every geometry rule on (caps, seam patches, corner columns).
Kernel = zmesh + Draco on the same already-remapped blocks, no I/O, no graph. The figure is the
ratio of their voxel rates (target >= 0.9), median of repeats. The two are timed in pairs, chunk by
chunk, the order alternating (this machine's speed drifts by 20% within a minute, so two whole
passes one after the other would compare two machines); each repeat's sums are printed. ``breakdown`` splits the end-to-end
time (last repeat) by where it went, each part exclusive of the parts it calls: zmesh
(marching cubes and simplification, the chunk's own and its caps'), Draco encoding, remapping,
segmentation reads, graph reads, caps and patches (their own work beside zmesh), shard write, other.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time


from benchmarks.common import emit, real_labels_or_exit


class Breakdown:
    """Exclusive wall time per part: a wrapped function's time less that of wrapped functions it
    calls (a one-process stack, enough for the serial task body)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []
        self._paused = 0

    @contextlib.contextmanager
    def paused(self):
        """Time nothing inside (the kernel calls the same wrapped functions)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def wrap(self, module, name: str, part: str) -> None:
        import functools
        import inspect

        inner = getattr(module, name)

        def enter() -> None:
            self._stack.append([time.perf_counter(), 0.0])

        def leave() -> None:
            start, children = self._stack.pop()
            spent = time.perf_counter() - start
            self.seconds[part] = self.seconds.get(part, 0.0) + spent - children
            if self._stack:
                self._stack[-1][1] += spent

        def steps(gen):  # a generator's work happens as it is consumed: time each step
            while True:
                enter()
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    leave()
                yield item

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if self._paused:
                return inner(*args, **kwargs)
            enter()
            try:
                result = inner(*args, **kwargs)
            finally:
                leave()
            return steps(result) if inspect.isgenerator(result) else result

        setattr(module, name, timed)


def instrument() -> Breakdown:
    import raymesh.runs.layer2 as layer2_mod
    import raymesh.layer2.mesh as l2
    import raymesh.storage as storage

    b = Breakdown()
    for name, part in (("simplified_meshes", "zmesh"), ("encode", "draco"), ("remap_chunk", "remap"),
                       ("read_l2_block", "segmentation read"), ("fetch_with_upper", "graph reads"),
                       ("fetch_neighbourhoods", "graph reads"), ("cap_meshes", "caps and patches"),
                       ("seam_patches", "caps and patches"), ("corner_patches", "caps and patches"),
                       ("_with_caps", "caps and patches"), ("_with_patches", "caps and patches")):
        b.wrap(l2, name, part)
    b.wrap(layer2_mod, "synthesize_shard", "shard write")
    b.wrap(storage.Bucket, "write", "shard write")
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    labels = real_labels_or_exit("l2_rate", args.quick)
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.runs.job import MeshJob
    from raymesh.layer2.mesh import mesh_block, read_l2_block
    from raymesh.layer2.remap import fetch_neighbourhood, remap_chunk

    with tempfile.TemporaryDirectory() as out:
        g = build_graph(labels, out, resolution=(8, 8, 40), chunk_size=(64, 64, 64))
        config = MeshConfig(graph=g.store_url, mip=0, force=True, executor="serial")
        job = MeshJob(config)
        chunks = [c for _, c in job.iter_chunks(2)]
        grid = job.grid
        blocks = {c: remap_chunk(read_l2_block(job.meta, grid, c), fetch_neighbourhood(job.store, c))
                  for c in chunks}
        voxels = sum(b.size for b in blocks.values())
        e2e, kernel = [], []
        breakdown = instrument()
        for _ in range(args.repeats):
            # Paired, chunk by chunk, in alternating order: this machine's speed drifts by 20%
            # within a minute, so two whole passes one after the other compare two machines.
            breakdown.seconds.clear()
            # A new job each repeat: a job keeps its blocks and graph reads for its own later
            # chunks (layer2.mesh.remap_cache), and a repeat must not find the last one's.
            job = MeshJob(config)
            e2e_s = kernel_s = 0.0
            for i, c in enumerate(chunks):
                for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    if side == 0:
                        job.run_chunk((2, c))
                        e2e_s += time.perf_counter() - t0
                    else:
                        cid = int(grid.layout.chunk_id(2, *c))
                        with breakdown.paused():
                            mesh_block(blocks[c], grid.chunk_offset(cid), grid.resolution, grid.chunk_settings(cid))
                        kernel_s += time.perf_counter() - t0
            e2e.append(e2e_s)
            kernel.append(kernel_s)
            parts = dict(breakdown.seconds)
    e2e_s, kernel_s = statistics.median(e2e), statistics.median(kernel)
    parts["other"] = e2e[-1] - sum(parts.values())
    emit("l2_rate", {
        "end_to_end_seconds": round(e2e_s, 2), "kernel_seconds": round(kernel_s, 2),
        "end_to_end_mvox_per_s": round(voxels / e2e_s / 1e6, 3),
        "kernel_mvox_per_s": round(voxels / kernel_s / 1e6, 3),
        "end_to_end_over_kernel_rate": round(kernel_s / e2e_s, 3),
        "end_to_end_repeats": [round(x, 2) for x in e2e], "kernel_repeats": [round(x, 2) for x in kernel],
        "breakdown_seconds": {k: round(v, 2) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
    }, {"volume": "connectomics.npy.ckl.gz", "shape": list(labels.shape), "chunk_size": [64, 64, 64],
        "mip": 0, "resolution": [8, 8, 40], "chunks": len(chunks), "repeats": args.repeats,
        "quick": args.quick, "workers": 1})


if __name__ == "__main__":
    main()
