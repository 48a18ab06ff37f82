"""``geometry.distance``: the exact point-to-triangle and point-to-mesh distances that the LOD
chain's error bound and the quality benchmarks rest on, against brute force."""

from __future__ import annotations

import numpy as np

from raymesh.geometry.distance import closest_distance, mesh_distance


def _dense_samples(a, b, c, n: int = 60) -> np.ndarray:
    """Points filling the triangle on a barycentric grid (its corners and edges included)."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    keep = u + v <= 1
    u, v = u[keep], v[keep]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def test_point_to_triangle_matches_a_dense_sampling_in_every_region():
    rng = np.random.default_rng(3)
    n = 300
    p, a, b, c = (rng.normal(size=(n, 3)) * 10 for _ in range(4))
    p[:50] = a[:50] + 0.2 * (b[:50] - a[:50]) + 0.3 * (c[:50] - a[:50])  # on the face: distance 0
    b[50:60] = a[50:60]  # degenerate: two corners the same
    d = closest_distance(p, a, b, c)
    assert np.allclose(d[:50], 0, atol=1e-9)
    # A degenerate triangle may read as infinitely far (its formula divides by zero): never nearer
    # than it is; in a mesh its edges belong to its neighbours.
    assert np.all(d[50:60] >= [np.linalg.norm(_dense_samples(a[i], b[i], c[i]) - p[i], axis=1).min() - 1e-9
                               for i in range(50, 60)])
    for i in [*range(50), *range(60, n)]:
        brute = np.linalg.norm(_dense_samples(a[i], b[i], c[i]) - p[i], axis=1).min()
        # never above the best sample, and never below it by more than the grid's spacing
        spacing = max(np.linalg.norm(b[i] - a[i]), np.linalg.norm(c[i] - a[i]), np.linalg.norm(c[i] - b[i])) / 59
        assert d[i] <= brute + 1e-9 and d[i] >= brute - spacing, (i, d[i], brute)


def test_mesh_distance_is_the_minimum_over_all_triangles_near_and_far():
    """Points close to the mesh (the k-nearest pass) and far from it (the refinement pass, which
    checks every triangle that could be closer) both get the exact minimum over all faces."""
    rng = np.random.default_rng(5)
    # a bumpy sheet of triangles with centroids far apart from some of their corners (long
    # triangles make the k nearest centroids miss the closest face)
    x, y = np.meshgrid(np.arange(12.0), np.arange(5.0))
    vertices = np.stack([x.ravel() * 40, y.ravel() * 3, rng.normal(size=x.size)], axis=1)
    faces = []
    for j in range(4):
        for i in range(11):
            q = j * 12 + i
            faces += [(q, q + 1, q + 12), (q + 1, q + 13, q + 12)]
    faces = np.array(faces)
    points = np.concatenate([rng.uniform([0, 0, -2], [440, 12, 2], size=(200, 3)),
                             rng.uniform([-300, -300, -300], [700, 300, 300], size=(200, 3))])
    got = mesh_distance(points, vertices, faces, k=2, refine_above=0.5)
    tri = vertices[faces]
    brute = np.array([closest_distance(np.broadcast_to(p, (len(faces), 3)), tri[:, 0], tri[:, 1], tri[:, 2]).min()
                      for p in points])
    far = got > 0.5
    assert far.sum() > 150, "both passes are exercised"
    assert np.array_equal(got[far], brute[far]), "refined points: the exact minimum"
    assert np.all(got >= brute - 1e-12), "never below the true distance"


def test_the_exact_pass_holds_a_bounded_number_of_pairs_however_large_a_triangle(monkeypatch):
    """One huge triangle makes every point's reach (its distance plus the largest triangle's
    radius) cover the whole mesh: the exact pass once measured all those pairs at a time, the
    biggest allocation of every LOD task. It now measures at most ``max_pairs`` per call and
    still gets the exact minimum over all faces."""
    import raymesh.geometry.distance as distance

    rng = np.random.default_rng(11)
    # a fine sheet of small triangles and one huge triangle far to the side
    x, y = np.meshgrid(np.arange(40.0), np.arange(40.0))
    vertices = np.stack([x.ravel() * 5, y.ravel() * 5, rng.normal(size=x.size) * 0.3], axis=1)
    q = (np.arange(39)[None, :] + 40 * np.arange(39)[:, None]).ravel()
    faces = np.concatenate([np.stack([q, q + 1, q + 40], 1), np.stack([q + 1, q + 41, q + 40], 1)])
    big = len(vertices)
    vertices = np.concatenate([vertices, [[-5000.0, -5000.0, 50.0], [5000.0, -5000.0, 50.0], [0.0, 5000.0, 50.0]]])
    faces = np.concatenate([faces, [[big, big + 1, big + 2]]])
    points = rng.uniform([0, 0, 5], [195, 195, 30], size=(300, 3))

    sizes = []
    real, refined = distance.closest_distance, distance._refined
    monkeypatch.setattr(distance, "closest_distance", lambda p, a, b, c: sizes.append(len(p)) or real(p, a, b, c))
    monkeypatch.setattr(distance, "_refined", lambda *args: refined(*args, max_pairs=500))
    got = distance.mesh_distance(points, vertices, faces, k=2, refine_above=1.0)
    monkeypatch.setattr(distance, "closest_distance", real)

    tri = vertices[faces]
    brute = np.array([real(np.broadcast_to(p, (len(faces), 3)), tri[:, 0], tri[:, 1], tri[:, 2]).min()
                      for p in points])
    assert np.array_equal(got, brute), "the exact minimum over every face"
    assert max(sizes) <= max(500, 2 * len(points)), max(sizes)  # the exact pass's calls: 500 pairs at most
    assert sum(sizes) > 100 * len(faces), "the huge triangle put most faces within every point's reach"
