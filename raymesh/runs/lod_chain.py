"""The LOD-chain kind of chunk work: after a layer-L chunk is stitched (or found stitched by an
earlier run), its nodes' LOD meshes (``raymesh.lod.geometry``) go into ``lod/<L>/<pos>-0.shard``.

It runs in the same task as the chunk's stitching, on the same plan (no second round of graph
reads), and reads what it needs from storage: layer-2 fragments from ``initial/``, LOD meshes of
layers 3 and up from ``lod/``. Those are simplified layer by layer, so a task's memory does not
grow with the layer the way full-resolution stitching's does, and no node is left out by the
node limit. A chunk is done when both its shards are written whole and it has no failure record;
a run killed between the two redoes only the LOD shard.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from raymesh.errors import MeshingError
from raymesh.formats.mesh_layout import lod_chain_key, lod_key
from raymesh.formats.sharding import ShardError, check_shard
from raymesh.storage import RangeError

if TYPE_CHECKING:
    from raymesh.lod.geometry import LodMesh
    from raymesh.runs.summary import ChunkStats
    from raymesh.stitch import StitchPlan


class LodChunks:
    """``MeshJob``'s LOD-chain work (a mixin: ``store``, ``grid``, ``bucket``, ``sharding``, the
    failure records and ``_plan`` come from the job)."""

    def lod_error(self, layer: int) -> float:
        """The collapse error allowed at ``layer`` (``lod.geometry.lod_step``), nm."""
        from raymesh.lod.geometry import lod_step

        base = self.config.lod_error if self.config.lod_error is not None else self.config.max_error
        return lod_step(base, layer, self.config.lod_growth)

    def lod_path(self, layer: int, coords) -> str:
        layout = self.meta.layout
        return lod_key(layout, layer, int(layout.chunk_id(layer, *coords)))

    def lod_state(self, layer: int, coords) -> str | None:
        """None when the chunk's LOD shard is written whole; else why it must be (re)done."""
        key = self.lod_path(layer, coords)

        def read(start: int, stop: int) -> bytes | None:
            try:
                return self.bucket.read_range(key, start, stop)
            except RangeError:
                return b""

        try:
            count = check_shard(read, self.sharding(layer))
        except ShardError as exc:
            return f"its LOD shard {key} is truncated or corrupt ({exc})"
        return "its LOD shard is not written yet" if count is None else None

    def lod_reader(self, whole_below: int | None = None):
        """Fragments of the LOD chain by node: layer 2 from ``initial/``, higher from ``lod/``.

        ``whole_below``: the shards of that layer's chunks are read whole, once (``preload``), into
        a local scratch file (``SpooledShardReader``: one in memory at a time), and the lower
        layers' fragments by range. A chunk's LOD work needs nearly every fragment of its children's
        shards (a few reads instead of one per fragment) but only the odd fragment of a lower
        layer's (a node whose children skip a layer), and reading those whole held every layer-2
        shard under the root chunk at once (22 MiB of the root task's traced peak on the real
        volume)."""
        from raymesh.stitch import FragmentReader, SpooledShardReader

        layout = self.meta.layout

        def open_shard(layer: int, chunk: int):
            key = lod_chain_key(layout, layer, chunk)
            return lambda start, stop: self.bucket.read_range(key, start, stop)

        if whole_below is not None:
            return SpooledShardReader(layout, self.sharding,
                                      lambda layer, chunk: self.bucket.read(lod_chain_key(layout, layer, chunk)),
                                      lod_chain_key, open_shard,
                                      whole=lambda chunk: int(layout.get_chunk_layer(chunk)) == whole_below)
        return FragmentReader(layout, self.sharding, open_shard, lod_chain_key)

    def lod_chunk(self, layer: int, coords, plan: "StitchPlan | None" = None, stats: "ChunkStats | None" = None
                  ) -> "ChunkStats":
        """Write the chunk's LOD shard (every node of ``plan``, in canonical order) and add what
        happened to ``stats``; failures are recorded on the chunk like stitching's."""
        from raymesh.runs.summary import ChunkStats

        t0 = time.perf_counter()
        stats = stats or ChunkStats(layer, tuple(coords))
        if plan is None:
            from raymesh.stitch import plan_chunk

            plan = plan_chunk(self.store, layer, int(self.meta.layout.chunk_id(layer, *coords)), self.time_stamp)
        reader = self.lod_reader(whole_below=layer - 1)
        try:
            return self._lod_shard(layer, coords, plan, stats, reader, t0)
        finally:
            reader.close()

    def _lod_shard(self, layer: int, coords, plan: "StitchPlan", stats: "ChunkStats", reader, t0: float
                   ) -> "ChunkStats":
        from raymesh.formats.sharding import canonical_order

        try:
            reader.preload(d for descendants in plan.descendants.values() for d in descendants)
        except (MeshingError, ShardError) as exc:  # a shard below missing or unsound: no LOD shard here
            why = f"the LOD inputs of layer {layer} chunk {list(coords)}: {exc}"
            self.record_outcome(layer, coords, stats.failures + [why])
            stats.failures.append(why)
            stats.lod_seconds = time.perf_counter() - t0
            return stats
        builder = self._shard_builder(layer)
        failures: list[str] = []
        try:
            for node in canonical_order(plan.descendants, self.sharding(layer)):
                data, mesh, why = self._lod_node(plan, node, reader)
                if why:
                    failures.append(why)
                elif data is not None:
                    builder.add(node, data)
                    stats.lod_faces += mesh.output_faces
                    stats.lod_unsimplified += int(mesh.unsimplified)
            if failures:
                self.record_outcome(layer, coords, stats.failures + failures)
            stats.lod_fragments = len(builder)
            stats.lod_bytes = self.bucket.write_pieces(self.lod_path(layer, coords), builder.pieces())
        finally:
            builder.close()
        stats.failures += failures
        stats.lod_seconds = time.perf_counter() - t0
        return stats

    def _lod_node(self, plan: "StitchPlan", node: int, reader) -> tuple[bytes | None, "LodMesh | None", str | None]:
        """One node's LOD fragment and mesh, or why it has none."""
        from raymesh.formats.draco import DracoError
        from raymesh.lod.geometry import lod_node
        from raymesh.stitch import ChildFragmentError

        layout = self.meta.layout
        frags = []
        for desc in plan.descendants[node]:
            try:
                data = reader.read(desc)
            except MeshingError as exc:
                return None, None, f"{node}: LOD input of {desc}: {exc}"
            if data is None:
                if layout.get_chunk_layer(desc) > 2:  # a gap in the chain below: never paper over it
                    return None, None, (f"{node}: its descendant {desc} (layer {layout.get_chunk_layer(desc)}) has "
                                        "no LOD mesh; rerun that layer with the LOD chain on")
                continue  # a layer-2 node too small to mesh, as stitching tolerates
            frags.append((desc, data))
        if not frags:
            return None, None, None  # nothing under it was meshed: no LOD either (stitching says so)
        try:
            data, mesh = lod_node(self.grid, plan.chunk_id, frags, self.lod_error(plan.layer))
        except ChildFragmentError as exc:
            self.mark_failed(exc.child, f"the fragment of node {exc.child} did not decode when the LOD of layer "
                             f"{plan.layer} node {node} was made")
            return None, None, f"{node}: the fragment of its descendant {exc.child} does not decode ({exc}); rerun its chunk"
        except DracoError as exc:
            return None, None, f"{node}: its LOD mesh failed ({exc})"
        return data, mesh, None

    def _lod_after(self, stats: "ChunkStats", layer: int, coords, plan: "StitchPlan | None") -> None:
        """The LOD shard of a chunk whose stitching just finished (``plan``: its plan, when at hand)."""
        if layer > 2 and self.config.lod_chain:
            self.lod_chunk(layer, coords, plan, stats)
