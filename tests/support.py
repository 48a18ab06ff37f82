"""Constants and whole-graph invariants shared by the unit and integration test layers."""

from __future__ import annotations

import os
from pathlib import Path
import cc3d
import fastremap
import numpy as np

SHARED = Path(os.environ.get("RAYMESH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL_VOLUME = SHARED / "data" / "connectomics.npy.ckl.gz"
SYNTH_RES = (16.0, 16.0, 40.0)
SYNTH_CHUNK = (32, 32, 16)


def sv_to_root(store, svs: np.ndarray) -> dict[int, int]:
    roots = store.get_roots(svs)
    assert np.all(roots != 0), "every supervoxel has a root"
    assert np.all(store.get_chunk_layer(roots) == store.meta.layer_count), "roots are at the root layer"
    return dict(zip(svs.tolist(), roots.tolist()))


def assert_roots_partition_objects(store, sv_volume: np.ndarray, objects: np.ndarray) -> int:
    """Roots partition the voxels exactly as the 6-connected components of each object.

    Checked in two exact steps that avoid per-voxel root volumes: every supervoxel lies inside
    one component (a full-volume unique of packed (supervoxel, component) keys), then roots and
    components induce the same partition of the supervoxels.
    """
    assert np.array_equal(sv_volume != 0, objects != 0), "supervoxels cover exactly the labelled voxels"
    components = cc3d.connected_components(objects, connectivity=6, out_dtype=np.uint64)
    dense, remap = fastremap.renumber(sv_volume, in_place=False)
    keys = fastremap.unique(dense.astype(np.uint64) * np.uint64(components.max() + 1) + components)
    keys = keys[keys != 0]
    sv_index, comp = keys // np.uint64(components.max() + 1), keys % np.uint64(components.max() + 1)
    assert len(np.unique(sv_index)) == len(sv_index), "a supervoxel spans two components"
    inverse = {v: k for k, v in remap.items()}
    svs = np.array([inverse[int(i)] for i in sv_index], dtype=np.uint64)
    mapping = sv_to_root(store, svs)
    roots = np.array([mapping[int(s)] for s in svs], dtype=np.uint64)
    pairs = {(int(r), int(c)) for r, c in zip(roots, comp)}
    n_roots, n_comps = len(set(roots.tolist())), len(set(comp.tolist()))
    assert len(pairs) == n_roots == n_comps, f"{len(pairs)} pairs, {n_roots} roots, {n_comps} components"
    return n_roots


def assert_ids_in_their_chunks(store, sv_volume: np.ndarray, chunk_size) -> None:
    """Every supervoxel id names the chunk holding its voxels; every node's chunk holds its children."""
    layout = store.layout
    rng = np.random.default_rng(0)
    pos = rng.integers(0, sv_volume.shape, size=(200_000, 3))
    svs = sv_volume[pos[:, 0], pos[:, 1], pos[:, 2]]
    pos, svs = pos[svs != 0], svs[svs != 0]
    assert np.all(layout.get_chunk_layer(svs) == 1)
    assert np.array_equal(layout.get_chunk_coordinates(svs), pos // np.asarray(chunk_size))
    frontier = np.unique(svs)
    while len(frontier):
        parents = store.get_parents(frontier, fail_to_zero=True)
        keep = parents != 0
        child, parent = frontier[keep], parents[keep]
        lp, lc = layout.get_chunk_layer(parent), np.maximum(layout.get_chunk_layer(child), 2)
        assert np.all(lp > layout.get_chunk_layer(child)), "a parent sits above its child"
        expect = layout.get_chunk_coordinates(child) // (2 ** (lp - lc))[:, None]
        assert np.array_equal(layout.get_chunk_coordinates(parent), expect)
        frontier = np.unique(parent)


def assert_skip_rule(store) -> None:
    """Parents more than one layer above a child have exactly that one child (PCG's skip rule)."""
    layout = store.layout
    for layer in range(3, layout.n_layers + 1):
        for cx, cy, cz in layout.iter_chunk_coords(layer):
            for node, kids in store.range_read_chunk(layout.chunk_id(layer, cx, cy, cz)).items():
                assert len(kids) >= 1
                if np.any(layout.get_chunk_layer(kids) < layer - 1):
                    assert len(kids) == 1, f"skip parent {node} has {len(kids)} children"


def all_shards(job, layers) -> dict:
    """``{(layer, chunk coords): shard bytes or None}`` for every chunk of the job's layers, and
    ``{(layer, chunk coords, "lod"): LOD shard bytes or None}`` above layer 2 when the job writes
    the LOD chain."""
    from raymesh.formats.mesh_layout import lod_key, shard_key

    layout = job.meta.layout
    out = {(layer, c): job.bucket.read(shard_key(layout, layer, int(layout.chunk_id(layer, *c))))
           for layer in layers for _, c in job.iter_chunks(layer)}
    if job.config.lod_chain:
        out.update({(layer, c, "lod"): job.bucket.read(lod_key(layout, layer, int(layout.chunk_id(layer, *c))))
                    for layer in layers if layer > 2 for _, c in job.iter_chunks(layer)})
    return out


def find_cbtemulator() -> str | None:
    """The Bigtable emulator that ships with the Google Cloud CLI (or $CBTEMULATOR)."""
    import shutil
    import subprocess

    explicit = os.environ.get("CBTEMULATOR")
    if explicit and Path(explicit).exists():
        return explicit
    roots = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                                 capture_output=True, text=True, timeout=60)
            roots.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    roots += ["/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk"]
    for root in filter(None, roots):
        candidate = Path(root) / "platform" / "bigtable-emulator" / "cbtemulator"
        if candidate.exists():
            return str(candidate)
    return None


def file_tree(folder) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path, with its bytes (to compare output trees)."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                out[os.path.relpath(os.path.join(base, name), folder)] = f.read()
    return out


def cloudvolume_write(url, labels, encoding, *, resolution, compress=None, chunk=(64, 64, 64), offset=(0, 0, 0),
                      sharded=False, data_encoding="gzip", shard_chunks=64, region=None):
    """A one-scale segmentation as CloudVolume itself writes it (all-zero chunks left out, as with
    delete_black_uploads); ``sharded``: CloudVolume's own shard layout with about ``shard_chunks``
    chunks per shard, written shard by shard. ``region`` ((lo, hi) in ``labels``' indices): write
    only the chunks, or shards, that meet it; the rest of the volume stays missing, which readers
    take as background."""
    from cloudvolume import Bbox, CloudVolume

    info = CloudVolume.create_new_info(1, "segmentation", "uint64", encoding, list(resolution), list(offset),
                                       list(labels.shape), chunk_size=list(chunk))
    kwargs = {} if compress is None else {"compress": compress}
    cv = CloudVolume(url, info=info, progress=False, secrets=None, delete_black_uploads=True, **kwargs)
    if not sharded:
        cv.commit_info()
        lo, hi = _aligned(region, chunk, labels.shape)
        cv[Bbox(lo + offset, hi + offset)] = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return cv
    chunk_bytes = int(np.prod(chunk)) * 8
    cv.image.to_sharded(uncompressed_shard_bytesize=chunk_bytes * shard_chunks, max_shard_index_bytes=2**4 * 16,
                        max_minishard_index_bytes=2000, max_labels_per_minishard=2,
                        data_encoding=data_encoding)
    cv.commit_info()
    shard = np.asarray(cv.image.shard_shape(0), dtype=int)
    for lo in np.ndindex(*[-(-s // c) for s, c in zip(labels.shape, shard)]):
        lo = np.asarray(lo) * shard
        hi = np.minimum(lo + shard, labels.shape)
        if region is not None and (np.any(hi <= region[0]) or np.any(lo >= region[1])):
            continue
        cv[Bbox(lo + offset, hi + offset)] = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], None]
    return cv


def _aligned(region, chunk, shape) -> tuple[np.ndarray, np.ndarray]:
    """``region`` grown out to whole chunks (the whole volume when None)."""
    if region is None:
        return np.zeros(3, int), np.asarray(shape)
    chunk = np.asarray(chunk)
    lo = np.asarray(region[0]) // chunk * chunk
    hi = np.minimum(-(-np.asarray(region[1]) // chunk) * chunk, shape)
    return lo, hi


def meshed_with_a_merge(synthetic, folder) -> str:
    """The synthetic graph built into ``folder`` at 2026-01-01, meshed through layer 4 30 s
    later, then two objects merged a minute in and the merge remeshed into ``dynamic/``; returns
    the graph URL."""
    import datetime as dt

    from raymesh.builder import build_graph
    from raymesh.cli_edit import remesher_for
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.edits import merge
    from raymesh.graph import open_store
    from raymesh.volume import read_block

    labels, agg = synthetic
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    g = build_graph(labels, str(folder), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                    time_stamp=t0)
    run(MeshConfig(graph=g.store_url, layers=[2, 3, 4], executor="serial", lod_chain=True,
                   time_stamp=(t0 + dt.timedelta(seconds=30)).timestamp()), progress=False)
    store = open_store(g.store_url)
    meta = store.meta
    sv = read_block(meta.segmentation_path, 0, np.zeros(3, int), np.asarray(meta.size_at(0)))
    svs = np.unique(sv[sv > 0])
    roots = np.asarray(store.get_roots(svs))
    merge(store, int(svs[0]), int(svs[roots != roots[0]][0]), t0 + dt.timedelta(minutes=1))
    remesher = remesher_for(g.store_url)
    remesher.run(remesher.nodes_since(None))
    # The jobs, readers and stores made here hold SQLite connections in reference cycles; closing
    # them now (a connection's close checkpoints and removes graph.sqlite-wal) keeps a later
    # collection from pulling the WAL file out from under a test copying the folder.
    del remesher, store
    import gc

    gc.collect()
    return g.store_url
