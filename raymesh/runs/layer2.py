"""The layer-2 kind of chunk task: mesh one chunk's block and write its shard (``raymesh.layer2.mesh``)."""

from __future__ import annotations

from raymesh.runs.summary import ChunkOutput, ChunkStats
from raymesh.formats.sharding import synthesize_shard


class Layer2Chunks:
    """``MeshJob``'s layer-2 task body (a mixin: ``store``, ``grid``, ``bucket`` come from the job)."""

    def _mesh_l2(self, coords, keep_shard: bool) -> ChunkOutput:
        from raymesh.layer2.mesh import mesh_l2_chunk

        result = mesh_l2_chunk(self.store, self.grid, coords, time_stamp=self.time_stamp,
                               max_error=self.config.max_error, dust_threshold=self.config.dust_threshold,
                               simplifier=self.config.simplifier, share=self.run_id)
        data = synthesize_shard(result.fragments, self.sharding(2))
        if result.failures:
            self.record_outcome(2, coords, result.failures)
        self.bucket.write(self.shard_path(2, coords), data)
        if not result.failures:
            self.record_outcome(2, coords, [])
        stats = ChunkStats(2, tuple(coords), nodes=result.n_nodes, fragments=len(result.fragments),
                           bytes_written=len(data), failures=result.failures, shard_bytes=len(data))
        return self._output(stats, data, list(result.fragments), keep_shard)
