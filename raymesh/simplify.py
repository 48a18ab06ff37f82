"""Layer-2 mesh simplifiers other than zmesh's own: pure, ``(vertices, faces)`` in and out.

``MeshConfig.simplifier`` picks one (``l2.simplified_meshes``):

- ``zmesh`` (default): zmesh's quadric edge collapse inside ``Mesher.get`` (reduction factor 100,
  ``max_error``), PCG's call (pcg-compat.md 6.6). Not here: it runs inside the mesher.
- ``meshopt``: ``simplify_meshopt`` below, meshoptimizer's edge-collapse simplifier on the
  unsimplified marching-cubes mesh (``Mesher.get(label, reduction_factor=0)``): about 3x the
  layer-2 kernel rate (marching cubes + simplification + Draco) on the real volume at 8x8x40 nm,
  with fewer triangles and bytes and as close to the marching-cubes surface
  (``benchmarks/simplifier.py``). Its output is not PCG's, so zmesh stays the default.

How borders are kept. A layer-2 block is meshed with the array boundary open (``close=False``):
each surface ends on the block's faces, the voxel-centre planes at 0 and ``top = (shape - 1) *
resolution`` on each axis, where its open edges are the marching-squares contour of the labels on
that plane. The neighbouring chunk's mesh (or a cap, a seam patch) ends on the same plane along
the same contour, and stitching merges the two by exact vertex position. So those vertices must
come out exactly where marching cubes put them:

1. every vertex with a coordinate equal to 0 or ``top`` on some axis is passed to meshoptimizer as
   locked (``vertex_lock``): no collapse moves or removes it (and ``meshopt_SimplifyLockBorder`` is
   not needed: in zmesh's marching cubes every on-plane vertex is an open-boundary vertex);
2. meshoptimizer's edge collapse never moves a vertex: the output is a subset of the input's
   vertices, bit for bit (float32, as zmesh gives them), so nothing is ever placed outside the
   block either (a simplifier that re-solves positions, like fqmr, can push a vertex near a face
   past it).

Two more guards keep what zmesh's simplifier keeps: a connected component that the collapses
would remove entirely (a voxel or two, a one-voxel-thin needle) is put back unsimplified, so every
object keeps every piece; and the error bound is absolute, in nm (``meshopt_SimplifyErrorAbsolute``).

The error target. meshoptimizer bounds its own (quadric) estimate of each collapse's deviation,
in nm; zmesh's ``max_error`` is not a distance (its quadrics are area-weighted), and the deviation
its output measures from the marching-cubes surface grows more slowly than ``max_error`` and with
the voxel size. ``meshopt_target_error`` maps ``max_error`` and the resolution to the meshoptimizer
target that measures like zmesh's output, a fit (``MESHOPT_ERROR_FIT``) of the sampled distances
both ways at max_error 10, 40 and 160 on 8 nm voxels and at 16 and 32 nm voxels (max_error 40)
of the real volume: ``c * max_error**(1/3) * sqrt(smallest voxel side)``. The factor ``c`` was
0.62 (6.0 nm for PCG's default 40 at 8x8x40 nm), where meshopt made 31% fewer triangles than
zmesh but kept 97.7% of the marching-cubes area and left a few points of that surface up to
80 nm away; at 0.48 (4.6 nm; 9.3 nm at minnie65's mip-2 32x32x40 nm) it measures at least as
well as zmesh on every figure, every sampled distance within max_error and the area within 1%,
with still fewer triangles and bytes (``benchmarks/simplifier.py``, the quick crop: 0.45,
0.48, 0.52 and 0.62 side by side with zmesh, 2026-11-30). On the whole volume at 0.48: 2.81x
zmesh's kernel rate, area 0.991 (zmesh 0.950), 9 of 12.8 M sampled points over max_error
(zmesh 247), 7.6% fewer triangles.
"""

from __future__ import annotations

import ctypes

import numpy as np

SIMPLIFIERS = ("zmesh", "meshopt")

MESHOPT_ERROR_FIT = 0.48
_ERROR_ABSOLUTE = 1 << 2

_LIB = None


def _meshopt():
    """meshoptimizer's C library, loaded once with ``meshopt_simplifyWithAttributes`` declared
    (the Python package's own wrapper of it leaves the argument types out)."""
    global _LIB
    if _LIB is None:
        from meshoptimizer._loader import find_library

        lib = ctypes.CDLL(find_library())
        f = lib.meshopt_simplifyWithAttributes
        u32, f32 = ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_float)
        size = ctypes.c_size_t
        f.argtypes = [u32, u32, size, f32, size, size, f32, size, f32, size, ctypes.POINTER(ctypes.c_ubyte),
                      size, ctypes.c_float, ctypes.c_uint, f32]
        f.restype = size
        _LIB = lib
    return _LIB


def on_block_planes(vertices: np.ndarray, top) -> np.ndarray:
    """Vertices on a face of the block: some coordinate exactly 0 or ``top`` on its axis."""
    v = np.asarray(vertices)
    t = np.asarray(top, dtype=v.dtype)
    return ((v == 0) | (v == t)).any(axis=1)


def meshopt_target_error(max_error: float, resolution) -> float:
    """meshoptimizer's absolute target error (nm) that measures like zmesh at ``max_error``
    (module docstring, "The error target")."""
    smallest = float(min(float(r) for r in resolution))
    return MESHOPT_ERROR_FIT * float(max_error) ** (1 / 3) * smallest ** 0.5


def _components(n_vertices: int, faces: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    return connected_components(graph, directed=False)


def simplify_meshopt(vertices: np.ndarray, faces: np.ndarray, top, max_error: float = 40.0,
                     reduction_factor: int = 100, resolution=(8.0, 8.0, 40.0), target_error: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """meshoptimizer's simplification of a block's marching-cubes mesh, its block faces kept.

    ``vertices`` (n, 3) in the block's frame (nm, the first voxel's centre at 0), ``faces`` (m, 3);
    ``top``: the block's last voxel-centre plane per axis, ``(shape - 1) * resolution``. Aims for
    ``len(faces) // reduction_factor`` triangles, stopping at the absolute error ``target_error``
    nm (default: ``meshopt_target_error(max_error, resolution)``). Returns ``(vertices, faces)``:
    the kept vertices in their input order and dtype, every vertex on a block face among them
    unchanged (module docstring). ``reduction_factor`` 0 returns the input.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if reduction_factor == 0 or not len(faces):
        return vertices, faces
    v32 = np.ascontiguousarray(vertices, dtype=np.float32)
    lock = on_block_planes(v32, top)
    target = (len(faces) // int(reduction_factor)) * 3
    error = meshopt_target_error(max_error, resolution) if target_error is None else float(target_error)
    return collapse_locked(vertices, faces, lock, error, target)


def collapse_locked(vertices: np.ndarray, faces: np.ndarray, lock: np.ndarray, error: float,
                    target_indices: int = 0, return_kept: bool = False, keep_components: bool = True):
    """meshoptimizer's edge collapse with ``lock``-ed vertices kept, at most ``error`` nm away
    (absolute), down to ``target_indices`` (0: as far as the error allows). The output's vertices
    are a subset of the input's, unchanged; a connected component the collapses would remove
    entirely is put back unsimplified (``keep_components``; a caller that measures the result
    anyway may leave that to its measure). ``return_kept``: also the indices of the kept vertices."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if not len(faces):
        return (vertices, faces, np.arange(len(vertices))) if return_kept else (vertices, faces)
    v32 = np.ascontiguousarray(vertices, dtype=np.float32)
    indices = np.ascontiguousarray(faces, dtype=np.uint32).reshape(-1)
    lock = np.ascontiguousarray(lock, dtype=np.uint8)
    dest = np.empty_like(indices)
    u32, f32 = ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_float)
    n = _meshopt().meshopt_simplifyWithAttributes(
        dest.ctypes.data_as(u32), indices.ctypes.data_as(u32), indices.size,
        v32.ctypes.data_as(f32), len(v32), 12, None, 0, None, 0,
        lock.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)), int(target_indices), float(error),
        _ERROR_ABSOLUTE, None)
    out = dest[:n].reshape(-1, 3)
    if keep_components:
        n_comp, comp = _components(len(v32), indices.reshape(-1, 3))
        kept = np.zeros(n_comp, dtype=bool)
        kept[comp[out.ravel()]] = True
        if not kept.all():  # put back, unsimplified, what the collapses removed entirely
            gone = ~kept[comp[indices.reshape(-1, 3)[:, 0]]]
            out = np.concatenate([out, indices.reshape(-1, 3)[gone]])
    # The kept vertices in input order and the faces renumbered onto them (what np.unique with
    # return_inverse gives, without its sorted copy and 64-bit inverse of every index).
    keep = np.zeros(len(v32), dtype=bool)
    keep[out] = True
    used = np.flatnonzero(keep)
    del keep
    rank = np.zeros(len(v32), dtype=faces.dtype if faces.dtype.kind in "iu" else np.int64)
    rank[used] = np.arange(len(used), dtype=rank.dtype)
    result = vertices[used], rank[out].astype(faces.dtype, copy=False)
    return (*result, used) if return_kept else result


def simplify(name: str, vertices: np.ndarray, faces: np.ndarray, top, max_error: float = 40.0,
             reduction_factor: int = 100, resolution=(8.0, 8.0, 40.0)) -> tuple[np.ndarray, np.ndarray]:
    """The named simplifier (other than ``zmesh``, which runs inside the mesher) on one block's
    marching-cubes mesh of one label (``resolution``: the block's voxel size, nm)."""
    if name == "meshopt":
        return simplify_meshopt(vertices, faces, top, max_error, reduction_factor, resolution)
    raise ValueError(f"unknown simplifier {name!r}: expected one of {', '.join(SIMPLIFIERS[1:])}")
