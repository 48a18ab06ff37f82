"""The read-only part of PCG's HTTP API that Neuroglancer's ``graphene://`` datasource uses,
answered from a graph store and its mesh dir (no HTTP here: ``app.py`` maps routes onto these).

Answers are shaped as PyChunkedGraph's Flask app shapes them (``pychunkedgraph/app/segmentation``
and ``pychunkedgraph/app/meshing``): uint64 ids as strings when ``int64_as_str`` is set, errors as
``{"code", "message"}`` JSON (``ApiError``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from raymesh.errors import ConfigError
from raymesh.export.fragments import ViewerMeshes

MAX_IDS = 10_000  # ids one POST may ask about


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def truthy(value: str | None) -> bool:
    """PCG's boolean query arguments (``toboolean`` / ``in ["True", "true", "1"]``)."""
    return value is not None and value.strip().lower() in ("1", "true", "t", "yes")


def parse_node(text: str, what: str = "node id") -> int:
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise ApiError(400, f"{text!r} is not a {what} (a decimal uint64)") from None
    if not 0 < value < 2**64:
        raise ApiError(400, f"{text} is not a {what} (ids are 1 .. 2**64-1)")
    return value


def parse_bounds(text: str | None) -> np.ndarray | None:
    """PCG's ``bounds=x0-x1_y0-y1_z0-z1`` (voxels at mip 0) -> ``[[x0, y0, z0], [x1, y1, z1]]``."""
    if text is None:
        return None
    parts = text.split("_")
    try:
        if len(parts) != 3:
            raise ValueError
        pairs = [p.split("-") for p in parts]
        if any(len(p) != 2 for p in pairs):
            raise ValueError
        box = np.array([[int(a), int(b)] for a, b in pairs], dtype=np.int64).T
    except ValueError:
        raise ApiError(400, f"bounds={text!r} is not x0-x1_y0-y1_z0-z1 (non-negative voxel integers)") from None
    if np.any(box[1] < box[0]):
        raise ApiError(400, f"bounds={text!r}: each upper bound must be at least its lower bound")
    return box


def parse_time(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value < 253402300800:
        raise ApiError(400, f"timestamp={text!r} is not a time (POSIX seconds)")
    return value


def parse_id_list(body: bytes) -> list[int]:
    """A POST body ``{"node_ids": [...]}`` (numbers or decimal strings)."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise ApiError(400, "the request body is not JSON; send {\"node_ids\": [...]}") from None
    ids = data.get("node_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list):
        raise ApiError(400, "the request body needs \"node_ids\": a list of node ids")
    if len(ids) > MAX_IDS:
        raise ApiError(400, f"{len(ids)} node ids in one request; at most {MAX_IDS}")
    out = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ApiError(400, f"node id {value!r} is not an integer or a decimal string")
        out.append(parse_node(str(value)))
    return out


def ids_out(values, as_str: bool) -> list:
    return [str(int(v)) if as_str else int(v) for v in values]


class GrapheneAPI:
    """One graph: its info, mesh manifests and the supervoxel/root lookups, read-only."""

    def __init__(self, graph: str, mesh_dir: str | None = None):
        self.meshes = ViewerMeshes(graph, mesh_dir)
        self.store = self.meshes.store
        self.meta = self.meshes.meta
        self.layout = self.meshes.layout
        self.table = self.meta.graph_id

    # ---- ids ------------------------------------------------------------------------------------
    def node(self, text: str, min_layer: int = 1) -> int:
        value = parse_node(text)
        try:
            return self.meshes.check_node(value, min_layer=min_layer)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None

    def _known(self, node: int) -> bool:
        if int(self.layout.get_chunk_layer(node)) == 1:
            parents = self.store.get_parents(np.array([node], dtype=np.uint64), fail_to_zero=True)
            return int(parents[0]) != 0
        return self.meshes.exists(node)

    def _require(self, node: int) -> None:
        if not self._known(node):
            raise ApiError(404, f"node {node} is not in graph {self.table}")

    # ---- /segmentation/table/<t>/info -----------------------------------------------------------
    def info(self, data_dir: str) -> dict[str, Any]:
        """PCG's ``handle_info``: the segmentation info plus ``graph``, ``app``, ``data_dir`` (here
        the URL this server serves the segmentation at) and the mesh settings."""
        from raymesh.formats.mesh_layout import graphene_info

        info = graphene_info(self.meta, self.meshes.mesh_dir)
        info["data_dir"] = data_dir
        return info

    # ---- /meshing/api/v1/table/<t>/manifest/<node>:0 --------------------------------------------
    def manifest(self, node_text: str, args) -> dict[str, Any]:
        node = self.node(node_text, min_layer=1)
        if "bounds" in args:
            raise ApiError(400, "manifests restricted to bounds are not served by raymesh view")
        if int(self.layout.get_chunk_layer(node)) == 1:
            raise ApiError(400, f"{node} is a supervoxel; manifests are for nodes of layer 2 and above")
        self._require(node)
        frags = self.meshes.fragments(node)
        out: dict[str, Any] = {"fragments": [f.manifest_entry() for f in frags]}
        if truthy(args.get("prepend_seg_ids")):
            out["fragments"] = [f"~{f.node}:{entry}" for f, entry in zip(frags, out["fragments"])]
        if truthy(args.get("return_seg_ids")):
            out["seg_ids"] = [int(f.node) for f in frags]
        return out

    # ---- /segmentation/api/v1/table/<t>/node/<sv>/root ------------------------------------------
    def root(self, node_text: str, args) -> dict[str, Any]:
        node = self.node(node_text)
        stop = args.get("stop_layer")
        stop_layer = None
        if stop is not None:
            try:
                stop_layer = int(stop)
            except ValueError:
                raise ApiError(400, f"stop_layer={stop!r} is not an integer") from None
            if not 1 <= stop_layer <= self.layout.n_layers:
                raise ApiError(400, f"stop_layer={stop_layer}: the graph has layers 1..{self.layout.n_layers}")
        when = parse_time(args.get("timestamp"))
        self._require(node)
        root = int(self.store.get_roots(np.array([node], dtype=np.uint64), stop_layer=stop_layer,
                                        time_stamp=when, fail_to_zero=True)[0])
        if root == 0:
            raise ApiError(404, f"node {node} has no root at timestamp {when}")
        return {"root_id": ids_out([root], truthy(args.get("int64_as_str")))[0]}

    # ---- leaves (supervoxels) of nodes within bounds --------------------------------------------
    def _chunk_box(self, bounds: np.ndarray) -> np.ndarray:
        """Voxel bounds -> layer-2 chunk coordinates ``[lo, hi)`` (PCG normalize_bounding_box)."""
        offset = self.meta.voxel_bounds[0]
        chunk = self.meta.chunk_size
        lo = np.floor((bounds[0] - offset) / chunk)
        hi = np.ceil((bounds[1] - offset) / chunk)
        return np.stack([lo, hi]).astype(np.int64)

    def _in_box(self, nodes: np.ndarray, box: np.ndarray | None) -> np.ndarray:
        """PCG ``mask_nodes_by_bounding_box``: nodes whose chunk meets the box at their layer."""
        if box is None or not len(nodes):
            return np.ones(len(nodes), bool)
        coords = np.asarray(self.layout.get_chunk_coordinates(nodes)).reshape(-1, 3)
        layers = np.asarray(self.layout.get_chunk_layer(nodes)).reshape(-1)
        scale = (2.0 ** np.maximum(layers - 2, 0))[:, None]
        return np.all(coords < box[1][None] / scale, axis=1) & np.all(coords + 1 > box[0][None] / scale, axis=1)

    def _leaves(self, node: int, box: np.ndarray | None, stop_layer: int = 1) -> list[int]:
        out: list[int] = []
        frontier = np.array([node], dtype=np.uint64)
        while len(frontier):
            layers = np.asarray(self.layout.get_chunk_layer(frontier)).reshape(-1)
            out += [int(n) for n in frontier[layers <= stop_layer]]
            above = frontier[layers > stop_layer]
            if not len(above):
                break
            kids = self.store.get_children(above, flatten=True).astype(np.uint64)
            frontier = kids[self._in_box(kids, box)]
        return sorted(out)

    def leaves(self, node_text: str, args) -> dict[str, Any]:
        """``GET node/<id>/leaves``: the supervoxels under a node (within ``bounds``)."""
        node = self.node(node_text)
        box = parse_bounds(args.get("bounds"))
        self._require(node)
        chunk_box = None if box is None else self._chunk_box(box)
        return {"leaf_ids": ids_out(self._leaves(node, chunk_box), truthy(args.get("int64_as_str")))}

    def leaves_many(self, body: bytes, args) -> dict[str, Any]:
        """``POST node/leaves_many``: ``{node: [supervoxels]}`` for several nodes within ``bounds``."""
        nodes = parse_id_list(body)
        box = parse_bounds(args.get("bounds"))
        chunk_box = None if box is None else self._chunk_box(box)
        as_str = truthy(args.get("int64_as_str"))
        out = {}
        for node in nodes:
            try:
                self.meshes.check_node(node)
            except ConfigError as exc:
                raise ApiError(400, str(exc)) from None
            self._require(node)
            out[str(node)] = ids_out(self._leaves(node, chunk_box), as_str)
        return out

    # ---- /segmentation/api/v1/table/<t>/is_latest_roots -----------------------------------------
    def is_latest_roots(self, body: bytes, args) -> dict[str, Any]:
        """PCG's ``is_latest_roots``: a root an edit has replaced (or no root at all) is not latest."""
        nodes = parse_id_list(body)
        top = self.layout.n_layers
        roots = [n for n in nodes if int(self.layout.get_chunk_layer(n)) == top]
        current = dict(zip(roots, self.meshes.is_current(roots)))
        return {"is_latest": [bool(current.get(n, False)) for n in nodes]}


__all__ = ["ApiError", "GrapheneAPI", "parse_bounds", "parse_node", "truthy"]
