"""A graph of the real volume in the Bigtable emulator, meshed on Ray under a read cap of one,
gives the same shards as the same graph in SQLite."""

import pytest

from raymesh.builder import build_graph
from raymesh.driver import run
from raymesh.runs.job import MeshJob
from real_crop import CROP_T0
from support import all_shards


@pytest.mark.real_data
def test_real_crop_in_bigtable_meshes_like_sqlite_under_a_read_cap(bigtable_emulator, ray_local, real_crop_meshed,
                                                                    tmp_path):
    """The session's real crop (SQLite, meshed on Ray) built again into the emulator and meshed
    through the cluster-wide read gate at one read at a time: the same shards."""
    from actors.ray_executor import RayExecutor

    sqlite = real_crop_meshed.config
    g = build_graph(real_crop_meshed.labels, str(tmp_path), resolution=(8, 8, 40),
                    chunk_size=(64, 64, 64), graph_id="real", time_stamp=CROP_T0,
                    store_url="bigtable://raymesh-test/pychunkedgraph/real")
    peaks = []

    class RecordsTheGate(RayExecutor):
        def end_job(self):
            if self._gate is not None:
                peaks.append(self._gate.stats()["peak"])
            super().end_job()

    config = sqlite.model_copy(update={"graph": g.store_url, "max_graph_reads": 1})
    summary = run(config, executor=RecordsTheGate(), progress=False)
    assert all(not s.failures for s in summary.layers)
    assert all_shards(MeshJob(sqlite), (2, 3, 4)) == all_shards(MeshJob(config), (2, 3, 4))
    assert peaks == [1], "graph reads went through the cluster-wide gate, one at a time"
