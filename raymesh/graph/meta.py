"""Graph meta: PCG's GraphConfig + DataSource + custom_data, and what is derived from them.

PCG stores only the configuration; layer count, bitmasks and bounds are derived at run time from
the config plus the watershed (supervoxel) segmentation's precomputed ``info``. This module does
the same, so a meta read from Bigtable and one read from SQLite behave identically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np

from raymesh.graph.ids import ChunkLayout
from raymesh.volume import SegmentationError


@dataclass(frozen=True)
class GraphConfig:
    """PCG ``GraphConfig`` fields that raymesh uses (same names, lower case)."""

    graph_id: str
    chunk_size: tuple[int, int, int]
    fanout: int = 2
    layer_id_bits: int = 8
    spatial_bits: int = 10
    id_prefix: str = ""


@dataclass(frozen=True)
class DataSource:
    """PCG ``DataSource``: ``watershed`` is the supervoxel segmentation meshing reads."""

    watershed: str
    cv_mip: int = 0
    edges: str | None = None
    components: str | None = None
    data_version: int | None = None


@dataclass
class GraphMeta:
    """Everything a meshing task needs to know about a graph.

    ``ws_info`` is the watershed segmentation's precomputed info; the stores fill it in when they
    open the graph (reading it from the segmentation path), so derived values never go stale.
    """

    graph_config: GraphConfig
    data_source: DataSource
    custom_data: dict[str, Any] = field(default_factory=dict)
    ws_info: dict[str, Any] = field(default_factory=dict)

    # ---- serialisation (the SQLite store keeps this JSON; Bigtable keeps PCG's pickle) ----------
    def to_dict(self) -> dict[str, Any]:
        return {
            "graph_config": {f.name: _jsonable(getattr(self.graph_config, f.name)) for f in fields(GraphConfig)},
            "data_source": {f.name: getattr(self.data_source, f.name) for f in fields(DataSource)},
            "custom_data": copy.deepcopy(self.custom_data),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], ws_info: dict[str, Any] | None = None) -> "GraphMeta":
        gc = dict(d["graph_config"])
        gc["chunk_size"] = tuple(int(v) for v in gc["chunk_size"])
        return cls(
            graph_config=GraphConfig(**gc),
            data_source=DataSource(**d["data_source"]),
            custom_data=dict(d.get("custom_data") or {}),
            ws_info=ws_info or {},
        )

    # ---- derived geometry -------------------------------------------------------------------
    @property
    def graph_id(self) -> str:
        return self.graph_config.id_prefix + self.graph_config.graph_id

    @property
    def segmentation_path(self) -> str:
        return self.data_source.watershed

    @property
    def chunk_size(self) -> np.ndarray:
        return np.asarray(self.graph_config.chunk_size, dtype=np.int64)

    def scale(self, mip: int) -> dict[str, Any]:
        scales = self.ws_info.get("scales") or []
        if not 0 <= mip < len(scales):
            raise SegmentationError(
                f"mip {mip} does not exist in the segmentation {self.segmentation_path} "
                f"(it has mips 0..{len(scales) - 1}); pick one of those"
            )
        return scales[mip]

    @property
    def mips(self) -> int:
        return len(self.ws_info.get("scales") or [])

    def resolution_at(self, mip: int) -> np.ndarray:
        return np.asarray(self.scale(mip)["resolution"], dtype=np.float64)

    def voxel_offset_at(self, mip: int) -> np.ndarray:
        return np.asarray(self.scale(mip)["voxel_offset"], dtype=np.int64)

    def size_at(self, mip: int) -> np.ndarray:
        return np.asarray(self.scale(mip)["size"], dtype=np.int64)

    @property
    def resolution(self) -> np.ndarray:
        return self.resolution_at(0)

    @property
    def voxel_bounds(self) -> np.ndarray:
        """``[[x0, y0, z0], [x1, y1, z1]]`` at mip 0 (half-open)."""
        off = self.voxel_offset_at(0)
        return np.stack([off, off + self.size_at(0)])

    @cached_property
    def layout(self) -> ChunkLayout:
        gc = self.graph_config
        return ChunkLayout.from_voxels(
            self.size_at(0),
            gc.chunk_size,
            layer_id_bits=gc.layer_id_bits,
            spatial_bits=gc.spatial_bits,
            fanout=gc.fanout,
        )

    @property
    def layer_count(self) -> int:
        return self.layout.n_layers

    def mesh_settings(self) -> dict[str, Any]:
        return dict(self.custom_data.get("mesh") or {})


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
