"""Bad input on the command line: one line naming the problem, exit status 2, never a traceback.

Every command runs in-process through ``raymesh.cli.main`` (serially: no Ray).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymesh.cli import main

BUILD = ["--resolution", "8", "8", "40", "--chunk-size", "8", "8", "4"]
OUT = ["--out", "{root}/new_out"]  # never written: every case is refused first
GOOD = ["build-graph", "--labels", "{root}/labels.npy", *BUILD, *OUT]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny built graph (two objects over 2x2x2 chunks), its supervoxel ids, and bad files."""
    from raymesh.builder import build_graph
    from raymesh.graph import open_store

    root = tmp_path_factory.mktemp("cli_errors")
    labels = np.zeros((16, 16, 8), np.uint32)
    labels[2:14, 3:6, 1:7] = 1  # crosses chunks along x
    labels[2:5, 9:14, 1:7] = 2
    np.save(root / "labels.npy", labels)
    g = build_graph(labels, str(root / "graph"), resolution=(8, 8, 40), chunk_size=(8, 8, 4))
    store = open_store(g.store_url)
    svs = {}
    for coords in store.layout.iter_chunk_coords(2):
        for node, kids in store.range_read_chunk(store.get_chunk_id(layer=2, x=coords[0], y=coords[1],
                                                                    z=coords[2])).items():
            for sv in kids.tolist():
                svs[sv] = int(store.get_roots(sv))
    by_root = {}
    for sv, r in sorted(svs.items()):
        by_root.setdefault(r, []).append(sv)
    (obj_a, obj_b) = list(by_root.values())[:2]
    (root / "text.npy").write_text("hello")
    (root / "text.ckl.gz").write_text("hello")
    (root / "bad.json").write_text("{bad")
    (root / "list.json").write_text("[1, 2]")
    (root / "words.json").write_text('{"a": 1}')
    (root / "bad.csv").write_text("a,b\n")
    (root / "three.csv").write_text("1,2,3\n")
    (root / "not.sqlite").write_text("not a database")
    (root / "backwards.yaml").write_text("layers: 4-2\n")
    (root / "two_layers.yaml").write_text("layers: 3\nmax_layer: 4\n")
    (root / "half_range.yaml").write_text("chunk_start: [0, 0, 0]\n")
    (root / "folder").mkdir()
    (root / "folder" / "readme.txt").write_text("something else")
    np.save(root / "zeros.npy", np.zeros((8, 8, 8), np.uint32))
    np.save(root / "floats.npy", np.ones((8, 8, 8), np.float32))
    np.save(root / "flat.npy", np.ones((8, 8), np.uint32))
    np.save(root / "negative.npy", -np.ones((8, 8, 8), np.int32))
    np.savez(root / "empty.npz")
    import sqlite3

    with sqlite3.connect(str(root / "other.sqlite")) as con:  # some other program's database
        con.execute("CREATE TABLE t (a)")
    with sqlite3.connect(str(root / "odd_meta.sqlite")) as con:  # a meta row that is not a graph meta
        con.execute("CREATE TABLE meta (ts INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES (1, ?)", (json.dumps({"data_source": {"watershed": "graph/ws"}}),))
    return {"root": root, "graph": g.store_url, "same": obj_a, "other": obj_b}


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, out, err, *needles):
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raymesh") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


CASES = [
    # build-graph: labels
    (["build-graph", "--labels", "{root}/missing.npy", *BUILD, *OUT], ["missing.npy", "does not exist"]),
    (["build-graph", "--labels", "{root}/missing", *BUILD, *OUT], ["does not exist"]),
    (["build-graph", "--labels", "{root}/folder", *BUILD, *OUT], ["folder", "info"]),
    (["build-graph", "--labels", "{root}/bad.json", *BUILD, *OUT], ["unknown file type"]),
    (["build-graph", "--labels", "{root}/text.npy", *BUILD, *OUT], ["text.npy", "not a readable"]),
    (["build-graph", "--labels", "{root}/text.ckl.gz", *BUILD, *OUT], ["text.ckl.gz", "not a readable"]),
    (["build-graph", "--labels", "{root}/empty.npz", *BUILD, *OUT], ["holds no arrays"]),
    (["build-graph", "--labels", "{root}/zeros.npy", *BUILD, *OUT], ["no labelled voxels"]),
    (["build-graph", "--labels", "{root}/floats.npy", *BUILD, *OUT], ["integers", "float32"]),
    (["build-graph", "--labels", "{root}/flat.npy", *BUILD, *OUT], ["3-D"]),
    (["build-graph", "--labels", "{root}/negative.npy", *BUILD, *OUT], ["non-negative"]),
    (["build-graph", "--labels", "foo://x", *BUILD, *OUT], ["foo"]),
    # build-graph: agglomeration
    ([*GOOD, "--agglomeration", "{root}/none.json"],
     ["--agglomeration", "does not exist"]),
    ([*GOOD, "--agglomeration", "{root}/bad.json"],
     ["bad.json", "malformed"]),
    ([*GOOD, "--agglomeration", "{root}/list.json"],
     ["list.json", "malformed"]),
    ([*GOOD, "--agglomeration", "{root}/words.json"],
     ["words.json", "malformed"]),
    ([*GOOD, "--agglomeration", "{root}/bad.csv"],
     ["bad.csv", "malformed"]),
    ([*GOOD, "--agglomeration", "{root}/three.csv"],
     ["two columns"]),
    ([*GOOD, "--agglomeration", "{root}/folder"],
     ["is a folder"]),
    # build-graph: output, store, numbers
    (["build-graph", "--labels", "{root}/labels.npy", *BUILD, "--out", "{root}/folder/readme.txt"], ["is a file"]),
    ([*GOOD, "--store", "foo://x"], ["unknown graph store"]),
    ([*GOOD, "--store", "sqlite://{root}/not.sqlite"],
     ["not a raymesh SQLite graph"]),
    ([*GOOD, "--store", "sqlite://{root}/folder"],
     ["is a folder"]),
    ([*GOOD, "--store", "bigtable://a"],
     ["bigtable://PROJECT/INSTANCE/TABLE"]),
    (["build-graph", "--labels", "{root}/labels.npy", "--resolution", "8", "nan", "40", "--chunk-size", "8", "8", "4",
      *OUT], ["resolution"]),
    (["build-graph", "--labels", "{root}/labels.npy", "--resolution", "8", "8", "40", "--chunk-size", "8", "0", "4",
      *OUT], ["chunk size"]),
    ([*GOOD, "--mips", "-1"], ["--mips -1"]),
    ([*GOOD, "--mips", "40"], ["--mips 40"]),
    (["build-graph", "--labels", "{root}/labels.npy", "--resolution", "8", "8", *BUILD[4:], *OUT], ["--resolution"]),
    (["build-graph", "--labels", "{root}/labels.npy", "--resolution", "8", "8", "40", "--chunk-size", "8", "8", "8",
      "--out", "{root}/graph"], ["already holds a different graph"]),
    # synth, demo
    (["synth", "--out", "{root}/folder/readme.txt"], ["is a file"]),
    (["synth", "--out", "{root}/synth", "--shape", "4", "4", "4"], ["too small"]),
    (["synth", "--out", "{root}/synth", "--objects", "0"], ["at least 1 object"]),
    (["synth", "--out", "{root}/synth", "--seed", "-5"], ["seed"]),
    (["demo", "--out", "{root}/demo", "--workers", "0"], ["--workers"]),
    (["demo", "--out", "{root}/folder/readme.txt"], ["is a file"]),
    # graph URLs (info stands for every command that opens --graph)
    (["info", "--graph", "sqlite://{root}/nonexistent.sqlite"], ["no SQLite graph", "build-graph"]),
    (["info", "--graph", "sqlite:///nonexistent"], ["no SQLite graph"]),
    (["info", "--graph", "sqlite://{root}/not.sqlite"], ["not a raymesh SQLite graph"]),
    (["info", "--graph", "sqlite://{root}/graph"], ["is a folder", "graph.sqlite"]),
    (["info", "--graph", "sqlite://{root}/other.sqlite"], ["not a raymesh SQLite graph", "no such table"]),
    (["info", "--graph", "sqlite://{root}/odd_meta.sqlite"], ["unreadable graph meta"]),
    ([*GOOD, "--store", "sqlite://{root}/other.sqlite"], ["not a raymesh SQLite graph"]),
    (["info", "--graph", "sqlite://"], ["names no file"]),
    (["info", "--graph", "foo://x"], ["unknown graph store scheme 'foo'"]),
    (["info", "--graph", "bigtable://a"], ["bigtable://PROJECT/INSTANCE/TABLE"]),
    (["info", "--graph", "bigtable://a/b"], ["bigtable://PROJECT/INSTANCE/TABLE"]),
    (["info", "--graph", "{root}/labels.npy"], ["no scheme"]),
    # mesh
    (["mesh", "--graph", "sqlite:///nonexistent", "--layer", "2", "--executor", "serial"], ["no SQLite graph"]),
    (["mesh", "--graph", "{graph}", "--layers", "x-y", "--executor", "serial"], ["--layers"]),
    (["mesh", "--graph", "{graph}", "--layers", "1", "--executor", "serial"], ["layer"]),
    (["mesh", "--graph", "{graph}", "--layers", "9", "--executor", "serial"], ["do not exist"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--chunk-start", "5", "5", "5", "--chunk-end", "1", "1", "1",
      "--executor", "serial"], ["--chunk-end 1 1 1 must be greater than --chunk-start 5 5 5"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--chunk-start", "5", "5", "5", "--chunk-end", "9", "9", "9",
      "--executor", "serial"], ["chunk range 5 5 5 .. 9 9 9 is outside layer 2", "0 0 0 .. 2 2 2"]),
    # the first hour (issue 22): each message says what is wrong and how to write it instead
    (["mesh", "--graph", "{graph}", "--layers", "4-2"], ["--layers 4-2", "runs backwards", "(2-4)"]),
    (["mesh", "--graph", "{graph}", "--layers", "1-3"], ["--layers 1-3", "layer 1 is the supervoxels", "2-3"]),
    (["mesh", "--graph", "{graph}", "--layers", "3,2"], ["--layers 3,2", "lowest first: 2,3"]),
    (["mesh", "--graph", "{graph}", "--layer", "1"], ["--layer 1", "start at 2"]),
    (["mesh", "--graph", "{graph}", "--max-layer", "1"], ["--max-layer 1", "2 or more"]),
    (["mesh", "--graph", "{graph}", "--chunk-start", "0", "0", "0"], ["--chunk-start needs --chunk-end too"]),
    (["mesh", "--graph", "{graph}", "--chunk-end", "1", "1", "1"], ["--chunk-end needs --chunk-start too"]),
    (["mesh", "--graph", "{graph}", "--config", "{root}/backwards.yaml"], ["'layers: 4-2' in", "backwards.yaml",
                                                                          "runs backwards"]),
    (["mesh", "--graph", "{graph}", "--config", "{root}/two_layers.yaml"], ["give only one of", "'layers: 3'",
                                                                            "'max_layer: 4'"]),
    (["mesh", "--graph", "{graph}", "--config", "{root}/half_range.yaml"], ["chunk_start needs chunk_end too",
                                                                            "half_range.yaml"]),
    (["mesh", "--graph", "{graph}", "--address", "http://127.0.0.1:8265"], ["dashboard", "ray://HEAD:10001"]),
    (["mesh", "--layers", "2"], ["no graph to mesh", "--graph URL"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--mip", "7", "--executor", "serial"], ["mip 7"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--memory-budget", "lots", "--executor", "serial"], ["lots"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--config", "{root}/none.yaml", "--executor", "serial"],
     ["none.yaml"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--config", "{root}/bad.json", "--executor", "serial"],
     ["bad.json"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--time-stamp", "nan", "--mesh-dir", "nan_meshes",
      "--executor", "serial"], ["time stamp nan"]),
    (["mesh", "--layer", "2", "--executor", "serial"], ["graph"]),
    (["mesh", "--graph", "{graph}", "--layer", "2", "--executor", "ray", "--workers", "0"], ["workers"]),
    # edit
    (["edit", "merge", "1", "2", "--graph", "sqlite:///nonexistent"], ["no SQLite graph"]),
    (["edit", "merge", "1", "2", "--graph", "{graph}"], ["not supervoxel"]),
    (["edit", "merge", "abc", "2", "--graph", "{graph}"], ["'abc' is not a node id"]),
    (["edit", "merge", "-5", "2", "--graph", "{graph}"], ["-5 is not a node id"]),
    (["edit", "merge", "2", str(2**70), "--graph", "{graph}"], ["is not a node id"]),
    (["edit", "merge", "{same}", "{same}", "--graph", "{graph}"], ["twice"]),
    (["edit", "merge", str(2**56 + 63), "{same}", "--graph", "{graph}"], ["unknown supervoxel", str(2**56 + 63)]),
    (["edit", "split", "{same}", str(2**56 + 63), "--graph", "{graph}"], ["unknown supervoxel"]),
    (["remesh", "--graph", "{graph}", "--l2", str(2**57 + 63)], ["no initial meshes"]),
    (["edit", "split", "{same}", "{other}", "--graph", "{graph}"], ["different objects"]),
    (["edit", "merge", "{same}", "{other}", "--graph", "{graph}", "--time-stamp", "5"],
     ["not after the graph's last change"]),
    (["edit", "merge", "{same}", "{other}", "--graph", "{graph}", "--time-stamp", "nan"], ["not a time"]),
    (["edit", "merge", "{same}", "{other}", "--graph", "{graph}", "--time-stamp", "1e20"], ["not a time"]),
    (["edit", "fuse", "1", "2", "--graph", "{graph}"], ["invalid choice"]),
    # remesh, watch
    (["remesh", "--graph", "foo://x"], ["unknown graph store"]),
    (["remesh", "--graph", "{graph}"], ["no initial meshes", "raymesh mesh"]),
    (["remesh", "--graph", "{graph}", "--l2", "abc"], ["'abc' is not a node id"]),
    (["remesh", "--graph", "{graph}", "--since", "nan"], ["not a time"]),
    (["remesh", "--graph", "{graph}", "--roots", "1", "--l2", "2"], ["not allowed with"]),
    (["watch", "--graph", "{graph}", "--once"], ["no initial meshes"]),
    (["watch", "--graph", "{graph}", "--once", "--interval", "0"], ["--interval"]),
    (["watch", "--graph", "sqlite:///nonexistent", "--once"], ["no SQLite graph"]),
    # the parser itself
    (["no-such-command"], ["invalid choice"]),
    (["build-graph", "--labels", "{root}/labels.npy"], ["required"]),
]


def _id(i: int, argv: list) -> str:
    return f"{i:02d}-" + "-".join(str(a).strip("-") for a in argv[:2])


@pytest.mark.parametrize("argv, needles", CASES, ids=[_id(i, a) for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2(files, capsys, argv, needles):
    values = {"root": files["root"], "graph": files["graph"], "same": files["same"][0], "other": files["other"][0]}
    code, out, err = _run(capsys, [str(a).format(**values) for a in argv])
    assert_one_line(code, out, err, *needles)


def test_nothing_is_written_for_refused_input(files):
    assert not (files["root"] / "new_out").exists()
    assert not (files["root"] / "synth").exists()
    assert not (files["root"] / "demo").exists()


def test_refused_edits_leave_the_graph_alone(files):
    from raymesh.graph import open_store

    assert open_store(files["graph"]).operations() == []


def test_help_is_not_an_error(capsys):
    assert main(["edit", "-h"]) == 0
    assert "merge" in capsys.readouterr().out


def test_agglomeration_values_must_be_uint64(files, capsys):
    path = files["root"] / "negative.json"
    path.write_text(json.dumps({"1": -3}))
    code, out, err = _run(capsys, ["build-graph", "--labels", files["root"] / "labels.npy", *BUILD,
                                   "--out", files["root"] / "new_out", "--agglomeration", path])
    assert_one_line(code, out, err, "-3")
