"""One node's level-of-detail mesh from its descendants' LOD meshes (pure: bytes in, bytes out).

A layer-L node's LOD mesh is the union of its meshed descendants' LOD meshes (layer-2 fragments
for layer 3; the layer-(L-1) LOD meshes above), merged across the node's mid-planes exactly as
stitching merges them, then simplified by edge collapse (meshoptimizer) with an error budget
that grows with the layer (``lod_budget``). Two rules keep it usable as Neuroglancer's
``neuroglancer_multilod_draco`` LOD L-2 (neuroglancer-multires.md 4 and 9):

- **no crack between neighbours**: a vertex on an open edge of a descendant's piece (where the
  object leaves the piece's chunk, always on a chunk face) is locked, so two nodes of one layer
  that meet on a face keep the same vertices there, as at layer 2;
- **cut on the child grid**: a vertex on one of the node's three mid-planes is locked too. Every
  layer-2 triangle lies in its chunk's closed box, an edge collapse moves a vertex onto one of its
  neighbours (meshoptimizer never places a new vertex) and a locked vertex never moves, so by
  induction no triangle of any LOD crosses a plane of its child grid (it may touch one).

Vertices are a subset of the inputs', unchanged, so they stay on the chunk-aligned Draco grid and
the LOD mesh is encoded with the same settings stitching would use for the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raymesh.formats.draco import DracoError, MeshGrid, decode, encode
from raymesh.simplify import collapse_locked
from raymesh.stitch import ChildFragmentError, lift_fragment, merge_across_boundaries, seam_planes


def lod_budget(base_error: float, layer: int, growth: float = 2.0) -> float:
    """Distance (nm) a layer's LOD surface may be from the layer-2 surface: ``base * growth^(L-2)``
    (0 for layer 2, whose fragments are the reference)."""
    if layer <= 2:
        return 0.0
    return float(base_error) * float(growth) ** (int(layer) - 2)


def lod_step(base_error: float, layer: int, growth: float = 2.0) -> float:
    """What one layer's simplification may add: its budget less the layer below's, so the
    deviations of the successive collapses add up to at most the layer's budget."""
    below = lod_budget(base_error, layer - 1, growth) if layer > 3 else 0.0
    return lod_budget(base_error, layer, growth) - below


def edge_counts(faces: np.ndarray) -> tuple[int, int]:
    """``(open, non-manifold)`` edges: used by one face, by more than two."""
    from raymesh.verify.geometry import edge_use

    if not len(faces):
        return 0, 0
    use = edge_use(np.asarray(faces))
    return int((use == 1).sum()), int((use > 2).sum())


def open_edge_vertices(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Vertices on an edge that one face uses: where a piece's surface stops on its chunk's faces."""
    from raymesh.verify.geometry import edge_use

    mask = np.zeros(n_vertices, dtype=bool)
    if len(faces):
        edges, counts = edge_use(np.asarray(faces), return_edges=True)
        mask[edges[counts == 1].ravel()] = True
    return mask


@dataclass
class LodMesh:
    vertices: np.ndarray  # float64 (n, 3) nm
    faces: np.ndarray  # (m, 3)
    input_faces: int  # faces of the descendants' meshes it was made from


def simplify_node(grid: MeshGrid, chunk_id: int, pieces: list[tuple[int, np.ndarray, np.ndarray, object]],
                  error: float) -> tuple[LodMesh, object]:
    """The node's LOD mesh from its descendants' decoded meshes ``(desc, vertices, faces, settings)``.

    Returns the mesh and the Draco settings to encode it with (the first piece's, lifted to the
    node's layer, as stitching does)."""
    layer = int(grid.layout.get_chunk_layer(chunk_id))
    planes = seam_planes(grid, chunk_id)
    parts, locks, settings = [], [], None
    input_faces = 0
    for desc, vertices, faces, s in pieces:
        lifted, s_out = lift_fragment(grid, vertices, s, desc, layer)
        settings = settings or s_out
        parts.append((lifted, faces))
        locks.append(open_edge_vertices(len(lifted), faces))
        input_faces += len(faces)
    if settings is None:
        raise DracoError("no descendant has a mesh")
    lock = np.concatenate(locks)
    stacked = np.concatenate([v for v, _ in parts])
    on_plane = (stacked == planes).any(axis=1)
    # merge_across_boundaries keeps off-plane vertices in order, then appends the deduplicated
    # on-plane ones (all locked).
    off_lock = lock[~on_plane]
    del stacked, lock
    vertices, faces = merge_across_boundaries(parts, planes)
    merged_lock = np.ones(len(vertices), dtype=bool)
    merged_lock[:len(off_lock)] = off_lock
    vertices, faces = bounded_collapse(vertices, faces, merged_lock, error)
    return LodMesh(vertices, faces, input_faces), settings


def bounded_collapse(vertices: np.ndarray, faces: np.ndarray, lock: np.ndarray, error: float,
                     attempts: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``collapse_locked`` whose result is checked against ``error`` both ways, and redone with
    half the target until it holds (after ``attempts``: the input, unsimplified).

    The check is needed: meshoptimizer's error is a quadric estimate, an area-weighted mean of
    squared distances to the input's planes, so a thin tube can shrink along its axis (the side
    walls' planes do not see it) far past the target; on the synthetic tubes, 250 nm at a 40 nm
    target; and it can fold a thin part onto itself (an edge of four faces). Refused: more open or
    non-manifold edges than the input had. Measured: every input vertex to the output surface (what the output leaves out) and
    every output face's centre to the input surface (how far it strays)."""
    from raymesh.geometry.distance import mesh_distance

    faces = np.asarray(faces)
    target = float(error)
    before = edge_counts(faces)
    for _ in range(attempts):
        out_v, out_f = collapse_locked(vertices, faces, lock, target)
        if len(out_f) == len(faces):
            return out_v, out_f
        open_edges, nonmanifold = edge_counts(out_f)
        if open_edges > before[0] or nonmanifold > before[1]:  # a fold or a tear: closed objects must stay closed
            target /= 2
            continue
        f64 = out_f.astype(np.int64)
        left_out = mesh_distance(np.asarray(vertices, np.float64), out_v, f64, refine_above=error)
        strays = mesh_distance(out_v[f64].mean(axis=1), vertices, faces.astype(np.int64), refine_above=error)
        if left_out.max(initial=0) <= error and strays.max(initial=0) <= error:
            return out_v, out_f
        target /= 2
    return vertices, faces


def lod_node(grid: MeshGrid, chunk_id: int, fragments: list[tuple[int, bytes]], error: float
             ) -> tuple[bytes, LodMesh]:
    """``simplify_node`` on Draco fragments, encoded; a fragment that does not decode raises
    ``ChildFragmentError`` naming that descendant (its chunk must be redone)."""
    pieces = []
    for desc, data in fragments:
        try:
            frag = decode(data)
        except DracoError as exc:
            raise ChildFragmentError(desc, exc) from exc
        pieces.append((desc, frag.vertices, frag.faces, frag.settings))
    mesh, settings = simplify_node(grid, chunk_id, pieces, error)
    return encode(mesh.vertices, mesh.faces, settings), mesh


def crossing_faces(vertices: np.ndarray, faces: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Faces that cross one of ``planes`` (x, y, z values): some vertex strictly on each side.
    The multi-LOD format forbids them in a LOD above 0 (its child grid)."""
    tri = np.asarray(vertices)[np.asarray(faces, dtype=np.int64)]  # (m, 3, 3)
    lo, hi = tri.min(axis=1), tri.max(axis=1)
    return ((lo < planes) & (hi > planes)).any(axis=1)
