"""``raymesh export``: each root's mesh as a viewer loads it, written by trimesh, read back by trimesh
with the vertex and face counts (and positions) of the merged fragments, for every format."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raymesh.formats.draco import decode
from raymesh.export import FORMATS, MULTI_RESOLUTION, ViewerMeshes, export_roots
from raymesh.verify.geometry import merged
from support import meshed_with_a_merge


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    return meshed_with_a_merge(synthetic, tmp_path_factory.mktemp("export_graph"))


def expected(meshes: ViewerMeshes, root: int):
    """The merged fragments, computed here from the manifest's fragments (not through export)."""
    frags = meshes.fragments(root)
    vertices, faces = merged([decode(meshes.read(f)) for f in frags])
    return vertices, faces, frags


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - set(MULTI_RESOLUTION)))  # precomputed: test_lod_chain.py
def test_every_format_round_trips_through_trimesh(graph, tmp_path, fmt):
    import trimesh

    meshes = ViewerMeshes(graph)
    roots = meshes.current_roots()
    edited = [r for r in roots if any(f.dynamic for f in meshes.fragments(r))]
    assert edited, "the merged root's mesh comes from dynamic/"
    chosen = [edited[0]] + [r for r in roots if r != edited[0]][:2]
    done = export_roots(graph, chosen, fmt, str(tmp_path))
    assert [d.root for d in done] == chosen
    assert sorted(os.listdir(tmp_path)) == sorted(f"{r}.{fmt}" for r in chosen)
    for item in done:
        vertices, faces, frags = expected(meshes, item.root)
        assert (item.vertices, item.faces, item.fragments) == (len(vertices), len(faces), len(frags))
        back = trimesh.load(item.path, process=False, force="mesh")
        if fmt == "stl":  # STL keeps no shared vertices: three corners per face, merged on reading
            back.merge_vertices(merge_tex=True, merge_norm=True)
        assert (len(back.vertices), len(back.faces)) == (len(vertices), len(faces)), fmt
        # the same positions, in nm (float32 in every format)
        got = np.unique(np.round(np.asarray(back.vertices, dtype=np.float64), 2), axis=0)
        want = np.unique(np.round(vertices.astype(np.float32).astype(np.float64), 2), axis=0)
        np.testing.assert_allclose(got, want, atol=0.02)
        # the same triangles, by position
        tri_got = np.sort(np.round(back.vertices[back.faces], 2).reshape(len(back.faces), -1), axis=0)
        tri_want = np.sort(np.round(vertices.astype(np.float32)[faces].astype(np.float64), 2).reshape(len(faces), -1),
                           axis=0)
        np.testing.assert_allclose(tri_got, tri_want, atol=0.02)


def test_export_command(graph, tmp_path, capsys):
    from raymesh.cli import main

    meshes = ViewerMeshes(graph)
    root = meshes.current_roots()[0]
    out = tmp_path / "out"
    assert main(["export", "--graph", graph, "--roots", str(root), "--format", "ply", "--out", str(out)]) == 0
    assert (out / f"{root}.ply").is_file() and str(root) in capsys.readouterr().err
    # --top N: the N largest roots
    assert main(["export", "--graph", graph, "--top", "2", "--format", "obj", "--out", str(tmp_path / "top")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == \
        sorted(f"{r}.obj" for r, _ in meshes.largest_roots(2))
    # user errors: one line, exit 2, nothing written
    bad_out = tmp_path / "bad"
    for argv in (["--roots", "123"], ["--roots", str(root + 1000)], ["--roots", str(root), "--format", "fbx"]):
        args = ["export", "--graph", graph, "--format", "obj", "--out", str(bad_out)] + argv
        assert main(args) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
    assert not bad_out.exists()
    (tmp_path / "file").write_text("x")
    assert main(["export", "--graph", graph, "--roots", str(root), "--format", "obj", "--out",
                 str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_precomputed_export_command_and_its_errors(graph, tmp_path, capsys):
    from raymesh.cli import main

    out = tmp_path / "multires"
    assert main(["export", "--graph", graph, "--format", "precomputed", "--out", str(out), "--sharded"]) == 0
    err = capsys.readouterr().err
    assert "3 LODs" in err and "precomputed segmentation" in err
    assert (out / "info").is_file() and any(p.suffix == ".shard" for p in (out / "mesh").iterdir())
    # a file format needs roots; --sharded and --time-stamp are for precomputed only
    for argv in (["--format", "ply"], ["--format", "ply", "--top", "1", "--sharded"],
                 ["--format", "obj", "--top", "1", "--time-stamp", "1"]):
        assert main(["export", "--graph", graph, "--out", str(tmp_path / "bad"), *argv]) == 2, argv
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    # the view server refuses a folder that is not such an export
    assert main(["view", "--graph", graph, "--precomputed", str(tmp_path)]) == 2
    assert "export one first" in capsys.readouterr().err
