"""The graph builder on the synthetic dataset: PCG ingest's shape, deterministic, clear errors."""

import fastremap
import numpy as np
import pytest

from support import SYNTH_CHUNK, SYNTH_RES, assert_ids_in_their_chunks, assert_roots_partition_objects, assert_skip_rule
from raymesh.builder import BuildError, build_graph, build_hierarchy
from raymesh.graph import GraphError, open_store
from raymesh.volume import read_block


def _objects(labels, agg):
    return fastremap.remap(labels.astype(np.uint64), {int(k): int(v) for k, v in agg.items()},
                           preserve_missing_labels=True)


def test_roots_are_connected_objects(synthetic, synthetic_graph):
    labels, agg = synthetic
    store = open_store(synthetic_graph.store_url)
    ws = read_block(store.meta.segmentation_path, 0, (0, 0, 0), labels.shape)
    n = assert_roots_partition_objects(store, ws, _objects(labels, agg))
    assert n == synthetic_graph.node_counts[store.meta.layer_count]
    assert_ids_in_their_chunks(store, ws, SYNTH_CHUNK)
    assert_skip_rule(store)


def test_agglomeration_joins_pieces(synthetic):
    labels, agg = synthetic
    with_agg = build_hierarchy(labels, SYNTH_CHUNK, agg)
    without = build_hierarchy(labels, SYNTH_CHUNK)
    top = with_agg.layout.n_layers
    assert len(with_agg.layers[top][0]) < len(without.layers[top][0])
    # Pieces of one object that touch inside a chunk become one layer-2 node.
    assert len(with_agg.layers[2][0]) < len(without.layers[2][0])


def test_build_is_deterministic(synthetic):
    labels, agg = synthetic
    a, b = build_hierarchy(labels, SYNTH_CHUNK, agg), build_hierarchy(labels, SYNTH_CHUNK, agg)
    assert np.array_equal(a.supervoxels, b.supervoxels)
    for layer in a.layers:
        assert np.array_equal(a.layers[layer][0], b.layers[layer][0])
        assert all(np.array_equal(x, y) for x, y in zip(a.layers[layer][1], b.layers[layer][1]))


def test_root_ids_use_interleaved_counters():
    labels = np.zeros((8, 8, 8), dtype=np.uint32)
    for i in range(3):
        labels[2 * i, 0, 0] = i + 1  # three separate one-voxel objects
    g = build_hierarchy(labels, (4, 4, 4))
    roots = g.layers[g.layout.n_layers][0]
    assert g.layout.get_segment_id(roots).tolist() == [256, 257, 258]


def test_rebuild_same_graph_is_noop(synthetic, synthetic_graph, tmp_path):
    labels, agg = synthetic
    out = synthetic_graph.store_url[len("sqlite://"):].rsplit("/", 1)[0]
    again = build_graph(labels, out, resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    assert again.already_built and again.node_counts == synthetic_graph.node_counts
    with pytest.raises(BuildError, match="already holds a different graph"):
        build_graph(labels, out, resolution=SYNTH_RES, chunk_size=(16, 16, 16), agglomeration=agg)


@pytest.mark.parametrize("labels, chunk, match", [
    (np.zeros((4, 4), np.uint32), (2, 2, 2), "3-D"),
    (np.zeros((4, 4, 4), np.float32), (2, 2, 2), "integers"),
    (np.zeros((4, 4, 4), np.uint32), (0, 2, 2), "chunk size"),
    (np.zeros((4, 4, 4), np.uint32), (2, 2), "chunk size"),
])
def test_bad_input(labels, chunk, match, tmp_path):
    with pytest.raises(BuildError, match=match):
        build_graph(labels, str(tmp_path), resolution=(1, 1, 1), chunk_size=chunk)


def test_unknown_store_scheme(tmp_path):
    with pytest.raises(GraphError, match="unknown graph store scheme 'redis'"):
        open_store("redis://localhost/graph")
    with pytest.raises(GraphError, match="unknown graph"):
        open_store(f"sqlite://{tmp_path}/missing.sqlite")


def test_single_chunk_memory_mapped_npy_builds(tmp_path, capsys):
    """A .npy is memory-mapped read-only; one chunk is then a read-only view cc3d must not see."""
    from raymesh.cli import main
    from raymesh.volume import load_labels

    labels = np.zeros((16, 16, 64), np.uint32)
    labels[2:6, 2:6, 3:60] = 5
    labels[9:12, 9:12, :] = 7
    np.save(tmp_path / "one_chunk.npy", labels)
    mapped = load_labels(str(tmp_path / "one_chunk.npy"))
    assert not mapped.flags.writeable
    g = build_hierarchy(mapped, (16, 16, 64))
    assert g.node_counts()[1] == 2 and not mapped.flags.writeable
    assert main(["build-graph", "--labels", str(tmp_path / "one_chunk.npy"), "--resolution", "8", "8", "40",
                 "--chunk-size", "16", "16", "64", "--out", str(tmp_path / "out")]) == 0
    assert "layer 2: 2 nodes" in capsys.readouterr().err


@pytest.mark.parametrize("labels, chunk", [
    (np.ones((5, 6, 7), np.uint16), (64, 64, 64)),  # smaller than one chunk
    (np.ones((1, 1, 1), np.uint8), (64, 64, 64)),  # a single voxel
    (np.ones((9, 9, 9), ">u4"), (4, 4, 4)),  # big-endian
    (np.asfortranarray(np.arange(512, dtype=np.int64).reshape(8, 8, 8) % 3), (4, 4, 4)),  # Fortran order
    (np.full((4, 4, 4), 2**63 + 5, np.uint64), (4, 4, 4)),  # labels above int64
])
def test_degenerate_volumes_build(labels, chunk, tmp_path):
    summary = build_graph(labels, str(tmp_path), resolution=(1, 1, 1), chunk_size=chunk)
    store = open_store(summary.store_url)
    ws = read_block(store.meta.segmentation_path, 0, (0, 0, 0), labels.shape)
    assert np.array_equal(ws != 0, labels != 0)
    assert_roots_partition_objects(store, ws, labels.astype(np.uint64))


@pytest.mark.parametrize("labels, match", [
    (np.zeros((8, 8, 8), np.uint32), "no labelled voxels"),
    (np.zeros((1, 1, 1), np.uint8), "no labelled voxels"),
    (np.ones((0, 4, 4), np.uint32), "empty"),
    (np.ones((4, 4, 4), bool), "integers"),
    (np.array([[[-1]]], np.int8), "non-negative"),
    (np.ones((4, 4, 4, 1), np.uint32), "3-D"),
])
def test_degenerate_volumes_are_refused(labels, match, tmp_path):
    with pytest.raises(BuildError, match=match):
        build_graph(labels, str(tmp_path / "out"), resolution=(1, 1, 1), chunk_size=(4, 4, 4))
    assert not (tmp_path / "out").exists()


def test_fingerprint_hashes_the_volume_in_slabs():
    import hashlib

    from raymesh.builder import _slabs

    labels = np.arange(7 * 5 * 3, dtype=np.uint32).reshape(7, 5, 3)
    whole = hashlib.sha256(labels.tobytes()).hexdigest()
    pieces = hashlib.sha256()
    for slab in _slabs(labels, target_bytes=100):
        pieces.update(np.ascontiguousarray(slab).tobytes())
    assert pieces.hexdigest() == whole


def test_out_and_mips_are_checked_before_writing(synthetic, tmp_path):
    labels, agg = synthetic
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BuildError, match="is a file"):
        build_graph(labels, str(tmp_path / "a_file"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK)
    with pytest.raises(BuildError, match="--mips 9"):
        build_graph(labels, str(tmp_path / "g"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, downsample_mips=9)
    with pytest.raises(BuildError, match="bigtable://PROJECT/INSTANCE/TABLE"):
        build_graph(labels, str(tmp_path / "g"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK,
                    store_url="bigtable://p/i")
    assert not (tmp_path / "g").exists()
