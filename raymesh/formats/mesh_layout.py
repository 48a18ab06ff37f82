"""Where mesh files go and the metadata readers need (pcg-compat.md sections 3 and 4).

    <segmentation>/<mesh dir>/info
    <segmentation>/<mesh dir>/initial/<layer>/<chunk position>-0.shard
    <segmentation>/<mesh dir>/dynamic/<node>:0:<bbox>

The LOD chain (``raymesh.lod``), sharded like ``initial/`` (same keys, same specs), where no
reader of PCG's format looks either:

    <segmentation>/<mesh dir>/lod/<layer>/<chunk position>-0.shard   layers 3 and up
    <segmentation>/<mesh dir>/lod_dynamic/<node>:0:<bbox>             nodes edits made (remeshing)

raymesh's own bookkeeping sits beside them, where no reader of PCG's format looks:

    <segmentation>/<mesh dir>/raymesh_run.json                  what the mesh dir holds (run.py)
    <segmentation>/<mesh dir>/raymesh_failed/<layer>/<pos>.json  a chunk whose last run failed
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from raymesh.formats.sharding import ShardingSpec

INITIAL = "initial"
LOD = "lod"
LOD_DYNAMIC = "lod_dynamic"
DYNAMIC = "dynamic"
FAILED = "raymesh_failed"
RUN_RECORD = "raymesh_run.json"


def default_sharding(layer: int) -> ShardingSpec:
    """Murmurhash, one file per chunk (shard_bits 0, as PCG's readers require), gzip indices.

    Minishard bits grow with the layer (2 + L, capped at 10 as minnie65 uses): higher chunks hold
    more meshes, and a small index keeps low-layer shards (mostly few meshes) small.
    """
    return ShardingSpec(minishard_bits=min(10, 2 + int(layer)), shard_bits=0,
                        minishard_index_encoding="gzip", data_encoding="raw")


def shard_key(layout, layer: int, chunk_id: int) -> str:
    """Path of a chunk's shard below the mesh directory."""
    return f"{INITIAL}/{int(layer)}/{int(layout.chunk_position_number(chunk_id))}-0.shard"


def lod_key(layout, layer: int, chunk_id: int) -> str:
    """Path of a chunk's LOD-chain shard (its nodes' simplified meshes) below the mesh directory."""
    return f"{LOD}/{int(layer)}/{int(layout.chunk_position_number(chunk_id))}-0.shard"


def lod_chain_key(layout, layer: int, chunk_id: int) -> str:
    """Where a chunk's meshes of the LOD chain are: ``initial/`` at layer 2 (its fragments are the
    chain's first level), ``lod/`` above."""
    return shard_key(layout, layer, chunk_id) if int(layer) == 2 else lod_key(layout, layer, chunk_id)


def lod_dynamic_key(layout, chunk_size, node_id: int) -> str:
    """Where remeshing puts the LOD-chain mesh of a node an edit made: ``dynamic/`` at layer 2 (its
    fragment is its LOD), ``lod_dynamic/`` above."""
    where = DYNAMIC if int(layout.get_chunk_layer(node_id)) == 2 else LOD_DYNAMIC
    return f"{where}/{dynamic_name(layout, chunk_size, node_id)}"


def failed_key(layout, layer: int, chunk_id: int) -> str:
    """Path of a chunk's failure record below the mesh directory (present only while it failed)."""
    return f"{FAILED}/{int(layer)}/{int(layout.chunk_position_number(chunk_id))}.json"


def dynamic_name(layout, chunk_size, node_id: int) -> str:
    """``{node}:0:{x0-x1_y0-y1_z0-z1}``: the node's chunk extent in graph voxels, no offset."""
    layer = int(layout.get_chunk_layer(node_id))
    extent = np.asarray(chunk_size, dtype=np.int64) * 2 ** max(0, layer - 2)
    lo = layout.get_chunk_coordinates(node_id) * extent
    hi = lo + extent
    return f"{int(node_id)}:0:" + "_".join(f"{a}-{b}" for a, b in zip(lo.tolist(), hi.tolist()))


def mesh_info(meta, mip: int, sharding: Mapping[int, ShardingSpec], distortion) -> dict[str, Any]:
    """The mesh directory's own info: CloudVolume treats the source as sharded iff it has ``sharding``."""
    chunk = (np.asarray(meta.chunk_size) // np.asarray(distortion)).astype(int).tolist()
    return {"@type": "neuroglancer_legacy_mesh", "mip": int(mip), "chunk_size": chunk,
            "spatial_index": None, "sharding": {str(k): v.to_json() for k, v in sorted(sharding.items())}}


def mesh_metadata(grid_size: int | None, grid_sizes: Mapping[int, int], max_layer: int) -> dict[str, Any]:
    out: dict[str, Any] = {"unsharded_mesh_dir": DYNAMIC, "max_meshed_layer": int(max_layer)}
    if grid_size is not None:
        out["uniform_draco_grid_size"] = int(grid_size)
    else:
        out["draco_grid_sizes"] = {str(k): int(v) for k, v in grid_sizes.items()}
    return out


def graphene_info(meta, mesh_dir: str | None = None) -> dict[str, Any]:
    """The info a PCG server serves for this graph (``/segmentation/table/<graph>/info``)."""
    info = copy.deepcopy(meta.ws_info)
    layout = meta.layout
    mesh = dict(meta.custom_data.get("mesh") or {})
    mesh_dir = mesh_dir or mesh.get("dir") or info.get("mesh") or "graphene_meshes"
    info.update({
        "data_dir": meta.segmentation_path.rstrip("/"),
        "chunks_start_at_voxel_offset": True,
        "graph": {
            "chunk_size": [int(c) for c in meta.chunk_size],
            "bounding_box": [2048, 2048, 512],
            "n_bits_for_layer_id": meta.graph_config.layer_id_bits,
            "cv_mip": meta.data_source.cv_mip,
            "n_layers": layout.n_layers,
            "spatial_bit_masks": layout.spatial_bit_masks(),
        },
        "mesh": mesh_dir,
        "mesh_dir": mesh_dir,
        "app": {"supported_api_versions": [0, 1]},
        "sharded_mesh": True,
        "verify_mesh": bool(mesh.get("verify", False)),
    })
    return info
