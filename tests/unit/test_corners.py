"""Corner columns (raymesh.layer2.corners): two chunks' face caps meeting in a third chunk's cells."""

import numpy as np

from raymesh.layer2.corners import ChunkView, corner_drops, corner_pairs, corner_patches
from raymesh.layer2.squares import REGION, square_residual


def test_a_square_covered_once_from_each_side_is_closed_and_once_from_one_side_open():
    full = (5, 5, 5, 5)
    assert square_residual([(full, -1), (full, 1)], []) == []
    ((group, bits, lid),) = square_residual([(full, -1)], [])
    assert group == (0, 1, 2, 3) and bits == REGION[0b1111] and lid == -1, "held above: lid down"
    ((_, bits, lid),) = square_residual([((5, 0, 0, 0), 1), ((0, 0, 0, 0), -1)], [])
    assert bits == REGION[0b0001] and lid == 1
    # A flat piece on the face closes what one side leaves open.
    assert square_residual([((5, 0, 0, 0), 1)], [((0,), REGION[0b0001], 1)]) == []
    # Two objects on one square are closed or open each on its own.
    out = square_residual([((5, 0, 0, 0), 1), ((0, 0, 0, 6), 1), ((0, 0, 0, 6), -1)], [])
    assert out == [((0,), REGION[0b0001], 1)]


def _edge_line_views():
    """Four 2x2x2 chunks (+1 overlap) around the z line at x = y = 2: P (0,0,0), E (1,0,0),
    M (0,1,0), U (1,1,0). P meshes nothing of the object. E's node 1 holds its voxels at x = 2,
    y = 1 and links U's voxels on the line; E caps it on x. M's node 2 holds its voxel at x = 1,
    y = 2 on z = 0 only (a saddle along the line) and links U's voxels too; M caps it on y. U's
    node 3 is covered. 643331 of the real volume, in small."""
    shape = (3, 3, 3)
    e = np.zeros(shape, np.uint64)
    e[0, 1, :2] = 1
    e[0, 2, :2] = 1  # U's voxels on the line, linked to 1
    m = np.zeros(shape, np.uint64)
    m[1, 0, 0] = 2
    m[2, 0, :2] = 2  # U's voxels on the line, linked to 2
    u = np.zeros(shape, np.uint64)
    u[0, 0, :2] = 3
    views = {"E": ChunkView(e, {(0,): {1}}), "M": ChunkView(m, {(1,): {2}}),
             "U": ChunkView(u, {}), "P": ChunkView(np.zeros(shape, np.uint64), {})}
    return views


def test_the_cap_on_the_higher_axis_leaves_the_shared_line_to_the_other():
    v = _edge_line_views()
    assert corner_pairs(v["E"], (2, 2, 2)) == [(0, 1)]
    assert corner_pairs(v["M"], (2, 2, 2)) == [(1, 0)]
    # E's cap is on x (the lower axis): it keeps the line. M's is on y: it drops it where E holds it.
    assert corner_drops(v["E"], [(0, 1)], {"M": {(0, 1): v["M"]}}) == {}
    drops = corner_drops(v["M"], [(1, 0)], {"M": {(1, 0): v["E"]}})
    assert list(drops) == [(1,)] and drops[(1,)][-1].tolist() == [True, True, False]
    assert drops[(1,)][:-1].sum() == 0, "nothing else of M's first plane"


def test_what_the_two_caps_leave_open_along_a_saddle_is_patched_on_one_face():
    v = _edge_line_views()
    res = np.ones(3)
    # E's face (x = 2): its own mesh and its cap hold the same squares: nothing open.
    e_pairs = {k: {(0, 1): v[k]} for k in ("P", "M", "U")}
    assert corner_patches(v["E"], [(0, 1)], e_pairs, {0: np.take(v["E"].labels, 0, axis=0)}, res) == {}
    # M's face (y = 2): above it M's node holds three corners of the square z 0-1; below, M's cap
    # holds its own corner (the line dropped) and E's cap the line's two: the diamond's half
    # toward M's corners is open, held above (lid facing -y).
    m_pairs = {"P": {(1, 0): v["P"]}, "M": {(1, 0): v["E"]}, "U": {(1, 0): v["U"]}}
    patches = corner_patches(v["M"], [(1, 0)], m_pairs, {1: np.take(v["M"].labels, 0, axis=1)}, res)
    ((axes, vertices, faces),) = patches[2]
    assert axes == (1,) and len(faces) == 1
    assert np.all(vertices[:, 1] == 0), "on M's first plane on y"
    assert {tuple(p) for p in vertices[:, [0, 2]].tolist()} == {(1.5, 0.0), (1.0, 0.5), (1.5, 1.0)}
    normal = np.cross(vertices[faces[0, 1]] - vertices[faces[0, 0]], vertices[faces[0, 2]] - vertices[faces[0, 0]])
    assert normal[1] < 0
