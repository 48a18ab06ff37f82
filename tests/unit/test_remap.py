"""Overlap resolution (pcg-compat.md 6.3) on hand-made blocks, no graph needed."""

import numpy as np

from raymesh.layer2.remap import Neighbourhood, latest_l2_nodes, remap_chunk


def test_safe_node_takes_its_object_in_the_overlap():
    seg = np.zeros((4, 3, 3), dtype=np.uint64)
    seg[:3, 1, 1] = 11  # own sv
    seg[3, 1, 1] = 21  # neighbour's sv of the same object (same ancestor)
    seg[3, 0, 0] = 22  # neighbour's sv of another object
    hood = Neighbourhood(3, own={101: np.array([11], np.uint64)},
                         others={201: np.array([21], np.uint64), 202: np.array([22], np.uint64)},
                         ancestor={101: 900, 201: 900, 202: 901})
    out = remap_chunk(seg, hood)
    assert out[3, 1, 1] == 101 and out[:3, 1, 1].tolist() == [101, 101, 101]
    assert out[3, 0, 0] == 0, "another object's overlap voxels are not meshed here"


def test_unsafe_nodes_split_the_overlap_geometrically():
    # Two own nodes of one object (joined elsewhere): each overlap component goes to the node behind it.
    seg = np.zeros((4, 4, 1), dtype=np.uint64)
    seg[:3, 0, 0], seg[:3, 3, 0] = 11, 12
    seg[3, 0:4, 0] = [31, 0, 0, 31]  # the neighbour's sv, in two separate components
    hood = Neighbourhood(3, own={101: np.array([11], np.uint64), 102: np.array([12], np.uint64)},
                         others={301: np.array([31], np.uint64)},
                         ancestor={101: 900, 102: 900, 301: 900})
    out = remap_chunk(seg, hood)
    assert out[3, 0, 0] == 101 and out[3, 3, 0] == 102


def test_superseded_nodes_are_shadowed_by_newer_ids():
    rows = {5: np.array([1, 2], np.uint64), 7: np.array([1, 2, 3], np.uint64), 6: np.array([4], np.uint64)}
    assert sorted(latest_l2_nodes(rows)) == [6, 7]


def test_dust_removal_keeps_border_labels():
    seg = np.zeros((6, 6, 6), dtype=np.uint64)
    seg[1, 1, 1] = 11
    seg[5, 5, 5] = 12
    hood = Neighbourhood(3, own={101: np.array([11], np.uint64), 102: np.array([12], np.uint64)}, others={},
                         ancestor={101: 1, 102: 2})
    out = remap_chunk(seg, hood, dust_threshold=5)
    assert out[1, 1, 1] == 0 and out[5, 5, 5] == 102


def test_overlap_component_with_nothing_behind_goes_to_the_smallest_own_node():
    # Deviation from PCG (which zeroes it): the component reaches the overlap only at an edge, so
    # nothing of the object is directly behind it; zeroing it would open a hole between chunks.
    seg = np.zeros((4, 4, 1), dtype=np.uint64)
    seg[:3, 0, 0], seg[:3, 2, 0] = 11, 12
    seg[3, 3, 0] = 31  # neighbour sv of the same object, behind it (2, 3, 0) is background
    hood = Neighbourhood(3, own={101: np.array([11], np.uint64), 102: np.array([12], np.uint64)},
                         others={301: np.array([31], np.uint64)},
                         ancestor={101: 900, 102: 900, 301: 900})
    assert remap_chunk(seg, hood)[3, 3, 0] == 101


def test_lower_neighbours_are_faces_then_edges_then_the_corner_inside_the_dataset():
    from raymesh.graph.ids import ChunkLayout
    from raymesh.layer2.remap import lower_neighbours

    layout = ChunkLayout.from_voxels((256, 256, 256), (64, 64, 64))
    got = lower_neighbours(layout, (1, 2, 1))
    assert [axes for axes, _ in got] == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert dict(got)[(0, 2)] == [0, 2, 0] and dict(got)[(0, 1, 2)] == [0, 1, 0]
    assert [axes for axes, _ in lower_neighbours(layout, (1, 0, 3))] == [(0,), (2,), (0, 2)]
    assert lower_neighbours(layout, (0, 0, 0)) == []


def test_an_edge_is_open_only_where_every_neighbour_around_it_leaves_the_node_open():
    from raymesh.layer2.remap import uncovered_by_lower

    # Own nodes 101 and 102; their ancestors at stop layer 3 are 901 and 902.
    own = {101: np.array([11], np.uint64), 102: np.array([12], np.uint64)}
    anc = {101: 901, 102: 902, 201: 901, 202: 902, 203: 0}
    lower = {(0,): (3, [201]),  # covers 101
             (2,): (3, [203]),  # covers nothing (a broken chain is never "the same object")
             (0, 2): (3, [])}
    hood = Neighbourhood(3, own=own, others={}, ancestor={101: 901, 102: 902}, lower=lower,
                         ancestor_at={3: anc})
    open_ = uncovered_by_lower(hood)
    assert open_ == {(0,): {102}, (2,): {101, 102}, (0, 2): {102}}
