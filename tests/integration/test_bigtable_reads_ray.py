"""Bigtable reads on Ray workers (issue 19): a worker opens one client for all its tasks, a job's
tasks share what they read, the cluster-wide read cap still holds, and the shards are those of
the same graph in SQLite."""

import os

from raymesh.builder import build_graph
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.runs.job import MeshJob
from support import SYNTH_CHUNK, SYNTH_RES, all_shards


def test_workers_keep_one_client_and_reads_stay_capped(bigtable_emulator, ray_local, synthetic, tmp_path):
    from actors.ray_executor import RayExecutor

    labels, agg = synthetic
    graphs = {kind: build_graph(labels, str(tmp_path / kind), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                                agglomeration=agg, graph_id="ray_reads",
                                store_url="bigtable://raymesh-test/pychunkedgraph/ray_reads" if kind == "bigtable" else None)
              for kind in ("sqlite", "bigtable")}
    peaks = []

    class RecordsTheGate(RayExecutor):
        def end_job(self):
            if self._gate is not None:
                peaks.append(self._gate.stats()["peak"])
            super().end_job()

    def client_of(url: str) -> tuple[int, int, int]:
        """In a task (a nested function: Ray ships it by value): the worker's process id, its
        client for ``url`` and the round trips this task made to open the store and read its meta."""
        from raymesh.graph import open_store

        store = open_store(url)
        store.meta
        return os.getpid(), id(store._client), store.round_trips

    executor = RecordsTheGate()
    seen = list(executor.imap_unordered(client_of, [graphs["bigtable"].store_url] * 12))
    clients: dict[int, set[int]] = {}
    for pid, client, _ in seen:
        clients.setdefault(pid, set()).add(client)
    assert all(len(c) == 1 for c in clients.values()), "one client per worker process"
    assert sum(trips for *_, trips in seen) == len(clients), "the meta is read once per worker"

    shards = {}
    for kind in ("sqlite", "bigtable"):
        config = MeshConfig(graph=graphs[kind].store_url, layers=[2, 3, 4], mip=0, time_stamp=2e9,
                            executor="serial" if kind == "sqlite" else "ray", max_graph_reads=1, force=True)
        summary = run(config, executor=executor if kind == "bigtable" else None, progress=False)
        assert all(not s.failures for s in summary.layers)
        shards[kind] = all_shards(MeshJob(config), (2, 3, 4))
    assert shards["sqlite"] == shards["bigtable"] and all(v is not None for v in shards["sqlite"].values())
    assert peaks == [1], "graph reads went through the cluster-wide gate, one at a time"
    profile = executor.profile.summary()
    chunks = profile[2]["chunks"]
    assert chunks == sum(1 for _ in MeshJob(config).iter_chunks(2))
    # Each layer-2 chunk reads its neighbourhood and its upper neighbours'; its worker keeps
    # them for the next chunks, so on average a chunk costs few requests.
    assert 0 < profile[2]["round_trips_per_chunk"] <= 4, profile
    assert profile[2]["graph_read_share"] < 1
