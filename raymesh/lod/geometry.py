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


def open_edge_count(faces: np.ndarray) -> int:
    """Edges used by one face: where a surface stops (a chunk face) or is torn."""
    from raymesh.verify.geometry import single_edge_keys

    return len(single_edge_keys(np.asarray(faces))[0]) if len(faces) else 0


def open_edge_vertices(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Vertices on an edge that one face uses: where a piece's surface stops on its chunk's faces."""
    from raymesh.verify.geometry import single_edges

    mask = np.zeros(n_vertices, dtype=bool)
    if len(faces):
        mask[single_edges(np.asarray(faces)).ravel()] = True
    return mask


def pieces_open_edge_vertices(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``open_edge_vertices`` of each piece, in the pieces' concatenation: one count over every
    piece's edges at once (their indices offset apart, so no edge of one piece meets another's),
    not a count per piece, thousands of small ones in a layer-3 task."""
    counts = np.array([len(v) for v, _ in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    faces = np.concatenate([np.asarray(f, dtype=np.int64) + o for (_, f), o in zip(parts, offsets)]) \
        if parts else np.zeros((0, 3), dtype=np.int64)
    return open_edge_vertices(int(counts.sum()), faces)


@dataclass
class LodMesh:
    vertices: np.ndarray | None  # float64 (n, 3) nm; None for a node stored in units (``lod_node``)
    faces: np.ndarray | None  # (m, 3)
    input_faces: int  # faces of the descendants' meshes it was made from
    unsimplified: bool = False  # the checked collapse ran out of rounds: its input kept as it was
    output_faces: int = -1  # len(faces), also where the arrays are not kept

    def __post_init__(self) -> None:
        if self.output_faces < 0:
            self.output_faces = len(self.faces)


def onto_own_side(grid: MeshGrid, vertices: np.ndarray, desc_chunk: int, planes: np.ndarray) -> np.ndarray:
    """A descendant's vertices kept on its own side of the node's mid-planes. A layer-2 fragment
    may reach a few nm past its chunk's lower faces (seam patches, caps: the chunk-bounds
    allowances ``raymesh verify`` knows); where that face is one of the node's mid-planes, the
    vertex is put on the plane, so no triangle of the LOD mesh crosses its child grid."""
    below = child_cell(grid, desc_chunk, planes)
    out = np.array(vertices, dtype=np.float64)
    for axis in range(3):
        if below[axis]:
            np.minimum(out[:, axis], planes[axis], out=out[:, axis])
        else:
            np.maximum(out[:, axis], planes[axis], out=out[:, axis])
    return out


def child_cell(grid: MeshGrid, desc_chunk: int, planes: np.ndarray) -> tuple[bool, bool, bool]:
    """Which of the node's eight child cells a descendant's chunk lies in: below each mid-plane
    or not, per axis."""
    lo = grid.chunk_offset(desc_chunk)
    centre = lo + grid.block_shape(int(grid.layout.get_chunk_layer(desc_chunk))) * np.asarray(grid.resolution) / 2
    return tuple(bool(c < p) for c, p in zip(centre, planes))


def simplify_node(grid: MeshGrid, chunk_id: int, pieces: list[tuple[int, np.ndarray, np.ndarray, object]],
                  error: float, planes: np.ndarray | None = None) -> tuple[LodMesh, object]:
    """The node's LOD mesh from its descendants' decoded meshes ``(desc, vertices, faces, settings)``.

    Returns the mesh and the Draco settings to encode it with (the first piece's, lifted to the
    node's layer, as stitching does). ``planes``: the chunk's ``seam_planes``, when at hand.
    ``pieces`` is emptied as they are lifted, so a decoded piece is not held beside its lifted
    copy and the collapse (a LOD task's peak)."""
    layer = int(grid.layout.get_chunk_layer(chunk_id))
    planes = seam_planes(grid, chunk_id) if planes is None else planes
    parts, settings = [], None
    layout = grid.layout
    pieces.reverse()
    while pieces:  # each decoded piece let go of once lifted: the caller's list is emptied
        desc, vertices, faces, s = pieces.pop()
        lifted, s_out = lift_fragment(grid, vertices, s, desc, layer)
        del vertices
        settings = settings or s_out
        lifted = onto_own_side(grid, lifted, int(layout.get_chunk_id(desc)), planes)
        parts.append((lifted, faces))
    if settings is None:
        raise DracoError("no descendant has a mesh")
    input_faces = sum(len(f) for _, f in parts)
    lock = pieces_open_edge_vertices(parts)
    # The merged mesh starts with the off-plane vertices, in order; the deduplicated on-plane
    # ones after them are all locked.
    vertices, faces, off = merge_across_boundaries(parts, planes, return_off=True)
    merged_lock = np.ones(len(vertices), dtype=bool)
    merged_lock[:len(off)] = lock[off]
    del lock
    vertices, faces, gave_up = bounded_collapse(vertices, faces, merged_lock, error)
    return LodMesh(vertices, faces, input_faces, gave_up), settings


# meshoptimizer's collapse target as a fraction of the error a layer may add. Its error is a
# quadric estimate, an area-weighted mean of squared distances to the input's planes, and it
# underestimates what it removes: on the real volume's layer-3 nodes, at a 40 nm target, input
# vertices ended up to 120 nm from the output surface, and a thin tube of the synthetic data
# shrank 250 nm along its axis (its side walls' planes do not see that). So the result is
# checked (``bounded_collapse``), and the target leaves room for the estimate's slack.
TARGET_FRACTION = 0.5

# The removed vertices are held to this fraction of the error, the rest left to the faces between
# them: a face's inside can be farther from the output than all its corners (a cut across a
# concave bend: 92 nm against its corners' 80 on the real volume's biggest layer-3 node at an
# 80 nm budget). Measuring face centroids and edge midpoints as well held them to the error but
# tripled the check's cost (most fall near no kept vertex, in a big output triangle's middle).
VERTEX_FRACTION = 0.85


def bounded_collapse(vertices: np.ndarray, faces: np.ndarray, lock: np.ndarray, error: float,
                     rounds: int = 4) -> tuple[np.ndarray, np.ndarray, bool]:
    """``collapse_locked`` whose result keeps every input vertex within ``VERTEX_FRACTION *
    error`` of its surface, leaving the rest of ``error`` to the faces between them.

    Each round collapses, then measures the removed vertices (``_farther_than``); those over are
    locked, with their neighbours, and the collapse is redone (a thin part keeps its tip instead
    of shrinking). A result with more open edges than the input (a tear: a closed object would
    show a hole) is redone at half the target. After ``rounds``, the input is kept unsimplified.
    Edges shared by more than two faces (two thin sheets collapsed onto each other) are allowed:
    the surface stays closed, as a viewer sees it. Returns ``(vertices, faces, ran_out)``:
    whether the rounds ran out (the run's summary counts those nodes: they were once a fifth of
    the heavy nodes' faces, unseen).
    """
    faces = np.asarray(faces)
    lock = np.array(lock, dtype=bool)
    target = float(error) * TARGET_FRACTION
    before = open_edge_count(faces)
    for _ in range(rounds):
        # A piece removed whole shows below as input vertices far from the output, unless it is
        # smaller than the error: then it is below this LOD's detail, and may go.
        out_v, out_f, kept = collapse_locked(vertices, faces, lock, target, return_kept=True, keep_components=False)
        if len(out_f) == len(faces):
            return out_v, out_f, False
        if not len(out_f):  # the whole node is smaller than the error: it keeps its mesh as it is
            return vertices, faces, False
        if open_edge_count(out_f) > before:
            target /= 2
            continue
        gone = np.ones(len(vertices), dtype=bool)
        gone[kept] = False
        if not gone.any():
            return out_v, out_f, False
        far = _farther_than(error * VERTEX_FRACTION, vertices, gone, out_v, out_f)
        if not far.any():
            return out_v, out_f, False
        # Lock them with their ring of neighbours: meshoptimizer never moves a locked vertex, but
        # it can still drop one, when every neighbour collapses onto one vertex and every face
        # around it is left degenerate (a thin tip cut off at its base).
        ring = far[faces].any(axis=1)
        lock[faces[ring].ravel()] = True
        lock[far] = True
    return vertices, faces, True


# Output triangles (nearest centroids) a suspect is first measured against; those still over the
# error are measured exactly against every triangle that could be nearer, so this only trades
# the first pass's work against the exact pass's: the answer is the same for any value.
SUSPECT_CANDIDATES = 4


def _farther_than(error: float, vertices: np.ndarray, gone: np.ndarray, out_v: np.ndarray, out_f: np.ndarray
                  ) -> np.ndarray:
    """Removed input vertices (a mask) farther than ``error`` from the output surface. The
    distance to the nearest kept vertex bounds a vertex's from above; the few over ``error`` get
    the exact point-to-triangle distance."""
    from scipy.spatial import cKDTree

    from raymesh.geometry.distance import mesh_distance

    removed = np.flatnonzero(gone)
    near, _ = cKDTree(out_v, balanced_tree=False).query(vertices[removed], distance_upper_bound=error)
    suspects = removed[near > error]
    if len(suspects):
        exact = mesh_distance(np.asarray(vertices[suspects], np.float64), out_v, out_f.astype(np.int64),
                              k=SUSPECT_CANDIDATES, refine_above=error)
        suspects = suspects[exact > error]
    far = np.zeros(len(vertices), dtype=bool)
    far[suspects] = True
    return far


# A node whose fragments are bigger than this (Draco bytes; ~10k triangles) is simplified in
# units of about this size (``lod_node``).
SPLIT_BYTES = 32 << 10


def lod_node(grid: MeshGrid, chunk_id: int, fragments: list[tuple[int, bytes]], error: float,
             split_bytes: int | None = None) -> tuple[bytes, LodMesh]:
    """``simplify_node`` on stored LOD values (``decode_lod``), encoded; a value that does not
    decode raises ``ChildFragmentError`` naming that descendant (its chunk must be redone).

    A node over ``SPLIT_BYTES`` is decoded, simplified and encoded in units (``_units``: a child
    cell's descendants, or the stored units of a split descendant, packed in order up to that
    size) and stored as its units' Draco meshes (``formats.lod_cells``). So a task's working set
    is one unit's pieces and the encoded units before it, never its whole mesh (merged, then
    encoded by Draco at ~100 bytes a face: the root task's biggest allocation), and a unit is
    about the same size at every layer: the memory of a LOD task does not grow with the object.

    The units' meshes are the whole node's collapse up to meshoptimizer's order and to their
    seams: a unit's open edges are locked (its vertices on the node's mid-planes, as always, and
    where it meets another unit of a split descendant), so the units meet exactly where they did,
    and each removed vertex is checked against its own unit's surface, never nearer than the
    node's. A seam inside a child cell stays locked only while two units meet there: the layer
    above packs the units again, bigger (each is simplified to less than half its input). The
    returned ``LodMesh`` holds the mesh only for a node in one piece."""
    from raymesh.formats.lod_cells import pack_cells

    limit = SPLIT_BYTES if split_bytes is None else split_bytes
    planes = seam_planes(grid, chunk_id)
    if sum(len(data) for _, data in fragments) <= limit:
        mesh, settings = simplify_node(grid, chunk_id, _decoded_pieces(grid, fragments), error, planes)
        return encode(mesh.vertices, mesh.faces, settings), mesh
    layer = int(grid.layout.get_chunk_layer(chunk_id))
    units, divided = _units(grid, chunk_id, fragments, planes, limit)
    settings, blobs = None, []
    seams: dict[int, tuple] = {}  # a divided descendant's parsed value and grid
    summary = LodMesh(None, None, 0, False, 0)
    for unit in units:
        pieces = []
        for desc, stored, which in unit:
            pieces.append(_decoded_piece(grid, desc, stored, which))
            if desc in divided:
                seams.setdefault(desc, (stored, pieces[-1][3]))
        mesh, s = simplify_node(grid, chunk_id, pieces, error, planes)
        settings = settings or s  # the first fragment's, lifted, as stitching's (7.4); every unit's
        if len(units) == 1:
            return encode(mesh.vertices, mesh.faces, settings), mesh
        # encoded now, each unit on the node's one grid, so that the units' seams meet exactly
        blobs.append(encode(mesh.vertices, mesh.faces, settings))
        summary.input_faces += mesh.input_faces
        summary.unsimplified |= mesh.unsimplified
        summary.output_faces += len(mesh.faces)
        del mesh
    # where the units meet: the node's mid-planes, and the seams of a split descendant whose
    # units went to several of this node's, carried through the same lift as its vertices
    meet = [[p] for p in planes]
    for desc, (stored, own) in seams.items():
        values = _value_planes(grid, int(grid.layout.get_chunk_id(desc)), stored, own)
        for axis, lifted in enumerate(_lifted_planes(grid, values, own, desc, layer)):
            meet[axis].extend(lifted.tolist())
    return pack_cells(blobs, [np.array(m) for m in meet]), summary


def _units(grid: MeshGrid, chunk_id: int, fragments: list[tuple[int, bytes]], planes: np.ndarray,
           limit: int) -> tuple[list[list[tuple]], set[int]]:
    """A big node's units: per child cell (in the order their first fragment comes, so the first
    unit holds the first fragment), its descendants' values, a split one's stored units one by
    one, packed in order while a unit stays within ``limit`` bytes. A unit is a list of ``(desc,
    value, which)``: ``which`` the indices of a split value's units it takes (None: the value
    whole), ``value`` parsed once (``lod_cells.Cells``). Also the split descendants whose units
    went to more than one unit: where they meet stays a seam of this node's value."""
    cells: dict[tuple, list] = {}
    for desc, data in fragments:
        cells.setdefault(child_cell(grid, int(grid.layout.get_chunk_id(desc)), planes), []).append((desc, data))
    units, divided = [], set()
    for group in cells.values():
        unit, size = [], 0
        for desc, data in group:
            stored = _parsed(desc, data)
            for i, blob in enumerate(stored.blobs):
                if unit and size + len(blob) > limit:
                    units.append(unit)
                    unit, size = [], 0
                    if i:  # a break between two units of one descendant
                        divided.add(desc)
                if len(stored.blobs) == 1:
                    unit.append((desc, stored, None))
                elif unit and unit[-1][0] == desc:
                    unit[-1][2].append(i)
                else:
                    unit.append((desc, stored, [i]))
                size += len(blob)
        units.append(unit)
    return units, divided


def _lifted_planes(grid: MeshGrid, values: list[np.ndarray], settings, desc: int, layer: int) -> list[np.ndarray]:
    """A descendant's planes (per axis) where its vertices on them go when lifted to ``layer``."""
    out = []
    for axis, v in enumerate(values):
        points = np.zeros((len(v), 3), dtype=np.float64)
        points[:, axis] = v
        out.append(lift_fragment(grid, points, settings, desc, layer)[0][:, axis])
    return out


def _decoded_pieces(grid: MeshGrid, fragments: list[tuple[int, bytes]]) -> list:
    """``simplify_node``'s pieces from stored values, each decoded whole."""
    return [_decoded_piece(grid, desc, _parsed(desc, data)) for desc, data in fragments]


def _parsed(desc: int, data: bytes):
    """A descendant's stored value parsed (``lod_cells.Cells``), or ``ChildFragmentError``."""
    from raymesh.formats.lod_cells import unpack_cells

    try:
        return unpack_cells(data)
    except DracoError as exc:
        raise ChildFragmentError(desc, exc) from exc


def _decoded_piece(grid: MeshGrid, desc: int, stored, which: list[int] | None = None) -> tuple:
    """A descendant's parsed value (``decode_units``; ``which``: some of its units) as a
    ``simplify_node`` piece, or ``ChildFragmentError`` naming it."""
    try:
        frag = decode_units(grid, int(grid.layout.get_chunk_id(desc)), stored, which)
    except DracoError as exc:
        raise ChildFragmentError(desc, exc) from exc
    return desc, frag.vertices, frag.faces, frag.settings


def _value_planes(grid: MeshGrid, chunk_id: int, stored, settings) -> list[np.ndarray]:
    """Where a split value's units meet, per axis: as stored, or (a value stored by child cell
    before units had planes of their own) the node's mid-planes on its grid."""
    from raymesh.formats.draco import snap

    if stored.planes is not None:
        return stored.planes
    return [np.array([p]) for p in snap(seam_planes(grid, chunk_id)[None, :], settings)[0]]


def decode_lod(grid: MeshGrid, chunk_id: int, data: bytes):
    """A stored LOD value (a Draco mesh, or a split node's units) as one ``Fragment``: the units
    merged where they meet (``decode_units``)."""
    from raymesh.formats.lod_cells import unpack_cells

    return decode_units(grid, chunk_id, unpack_cells(data))


def decode_units(grid: MeshGrid, chunk_id: int, stored, which: list[int] | None = None):
    """A parsed LOD value (``lod_cells.Cells``; ``which`` of its units, or all) as one
    ``Fragment``: the units merged where they meet. A seam vertex was on one of the stored planes
    and locked in both units it belongs to; each unit was encoded on the node's grid, so both
    copies decode to one position within half a grid step of the plane."""
    from raymesh.formats.draco import Fragment

    blobs = stored.blobs if which is None else [stored.blobs[i] for i in which]
    if len(blobs) == 1:
        return decode(blobs[0])
    frags = [decode(b) for b in blobs]
    settings = frags[0].settings
    if any(f.settings != settings for f in frags):
        raise DracoError("the units of a split LOD mesh were encoded on different grids")
    planes = _value_planes(grid, chunk_id, stored, settings)
    # v1 values hold their planes on the grid already: exact, as stitching merges
    tolerance = None if stored.planes is None else np.full(3, 0.75 * settings.bin)
    parts = [(f.vertices, f.faces) for f in frags]
    del frags
    vertices, faces = merge_across_boundaries(parts, planes, tolerance=tolerance)
    return Fragment(vertices, faces.astype(np.uint32), settings)


def crossing_faces(vertices: np.ndarray, faces: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Faces that cross one of ``planes`` (x, y, z values): some vertex strictly on each side.
    The multi-LOD format forbids them in a LOD above 0 (its child grid)."""
    tri = np.asarray(vertices)[np.asarray(faces, dtype=np.int64)]  # (m, 3, 3)
    lo, hi = tri.min(axis=1), tri.max(axis=1)
    return ((lo < planes) & (hi > planes)).any(axis=1)
