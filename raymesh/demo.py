"""The README's demo: a synthetic dataset, its graph, and its meshes, all on this machine."""

from __future__ import annotations

import sys

from raymesh.builder import build_graph
from raymesh.synthetic import branching_tubes

DEMO_RESOLUTION = (16.0, 16.0, 40.0)
DEMO_CHUNK = (32, 32, 16)


def run_demo(out: str, workers: int = 2) -> int:
    """Build the demo dataset into ``out`` and mesh it; a short summary on stderr (as every
    raymesh message). Exit status 0, or 1 if a chunk failed."""
    from raymesh.config import MeshConfig
    from raymesh.driver import run

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    labels, agg = branching_tubes()
    built = build_graph(labels, out, resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK, agglomeration=agg,
                        graph_id="demo")
    how = "reused" if built.already_built else f"built in {built.seconds:.1f} s"
    say(f"graph: {built.store_url} ({built.n_layers} layers, {built.node_counts.get(1, 0)} supervoxels; {how})")
    layers = list(range(2, built.n_layers + 1))  # layer 2, then stitched up to the root layer
    # the LOD chain too (off by default elsewhere), so the demo can be exported as multi-resolution meshes
    result = run(MeshConfig(graph=built.store_url, layers=layers, mip=0, workers=workers, lod_chain=True),
                 progress=False)
    for layer in result.layers:
        chunks = f"{layer.chunks} chunk{'s' if layer.chunks != 1 else ''}"
        if layer.chunks and layer.chunks_skipped == layer.chunks:
            line = f"layer {layer.layer}: {chunks} already done"
        else:
            line = f"layer {layer.layer}: {layer.fragments} meshes in {chunks}"
            if layer.lod_fragments:
                line += f" (and {layer.lod_fragments} simplified, for the LOD chain)"
        say(line + (f", {len(layer.failures)} FAILED" if layer.failures else ""))
    for layer in result.layers:
        for failure in layer.failures:
            say(f"  failed: {failure}")
    where = "in this process" if result.executor.startswith("serial") else "on Ray"
    say(f"meshes: {result.mesh_path} ({result.seconds:.1f} s, {where})")
    say(f"next: raymesh verify --graph {built.store_url} --executor serial")
    return 1 if result.failed else 0


__all__ = ["run_demo", "DEMO_RESOLUTION", "DEMO_CHUNK"]
