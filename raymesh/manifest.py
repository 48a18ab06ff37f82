"""Which fragments a viewer loads for a root: PCG's manifest (pcg-compat.md 4.4), computed locally.

The PCG server answers this for Neuroglancer and CloudVolume; raymesh needs the same answer to
check its output the way users see it, and a proofreading service can use it without a server.
With ``has_mesh`` it is the verified manifest (``verify=true``): a node without a mesh of its own
(left unstitched over the node limit, or above such a node) is replaced by its children until
meshes are found or layer 2 is reached, which is what makes unstitched nodes safe to leave.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def manifest_nodes(store, root: int, start_layer: int, has_mesh: Callable[[int], bool] | None = None
                   ) -> list[int]:
    """The nodes whose fragments make up ``root`` at ``start_layer`` (4.4 steps 2, 3 and 5)."""
    layout = store.layout
    found, frontier = [], [int(root)]
    while frontier:  # step 2: descend to the start layer
        above = [n for n in frontier if layout.get_chunk_layer(n) > start_layer]
        found += [n for n in frontier if layout.get_chunk_layer(n) <= start_layer]
        frontier = _children(store, above)
    out = []
    while found:
        node = found.pop()
        if layout.get_chunk_layer(node) == 2:
            out.append(node)
            continue
        kids = store.get_children(node)
        if len(kids) == 1:  # step 3: single-child nodes have no mesh; their child stands in
            found.append(int(kids[0]))
        elif has_mesh is not None and not has_mesh(node):  # step 5, verify=true
            found += [int(k) for k in kids]
        else:
            out.append(node)
    return sorted(out)


def _children(store, nodes: list[int]) -> list[int]:
    if not nodes:
        return []
    kids = store.get_children(np.array(nodes, dtype=np.uint64))
    return [int(c) for n in nodes for c in kids[int(n)]]


def shard_has_mesh(job) -> Callable[[int], bool]:
    """``has_mesh`` for a job's initial shards: a key lookup in the minishard index, no value read."""
    reader = job.fragment_reader()
    return lambda node: reader.locate(int(node)) is not None


__all__ = ["manifest_nodes", "shard_has_mesh"]
