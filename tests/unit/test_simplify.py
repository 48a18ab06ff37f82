"""The alternative layer-2 simplifier (raymesh/simplify.py, ``MeshConfig.simplifier``): block faces
kept exactly, seams weld as zmesh's do, the default path unchanged, the key validated and used."""

from __future__ import annotations

import numpy as np
import pytest
import zmesh
from scipy import ndimage

from raymesh.config import MeshConfig, load_config
from raymesh.formats.draco import DracoSettings, encode
from raymesh.errors import ConfigError
from raymesh.layer2.mesh import cap_meshes, mesh_block, simplified_meshes
from raymesh.simplify import on_block_planes, simplify, simplify_meshopt
from raymesh.stitch import merge_across_boundaries
from raymesh.verify.geometry import edge_use

RES = (8.0, 8.0, 40.0)


def blobs(shape=(40, 40, 24), seed=0, n=5) -> np.ndarray:
    """Smooth random labels filling a block (objects cross every face of it)."""
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.random(shape), sigma=(4, 4, 2)) for _ in range(n)]
    labels = (np.argmax(np.stack(fields), axis=0) + 1).astype(np.uint64)
    labels[ndimage.gaussian_filter(rng.random(shape), sigma=(3, 3, 1.5)) < 0.48] = 0
    return labels


def as_set(points: np.ndarray) -> set:
    return set(map(tuple, np.asarray(points, dtype=np.float64).tolist()))


def top_of(labels) -> np.ndarray:
    return (np.asarray(labels.shape) - 1) * np.asarray(RES)


def test_meshopt_keeps_every_vertex_on_the_block_faces_exactly():
    labels = blobs()
    mesher = zmesh.Mesher(RES)
    mesher.mesh(labels)
    checked = 0
    for label in sorted(mesher.ids()):
        mc = mesher.get(label, reduction_factor=0)
        v, f = simplify_meshopt(mc.vertices, mc.faces, top_of(labels), max_error=40)
        plane = on_block_planes(mc.vertices, top_of(labels))
        assert plane.any()
        assert as_set(mc.vertices[plane]) <= as_set(v), f"label {label}: a block-face vertex moved or went"
        assert as_set(v) <= as_set(mc.vertices), "every output vertex is a marching-cubes vertex, unmoved"
        assert v.dtype == mc.vertices.dtype and len(f) < len(mc.faces) / 2
        assert f.max() < len(v) and len(np.unique(f)) == len(v)
        checked += 1
    assert checked == 5


def test_meshopt_keeps_small_pieces_zmesh_keeps():
    """A one-voxel speck and a one-voxel-thin needle: the collapses would remove them whole (their
    error is below the target), the simplifier puts them back unsimplified."""
    labels = np.zeros((20, 20, 12), dtype=np.uint64)
    labels[3, 3, 3] = 1  # a speck
    labels[10, 5:16, 5] = 1  # a needle, same label
    labels[6:14, 6:14, 7:10] = 2
    from raymesh.geometry.distance import mesh_distance

    mc = {label: (v, f) for label, v, f in simplified_meshes(labels, RES, reduction_factor=0)}
    out = {label: (v, f) for label, v, f in simplified_meshes(labels, RES, simplifier="meshopt")}
    assert set(out) == {1, 2}
    for label, (v, f) in out.items():
        assert len(f) and len(np.unique(f)) == len(v)
        assert mesh_distance(mc[label][0], v, f).max() <= 40, f"label {label}: a piece of the object is gone"
    # Without the guard the speck and the needle would go: meshoptimizer removes them whole.
    v, f = mc[1]
    lone = simplify_meshopt(v, f, top_of(labels), reduction_factor=10**9, target_error=400.0)
    assert len(lone[1]) == len(f), "both pieces put back unsimplified"


def test_meshopt_mesh_welds_across_a_chunk_seam_like_zmesh():
    """Two neighbouring blocks share the plane z = k (the lower one's +1 overlap): each object's
    open edges on it are the same vertices in both meshes, so merging closes the seam there."""
    labels = blobs(shape=(32, 32, 33), seed=3)
    k = 16
    below, above = labels[:, :, : k + 1], labels[:, :, k:]
    plane = k * RES[2]
    for simplifier in ("zmesh", "meshopt"):
        low = {lab: (v, f) for lab, v, f in simplified_meshes(below, RES, simplifier=simplifier)}
        high = {lab: (v + [0, 0, plane], f) for lab, v, f in simplified_meshes(above, RES, simplifier=simplifier)}
        shared = set(low) & set(high)
        assert len(shared) >= 3
        for label in shared:
            cuts = []
            for v, f in (low[label], high[label]):
                edges, use = edge_use(f, return_edges=True)
                ends = v[np.unique(edges[use == 1])]
                cuts.append(as_set(ends[ends[:, 2] == plane]))
            assert cuts[0] == cuts[1] and cuts[0], f"{simplifier}: label {label} cut differently"
            merged_v, merged_f = merge_across_boundaries([low[label], high[label]], np.array([np.nan, np.nan, plane]))
            edges, use = edge_use(merged_f, return_edges=True)
            assert not (merged_v[edges[use == 1]][:, :, 2] == plane).all(axis=1).any(), \
                f"{simplifier}: label {label} left open on the seam"


def test_meshopt_caps_weld_to_the_node_on_the_first_plane():
    """A cap (l2.cap_meshes) and the node's own mesh meet on the first x plane along one contour."""
    labels = np.zeros((12, 12, 12), dtype=np.uint64)
    yy, zz = np.mgrid[:12, :12]
    labels[0:7][:, (yy - 6) ** 2 + (zz - 5) ** 2 <= 9] = 7
    (_, v, f), = simplified_meshes(labels, RES, simplifier="meshopt")
    ((_, cap_v, cap_f),) = cap_meshes(labels, {(0,): {7}}, RES, simplifier="meshopt")[7]
    merged_v, merged_f = merge_across_boundaries([(v, f), (cap_v, cap_f)], np.array([0.0, np.nan, np.nan]))
    assert not (edge_use(merged_f) == 1).any()


def test_default_simplifier_is_zmesh_byte_for_byte():
    """The default (and ``simplifier="zmesh"``) is PCG's call sequence, encoded as before."""
    labels = blobs(shape=(33, 33, 17), seed=1)
    settings = DracoSettings(10, 1023 * 5, (0, 0, 0))
    offset = np.zeros(3)
    default = mesh_block(labels, offset, RES, settings)
    named = mesh_block(labels, offset, RES, settings, simplifier="zmesh")
    mesher = zmesh.Mesher(RES)
    mesher.mesh(labels)
    direct = {}
    for label in sorted(mesher.ids()):
        mesh = mesher.get(label, reduction_factor=100, max_error=40)
        mesher.erase(label)
        direct[int(label)] = encode(mesh.vertices.astype(np.float64) + offset, mesh.faces, settings)
    assert default.fragments == named.fragments == direct
    other = mesh_block(labels, offset, RES, settings, simplifier="meshopt")
    assert set(other.fragments) == set(direct) and other.fragments != direct


def test_simplifier_key_validates(tmp_path):
    assert MeshConfig(graph="sqlite:///x").simplifier == "zmesh"
    assert MeshConfig(graph="sqlite:///x", simplifier="meshopt").simplifier == "meshopt"
    with pytest.raises(ValueError, match="simplifier"):
        MeshConfig(graph="sqlite:///x", simplifier="fqmr")
    good = tmp_path / "job.yaml"
    good.write_text("graph: sqlite:///x\nsimplifier: meshopt\n")
    assert load_config(str(good)).simplifier == "meshopt"
    good.write_text("graph: sqlite:///x\nsimplifier: quadric\n")
    with pytest.raises(ConfigError, match="simplifier"):
        load_config(str(good))
    with pytest.raises(ValueError, match="unknown simplifier"):
        simplify("fqmr", np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.uint32), top=(1, 1, 1))


def test_meshopt_run_end_to_end_seams_and_closed_objects(synthetic_graph, tmp_path):
    """The key reaches the layer-2 kernel through the job; stitched layers still cover layer 2,
    and the interior objects close as with zmesh."""
    from l2_checks import assert_seams_coincide, assert_within_chunk
    from raymesh.driver import run
    from raymesh.runs.job import MeshJob
    from raymesh.manifest import shard_has_mesh
    from raymesh.volume import read_block
    from stitch_checks import assert_stitched_like_layer2, closed_interior_objects, read_fragment

    closed, l2_bytes = {}, {}
    for simplifier in ("zmesh", "meshopt"):
        config = MeshConfig(graph=synthetic_graph.store_url, layers=[2, 3, 4], mip=0, executor="serial",
                            time_stamp=2e9, simplifier=simplifier, mesh_dir=f"meshes_{simplifier}")
        summary = run(config, progress=False)
        assert not any(layer.failures for layer in summary.layers)
        job = MeshJob(config)
        meta = job.store.meta
        sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
        read, has_mesh = (lambda nodes: [read_fragment(job, n) for n in nodes]), shard_has_mesh(job)
        closed[simplifier] = closed_interior_objects(job, sv, read, 4, has_mesh)
        l2_bytes[simplifier] = [job.bucket.read(job.shard_path(2, c)) for _, c in job.iter_chunks(2)]
        if simplifier == "meshopt":
            compared = 0
            for _, coords in job.iter_chunks(2):
                assert_within_chunk(job, coords)
                compared += sum(assert_seams_coincide(job, coords, axis) for axis in range(3))
            assert compared > 0
            roots = np.unique(np.asarray(job.store.get_roots(np.unique(sv[sv > 0]))))
            for root in roots.tolist():
                assert_stitched_like_layer2(job, root, (3, 4), read, has_mesh)
    assert closed["meshopt"][1] > 0 and closed["meshopt"] == closed["zmesh"]
    assert l2_bytes["meshopt"] != l2_bytes["zmesh"], "the job meshed layer 2 with meshoptimizer"


def test_a_mesh_dir_keeps_its_simplifier_for_reruns_and_remeshing(synthetic, tmp_path, capsys, monkeypatch):
    """``--simplifier meshopt`` is recorded in the run record: a plain rerun keeps it, one asking
    for zmesh is refused (no dir of mixed meshes), and remeshing after an edit uses it."""
    import datetime as dt
    import json

    from raymesh.builder import build_graph
    from raymesh.cli import main as cli
    from raymesh.cli_edit import remesher_for
    from raymesh.edits import merge
    from raymesh.formats.mesh_layout import RUN_RECORD
    from raymesh.graph import open_store
    from raymesh.runs.job import MeshJob
    from raymesh.volume import read_block
    from support import SYNTH_CHUNK, SYNTH_RES

    labels, agg = synthetic
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    g = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                    time_stamp=t0)
    base = ["mesh", "--graph", g.store_url, "--layers", "2-4", "--executor", "serial", "--quiet",
            "--time-stamp", str((t0 + dt.timedelta(seconds=30)).timestamp())]
    assert cli(base + ["--simplifier", "meshopt"]) == 0
    job = MeshJob(MeshConfig(graph=g.store_url))
    assert json.loads(job.bucket.read(RUN_RECORD))["simplifier"] == "meshopt"
    assert job.resolve_record() and job.config.simplifier == "meshopt", "a plain rerun keeps meshopt"
    capsys.readouterr()
    assert cli(["mesh", "--graph", g.store_url, "--layer", "2", "--executor", "serial", "--quiet", "--force",
                "--simplifier", "zmesh"]) != 0, "a clash is refused"
    assert "simplifier zmesh (the mesh dir holds meshes simplified by meshopt)" in capsys.readouterr().err

    store = open_store(g.store_url)
    sv = read_block(store.meta.segmentation_path, 0, np.zeros(3, int), np.asarray(store.meta.size_at(0)))
    svs = np.unique(sv[sv > 0])
    roots = np.asarray(store.get_roots(svs))
    merge(store, int(svs[0]), int(svs[roots != roots[0]][0]), t0 + dt.timedelta(minutes=1))
    import raymesh.layer2.mesh as layer2_mesh

    used = []
    real = layer2_mesh.simplified_meshes
    monkeypatch.setattr(layer2_mesh, "simplified_meshes",
                        lambda *a, **kw: used.append(kw.get("simplifier", a[4] if len(a) > 4 else "zmesh"))
                        or real(*a, **kw))
    remesher = remesher_for(g.store_url)
    summary = remesher.run(remesher.nodes_since(None))
    assert not summary.failures and sum(summary.written.values()) > 0
    assert used and set(used) == {"meshopt"}, "the edit's layer-2 nodes were remeshed with meshoptimizer"
