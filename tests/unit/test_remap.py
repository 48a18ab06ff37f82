"""Overlap resolution (pcg-compat.md 6.3) on hand-made blocks, no graph needed."""

import numpy as np

from raymesh.remap import Neighbourhood, latest_l2_nodes, remap_chunk


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
