"""Remeshing after proofreading edits (pcg-compat.md 8): new nodes meshed into ``dynamic/``.

Initial meshing covers the nodes created before ``initial_ts``; every edit creates new nodes,
whose meshes go unsharded to ``<segmentation>/<mesh dir>/dynamic/<node>:0:<bbox>`` (4.3), which
CloudVolume and the PCG server look in first. Which nodes: those under the objects' current
roots created after a time (or by given edits), found from the graph itself: descending from a
root stops at the first node older than that time, since a node is never newer than its parent.

Layer 2: the chunk is remapped and meshed whole at the chunk's edit time and only the new
nodes' fragments are kept. That is a deliberate step beyond PCG's node-subset remap (6.4): the
overlap attribution and zmesh's simplification sequence are exactly a full chunk's, so a new
fragment closes against its untouched neighbours the way initial fragments do. Layers 3 to
``max_layer``: the new nodes' own ancestors are stitched (7.1 multi-child rule and descent), their
children read from ``dynamic/`` first, then from the initial shards.

Where the mesh dir has a LOD chain (the chunk's ``lod/`` shard exists), a new node of layer 3 and
up also gets its LOD mesh, from its children's (new ones from ``dynamic/`` and ``lod_dynamic/``,
others from ``initial/`` and ``lod/``), into ``lod_dynamic/<node>:0:<bbox>``: the export finds it there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from raymesh.errors import ConfigError, MeshingError
from raymesh.graph.base import GraphError, read_ms, to_datetime
from raymesh.formats.mesh_layout import DYNAMIC, dynamic_name, lod_dynamic_key, lod_key


@dataclass
class RemeshSummary:
    nodes: dict[int, int] = field(default_factory=dict)  # layer -> new nodes considered
    written: dict[int, int] = field(default_factory=dict)  # layer -> fragments written
    lod_written: dict[int, int] = field(default_factory=dict)  # layer -> LOD-chain meshes written
    skipped: int = 0  # fragments already in dynamic/ (a rerun)
    missing: int = 0  # layer-2 descendants without any fragment
    unstitched: int = 0  # nodes over the node limit (or above one): their children stand in
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Remesher:
    """Remeshing for one graph, with the parameters PCG keeps in ``custom_data["mesh"]``."""

    def __init__(self, job, force: bool = False):
        self.job = job
        self.force = force
        settings = job.meta.mesh_settings()
        missing = [k for k in ("max_layer", "mip", "max_error", "dir", "initial_ts") if k not in settings]
        if missing:
            raise ConfigError(f"graph {job.meta.graph_id} has no initial meshes recorded (custom_data['mesh'] lacks "
                              f"{missing}); run `raymesh mesh` with --graph-meta write first")
        self.settings = settings
        # The simplifier the initial meshes were made with (the mesh dir's run record; PCG's
        # zmesh where there is none), so a remeshed node looks like its neighbours.
        self.simplifier = job.resolve_record().simplifier
        self.max_layer = int(settings["max_layer"])
        self.initial_ms = int(round(float(settings["initial_ts"]) * 1000))

    def __reduce__(self):
        return (Remesher, (self.job, self.force))

    # ---- which nodes ---------------------------------------------------------------------------
    def new_nodes_under(self, roots, since_ms: int) -> dict[int, list[int]]:
        """Nodes below ``roots`` created after ``since_ms``."""
        store = self.job.store
        layout = store.layout
        found: dict[int, set[int]] = {}
        frontier = np.unique(np.asarray(roots, dtype=np.uint64))
        while len(frontier):
            ts = store.get_node_timestamps(frontier)
            unknown = frontier[ts == 0]
            if len(unknown):
                raise GraphError(f"unknown node id(s) {unknown[:5].tolist()} in graph {self.job.meta.graph_id}")
            fresh = frontier[ts > since_ms]
            for node in fresh:
                found.setdefault(int(layout.get_chunk_layer(node)), set()).add(int(node))
            kids = store.get_children(fresh) if len(fresh) else {}
            nxt = np.concatenate(list(kids.values()) or [np.empty(0, np.uint64)])
            frontier = np.unique(nxt[layout.get_chunk_layer(nxt) >= 2]) if len(nxt) else nxt
        return {layer: sorted(ids) for layer, ids in sorted(found.items())}

    def nodes_since(self, since: float | None) -> dict[int, list[int]]:
        """Nodes created after ``since`` (POSIX seconds; default ``initial_ts``) under the current
        roots of the supervoxels the logged edits since then touched."""
        since_ms = self.initial_ms - 1 if since is None else read_ms(since)
        if since_ms < self.initial_ms - 1:
            raise ConfigError(f"--since {since_ms / 1000:.3f} is before initial_ts {self.initial_ms / 1000:.3f}: "
                              "nodes older than initial_ts have initial meshes; pass a later time")
        return self.nodes_for_operations([op for op in self.job.store.operations() if op["ms"] > since_ms], since_ms)

    def nodes_for_operations(self, ops: list[dict], since_ms: int | None = None) -> dict[int, list[int]]:
        if not ops:
            return {}
        store = self.job.store
        svs = np.unique(np.concatenate([op["supervoxels"] for op in ops]))
        roots = np.unique(np.asarray(store.get_roots(svs), dtype=np.uint64))
        since_ms = min(op["ms"] for op in ops) - 1 if since_ms is None else since_ms
        return self.new_nodes_under(roots, max(since_ms, self.initial_ms - 1))

    def nodes_for_l2(self, l2_ids) -> dict[int, list[int]]:
        """The given layer-2 nodes and their ancestors created after initial_ts."""
        store = self.job.store
        layout = store.layout
        ids = np.unique(np.asarray(l2_ids, dtype=np.uint64))
        bad = ids[layout.get_chunk_layer(ids) != 2]
        if len(bad):
            raise ConfigError(f"--l2 takes layer-2 node ids; {bad[:5].tolist()} are not")
        ts = store.get_node_timestamps(ids)
        if (ts == 0).any():
            raise GraphError(f"unknown node id(s) {ids[ts == 0][:5].tolist()} in graph {self.job.meta.graph_id}")
        out = {2: ids.tolist()}
        current = ids
        while len(current):
            parents = np.unique(np.asarray(store.get_parents(current, fail_to_zero=True), dtype=np.uint64))
            parents = parents[parents != 0]
            parents = parents[store.get_node_timestamps(parents) >= self.initial_ms] if len(parents) else parents
            for p in parents:
                out.setdefault(int(layout.get_chunk_layer(p)), []).append(int(p))
            current = parents
        return {layer: sorted(set(v)) for layer, v in sorted(out.items())}

    # ---- meshing ---------------------------------------------------------------------------------
    def chunk_groups(self, nodes: dict[int, list[int]]) -> dict[int, list[tuple[int, list[int]]]]:
        """``{layer: [(chunk id, nodes)]}`` for layers 2..max_layer (PCG drops the ones above)."""
        layout = self.job.meta.layout
        out = {}
        for layer, ids in sorted(nodes.items()):
            if layer > self.max_layer:
                continue
            by_chunk: dict[int, list[int]] = {}
            for n in ids:
                by_chunk.setdefault(int(layout.get_chunk_id(n)), []).append(n)
            out[layer] = sorted(by_chunk.items())
        return out

    def key(self, node: int) -> str:
        meta = self.job.meta
        return f"{DYNAMIC}/{dynamic_name(meta.layout, meta.chunk_size, node)}"

    def lod_key(self, node: int) -> str:
        """Where a new node's LOD-chain mesh goes (layer 2: its fragment is its LOD)."""
        meta = self.job.meta
        return lod_dynamic_key(meta.layout, meta.chunk_size, node)

    def mesh_group(self, item: tuple[int, int, list[int]]) -> dict:
        """One chunk's new nodes: mesh (layer 2) or stitch (above), write each to dynamic/."""
        layer, chunk, nodes = item
        job = self.job
        todo = [n for n in nodes if self.force or not job.bucket.exists(self.key(n))]
        out = {"layer": layer, "written": 0, "skipped": len(nodes) - len(todo), "missing": 0, "unstitched": 0,
               "failures": [], "lod_written": 0}
        if layer > 2 and job.bucket.exists(lod_key(job.meta.layout, layer, chunk)):
            self._lod(layer, chunk, [n for n in nodes if self.force or not job.bucket.exists(self.lod_key(n))], out)
        if not todo:
            return out
        fragments = self._l2(chunk, todo) if layer == 2 else self._stitched(layer, chunk, todo, out)
        for node in todo:
            data = fragments.get(node)
            if data is None:
                continue
            job.bucket.write(self.key(node), data)  # whole or not at all (temp file + rename)
            out["written"] += 1
        return out

    def _l2(self, chunk: int, nodes: list[int]) -> dict[int, bytes]:
        from raymesh.layer2.mesh import mesh_l2_chunk

        job = self.job
        store = job.store
        ts = int(store.get_node_timestamps(nodes).max()) + 1  # PCG: newest of the chunk's ids + 1 ms
        coords = job.meta.layout.get_chunk_coordinates(chunk).tolist()
        result = mesh_l2_chunk(store, job.grid, coords, time_stamp=to_datetime(ts / 1000),
                               max_error=float(self.settings["max_error"]), simplifier=self.simplifier)
        return {n: result.fragments[n] for n in nodes if n in result.fragments}

    def _stitched(self, layer: int, chunk: int, nodes: list[int], out: dict) -> dict[int, bytes]:
        from raymesh.stitch import StitchPlan, plan_chunk, stitch_nodes

        job = self.job
        plan = plan_chunk(job.store, layer, chunk, time_stamp=None)
        wanted = [n for n in nodes if n in plan.descendants]  # single-child nodes get no mesh (7.1)
        subset = StitchPlan(layer, chunk, {n: plan.descendants[n] for n in wanted})
        reader = DynamicFirstReader(self, job.fragment_reader())
        reader.preload(d for desc in subset.descendants.values() for d in desc)
        fragments = {}
        for result in stitch_nodes(job.grid, subset, wanted, reader, limit=job.node_limit):
            out["missing"] += result.missing
            if result.unstitched:
                out["unstitched"] += 1
            elif result.failure:
                out["failures"].append(result.failure)
            else:
                fragments[result.node] = result.data
        return fragments

    def _lod(self, layer: int, chunk: int, nodes: list[int], out: dict) -> None:
        """LOD-chain meshes of a chunk's new nodes, into ``lod_dynamic/``."""
        from raymesh.stitch import StitchPlan, plan_chunk

        if not nodes:
            return
        job = self.job
        plan = plan_chunk(job.store, layer, chunk, time_stamp=None)
        subset = StitchPlan(layer, chunk, {n: plan.descendants[n] for n in nodes if n in plan.descendants})
        reader = DynamicFirstReader(self, job.lod_reader(), key=self.lod_key)
        for node in subset.descendants:
            data, _, why = job._lod_node(subset, node, reader)
            if why:
                out["failures"].append(why)
            elif data is not None:
                job.bucket.write(self.lod_key(node), data)
                out["lod_written"] += 1

    def run(self, nodes: dict[int, list[int]], executor=None) -> RemeshSummary:
        """Remesh the given new nodes, layer by layer (each layer reads the one below)."""
        from raymesh.executors import SerialExecutor

        executor = executor or SerialExecutor()
        summary = RemeshSummary(nodes={layer: len(v) for layer, v in nodes.items()})
        t0 = time.perf_counter()
        for layer, groups in self.chunk_groups(nodes).items():
            items = [(layer, chunk, ids) for chunk, ids in groups]
            for res in executor.imap_unordered(self.mesh_group, items):
                summary.written[layer] = summary.written.get(layer, 0) + res["written"]
                summary.skipped += res["skipped"]
                summary.missing += res["missing"]
                summary.unstitched += res["unstitched"]
                summary.failures.extend(res["failures"])
                if res.get("lod_written"):
                    summary.lod_written[layer] = summary.lod_written.get(layer, 0) + res["lod_written"]
        summary.seconds = round(time.perf_counter() - t0, 3)
        return summary


class DynamicFirstReader:
    """Child fragments of new nodes from ``dynamic/``, of initial nodes from the initial shards.

    PCG tries ``dynamic/`` first for every child; only nodes created after ``initial_ts`` can
    have a file there (remeshing writes no others), so the creation times, read in one batch,
    say where to look and spare a storage miss per initial child.
    """

    def __init__(self, remesher: Remesher, initial, key=None):
        self.remesher = remesher
        self.initial = initial
        self.key = key or remesher.key  # where a new node's file is
        self.stats = initial.stats
        self._created: dict[int, int] = {}
        self._pending: dict[int, bytes] = {}

    def preload(self, nodes) -> None:
        ids = sorted({int(n) for n in nodes} - set(self._created))
        if ids:
            self._created.update(zip(ids, self.remesher.job.store.get_node_timestamps(ids).tolist()))

    def _is_new(self, node: int) -> bool:
        self.preload([node])
        return self._created[int(node)] >= self.remesher.initial_ms

    def locate(self, node: int) -> tuple[int, int] | None:
        """``(0, size)`` of a node's fragment, None without one. A new node's file is read here
        (storage has no cheaper way to its size) and kept until ``read`` asks for it."""
        if self._is_new(node):
            # A new node: its mesh is in dynamic/, or not written (yet, or it failed).
            data = self._pending.get(int(node)) or self.remesher.job.bucket.read(self.key(node))
            if data is None:
                return None
            self._pending[int(node)] = data
            return 0, len(data)
        try:
            return self.initial.locate(node)
        except MeshingError:
            return None

    def read(self, node: int, where: tuple[int, int] | None = None) -> bytes | None:
        where = where or self.locate(node)
        if where is None:
            return None
        if self._is_new(node):
            return self._pending.pop(int(node))
        return self.initial.read(node, where)


__all__ = ["Remesher", "RemeshSummary", "DynamicFirstReader"]
