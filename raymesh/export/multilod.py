"""``raymesh export --format precomputed``: roots as Neuroglancer multi-resolution meshes.

The chunk hierarchy is the octree (neuroglancer-multires.md 9): the octree's LOD-0 cell is a
layer-2 chunk, so LOD ``k`` is graph layer ``k + 2`` and a LOD-``k`` cell is exactly a layer-
``(k+2)`` chunk. For each LOD the root is covered by the nodes of its tree at or below that layer
whose parent is above it; each contributes its mesh (a layer-2 fragment from ``initial/``, else
its LOD-chain mesh from ``lod/``; single-child nodes stand for their child), and the meshes of one
chunk make that cell's fragment. LOD 0 is therefore the layer-2 fragments, as PCG serves them.

Stored-model units are nm (``transform`` is the identity): ``grid_origin`` is the segmentation's
voxel offset at the mesh mip, ``chunk_shape`` a layer-2 chunk. Vertices a hair outside their cell
(Draco's chunk-aligned grid puts a chunk-face vertex up to half a grid step off the exact face,
caps sit just outside the dataset) are put on the cell's planes when within half a voxel, then
clipped to the cell, so no triangle of a LOD above 0 crosses its child grid (as Neuroglancer's
decoder splits it: ``multilod.partition_point``) and neighbouring cells meet on the same plane.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from raymesh.errors import ConfigError, MeshingError
from raymesh.formats import multilod
from raymesh.formats.mesh_layout import lod_chain_key, lod_dynamic_key, lod_key
from raymesh.formats.sharding import ShardingSpec, compute_shard_params_for_hashed
from raymesh.lod.geometry import onto_own_side
from raymesh.stitch import seam_planes

MESH_DIR = "mesh"
BITS = 16


@dataclass
class LodFragment:
    position: tuple[int, int, int]
    vertices: np.ndarray  # nm
    faces: np.ndarray
    nodes: list[int] = field(default_factory=list)


@dataclass
class SegmentExport:
    root: int
    manifest: multilod.Manifest
    data: bytes  # fragment data, LOD 0 first
    faces: list[int]  # triangles per LOD
    fragment_bytes: list[int]  # bytes per LOD


class MultilodBuilder:
    """A graph's LOD chain read as multi-resolution segments (one per root)."""

    def __init__(self, meshes):
        self.meshes = meshes  # a ViewerMeshes: store, layout, job, bucket
        self.store = meshes.store
        self.layout = meshes.layout
        self.job = meshes.job
        self.grid = meshes.job.grid
        self.reader = self.job.lod_reader()
        self._new: dict[int, bool] = {}  # nodes made by edits after the initial meshes
        res = np.asarray(self.grid.resolution, dtype=np.float64)
        self.chunk_shape = self.grid.block_shape(2) * res
        self.grid_origin = np.asarray(self.grid.voxel_offset, dtype=np.float64) * res
        # Within this of a cell plane, a vertex is on it (half the smallest voxel side).
        self.tolerance = float(res.min()) / 2

    # ---- the tree -------------------------------------------------------------------------------
    def _tree(self, root: int) -> dict[int, list[int]]:
        """Children of every node of ``root``'s tree above layer 2 (a batch of reads per layer)."""
        kids: dict[int, list[int]] = {}
        frontier = [int(root)]
        while frontier:
            above = [n for n in frontier if self.layout.get_chunk_layer(n) > 2]
            if not above:
                break
            got = self.store.get_children(np.array(above, dtype=np.uint64))
            frontier = []
            for n in above:
                kids[n] = [int(c) for c in got[n]]
                frontier += kids[n]
        return kids

    def _cover(self, root: int, kids: dict[int, list[int]], layer: int) -> list[int]:
        """Nodes at or below ``layer`` whose parent is above it, single-child chains resolved."""
        out, stack = [], [int(root)]
        while stack:
            n = stack.pop()
            if self.layout.get_chunk_layer(n) > layer:
                stack += kids.get(n, [])
                continue
            while self.layout.get_chunk_layer(n) > 2 and len(kids.get(n, [])) == 1:
                n = kids[n][0]  # a single-child node has no mesh of its own
            out.append(n)
        return sorted(out)

    def _read(self, node: int) -> bytes | None:
        """A node's LOD-chain mesh: for a node an edit made (after the initial meshes), the file
        remeshing wrote (``dynamic/`` at layer 2, ``lod_dynamic/`` above); else from the shards."""
        if self._new.get(node):
            return self.job.bucket.read(lod_dynamic_key(self.layout, self.meshes.meta.chunk_size, node))
        return self.reader.read(node)

    def _mesh(self, node: int) -> tuple[np.ndarray, np.ndarray] | None:
        from raymesh.formats.draco import DracoError
        from raymesh.lod.geometry import decode_lod

        layer = int(self.layout.get_chunk_layer(node))
        data = self._read(node)
        if data is None:
            if layer == 2:
                return None  # too small to mesh, as PCG's manifests leave it out
            where = lod_key(self.layout, layer, int(self.layout.get_chunk_id(node)))
            raise MeshingError(f"node {node} (layer {layer}) has no LOD-chain mesh in {where}: mesh that layer with "
                               "the LOD chain on (`raymesh mesh --lod-chain`, a plain rerun adds it), or, for a node "
                               "an edit made, `raymesh remesh`")
        try:
            frag = decode_lod(self.grid, int(self.layout.get_chunk_id(node)), data)
        except DracoError as exc:
            key = lod_chain_key(self.layout, layer, int(self.layout.get_chunk_id(node)))
            raise MeshingError(f"the mesh of node {node} in {key} does not decode ({exc}); redo that chunk") from exc
        return frag.vertices, frag.faces.astype(np.int64)

    # ---- one segment ----------------------------------------------------------------------------
    def fragments(self, root: int) -> list[list[LodFragment]]:
        """Per LOD (0 .. root layer - 2), the root's cells and their meshes, in Z-curve order."""
        from raymesh.verify.geometry import unique_rows

        top = int(self.layout.get_chunk_layer(root))
        kids = self._tree(root)
        nodes = sorted({int(root)} | {c for cs in kids.values() for c in cs})
        self._new = self.meshes.is_new(nodes)
        meshes: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        lods = []
        for layer in range(2, top + 1):
            cells: dict[tuple[int, int, int], list[int]] = {}
            for node in self._cover(root, kids, layer):
                shift = layer - int(self.layout.get_chunk_layer(node))
                cell = tuple(int(c) >> shift for c in self.layout.get_chunk_coordinates(node))
                cells.setdefault(cell, []).append(node)
            frags = []
            for cell, nodes in cells.items():
                parts = []
                # the cell's mid-planes as the LOD chain put them (on its Draco grid)
                mids = seam_planes(self.grid, int(self.layout.chunk_id(layer, *cell))) if layer > 2 else None
                for node in nodes:
                    if node not in meshes:
                        meshes[node] = self._mesh(node)
                    if meshes[node] is None:
                        continue
                    v, f = meshes[node]
                    if self.layout.get_chunk_layer(node) < layer:  # a node from below may reach a few nm past its chunk
                        v = onto_own_side(self.grid, v, int(self.layout.get_chunk_id(node)), mids)
                    parts.append((v, f))
                if not parts:
                    continue
                vertices = np.concatenate([v for v, _ in parts])
                offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
                faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)])
                vertices, inverse, _ = unique_rows(vertices)
                frags.append(LodFragment(cell, vertices, inverse[faces], nodes))
            if frags:
                order = multilod.zorder(np.array([f.position for f in frags]))
                frags = [frags[i] for i in order]
            lods.append(frags)
            # Meshes of nodes below this layer are not needed above it.
            for node in [n for n in meshes if self.layout.get_chunk_layer(n) < layer]:
                del meshes[node]
        return lods

    def cell_box(self, lod: int, position) -> tuple[np.ndarray, np.ndarray]:
        size = self.chunk_shape * 2**lod
        return self.grid_origin + np.asarray(position, dtype=np.float64) * size, size

    def quantized(self, vertices: np.ndarray, lod: int, position) -> np.ndarray:
        """The fragment's integer vertices. Those within ``tolerance`` of a face of the cell go
        onto it (0 or the top value) and, above LOD 0, those within it of a mid-plane go exactly
        onto Neuroglancer's partition point, so no triangle crosses the child grid as the viewer
        splits it; the rest are clipped to the cell."""
        origin, size = self.cell_box(lod, position)
        v = np.asarray(vertices, dtype=np.float64)
        q = multilod.quantize(v, origin, size, BITS)
        top = 2**BITS - 1
        for axis in range(3):
            rel = v[:, axis] - origin[axis]
            q[np.abs(rel) <= self.tolerance, axis] = 0
            q[np.abs(rel - size[axis]) <= self.tolerance, axis] = top
            if lod > 0:
                q[np.abs(rel - size[axis] / 2) <= self.tolerance, axis] = multilod.partition_point(BITS)
        return q

    def segment(self, root: int, lod_scales: Sequence[float]) -> SegmentExport:
        lods = self.fragments(root)
        positions, sizes, pieces, faces, lod_bytes = [], [], [], [], []
        for lod, frags in enumerate(lods):
            pos, sz, n_faces = [], [], 0
            for frag in frags:
                q = self.quantized(frag.vertices, lod, frag.position)
                kept = multilod.drop_degenerate(q, frag.faces)
                data = multilod.encode_fragment(q, kept, BITS)
                pos.append(frag.position)
                sz.append(len(data))
                pieces.append(data)
                n_faces += len(kept)
            positions.append(np.array(pos, dtype=np.uint32).reshape(-1, 3))
            sizes.append(np.array(sz, dtype=np.uint32))
            faces.append(n_faces)
            lod_bytes.append(int(sum(sz)))
        n = len(lods)
        manifest = multilod.Manifest(self.chunk_shape.astype(np.float32), self.grid_origin.astype(np.float32),
                                     np.asarray(lod_scales[:n], dtype=np.float32), np.zeros((n, 3), np.float32),
                                     positions, sizes)
        return SegmentExport(int(root), manifest, b"".join(pieces), faces, lod_bytes)

    def lod_scales(self, count: int) -> list[float]:
        """Per LOD, the detail it keeps, nm: LOD 0 the smallest voxel side, LOD k its error budget
        (what Neuroglancer weighs against the screen's pixel size to pick a LOD)."""
        from raymesh.lod.geometry import lod_budget

        cfg = self.job.config
        base = cfg.lod_error if cfg.lod_error is not None else cfg.max_error
        first = float(min(self.grid.resolution))
        return [first] + [max(first, lod_budget(base, k + 2, cfg.lod_growth)) for k in range(1, count)]


# ---- the folder ---------------------------------------------------------------------------------

@dataclass
class PrecomputedExport:
    out: str
    mesh_dir: str
    sharded: bool
    segments: list[dict]


def _write(path: str, data: bytes) -> None:
    """A file is there whole or not at all."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_precomputed(meshes, roots: Sequence[int], out: str, *, sharded: bool = False) -> PrecomputedExport:
    """The roots' multi-resolution meshes in ``out`` (a precomputed segmentation folder: its
    ``info`` is the graph's segmentation info naming ``mesh`` as its mesh dir)."""
    builder = MultilodBuilder(meshes)
    top = meshes.layout.n_layers
    scales = builder.lod_scales(top - 1)
    mesh_path = os.path.join(out, MESH_DIR)
    os.makedirs(mesh_path, exist_ok=True)
    segments = [builder.segment(root, scales) for root in roots]  # everything built before a file is written
    if sharded:
        bits = compute_shard_params_for_hashed(len(segments))
        spec = ShardingSpec(preshift_bits=0, hash="murmurhash3_x86_128", shard_bits=bits[0],
                            minishard_bits=bits[1], minishard_index_encoding="gzip", data_encoding="raw")
        files = multilod.shard_files({s.root: (s.data, s.manifest.to_bytes()) for s in segments}, spec)
        for name, data in files.items():
            _write(os.path.join(mesh_path, name), data)
        sharding = spec.to_json()
    else:
        for s in segments:
            _write(os.path.join(mesh_path, str(s.root)), s.data)
            _write(os.path.join(mesh_path, f"{s.root}.index"), s.manifest.to_bytes())
        sharding = None
    info = multilod.mesh_info(builder.grid.resolution, BITS, sharding, mip=builder.grid.mip)
    _write(os.path.join(mesh_path, "info"), json.dumps(info, indent=2).encode())
    from raymesh.storage import Bucket

    seg_info = json.loads(Bucket(meshes.meta.segmentation_path).read("info"))
    seg_info = {**seg_info, "mesh": MESH_DIR}
    seg_info.pop("mesh_metadata", None)  # graphene's; this folder's meshes are precomputed
    _write(os.path.join(out, "info"), json.dumps(seg_info, indent=2).encode())
    return PrecomputedExport(out, mesh_path, sharded, [
        {"root": s.root, "lods": s.manifest.num_lods, "faces": s.faces, "bytes": s.fragment_bytes,
         "fragments": [len(p) for p in s.manifest.positions]} for s in segments])


def roots_at(meshes, time_stamp: float | None) -> list[int]:
    """The graph's roots at ``time_stamp`` (POSIX seconds; None: the mesh dir's recorded one, the
    graph state the LOD chain was made from)."""
    from raymesh.graph.base import to_datetime

    ts = to_datetime(time_stamp if time_stamp is not None else meshes.job.record.time_stamp)
    layout, store = meshes.layout, meshes.store
    top = layout.n_layers
    roots: list[int] = []
    for coords in layout.iter_chunk_coords(top):
        nodes = np.array(sorted(int(n) for n in store.range_read_chunk(layout.chunk_id(top, *coords), time_stamp=ts)),
                         dtype=np.uint64)
        if not len(nodes):
            continue
        svs = np.array(meshes.a_supervoxel([int(n) for n in nodes]), dtype=np.uint64)
        ok = svs != 0
        now = np.zeros(len(nodes), dtype=np.uint64)
        if ok.any():
            now[ok] = np.asarray(store.get_roots(svs[ok], time_stamp=ts, fail_to_zero=True), dtype=np.uint64)
        roots += [int(n) for n, r in zip(nodes, now) if int(r) == int(n)]
    if not roots:
        raise ConfigError(f"graph {meshes.meta.graph_id} has no roots at time stamp {ts.isoformat()}")
    return sorted(roots)
