"""The fragments a viewer loads for a node, found the way PCG's mesh server finds them.

PCG's verified manifest (``/meshing/api/v1/table/<t>/manifest/<node>:0?verify=1``) starts at the
highest meshed layer (``custom_data['mesh']['max_layer']``), replaces single-child nodes and nodes
without a mesh by their children, and for each node it keeps reads

* ``initial/<layer>/<chunk position>-0.shard`` at a byte range, for nodes that existed when the
  initial meshes were made (created at or before ``initial_ts``);
* ``dynamic/<node>:0:<bbox>`` for nodes an edit made later (what ``raymesh remesh`` writes).

``ViewerMeshes`` answers the same from a graph store and its mesh dir, for ``raymesh view``
(which hands the byte ranges to Neuroglancer) and ``raymesh export`` (which reads and merges them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from raymesh.errors import ConfigError, MeshingError
from raymesh.formats.mesh_layout import DYNAMIC, INITIAL, dynamic_name, shard_key


@dataclass(frozen=True)
class Fragment:
    """Where one node's mesh is: ``key`` below the mesh dir, and for a shard its byte range."""

    node: int
    layer: int
    key: str  # "initial/2/123-0.shard" or "dynamic/<node>:0:<bbox>"
    offset: int | None = None  # byte range in the shard (initial fragments only)
    size: int | None = None

    @property
    def dynamic(self) -> bool:
        return self.offset is None

    def manifest_entry(self) -> str:
        """The fragment as PCG's manifest names it (without the ``~<node>:`` prefix)."""
        if self.dynamic:
            return self.key[len(DYNAMIC) + 1:]
        return f"~{self.key[len(INITIAL) + 1:]}:{self.offset}:{self.size}"


class ViewerMeshes:
    """A graph's meshes as viewers load them (one mesh dir, as recorded in the graph meta)."""

    def __init__(self, graph: str, mesh_dir: str | None = None):
        from raymesh.config import load_config
        from raymesh.graph import open_store
        from raymesh.runs.job import MeshJob

        store = open_store(graph)
        settings = store.meta.mesh_settings()
        mesh_dir = mesh_dir or settings.get("dir") or "graphene_meshes"
        job = MeshJob(load_config(None, graph=graph, mesh_dir=mesh_dir))
        record = job.resolve_record(must_exist=True)
        if record.max_layer < 2:
            raise ConfigError(f"{job.mesh_url} holds no complete layer of meshes yet (its run record has max_layer "
                              f"{record.max_layer}); run `raymesh mesh --graph {graph} --layers 2-N` first")
        self.graph = graph
        self.job = job
        self.store = job.store
        self.meta = job.meta
        self.layout = job.meta.layout
        self.mesh_dir = mesh_dir
        self.bucket = job.bucket
        self.max_layer = int(record.max_layer)
        self.initial_ms = int(round(record.initial_ts * 1000))
        _ = job.grid  # resolve what the job opens lazily now, not in several threads at once

    # ---- ids ------------------------------------------------------------------------------------
    def check_node(self, node: int, *, min_layer: int = 1) -> int:
        """``node`` if it can be a node of this graph (a uint64 whose layer exists), else ConfigError."""
        node = int(node)
        if not 0 < node < 2**64:
            raise ConfigError(f"{node} is not a node id (ids are 1 .. 2**64-1)")
        layer = int(self.layout.get_chunk_layer(node))
        if not min_layer <= layer <= self.layout.n_layers:
            if layer < min_layer:
                raise ConfigError(f"{node} is a layer-{layer} id; a node of layer {min_layer} or above is needed")
            raise ConfigError(f"{node} is not a node of this graph (its layer bits say {layer}; "
                              f"the graph has layers 1..{self.layout.n_layers})")
        return node

    def exists(self, node: int) -> bool:
        """Whether a node of layer 2 or above is in the graph (every such node has children)."""
        return len(self.store.get_children(int(node))) > 0

    # ---- where fragments are --------------------------------------------------------------------
    def is_new(self, nodes: list[int]) -> dict[int, bool]:
        """Nodes created after the initial meshes (their meshes are in ``dynamic/``)."""
        if not nodes:
            return {}
        stamps = self.store.get_node_timestamps(np.array(nodes, dtype=np.uint64))
        return {int(n): int(t) > self.initial_ms for n, t in zip(nodes, stamps)}

    def dynamic_key(self, node: int) -> str:
        return f"{DYNAMIC}/{dynamic_name(self.layout, self.meta.chunk_size, node)}"

    def fragments(self, node: int) -> list[Fragment]:
        """The fragments a viewer loads for ``node`` (PCG's verified manifest), sorted by node."""
        from raymesh.manifest import manifest_nodes

        reader = self.job.fragment_reader()  # fresh per call: shards rewritten since are re-read
        found: dict[int, Fragment | None] = {}
        new: dict[int, bool] = {}

        def locate(n: int) -> Fragment | None:
            if n not in found:
                if n not in new:
                    new.update(self.is_new([n]))
                layer = int(self.layout.get_chunk_layer(n))
                if new[n]:
                    key = self.dynamic_key(n)
                    found[n] = Fragment(n, layer, key) if self.bucket.exists(key) else None
                else:
                    try:
                        where = reader.locate(n)
                    except MeshingError:  # a missing or unsound shard holds no meshes
                        where = None
                    key = shard_key(self.layout, layer, int(self.layout.get_chunk_id(n)))
                    found[n] = Fragment(n, layer, key, where[0], where[1]) if where else None
            return found[n]

        nodes = manifest_nodes(self.store, int(node), self.max_layer, lambda n: locate(int(n)) is not None)
        new.update(self.is_new([n for n in nodes if n not in new]))
        return [f for f in (locate(n) for n in nodes) if f is not None]

    def read(self, fragment: Fragment) -> bytes:
        if fragment.dynamic:
            data = self.bucket.read(fragment.key)
            if data is None:
                raise MeshingError(f"{self.bucket.base}{fragment.key} disappeared while reading it")
            return data
        data = self.bucket.read_range(fragment.key, fragment.offset, fragment.offset + fragment.size)
        if data is None or len(data) != fragment.size:
            raise MeshingError(f"{self.bucket.base}{fragment.key} is truncated (fragment of node {fragment.node})")
        return data

    def size(self, fragment: Fragment) -> int:
        if fragment.size is not None:
            return fragment.size
        from raymesh.storage import local_path

        path = local_path(self.bucket.base)
        if path is not None:
            return os.path.getsize(os.path.join(path, fragment.key))
        return len(self.read(fragment))

    # ---- whole meshes ---------------------------------------------------------------------------
    def mesh(self, node: int) -> "RootMesh":
        """A node's mesh as a viewer shows it: its fragments decoded and merged by position (nm)."""
        from raymesh.formats.draco import decode
        from raymesh.verify.geometry import merged

        node = self.check_node(node, min_layer=2)
        if not self.exists(node):
            raise ConfigError(f"node {node} is not in graph {self.meta.graph_id}")
        frags = self.fragments(node)
        if not frags:
            raise ConfigError(f"node {node} has no mesh in {self.bucket.base} (nothing meshed under it)")
        decoded = [decode(self.read(f)) for f in frags]
        vertices, faces = merged(decoded)
        return RootMesh(node, vertices, faces, len(frags), sum(len(d.vertices) for d in decoded),
                        sum(len(d.faces) for d in decoded))

    # ---- roots ----------------------------------------------------------------------------------
    def a_supervoxel(self, nodes: list[int]) -> list[int]:
        """One supervoxel under each node (first children down to layer 1; 0 for a node without).

        Supervoxels are never replaced by an edit, so a supervoxel's root now is the current root
        of its object: a root is current exactly when it is the root of a supervoxel under it (a
        child's root is not enough: an edit leaves the replaced children pointing at the old root).
        """
        current = np.array(nodes, dtype=np.uint64)
        for _ in range(self.layout.n_layers + 1):
            above = np.flatnonzero((current != 0) & (np.asarray(self.layout.get_chunk_layer(current)) > 1))
            if not len(above):
                break
            kids = self.store.get_children(current[above])
            current[above] = [int(kids[int(n)][0]) if len(kids[int(n)]) else 0 for n in current[above]]
        return [int(c) for c in current]

    def is_current(self, nodes: list[int]) -> list[bool]:
        """Whether each node is a root now (an edit has not replaced it)."""
        svs = self.a_supervoxel(nodes)
        valid = [i for i, sv in enumerate(svs) if sv]
        out = [False] * len(nodes)
        if valid:
            now = self.store.get_roots(np.array([svs[i] for i in valid], dtype=np.uint64), fail_to_zero=True)
            for i, root in zip(valid, now):
                out[i] = int(root) == int(nodes[i])
        return out

    def current_roots(self) -> list[int]:
        """The graph's roots now (roots an edit replaced are left out)."""
        layout, store = self.layout, self.store
        top = layout.n_layers
        roots = []
        for coords in layout.iter_chunk_coords(top):
            nodes = sorted(int(n) for n in store.range_read_chunk(layout.chunk_id(top, *coords), time_stamp=None))
            roots += [n for n, ok in zip(nodes, self.is_current(nodes)) if ok]
        return sorted(roots)

    def largest_roots(self, count: int, limit: int = 1000) -> list[tuple[int, int]]:
        """``(root, fragment bytes)`` of the ``count`` largest current roots (of the first ``limit``)."""
        sized = []
        for root in self.current_roots()[:limit]:
            sized.append((root, sum(self.size(f) for f in self.fragments(root))))
        sized.sort(key=lambda rs: (-rs[1], rs[0]))
        return [rs for rs in sized[:count] if rs[1] > 0]


@dataclass
class RootMesh:
    node: int
    vertices: np.ndarray  # (n, 3) float, nm
    faces: np.ndarray  # (m, 3) int
    fragments: int
    fragment_vertices: int  # before merging by position
    fragment_faces: int


__all__ = ["Fragment", "RootMesh", "ViewerMeshes"]
