"""A built graph folder can be copied or moved: the SQLite graph keeps its segmentation's path
relative to its own folder, and resolves it against the folder it is opened from."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from raymesh.builder import build_graph
from raymesh.cli import main
from raymesh.graph import open_store
from raymesh.formats.mesh_layout import graphene_info

CHUNK = (16, 16, 8)
RES = (16.0, 16.0, 40.0)


@pytest.fixture(scope="module")
def small():
    from raymesh.synthetic import branching_tubes

    return branching_tubes((48, 48, 24), n_objects=3)


def _stored_watersheds(sqlite_path) -> list[str]:
    with sqlite3.connect(str(sqlite_path)) as con:
        rows = con.execute("SELECT value FROM meta ORDER BY ts").fetchall()
    return [json.loads(v)["data_source"]["watershed"] for (v,) in rows]


def test_a_copied_graph_folder_meshes_into_the_copy(small, tmp_path, capsys):
    labels, agg = small
    a, b = tmp_path / "A", tmp_path / "B"
    summary = build_graph(labels, str(a), resolution=RES, chunk_size=CHUNK, agglomeration=agg)
    assert summary.segmentation == f"file://{a}/ws"
    assert _stored_watersheds(a / "graph.sqlite") == ["ws"]  # relative to the graph file's folder

    shutil.copytree(a, b)
    shutil.rmtree(a)
    url = f"sqlite://{b}/graph.sqlite"
    store = open_store(url)
    assert store.meta.segmentation_path == f"file://{b}/ws"
    assert store.raw_meta()["data_source"]["watershed"] == f"file://{b}/ws"
    assert graphene_info(store.meta, None)["data_dir"] == f"file://{b}/ws"

    assert main(["mesh", "--graph", url, "--layers", "2-3", "--executor", "serial", "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mesh_path"] == f"file://{b}/ws/graphene_meshes"
    shards = list((b / "ws" / "graphene_meshes" / "initial").rglob("*.shard"))
    assert {p.parent.name for p in shards} == {"2", "3"}
    assert not a.exists(), "nothing recreated the original folder"
    # The mesh run's new meta cell keeps the path relative too, so the folder stays movable.
    assert _stored_watersheds(b / "graph.sqlite")[-1] == "ws"

    assert main(["info", "--graph", url]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == f"file://{b}/ws"

    # Moved again after meshing: the copy finds its own meshes (nothing left to do).
    c = tmp_path / "C"
    shutil.move(str(b), str(c))
    assert main(["mesh", "--graph", f"sqlite://{c}/graph.sqlite", "--layers", "2-3", "--executor", "serial",
                 "--summary-json", "-"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert all(layer["chunks_skipped"] == layer["chunks"] for layer in summary["layers"])
    assert "(0 already done)" not in err and summary["mesh_path"] == f"file://{c}/ws/graphene_meshes"
    assert not b.exists()

    # A rebuild of the same input into the moved folder is recognised, with the moved path.
    again = build_graph(labels, str(c), resolution=RES, chunk_size=CHUNK, agglomeration=agg)
    assert again.already_built and again.segmentation == f"file://{c}/ws"


def test_graphs_with_absolute_paths_still_open(small, tmp_path):
    """Graphs built before paths were stored relative hold absolute file:// URLs."""
    labels, agg = small
    a = tmp_path / "old"
    build_graph(labels, str(a), resolution=RES, chunk_size=CHUNK, agglomeration=agg)
    with sqlite3.connect(str(a / "graph.sqlite")) as con:
        (ts, value), = con.execute("SELECT ts, value FROM meta").fetchall()
        raw = json.loads(value)
        raw["data_source"]["watershed"] = f"file://{a}/ws"
        con.execute("UPDATE meta SET value = ? WHERE ts = ?", (json.dumps(raw), ts))
    store = open_store(f"sqlite://{a}/graph.sqlite")
    assert store.meta.segmentation_path == f"file://{a}/ws"
    assert store.meta.layer_count == 4

    # Copied, such a graph still reads the original segmentation (the path it recorded).
    b = tmp_path / "old_copy"
    shutil.copytree(a, b)
    assert open_store(f"sqlite://{b}/graph.sqlite").meta.segmentation_path == f"file://{a}/ws"


def test_a_segmentation_outside_the_graph_folder_stays_absolute(small, tmp_path):
    labels, agg = small
    out, elsewhere = tmp_path / "out", tmp_path / "graphs" / "g.sqlite"
    build_graph(labels, str(out), resolution=RES, chunk_size=CHUNK, agglomeration=agg,
                store_url=f"sqlite://{elsewhere}")
    assert _stored_watersheds(elsewhere) == [f"file://{out}/ws"]
    assert open_store(f"sqlite://{elsewhere}").meta.segmentation_path == f"file://{out}/ws"


@pytest.mark.parametrize("stored, expected", [
    ("ws", "file:///data/g/ws"),
    ("sub/ws", "file:///data/g/sub/ws"),
    (".", "file:///data/g"),
    ("file:///elsewhere/ws", "file:///elsewhere/ws"),
    ("gs://bucket/ws", "gs://bucket/ws"),
])
def test_resolve_watershed(stored, expected):
    from raymesh.graph.sqlite import relative_watershed, resolve_watershed

    assert resolve_watershed(stored, "/data/g") == expected
    if stored != "gs://bucket/ws" and not stored.startswith("file://"):
        assert relative_watershed(expected, "/data/g") == stored


@pytest.mark.parametrize("absolute", ["file:///data/graph-other/ws", "file:///data/ws", "gs://b/ws",
                                      "precomputed://gs://b/ws"])
def test_only_paths_inside_the_folder_become_relative(absolute):
    from raymesh.graph.sqlite import relative_watershed

    assert relative_watershed(absolute, "/data/graph") == absolute
