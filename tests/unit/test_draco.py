"""Draco grid math against reference-values.md section 4, and the metadata round trip."""

import numpy as np
import pytest

from raymesh.formats.draco import DracoError, DracoSettings, MeshGrid, calc_quantization, decode, encode, snap
from raymesh.graph.ids import ChunkLayout

LAYOUT = ChunkLayout.from_voxels([192424, 131051, 13008], [256, 256, 512])
MINNIE = MeshGrid(LAYOUT, (256, 256, 512), (32, 32, 40), (8, 8, 40), (6596, 7577, 14850), mip=2)


def test_quantization_search():
    assert calc_quantization(20520, 22) == (10, 21483, 21)
    assert calc_quantization(20520, 5) == (13, 24573, 3)
    assert calc_quantization(20520, 11) == (11, 22517, 11)
    assert calc_quantization(20560, 56) == (9, 20951, 41)


def test_layer2_settings_and_block():
    assert MINNIE.block_shape(2).tolist() == [64, 64, 512]
    assert MINNIE.block_shape(7).tolist() == [2048, 2048, 16384]
    s = MINNIE.chunk_settings(LAYOUT.chunk_id(2, 0, 0, 0))
    assert s == DracoSettings(10, 21483, (211071, 242445, 593985)) and s.bin == 21
    assert MINNIE.chunk_settings(LAYOUT.chunk_id(2, 376, 256, 13)).origin == (981120, 766752, 860223)


def test_next_layer_chain_keeps_bin_21():
    s = MINNIE.chunk_settings(LAYOUT.chunk_id(2, 0, 0, 0))
    chain = []
    for layer in range(3, 13):
        s = MINNIE.next_layer_settings(s, LAYOUT.chunk_id(layer, 0, 0, 0))
        chain.append((s.bits, s.range, s.bin))
    assert chain[0] == (11, 42987, 21) and chain[-1] == (20, 22020075, 21)
    assert s.origin == (211050, 242424, 593964)
    child = LAYOUT.chunk_id(2, 376, 256, 13)
    l3 = MINNIE.next_layer_settings(MINNIE.chunk_settings(child), LAYOUT.parent_chunk_id(child, 3))
    assert l3 == DracoSettings(11, 42987, (981099, 766731, 839727))
    assert MINNIE.uniform_grid_size(11) == 21


def test_snapping_example_and_metadata():
    s = DracoSettings(10, 21483, (211071, 242445, 593985))
    v = np.array([[211072, 242464, 594000], [213120, 242474, 614480], [211100.3, 242500.9, 600000.2]])
    expected = [[211071, 242466, 594006], [213129, 242466, 614481], [211092, 242508, 599991]]
    frag = decode(encode(v, np.array([[0, 1, 2]]), s))
    assert sorted(frag.vertices.tolist()) == sorted(expected)
    assert frag.settings == s
    assert snap(v, s).tolist() == expected


def test_unencodable_meshes_raise():
    s = DracoSettings(10, 21483, (0, 0, 0))
    with pytest.raises(DracoError, match="no faces"):
        encode(np.zeros((3, 3)), np.zeros((0, 3)), s)
    with pytest.raises(DracoError):
        encode(np.zeros((3, 3)), np.array([[0, 1, 2]]), s)  # all triangles degenerate
    with pytest.raises(DracoError):
        decode(b"not draco")
