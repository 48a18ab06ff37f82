"""``raymesh verify`` on the synthetic graph (serial): a complete run verifies clean; each kind of
damage an operator meets gives exit 1 and a report naming it; ``--repair`` makes it clean again."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest

from raymesh.cli import main as cli
from raymesh.config import MeshConfig
from raymesh.runs.job import MeshJob
from raymesh.formats.sharding import locate
from raymesh.storage import local_path
from raymesh.verify.checks import seam_cracks
from support import file_tree, meshed_with_a_merge

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def pristine(synthetic, tmp_path_factory):
    """The synthetic graph meshed through layer 4, one merge remeshed into dynamic/; copied per test."""
    root = tmp_path_factory.mktemp("verify")
    meshed_with_a_merge(synthetic, root / "g")
    return root / "g"


@pytest.fixture
def graph(pristine, tmp_path):
    """A private copy (the graph records its segmentation relative to itself, so the copy is whole)."""
    shutil.copytree(pristine, tmp_path / "g")
    return f"sqlite://{tmp_path / 'g' / 'graph.sqlite'}"


def _verify(graph, tmp_path, capsys, *extra) -> tuple[int, dict]:
    path = tmp_path / f"report{len(list(tmp_path.glob('report*')))}.json"
    code = cli(["verify", "--graph", graph, "--executor", "serial", "--json", str(path), *extra])
    capsys.readouterr()
    return code, json.loads(path.read_text())


def _mesh_dir(graph) -> str:
    return local_path(MeshJob(MeshConfig(graph=graph)).mesh_url)


def _repair(graph, report_path, capsys) -> int:
    code = cli(["mesh", "--graph", graph, "--executor", "serial", "--quiet", "--repair", str(report_path)])
    capsys.readouterr()
    return code


def test_a_complete_run_verifies_clean(graph, tmp_path, capsys):
    code, report = _verify(graph, tmp_path, capsys)
    assert code == 0, report["problems"]
    assert report["ok"] and [t["layer"] for t in report["layers"]] == [2, 3, 4]
    assert all(t["fragments"] >= t["expected"] > 0 for t in report["layers"])
    assert report["dynamic_checked"] > 0, "the merge's new nodes are checked in dynamic/"
    assert report["roots_interior"] > 0 and report["roots_closed"] == report["roots_interior"]


def _largest_shard(mesh: str, layer: int) -> str:
    folder = os.path.join(mesh, "initial", str(layer))
    return max((os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getsize)


def _delete_shard(mesh):
    os.remove(_largest_shard(mesh, 2))


def _truncate_shard(mesh):
    path = _largest_shard(mesh, 3)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) - 7])


def _corrupt_fragment(mesh):
    from raymesh.formats.mesh_layout import default_sharding

    path = _largest_shard(mesh, 2)
    data = open(path, "rb").read()
    spec = default_sharding(2)
    entries = np.frombuffer(data[:spec.index_bytes], dtype="<u8").reshape(-1, 2)
    m = int(np.flatnonzero(entries[:, 1] > entries[:, 0])[0])
    from raymesh.formats.sharding import _parse_minishard

    table = _parse_minishard(data[spec.index_bytes + int(entries[m, 0]):spec.index_bytes + int(entries[m, 1])], spec)
    key, start, size = (int(v) for v in table[0])
    assert locate(lambda a, b: data[a:b], key, spec) == (start, size)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\x02" * size)


def _remove_dynamic(mesh):
    folder = os.path.join(mesh, "dynamic")
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[0]))


def _edit_mesh_info(mesh):
    path = os.path.join(mesh, "info")
    info = json.load(open(path))
    info["sharding"]["3"]["minishard_bits"] += 1
    json.dump(info, open(path, "w"))


@pytest.mark.parametrize("damage, kind", [
    (_delete_shard, "missing_shard"), (_truncate_shard, "unsound_shard"), (_corrupt_fragment, "undecodable"),
    (_remove_dynamic, "missing_dynamic"), (_edit_mesh_info, "metadata")],
    ids=["deleted shard", "truncated shard", "corrupt fragment", "removed dynamic fragment", "edited mesh info"])
def test_damage_is_reported_and_repair_makes_it_clean(graph, tmp_path, capsys, damage, kind):
    mesh = _mesh_dir(graph)
    before = file_tree(os.path.join(mesh, "initial")), file_tree(os.path.join(mesh, "dynamic"))
    damage(mesh)
    code, report = _verify(graph, tmp_path, capsys)
    assert code == 1
    assert kind in report["by_kind"], report["by_kind"]
    named = [p for p in report["problems"] if p["kind"] == kind]
    if kind != "metadata":
        assert all(p["layer"] is not None and p["chunk"] is not None for p in named), named
    path = next(iter(sorted(tmp_path.glob("report*.json"))))
    assert _repair(graph, path, capsys) == 0
    code, report = _verify(graph, tmp_path, capsys)
    assert code == 0, report["problems"]
    after = file_tree(os.path.join(mesh, "initial")), file_tree(os.path.join(mesh, "dynamic"))
    assert after == before, "repair restores the same bytes"


def test_the_html_report_has_its_plots(graph, tmp_path, capsys):
    _delete_shard(_mesh_dir(graph))
    page = tmp_path / "report.html"
    assert cli(["verify", "--graph", graph, "--executor", "serial", "--html", str(page)]) == 1
    capsys.readouterr()
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and "missing_shard" in text


def test_seam_cracks_are_told_from_draco_splits():
    """A closed box split along its x = 1 plane into two copies of the plane's vertices: a crack
    (welding closes it). A vertex on the plane shared by two closed boxes (non-manifold once
    welded, Draco's split): not a crack."""
    v = np.array([[x, y, z] for x in (0, 1, 2) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    idx = {tuple(p): i for i, p in enumerate(v.tolist())}

    def quad(a, b, c, d):
        return [[idx[a], idx[b], idx[c]], [idx[a], idx[c], idx[d]]]

    faces = []
    for x0, x1 in ((0, 1), (1, 2)):
        faces += quad((x0, 0, 0), (x1, 0, 0), (x1, 0, 1), (x0, 0, 1)) + quad((x0, 1, 0), (x0, 1, 1), (x1, 1, 1), (x1, 1, 0))
        faces += quad((x0, 0, 0), (x0, 1, 0), (x1, 1, 0), (x1, 0, 0)) + quad((x0, 0, 1), (x1, 0, 1), (x1, 1, 1), (x0, 1, 1))
    faces += quad((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)) + quad((2, 0, 0), (2, 1, 0), (2, 1, 1), (2, 0, 1))
    faces = np.array(faces)
    planes = [{1.0}, set(), set()]
    assert seam_cracks(v, faces, planes) == 0, "welded already: nothing to find"
    # Give the faces of x in [1, 2] their own copies of the x = 1 vertices: the crack.
    copies = {i: len(v) + k for k, i in enumerate(np.flatnonzero(v[:, 0] == 1))}
    v2 = np.concatenate([v, v[v[:, 0] == 1]])
    right = np.all(v[faces][:, :, 0] >= 1, axis=1)
    f2 = faces.copy()
    f2[right] = np.vectorize(lambda i: copies.get(i, i))(faces[right])
    assert seam_cracks(v2, f2, planes) == 8, "4 positions, 2 copies each"
