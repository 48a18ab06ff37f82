"""Sharding bytes and hashing against reference-values.md sections 6-9."""

import hashlib

import numpy as np
import pytest

from raymesh.formats.sharding import (ShardError, ShardingSpec, bytes_reader, compute_shard_params_for_hashed,
                              disassemble_shard, locate, read_value, synthesize_shard)

VECTOR = {1: b"one", 2: b"two", 3: b"three", 100: b"hundred"}
RAW = ShardingSpec(minishard_bits=1, minishard_index_encoding="raw")


def test_reference_shard_bytes():
    data = synthesize_shard(VECTOR, RAW)
    assert len(data) == 146
    assert hashlib.sha256(data).hexdigest() == "77c267bfe0758cebdeff5b8354a11e73e64c83abbcf88ddd8a0e90e6b6cc8bd9"
    read = bytes_reader(data)
    assert [locate(read, k, RAW) for k in (1, 2, 3, 100)] == [(32, 3), (35, 3), (38, 5), (43, 7)]
    assert disassemble_shard(data, RAW) == VECTOR


@pytest.mark.parametrize("key, value", [
    (0, 5148371408780832321), (1, 16770674756601302682), (2, 15433726874232110938), (100, 4967817306011861373),
    (2**63, 11063714688786943912), (2**64 - 1, 6291360166951214362), (170591428945117184, 8056016144562293229),
])
def test_murmur_hash(key, value):
    assert int(ShardingSpec().hashed(np.array([key], dtype=np.uint64))[0]) == value


def test_minishards_and_graphene_shard_numbers():
    keys = np.array([170591428945117185, 170591428945117189], dtype=np.uint64)
    assert ShardingSpec(minishard_bits=3).minishard_of(keys).tolist() == [5, 3]
    assert ShardingSpec(minishard_bits=10).minishard_of(keys).tolist() == [341, 403]
    minnie7 = ShardingSpec(minishard_bits=10, shard_bits=2)
    key = np.array([511580770173215172], dtype=np.uint64)
    assert (int(minnie7.shard_of(key)[0]), int(minnie7.minishard_of(key)[0])) == (2, 745)


@pytest.mark.parametrize("n, expected", [
    (0, (0, 0, 0)), (1365, (0, 0, 0)), (1366, (0, 1, 0)), (10_000, (0, 3, 0)), (100_000, (0, 7, 0)),
    (699_051, (0, 9, 0)), (1_000_000, (1, 9, 0)), (5_000_000, (3, 9, 0)), (10**9, (11, 9, 0)),
])
def test_shard_params(n, expected):
    assert compute_shard_params_for_hashed(n) == expected


def test_shard_params_min_shards():
    assert compute_shard_params_for_hashed(1_000_000, min_shards=8) == (3, 7, 0)
    assert compute_shard_params_for_hashed(10_000, min_shards=4) == (2, 1, 0)


def test_gzip_shards_are_reproducible_and_read_by_key():
    spec = ShardingSpec(minishard_bits=4, minishard_index_encoding="gzip", data_encoding="gzip")
    values = {int(k): bytes([k % 251]) * (k % 97) for k in range(1, 400, 7)}
    a, b = synthesize_shard(values, spec), synthesize_shard(dict(reversed(values.items())), spec)
    assert a == b
    read = bytes_reader(a)
    assert all(read_value(read, k, spec) == v for k, v in values.items())
    assert read_value(read, 2, spec) is None


def test_empty_shard_is_an_all_zero_index():
    assert synthesize_shard({}, ShardingSpec(minishard_bits=10)) == bytes(16384)


def test_corrupt_shards_raise():
    spec = ShardingSpec(minishard_bits=1, minishard_index_encoding="gzip")
    data = synthesize_shard(VECTOR, spec)
    with pytest.raises(ShardError, match="truncated"):
        read_value(bytes_reader(data[:60]), 3, spec)
    broken = bytearray(data)
    broken[-10:] = bytes(10)
    with pytest.raises(ShardError):
        disassemble_shard(bytes(broken), spec)
    with pytest.raises(ShardError, match="span shards"):
        synthesize_shard({k: b"x" for k in range(50)}, ShardingSpec(shard_bits=2))


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_a_spooled_shard_reader_keeps_shards_on_disk_and_reads_every_value_back(encoding):
    """``SpooledShardReader`` reads each shard whole once (one read) but keeps it in a scratch
    file, not in memory: every value reads back as the shard holds it, a key it lacks as None."""
    from raymesh.graph.ids import ChunkLayout
    from raymesh.stitch import SpooledShardReader

    layout = ChunkLayout(n_layers=4, n_chunks=(4, 4, 4))
    spec = ShardingSpec(minishard_bits=2, minishard_index_encoding="gzip", data_encoding=encoding)
    chunks = [int(layout.chunk_id(2, x, 0, 0)) for x in range(3)]
    values = {}
    for i, chunk in enumerate(chunks):
        for seg in range(1, 30 + 10 * i):
            values[int(layout.node_id(chunk, seg))] = bytes([seg % 251, i]) * (seg % 13 + 1)
    shards = {chunk: synthesize_shard({k: v for k, v in values.items() if int(layout.get_chunk_id(k)) == chunk}, spec)
              for chunk in chunks}
    reads = []
    reader = SpooledShardReader(layout, lambda layer: spec, lambda layer, chunk: reads.append(chunk) or shards[chunk])
    reader.preload(values)
    assert sorted(reads) == sorted(chunks), "each shard read once, whole"
    held = reader._values
    assert all(isinstance(t, np.ndarray) and t.dtype == np.uint64 and t.shape[1] == 3 for t in held.values()), \
        "values are located in the scratch file (a [key, start, size] table per shard), not held"
    assert sum(len(t) for t in held.values()) == len(values)
    assert all((t[1:, 0] > t[:-1, 0]).all() for t in held.values()), "sorted, for lookups"
    assert all(reader.read(k) == v for k, v in values.items())
    assert reader.read(int(layout.node_id(chunks[0], 999))) is None
    reader.close()
    reader.close()  # twice is harmless


def test_a_spooled_shard_reader_names_the_scratch_dir_when_it_cannot_write(tmp_path, monkeypatch):
    """No room (here: no such directory) for the scratch copy is a ``MeshingError`` naming the
    chunk and the directory, which the LOD task records as the chunk's failure."""
    import tempfile

    from raymesh.errors import MeshingError
    from raymesh.graph.ids import ChunkLayout
    from raymesh.stitch import SpooledShardReader

    layout = ChunkLayout(n_layers=4, n_chunks=(4, 4, 4))
    chunk = int(layout.chunk_id(2, 0, 0, 0))
    node = int(layout.node_id(chunk, 1))
    shard = synthesize_shard({node: b"x"}, RAW)
    missing = tmp_path / "gone"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    reader = SpooledShardReader(layout, lambda layer: RAW, lambda layer, c: shard)
    with pytest.raises(MeshingError, match=str(missing)) as err:
        reader.preload([node])
    assert "layer 2 chunk [0, 0, 0]" in str(err.value) and "TMPDIR" in str(err.value)
