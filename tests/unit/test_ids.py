"""The id codec against the worked examples of ../shared/spec/reference-values.md."""

import numpy as np
import pytest

from raymesh.graph.ids import ChunkLayout, GraphLayoutError, compute_bitmasks, layer_count_for

MINNIE = ChunkLayout.from_voxels([192424, 131051, 13008], [256, 256, 512])


def test_layer_count_and_bitmasks():
    assert MINNIE.n_chunks == (752, 512, 26)
    assert MINNIE.n_layers == 12
    assert MINNIE.bitmasks == {1: 10, 2: 10, 3: 9, 4: 8, 5: 7, 6: 6, 7: 5, 8: 4, 9: 3, 10: 2, 11: 1, 12: 1}
    assert compute_bitmasks(4, 10) == {1: 10, 2: 10, 3: 1, 4: 1}
    assert compute_bitmasks(13, 11)[2] == 11 and compute_bitmasks(13, 11)[11] == 2
    with pytest.raises(GraphLayoutError, match="not enough spatial bits"):
        compute_bitmasks(13, 10)
    assert [MINNIE.segment_bits(layer) for layer in (1, 2, 3, 12)] == [26, 26, 29, 53]
    assert layer_count_for([1, 1, 1]) == 2 and layer_count_for([8, 8, 8]) == 5 and layer_count_for([9, 1, 1]) == 6


def test_layer_chunk_bounds():
    expected = {2: (752, 512, 26), 3: (376, 256, 13), 4: (188, 128, 7), 5: (94, 64, 4), 6: (47, 32, 2),
                7: (24, 16, 1), 8: (12, 8, 1), 9: (6, 4, 1), 10: (3, 2, 1), 11: (2, 1, 1), 12: (1, 1, 1)}
    assert {layer: MINNIE.layer_chunk_bounds(layer) for layer in expected} == expected


def test_chunk_ids_and_positions():
    cid = MINNIE.chunk_id(2, 376, 256, 13)
    assert cid == 170591428945117184 == 0x025E100034000000
    node = MINNIE.node_id(cid, 5)
    assert node == 170591428945117189
    assert MINNIE.chunk_position_number(node) == 394526733
    assert MINNIE.get_chunk_id(node) == cid
    assert MINNIE.get_segment_id(node) == 5
    assert MINNIE.chunk_id(3, 188, 128, 6) == 242666617517899776
    assert MINNIE.chunk_position_number(242666617517899776) == 49348614
    l5 = MINNIE.chunk_id(5, 10, 20, 3)
    assert l5 == 366005533733289984 and MINNIE.chunk_position_number(l5) == 166403
    assert MINNIE.chunk_id(12, 0, 0, 0) == 864691128455135232
    assert MINNIE.chunk_position_number(864691128455135232) == 0
    with pytest.raises(GraphLayoutError, match="does not fit"):
        MINNIE.chunk_id(11, 2, 0, 0)


def test_vectorised_decoding_mixed_layers():
    ids = np.array([170591428945117189, 366005533733289991, 864691128455135232], dtype=np.uint64)
    assert MINNIE.get_chunk_layer(ids).tolist() == [2, 5, 12]
    assert MINNIE.get_chunk_coordinates(ids).tolist() == [[376, 256, 13], [10, 20, 3], [0, 0, 0]]
    assert MINNIE.get_segment_id(ids).tolist() == [5, 7, 0]


@pytest.mark.parametrize("node, layer, coords, pos", [
    (440473154180453586, 6, (7, 14, 0), 29568),
    (446120245900606131, 6, (12, 15, 0), 50112),
    (511651138917622208, 7, (3, 7, 0), 3296),
    (520728706916532712, 7, (7, 8, 0), 7424),
    (513902938730988744, 7, (4, 7, 0), 4320),
])
def test_cloudvolume_manifest_ids(node, layer, coords, pos):
    assert MINNIE.get_chunk_layer(node) == layer
    assert tuple(MINNIE.get_chunk_coordinates(node)) == coords
    assert MINNIE.chunk_position_number(node) == pos


def test_parent_and_children_chunks():
    assert MINNIE.parent_chunk_ids(170591428945117184) == [
        170591428945117184, 242666617517899776, 314759405591592960, 386887389848535040,
        458522737061658624, 529735906169454592, 600104650347118592, 668784544664518656,
        743093938516131840, 792633534417207296, 864691128455135232]
    assert MINNIE.children_chunk_ids(242666617517899776) == [
        170591428878008320, 170591428945117184, 170591497597485056, 170591497664593920,
        170661797622185984, 170661797689294848, 170661866341662720, 170661866408771584]
    kids = MINNIE.children_chunk_ids(MINNIE.chunk_id(4, 0, 0, 6))
    assert [tuple(MINNIE.get_chunk_coordinates(k)) for k in kids] == [(0, 0, 12), (0, 1, 12), (1, 0, 12), (1, 1, 12)]
    assert MINNIE.children_chunk_ids(170591428945117184) == [170591428945117184]
    # A supervoxel lies in the layer-2 chunk with its own coordinates.
    sv = MINNIE.chunk_id(1, 376, 256, 13) | 9
    assert MINNIE.parent_chunk_id(sv, 2) == 170591428945117184


@pytest.mark.parametrize("coords, stop", [
    ((0, 0, 0), 3), ((1, 0, 0), 4), ((1, 1, 1), 4), ((3, 0, 2), 5), ((7, 0, 0), 6),
    ((376, 256, 13), 4), ((375, 255, 13), 11), ((511, 0, 0), 12), ((751, 511, 25), 12),
])
def test_stop_layer(coords, stop):
    assert MINNIE.stop_layer(coords) == stop


def test_bad_layouts():
    with pytest.raises(GraphLayoutError, match="chunk size"):
        ChunkLayout.from_voxels([10, 10, 10], [0, 4, 4])
    with pytest.raises(GraphLayoutError, match="FANOUT"):
        ChunkLayout(n_layers=4, n_chunks=(4, 4, 4), fanout=3)


def _stop_layer_by_ids(layout, l2_coords):
    """PCG's way (6.3 step 1): compare the neighbours' ancestor chunk ids layer by layer,
    skipping a neighbour whose id arithmetic fails."""
    from raymesh.graph.ids import GraphLayoutError

    lists = []
    cx, cy, cz = (int(v) for v in l2_coords)
    for x in (cx, cx + 1):
        for y in (cy, cy + 1):
            for z in (cz, cz + 1):
                try:
                    lists.append(layout.parent_chunk_ids(int(layout.chunk_id(2, x, y, z))))
                except GraphLayoutError:
                    continue
    first = lists[0]
    return next(2 + i for i in range(len(first)) if all(lst[i] == first[i] for lst in lists))


@pytest.mark.parametrize("voxels, chunk, bits", [
    ((512, 512, 512), (64, 64, 64), 10), ((2048, 2048, 512), (64, 64, 64), 10), ((96, 96, 48), (32, 32, 16), 10),
    ((256, 256, 256), (16, 16, 16), 4), ((1024, 1024, 1024), (4, 4, 4), 8)])
def test_stop_layer_from_coordinates_equals_pcgs_id_comparison(voxels, chunk, bits):
    layout = ChunkLayout.from_voxels(voxels, chunk, spatial_bits=bits)
    bounds = layout.layer_chunk_bounds(2)
    rng = np.random.default_rng(0)
    coords = [tuple(int(rng.integers(0, b)) for b in bounds) for _ in range(300)]
    coords += [(0, 0, 0), tuple(b - 1 for b in bounds)]
    for c in coords:
        assert layout.stop_layer(c) == _stop_layer_by_ids(layout, c), c
