"""Edits (merge, split) and remeshing into dynamic/, serially on the synthetic graph."""

import datetime as dt
import json
import os

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.cli import main as cli
from raymesh.cli_edit import remesher_for
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.edits import EditError, merge, split
from raymesh.errors import ConfigError
from raymesh.graph import GraphError, open_store
from raymesh.runs.job import MeshJob
from raymesh.volume import read_block
from readback import cloudvolume_reader
from stitch_checks import assert_stitched_like_layer2, closed_interior_objects, prefetch
from support import SYNTH_CHUNK, SYNTH_RES, file_tree

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
MESHED = T0 + dt.timedelta(seconds=30)


def _minutes(n: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


@pytest.fixture
def meshed(synthetic, tmp_path):
    """A fresh synthetic graph, meshed through layer 4 with custom_data['mesh'] recorded."""
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                    time_stamp=T0)
    config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], mip=0, executor="serial", time_stamp=MESHED.timestamp())
    run(config, progress=False)
    store = open_store(g.store_url)
    meta = store.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    return MeshJob(config), store, sv


def _objects(store, sv):
    svs = np.unique(sv[sv > 0])
    roots = np.asarray(store.get_roots(svs))
    return svs, roots


def _partition(svs, roots):
    groups = {}
    for s, r in zip(svs.tolist(), roots.tolist()):
        groups.setdefault(r, []).append(s)
    return sorted(groups.values())


def test_merge_then_split_answers_as_of_each_time(meshed):
    job, store, sv = meshed
    svs, roots = _objects(store, sv)
    first, second = np.unique(roots)[:2]
    a, b = int(svs[roots == first][0]), int(svs[roots == second][0])
    m = merge(store, a, b, _minutes(1))
    assert m.old_roots == sorted([int(first), int(second)]) and len(m.new_roots) == 1
    assert m.new_nodes[2], "the edited layer-2 nodes are new (their cross edges changed)"
    after = np.asarray(store.get_roots(svs))
    assert set(after[np.isin(roots, [first, second])].tolist()) == set(m.new_roots)
    untouched = ~np.isin(roots, [first, second])
    assert np.array_equal(after[untouched], roots[untouched]), "other objects keep their nodes"
    assert np.array_equal(np.asarray(store.get_roots(svs, time_stamp=_minutes(1) - dt.timedelta(seconds=1))), roots)
    s = split(store, a, b, _minutes(2))
    assert len(s.new_roots) == 2 and s.old_roots == m.new_roots
    assert _partition(svs, np.asarray(store.get_roots(svs))) == _partition(svs, roots)
    assert [op["kind"] for op in store.operations()] == ["merge", "split"]
    assert len(store.operations()[-1]["removed"]) >= 1


def test_split_inside_an_object_cuts_it_in_two(meshed):
    job, store, sv = meshed
    svs, roots = _objects(store, sv)
    sizes = {r: int((roots == r).sum()) for r in np.unique(roots)}
    big = max(sizes, key=sizes.get)
    members = svs[roots == big]
    a, b = int(members[0]), int(members[-1])
    result = split(store, a, b, _minutes(1))
    new = np.asarray(store.get_roots(np.array([a, b], np.uint64)))
    assert new[0] != new[1] and set(new.tolist()) <= set(result.new_roots)
    after = np.asarray(store.get_roots(members))
    assert set(after.tolist()) == set(result.new_roots) and len(result.new_roots) >= 2


def test_bad_edits_are_clear_errors(meshed):
    job, store, sv = meshed
    svs, roots = _objects(store, sv)
    one = svs[roots == roots[0]]
    other = svs[roots != roots[0]][0]
    with pytest.raises(EditError, match="already one object"):
        merge(store, int(one[0]), int(one[1]), _minutes(1))
    with pytest.raises(EditError, match="different objects"):
        split(store, int(one[0]), int(other), _minutes(1))
    with pytest.raises(EditError, match="unknown supervoxel"):
        merge(store, int(one[0]) + 100_000, int(other), _minutes(1))
    with pytest.raises(EditError, match="not supervoxel"):
        merge(store, int(store.get_parents(int(one[0]))), int(other), _minutes(1))
    with pytest.raises(EditError, match="not after the graph's last change"):
        merge(store, int(one[0]), int(other), T0 - dt.timedelta(days=1))
    assert store.operations() == [], "nothing was written by a refused edit"


def test_remesh_writes_only_new_nodes_and_viewers_see_closed_objects(meshed):
    job, store, sv = meshed
    mesh_root = job.bucket.base.removeprefix("file://")
    initial_before = file_tree(os.path.join(mesh_root, "initial"))
    svs, roots = _objects(store, sv)
    first, second = np.unique(roots)[:2]
    merge(store, int(svs[roots == first][0]), int(svs[roots == second][0]), _minutes(1))
    big = max(set(np.asarray(store.get_roots(svs)).tolist()), key=lambda r: (np.asarray(store.get_roots(svs)) == r).sum())
    members = svs[np.asarray(store.get_roots(svs)) == big]
    split(store, int(members[0]), int(members[-1]), _minutes(2))

    remesher = remesher_for(store.url)
    nodes = remesher.nodes_since(None)
    summary = remesher.run(nodes)
    assert not summary.failures and summary.missing == 0
    dynamic = file_tree(os.path.join(mesh_root, "dynamic"))
    written = {int(name.split(":")[0]) for name in dynamic}
    meshable = {n for layer, ids in nodes.items() for n in ids if layer == 2 or len(store.get_children(n)) > 1}
    assert written == meshable, "exactly the new nodes that get meshes"
    assert file_tree(os.path.join(mesh_root, "initial")) == initial_before, "untouched meshes are not rewritten"
    created = store.get_node_timestamps(sorted(written))
    assert np.all(created >= remesher.initial_ms)

    read = cloudvolume_reader(store)  # dynamic/ first, then the initial shards, as CloudVolume reads
    now = np.asarray(store.get_roots(svs))
    prefetch(job, sorted(set(now.tolist())), (2, 3, 4), read)
    for root in sorted(set(now.tolist())):
        assert_stitched_like_layer2(job, root, (3, 4), read)
    closed, inside = closed_interior_objects(job, sv, read, 4)
    # One stays open: the split leaves an untouched lower-neighbour node whose initial mesh still
    # covers, in its overlap, voxels now of another object (its id did not change, so nothing
    # remeshes it; PCG's remeshing has the same gap). The real-crop edits close everything.
    assert inside and closed >= inside - 1, f"{closed} of {inside} interior objects closed"

    again = remesher.run(remesher.nodes_since(None))
    assert sum(again.written.values()) == 0 and again.skipped == len(written), "a rerun resumes"


def test_interrupted_remesh_reruns_to_the_samefile_tree(meshed):
    job, store, sv = meshed
    svs, roots = _objects(store, sv)
    first, second = np.unique(roots)[:2]
    merge(store, int(svs[roots == first][0]), int(svs[roots == second][0]), _minutes(1))
    remesher = remesher_for(store.url)
    nodes = remesher.nodes_since(None)
    remesher.run({2: nodes[2]})  # "killed" after layer 2
    dyn = os.path.join(job.bucket.base.removeprefix("file://"), "dynamic")
    assert not any(name.startswith(".") for name in os.listdir(dyn)), "no temporary files left"
    remesher.run(nodes)
    resumed = file_tree(dyn)
    forced = remesher_for(store.url, force=True)
    forced.run(nodes)
    assert file_tree(dyn) == resumed


def test_remesh_bad_input(meshed):
    job, store, sv = meshed
    remesher = remesher_for(store.url)
    with pytest.raises(ConfigError, match="before initial_ts"):
        remesher.nodes_since(T0.timestamp())
    with pytest.raises(GraphError, match="unknown node"):
        remesher.new_nodes_under([int(store.layout.chunk_id(4, 0, 0, 0)) | 999], remesher.initial_ms - 1)
    with pytest.raises(ConfigError, match="layer-2 node ids"):
        remesher.nodes_for_l2([int(store.layout.chunk_id(3, 0, 0, 0)) | 1])
    bare = build_graph(np.ones((8, 8, 8), np.uint32), str(os.path.dirname(job.bucket.base.removeprefix("file://")))
                       + "_bare", resolution=SYNTH_RES, chunk_size=(8, 8, 8))
    with pytest.raises(ConfigError, match="has no initial meshes recorded"):
        remesher_for(bare.store_url)


def test_cli_edit_and_watch_remesh_each_edit_once(meshed, capsys):
    job, store, sv = meshed
    svs, roots = _objects(store, sv)
    first, second = np.unique(roots)[:2]
    a, b = int(svs[roots == first][0]), int(svs[roots == second][0])
    assert cli(["edit", "merge", str(a), str(b), "--graph", store.url, "--time-stamp", str(_minutes(1).timestamp()),
                "--json"]) == 0
    edit = capsys.readouterr()
    assert json.loads(edit.out)["operation"] == 1, "--json: the machine output alone on stdout"
    assert "operation 1: merge" in edit.err, "the message for people on stderr"
    assert cli(["watch", "--graph", store.url, "--once"]) == 0
    out = capsys.readouterr().err
    assert "operation 1 (merge): remeshed" in out
    cursor = json.loads(job.bucket.read("raymesh_watch.json"))
    assert cursor == {"last_operation": 1}
    assert cli(["watch", "--graph", store.url, "--once"]) == 0
    assert "operation 1" not in capsys.readouterr().err.split("(Ctrl-C stops)")[1], "never twice"
    assert cli(["edit", "split", str(a), str(b), "--graph", store.url, "--time-stamp", str(_minutes(2).timestamp())]) == 0
    assert cli(["watch", "--graph", store.url, "--once"]) == 0
    assert "operation 2 (split): remeshed" in capsys.readouterr().err
    assert cli(["edit", "merge", str(a), str(a), "--graph", store.url]) == 2
    assert "two different supervoxels" in capsys.readouterr().err


def test_watch_stops_cleanly_on_ctrl_c(meshed):
    import signal
    import subprocess
    import sys
    import time

    job, store, sv = meshed
    proc = subprocess.Popen([sys.executable, "-m", "raymesh.cli", "watch", "--graph", store.url, "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert "watching" in first, first + proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped after operation 0" in err and out == ""


def test_min_cut_only_cuts_inside_the_split_region():
    from raymesh.edits import _min_cut_keep

    ids = np.array([1, 2, 3, 4], np.uint64)
    ring = np.array([[1, 2], [2, 3], [3, 4], [1, 4]], np.uint64)
    keep = _min_cut_keep(ids, ring, np.ones(4, bool), 1, 3)
    assert (~keep).sum() == 2, "a ring is cut twice"
    keep = _min_cut_keep(ids, ring, np.array([True, False, True, False]), 1, 3)
    assert ring[~keep].tolist() == [[1, 2], [3, 4]], "only the cuttable edges are cut"
    with pytest.raises(EditError, match="connected outside the split region"):
        _min_cut_keep(ids, ring, np.array([True, True, False, False]), 1, 3)
