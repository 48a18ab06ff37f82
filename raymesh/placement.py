"""How much memory a meshing task asks the scheduler for, and which custom resource (pure logic).

Ray's ``memory=`` and custom resources are admission control: they decide how many tasks share a
node, they do not cap a task (ray-notes.md, "Memory"). So each request is an estimate of the
task's working set, clipped to the job's per-task budget, and the runtime refuses up front a
request no node can satisfy instead of leaving the task pending forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A Ray worker with numpy, zmesh, DracoPy and tensorstore imported, before it does any work.
TASK_BASE_BYTES = 256 * 2**20
# Layer 2 per voxel of the block read with its overlap: the uint64 segmentation, the remapped
# uint64 labels, the connected-component labels of the overlap (uint32) and zmesh's working
# arrays; measured peak on the real volume's 64^3 chunks was about 40 B/voxel.
L2_BYTES_PER_VOXEL = 48
# Stitching per byte of child shards: what a task asks the scheduler for before it has planned
# the chunk (an admission estimate; the plan then splits a chunk that does not fit, see below).
STITCH_BYTES_PER_CHILD_BYTE = 4
# Stitching one node, per byte of its children's Draco fragments: decoded (float64 vertices,
# int32 faces), concatenated, merged and re-encoded. On the real volume's biggest layer-4 and
# layer-5 nodes: 36-51 traced by tracemalloc (numpy), 46-131 by peak RSS, which adds Draco's C++
# decoder and encoder buffers (benchmarks/stitch_memory.py prints it as node_factor).
NODE_BYTES_PER_CHILD_BYTE = 160


@dataclass(frozen=True)
class TaskRequest:
    """What one task asks the scheduler for: bytes of memory, custom resources, and the one CPU
    every Ray task takes by default."""

    memory: int
    resources: dict[str, float] = field(default_factory=dict)
    cpus: float = 1.0

    def bundle(self) -> dict[str, float]:
        """The request as Ray's scheduler and autoscaler write it: ``{"CPU": 1.0, "memory": bytes, ...}``."""
        return {"CPU": float(self.cpus), "memory": float(self.memory),
                **{k: float(v) for k, v in self.resources.items()}}

    def is_bundle(self, bundle: dict[str, float]) -> bool:
        """Whether ``bundle`` (from the autoscaler's state) is this request (Ray drops zero amounts)."""
        mine = {k: v for k, v in self.bundle().items() if v}
        theirs = {k: float(v) for k, v in bundle.items() if v}
        return mine.keys() == theirs.keys() and all(abs(mine[k] - theirs[k]) <= 1e-6 * max(1.0, abs(mine[k]))
                                                     for k in mine)


def l2_request(block_shape, budget: int) -> int:
    """Memory for meshing one layer-2 chunk whose block (with overlap) has ``block_shape``."""
    voxels = int(np.prod([int(v) for v in block_shape]))
    return min(budget, TASK_BASE_BYTES + L2_BYTES_PER_VOXEL * voxels)


MAX_PARTS = 64  # the most tasks one chunk's nodes are split over


def stitch_estimate(child_bytes: int) -> int:
    """Working set of stitching one chunk whose child shards hold ``child_bytes`` (unclipped)."""
    return TASK_BASE_BYTES + STITCH_BYTES_PER_CHILD_BYTE * int(child_bytes)


def stitch_request(child_bytes: int, budget: int) -> int:
    """Memory one stitching task asks for: the estimate, clipped to the per-task budget."""
    return min(budget, stitch_estimate(child_bytes))


def stitch_work(budget: int) -> int:
    """What a task may use for stitching itself: the budget less the worker's own footprint.

    Half of it is for the node being stitched (``node_limit``), half for what a part of a split
    chunk holds until it returns: its finished fragments, about as many bytes as the children it
    stitched (``stitch_parts``).
    """
    return max(0, int(budget) - TASK_BASE_BYTES)


def stitch_parts(stitched_bytes: int, budget: int) -> int:
    """Tasks a chunk's nodes are split over so each part's fragments fit half the work
    (1: no split; ``MAX_PARTS`` at most). ``stitched_bytes``: child fragments of the nodes that
    will be stitched (those under the node limit), known from the minishard indices."""
    half = stitch_work(budget) // 2
    if stitched_bytes <= 0:
        return 1
    if half == 0:
        return MAX_PARTS
    return max(1, min(MAX_PARTS, -(-int(stitched_bytes) // half)))


def node_limit(budget: int, max_stitch_bytes: int | None = None) -> int:
    """Child-fragment bytes above which a node is not stitched into one mesh of its own.

    A node's mesh must be decoded, merged and encoded whole, so its memory is the one cost that
    splitting a chunk over tasks cannot bound. A node over the limit keeps no mesh; readers load
    its children's fragments instead (PCG's manifest with verify=true descends into nodes without
    a mesh). Default: half the work, over ``NODE_BYTES_PER_CHILD_BYTE`` (5.6 MiB of fragments
    at the default 2 GiB budget).
    """
    if max_stitch_bytes is not None:
        return int(max_stitch_bytes)
    return stitch_work(budget) // 2 // NODE_BYTES_PER_CHILD_BYTE


# What a task below ``highmem_layer`` asks of the resource only general nodes carry: a marker, not a
# count. A node that carries one unit runs as many such tasks as its CPUs and memory allow.
GENERAL_UNITS = 0.001


def layer_resources(layer: int, highmem_layer: int | None, highmem_resource: str,
                    general_resource: str | None = None) -> dict[str, float]:
    """Custom resources a task of ``layer`` asks for, on a cluster of two node groups.

    Layers at or above ``highmem_layer`` ask for one unit of the big-memory resource, so they run
    only on the node group that carries it (kuberay/raycluster.yaml: four per node). Layers below it
    ask for a sliver (``GENERAL_UNITS``) of ``general_resource``, which only the general group
    carries: a layer-2 task fits a big-memory node too, and without this an autoscaler adds
    big-memory nodes for small work (issue 23). Without ``highmem_layer`` there is one kind of node
    and nothing is asked for."""
    if highmem_layer is None:
        return {}
    if layer >= highmem_layer:
        return {highmem_resource: 1.0}
    return {general_resource: GENERAL_UNITS} if general_resource else {}


def unsatisfiable(request: TaskRequest, nodes: list[dict[str, float]]) -> str | None:
    """Why no node can run ``request`` (None when one can). ``nodes`` are total resources per
    alive node, as Ray reports them (``memory`` in bytes, ``CPU``, custom resources by name):
    every resource the task asks for, on one node."""
    def fits(node: dict[str, float]) -> bool:
        return (node.get("memory", 0) >= request.memory and node.get("CPU", 0) >= request.cpus
                and all(node.get(name, 0) >= amount for name, amount in request.resources.items()))

    if any(fits(node) for node in nodes):
        return None
    wanted = [name for name in request.resources if not any(node.get(name, 0) for node in nodes)]
    if wanted:
        return f"no node has the custom resource {', '.join(repr(w) for w in wanted)}"
    if not any(node.get("CPU", 0) >= request.cpus for node in nodes):
        return (f"no node offers {request.cpus:g} CPU for tasks (a head started with no CPUs and no worker "
                "node up yet?)")
    biggest = max((node.get("memory", 0) for node in nodes if node.get("CPU", 0) >= request.cpus), default=0)
    return (f"it asks for {request.memory / 2**30:.2f} GiB of memory and the biggest node with a CPU offers "
            f"{biggest / 2**30:.2f} GiB")
