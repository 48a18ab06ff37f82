"""A graph of the real volume in the Bigtable emulator, meshed on Ray under a read cap of one,
gives the same shards as the same graph in SQLite."""

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.runs.job import MeshJob
from support import all_shards


@pytest.mark.real_data
def test_real_crop_in_bigtable_meshes_like_sqlite_under_a_read_cap(bigtable_emulator, ray_local, real_labels,
                                                                    tmp_path):
    from actors.ray_executor import RayExecutor

    crop = np.asfortranarray(real_labels[128:384, 128:384, 192:320])
    graphs = {kind: build_graph(crop, str(tmp_path / kind), resolution=(8, 8, 40), chunk_size=(64, 64, 64),
                                graph_id="real",
                                store_url="bigtable://raymesh-test/pychunkedgraph/real" if kind == "bigtable" else None)
              for kind in ("sqlite", "bigtable")}
    peaks = []

    class RecordsTheGate(RayExecutor):
        def end_job(self):
            if self._gate is not None:
                peaks.append(self._gate.stats()["peak"])
            super().end_job()

    shards = {}
    for kind, executor in (("sqlite", None), ("bigtable", RecordsTheGate())):
        config = MeshConfig(graph=graphs[kind].store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9,
                            executor="serial" if executor is None else "ray", max_graph_reads=1)
        summary = run(config, executor=executor, progress=False)
        assert all(not s.failures for s in summary.layers)
        shards[kind] = all_shards(MeshJob(config), (2, 3, 4))
    assert shards["sqlite"] == shards["bigtable"]
    assert peaks == [1], "graph reads went through the cluster-wide gate, one at a time"
