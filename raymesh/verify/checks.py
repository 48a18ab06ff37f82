"""The checks ``raymesh verify`` makes: per chunk (coverage and soundness of its shard), per root
(the fragments a viewer loads), for edits (``dynamic/``) and for the metadata.

Each takes a ``MeshJob`` pinned to its mesh dir's record (``MeshJob.resolve_record``) and returns
small dataclasses, so the per-chunk check runs as a task on any executor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from raymesh.formats.draco import DracoError, decode
from raymesh.errors import MeshingError
from raymesh.formats.mesh_layout import mesh_metadata
from raymesh.formats.sharding import ShardError, check_shard, disassemble_shard
from raymesh.verify.geometry import edge_use, merged, surface_labels, unmerged_seam_vertices

KINDS = {
    "missing_shard": "a chunk with nodes to mesh has no shard file",
    "unsound_shard": "a shard whose indices do not check out (truncated or corrupt)",
    "failed_chunk": "a chunk whose last run failed (its failure record is there)",
    "missing_fragment": "a node that should have a mesh has none",
    "extra_fragment": "a mesh for a node that should have none",
    "undecodable": "a fragment that is not valid Draco",
    "wrong_grid": "a fragment encoded on another Draco grid than its chunk's",
    "out_of_chunk": "a fragment with vertices outside its chunk (and the overlap and cap allowances)",
    "unmerged_seam": "a position on a node's internal chunk plane held twice, each copy on an open edge, "
                     "closed once welded: a crack stitching should have closed",
    "open_object": "an object whose mesh, as a viewer loads it, is open away from the dataset's faces",
    "incomplete_manifest": "a root whose verified manifest lists a node above layer 2 without a mesh",
    "missing_dynamic": "a node made by an edit whose fragment is not in dynamic/",
    "metadata": "the info files, the mesh info, the run record and the graph meta disagree",
    "missing_lod": "a node of layer 3 or above without its LOD-chain mesh (lod/), in a mesh dir that has the chain",
    "lod_crosses_grid": "a LOD-chain mesh with a triangle across its chunk's mid-planes (the multi-LOD format's "
                        "child grid)",
}
CHUNK_KINDS = {"missing_shard", "unsound_shard", "failed_chunk", "missing_fragment", "extra_fragment",
               "undecodable", "wrong_grid", "out_of_chunk", "unmerged_seam", "missing_lod", "lod_crosses_grid"}


@dataclass
class Problem:
    kind: str
    detail: str
    layer: int | None = None
    chunk: list[int] | None = None
    node: int | None = None


@dataclass
class ChunkCheck:
    layer: int
    chunk: list[int]
    expected: int = 0  # nodes that must have a mesh
    fragments: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    def problem(self, kind: str, detail: str, node: int | None = None) -> None:
        self.problems.append(Problem(kind, detail, self.layer, self.chunk, node))


@dataclass
class RootCheck:
    root: int
    fragments: int = 0
    bytes: int = 0
    interior: bool = False
    open_edges: int = 0
    problems: list[Problem] = field(default_factory=list)


# ---- one chunk ----------------------------------------------------------------------------------

def expected_nodes(job, layer: int, coords, plan=None) -> tuple[set[int], set[int]]:
    """``(must, may)``: nodes that must have a mesh in the chunk's shard, and all that may.

    Layer 2: the chunk's nodes whose remapped labels meet another label inside the chunk's block
    (marching cubes finds a surface there) must; every node of the chunk may (caps mesh a node
    whose surface lies on the plane below). Above: the multi-child nodes stitching does not leave
    to their children (``stitch.node_inputs``, the same decision from the minishard indices);
    ``plan``: the chunk's ``stitch.plan_chunk``, when the caller has it.
    """
    layout = job.meta.layout
    if layer == 2:
        from raymesh.layer2.mesh import read_l2_block
        from raymesh.layer2.remap import fetch_neighbourhoods, remap_chunk

        hood = fetch_neighbourhoods(job.store, [list(coords)], time_stamp=job.time_stamp)[0]
        if not hood.own:
            return set(), set()
        labels = remap_chunk(read_l2_block(job.meta, job.grid, coords), hood,
                             dust_threshold=job.config.dust_threshold)
        own = set(hood.own)
        return {int(n) for n in surface_labels(labels) if int(n) in own}, own
    from raymesh.stitch import node_inputs

    plan = plan or chunk_plan(job, layer, coords)
    reader = job.fragment_reader()
    must = set()
    for node in plan.descendants:
        try:
            unstitched = node_inputs(layout, plan, node, reader, job.node_limit)[2]
        except MeshingError:  # a child shard missing or unsound: reported at its own layer
            unstitched = None
        if unstitched is None:
            must.add(int(node))
    return must, must


def internal_planes(grid, chunk_id: int) -> list[set[float]]:
    """Every lower layer's mid-planes inside a chunk, in nm, as the grid puts them."""
    from raymesh.stitch import seam_planes

    layout = grid.layout
    layer = int(layout.get_chunk_layer(chunk_id))
    coords = layout.get_chunk_coordinates(chunk_id)
    planes: list[set[float]] = [set(), set(), set()]
    for sub in range(3, layer + 1):
        span = 2 ** (layer - sub)
        for offset in np.ndindex(span, span, span):
            sub_chunk = int(layout.chunk_id(sub, *(coords * span + np.array(offset))))
            for axis, value in enumerate(seam_planes(grid, sub_chunk)):
                planes[axis].add(float(value))
    return planes


def expected_settings(grid, layer: int, chunk_id: int):
    """The Draco grid of a chunk's fragments: layer 2's own, lifted layer by layer above (7.4)."""
    layout = grid.layout
    coords = layout.get_chunk_coordinates(chunk_id) * 2 ** (layer - 2)
    chunk = int(layout.chunk_id(2, *coords))
    settings = grid.chunk_settings(chunk)
    for parent_layer in range(3, layer + 1):
        settings = grid.next_layer_settings(settings, int(layout.parent_chunk_id(chunk, parent_layer)))
    return settings


def chunk_bounds(job, layer: int, chunk_id: int, settings) -> tuple[np.ndarray, np.ndarray]:
    """Where a chunk's fragments may lie, in nm: the chunk, one voxel of overlap above, half a
    voxel of cap below, plus what simplification (max_error) and quantization (a bin of the
    chunk's grid, ``settings``) move."""
    grid = job.grid
    res = np.asarray(grid.resolution)
    lo = grid.chunk_offset(chunk_id)
    hi = lo + grid.block_shape(layer) * res
    bin_nm = settings.bin
    slack = float(job.config.max_error) + 2 * bin_nm
    return lo - res / 2 - slack, hi + res + slack


def sound_values(out: ChunkCheck, key: str, data: bytes, spec) -> dict[int, bytes] | None:
    """A shard's values by key, or None (and an ``unsound_shard`` problem) when it does not parse."""
    try:
        check_shard(lambda a, b: data[a:b], spec)
        return disassemble_shard(data, spec)
    except ShardError as exc:
        out.problem("unsound_shard", f"{key}: {exc}")
        return None


def decoded(out: ChunkCheck, values: dict[int, bytes], what: str = "", decoder=None):
    """``(node, fragment)`` for each value in node order; one that does not decode is an
    ``undecodable`` problem and is left out. ``decoder(node, data)``: how to (default: Draco)."""
    for node in sorted(values):
        try:
            yield node, (decoder(node, values[node]) if decoder else decode(values[node]))
        except DracoError as exc:
            out.problem("undecodable", f"node {node}{what}: {exc}", node)


def check_chunk(job, item) -> ChunkCheck:
    """Coverage and soundness of one chunk's shard (``item``: ``(layer, coords)``)."""
    layer, coords = item
    coords = [int(c) for c in coords]
    out = ChunkCheck(int(layer), coords)
    layout = job.meta.layout
    chunk_id = int(layout.chunk_id(layer, *coords))
    record = job.bucket.read(job.failed_path(layer, coords))
    if record is not None:
        from raymesh.runs.job import _failures_in

        out.problem("failed_chunk", "its last run failed: " + "; ".join(_failures_in(record)))
    plan = chunk_plan(job, layer, coords) if layer > 2 else None
    must, may = expected_nodes(job, layer, coords, plan)
    out.expected = len(must)
    if layer > 2:
        check_lod(job, out, layer, coords, plan)
    key = job.shard_path(layer, coords)
    data = job.bucket.read(key)
    if data is None:
        if must:
            out.problem("missing_shard", f"no shard file {key}; {len(must)} nodes should have meshes in it")
        return out
    values = sound_values(out, key, data, job.sharding(layer))
    if values is None:
        return out
    out.fragments, out.bytes = len(values), len(data)
    for node in sorted(must - set(values)):
        out.problem("missing_fragment", f"node {node} has no fragment in {key}", node)
    for node in sorted(set(values) - may):
        out.problem("extra_fragment", f"node {node} has a fragment in {key} but should have none", node)
    settings = expected_settings(job.grid, layer, chunk_id)
    lo, hi = chunk_bounds(job, layer, chunk_id, settings)
    planes = internal_planes(job.grid, chunk_id) if layer > 2 else None
    for node, frag in decoded(out, values):
        if frag.settings != settings:
            out.problem("wrong_grid", f"node {node}: encoded with {frag.settings}, its chunk's grid is {settings}", node)
        if len(frag.vertices) and (np.any(frag.vertices < lo) or np.any(frag.vertices > hi)):
            out.problem("out_of_chunk", f"node {node}: vertices span {frag.vertices.min(0).tolist()}.."
                        f"{frag.vertices.max(0).tolist()} nm, the chunk allows {lo.tolist()}..{hi.tolist()}", node)
        if planes is not None:
            cracks = seam_cracks(frag.vertices, frag.faces, planes)
            if cracks:
                out.problem("unmerged_seam", f"node {node}: {cracks} position(s) on its internal chunk planes "
                            "held twice, open until welded", node)
    return out


def chunk_plan(job, layer: int, coords):
    """The chunk's stitching plan (its graph reads), shared by the checks of its two shards."""
    from raymesh.stitch import plan_chunk

    return plan_chunk(job.store, layer, int(job.meta.layout.chunk_id(layer, *coords)), job.time_stamp)


def has_lod_chain(job) -> bool:
    """Whether the mesh dir was meshed with the LOD chain (some ``lod/`` shard exists): asked once
    per job, and only where a chunk has no LOD shard (a listing of ``lod/`` is long where it does)."""
    if "_has_lod_chain" not in job.__dict__:
        job.__dict__["_has_lod_chain"] = bool(job.bucket.list("lod/"))
    return job.__dict__["_has_lod_chain"]


def lod_expected(job, plan) -> set[int]:
    """Nodes of the chunk's ``plan`` that must have a LOD-chain mesh: every node stitching plans,
    over the node limit or not, with at least one descendant that has a mesh in the chain."""
    reader = job.lod_reader()
    out = set()
    for node, descendants in plan.descendants.items():
        for desc in descendants:
            try:
                found = reader.locate(desc) is not None
            except MeshingError:  # a shard below missing or unsound: reported at its own layer
                found = False
            if found:
                out.add(int(node))
                break
    return out


def check_lod(job, out: ChunkCheck, layer: int, coords, plan) -> None:
    """The chunk's LOD-chain shard, where the mesh dir has the chain: sound, a mesh for every node
    that must have one, each decoding and not crossing its chunk's mid-planes."""
    from raymesh.lod.geometry import crossing_faces, decode_lod
    from raymesh.stitch import seam_planes

    key = job.lod_path(layer, coords)
    data = job.bucket.read(key)
    if data is None and not has_lod_chain(job):
        return
    must = lod_expected(job, plan)
    if data is None:
        if must:
            out.problem("missing_lod", f"no LOD shard {key}; {len(must)} nodes should have LOD meshes in it")
        return
    values = sound_values(out, key, data, job.sharding(layer))
    if values is None:
        return
    for node in sorted(must - set(values)):
        out.problem("missing_lod", f"node {node} has no LOD mesh in {key}", node)
    planes = seam_planes(job.grid, int(job.meta.layout.chunk_id(layer, *coords)))
    layout = job.meta.layout
    for node, frag in decoded(out, values, " (LOD)",
                              lambda node, data: decode_lod(job.grid, int(layout.get_chunk_id(node)), data)):
        crossing = int(crossing_faces(frag.vertices, frag.faces, planes).sum())
        if crossing:
            out.problem("lod_crosses_grid", f"node {node}: {crossing} LOD triangle(s) cross the mid-planes "
                        f"{planes.tolist()} of its chunk", node)


def seam_cracks(vertices: np.ndarray, faces: np.ndarray, planes) -> int:
    """Vertices of positions on an internal plane that stitching should have welded
    (``geometry.unmerged_seam_vertices``): not Draco's split of a non-manifold spot."""
    return unmerged_seam_vertices(vertices, faces, planes)


# ---- roots, edits, metadata ---------------------------------------------------------------------

def check_root(job, root: int, viewer) -> RootCheck:
    """The fragments a viewer loads for ``root`` (PCG's verified manifest from the highest meshed
    layer, ``export.fragments.ViewerMeshes``): every node above layer 2 it lists has a mesh that
    decodes, and no edge is open away from the dataset's faces."""
    from raymesh.manifest import manifest_nodes

    out = RootCheck(int(root))
    layout = job.meta.layout
    fragments = {f.node: f for f in viewer.fragments(int(root))}
    nodes = manifest_nodes(job.store, root, viewer.max_layer, lambda n: int(n) in fragments)
    frags = []
    for node in nodes:
        if node not in fragments:
            if layout.get_chunk_layer(node) > 2:
                out.problems.append(Problem("incomplete_manifest", f"root {root}: node {node} has no mesh",
                                            int(layout.get_chunk_layer(node)), None, node))
            continue
        try:
            data = viewer.read(fragments[node])
            out.bytes += len(data)
            frags.append(decode(data))
        except (DracoError, MeshingError) as exc:
            out.problems.append(Problem("undecodable", f"root {root}: node {node}: {exc}",
                                        int(layout.get_chunk_layer(node)), None, node))
    out.fragments = len(frags)
    if not frags:
        return out
    vertices, faces = merged(frags)
    res = np.asarray(job.grid.resolution)
    bounds = job.meta.voxel_bounds * np.asarray(job.meta.resolution)
    # Marching cubes leaves an object open where it meets the dataset's faces; anywhere else an
    # open edge is a hole a viewer sees. Near a face: within a voxel, what simplification moves
    # (max_error) and two quantization bins.
    tol = res + float(job.config.max_error) + 2 * expected_settings(job.grid, 2, int(layout.chunk_id(2, 0, 0, 0))).bin
    out.interior = bool(np.all(vertices.min(0) > bounds[0] + tol) and np.all(vertices.max(0) < bounds[1] - tol))
    edges, use = edge_use(faces, return_edges=True)
    rim = edges[use == 1]
    out.open_edges = len(rim)
    if len(rim):
        pts = vertices[rim.ravel()]
        near = np.any((pts <= bounds[0] + tol) | (pts >= bounds[1] - tol), axis=1).reshape(-1, 2).all(axis=1)
        holes = int((~near).sum())
        if holes:
            out.problems.append(Problem("open_object", f"root {root}: {holes} open edges away from the dataset's "
                                        f"faces in the {len(frags)} fragments a viewer loads", None, None, int(root)))
    return out


def check_dynamic(job, viewer) -> tuple[list[Problem], int]:
    """Every node an edit made since the initial meshes that gets a mesh has its fragment in
    ``dynamic/``; returns the problems and how many nodes were checked."""
    from raymesh.remesh import Remesher

    if not job.meta.mesh_settings().get("initial_ts"):
        return [], 0
    remesher = Remesher(job)
    nodes = remesher.nodes_since(None)
    problems, checked = [], 0
    store, layout = job.store, job.meta.layout
    for layer, ids in sorted(nodes.items()):
        if layer > remesher.max_layer:
            continue
        for node in ids:
            if layer > 2 and len(store.get_children(node)) < 2:
                continue  # single-child nodes have no mesh of their own
            checked += 1
            if not job.bucket.exists(viewer.dynamic_key(node)):
                coords = [int(c) for c in layout.get_chunk_coordinates(node)]
                problems.append(Problem("missing_dynamic", f"node {node} (made by an edit) has no fragment "
                                        f"{viewer.dynamic_key(node)}", layer, coords, node))
    return problems, checked


def check_metadata(job) -> list[Problem]:
    """The mesh info, the segmentation info's ``mesh``/``mesh_metadata``, the run record and the
    graph's ``custom_data['mesh']`` agree with each other and with this job's settings."""
    from raymesh.storage import Bucket

    problems = []
    record = job.record

    def bad(detail: str) -> None:
        problems.append(Problem("metadata", detail))

    info = job.bucket.read("info")
    if info is None:
        bad(f"{job.mesh_url}info is missing")
    elif json.loads(info) != json.loads(job.mesh_info_bytes()):
        bad(f"{job.mesh_url}info differs from the mesh info of these meshes (sharding per layer, mip, chunk size)")
    ws = json.loads(Bucket(job.meta.segmentation_path).read("info"))
    grid = job.grid
    uniform = grid.uniform_grid_size(record.max_layer)
    per_layer = {} if uniform is not None else {
        2: grid.chunk_settings(int(job.meta.layout.chunk_id(2, 0, 0, 0))).bin}
    want = mesh_metadata(uniform, per_layer, record.max_layer)
    if ws.get("mesh") != job.config.mesh_dir:
        bad(f"the segmentation info names mesh dir {ws.get('mesh')!r}, not {job.config.mesh_dir!r}")
    if ws.get("mesh_metadata") != want:
        bad(f"the segmentation info's mesh_metadata is {ws.get('mesh_metadata')}, expected {want}")
    settings = job.meta.mesh_settings()
    if settings.get("dir") == job.config.mesh_dir:
        recorded = {"max_layer": record.max_layer, "mip": record.mip, "max_error": record.max_error,
                    "initial_ts": record.initial_ts}
        for key, value in recorded.items():
            if key not in settings or abs(float(settings[key]) - float(value)) > 1e-6:
                bad(f"the graph's custom_data['mesh'][{key!r}] is {settings.get(key)}, the run record says {value}")
    return problems
