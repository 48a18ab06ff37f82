"""The README's demo: a synthetic dataset, its graph, and its meshes, all on this machine."""

from __future__ import annotations

import json

from raymesh.builder import build_graph
from raymesh.synthetic import branching_tubes

DEMO_RESOLUTION = (16.0, 16.0, 40.0)
DEMO_CHUNK = (32, 32, 16)


def run_demo(out: str, workers: int = 2) -> int:
    labels, agg = branching_tubes()
    summary = build_graph(labels, out, resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK, agglomeration=agg,
                          graph_id="demo")
    print(f"graph: {summary.store_url} ({'reused' if summary.already_built else 'built'})")
    print(json.dumps(summary.to_dict()))
    print(f"segmentation: {summary.segmentation}")
    from raymesh.config import MeshConfig
    from raymesh.driver import run

    layers = list(range(2, summary.n_layers + 1))  # layer 2, then stitched up to the root layer
    result = run(MeshConfig(graph=summary.store_url, layers=layers, mip=0, workers=workers))
    for layer in result.layers:
        print(f"layer {layer.layer}: {layer.fragments} meshes in {layer.chunks} chunks "
              f"({layer.chunks_skipped} already done), {len(layer.failures)} failures")
    if result.executor == "serial (small job)":
        print("ran in this process: the demo is a small job, faster without starting Ray "
              "(raymesh mesh --executor ray runs it on Ray)")
    print(f"meshes: {result.mesh_path}")
    print(f"graphene info for CloudVolume: raymesh info --graph {summary.store_url}")
    return 0


__all__ = ["run_demo", "DEMO_RESOLUTION", "DEMO_CHUNK"]
