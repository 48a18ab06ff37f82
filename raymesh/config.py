"""Job configuration: a YAML file (configs/) and CLI flags, validated with clear errors.

pydantic does the type checking and unknown-key detection; the messages are rewritten to name the
offending key and the fix, since a config error should not need a traceback to understand.
"""

from __future__ import annotations

from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymesh.errors import ConfigError


class ShardingOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type_: str = Field("neuroglancer_uint64_sharded_v1", alias="@type")
    preshift_bits: int = 0
    hash: str = "murmurhash3_x86_128"
    minishard_bits: int = Field(ge=0, le=32)
    shard_bits: int = 0
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "raw"

    @field_validator("shard_bits")
    @classmethod
    def _one_file_per_chunk(cls, v: int) -> int:
        if v != 0:
            raise ValueError("shard_bits must be 0: PCG and CloudVolume read one shard file per chunk")
        return v


class MeshConfig(BaseModel):
    """Everything a meshing run needs. Field names follow PCG's meshing_batch.py."""

    model_config = ConfigDict(extra="forbid")

    graph: str = Field(description="graph store URL, e.g. sqlite:///data/graph.sqlite")
    layers: list[int] = Field(default_factory=lambda: [2], description="layers to mesh, in order")
    chunk_start: Optional[list[int]] = None
    chunk_end: Optional[list[int]] = None
    mip: Optional[int] = Field(None, ge=0, description="mesh mip; default custom_data mesh.mip or 0")
    max_error: float = Field(40.0, gt=0)
    mesh_dir: str = "graphene_meshes"
    time_stamp: Optional[float] = Field(None, description="POSIX seconds; default: now")
    dust_threshold: Optional[int] = Field(None, ge=1)
    sharding: dict[int, ShardingOverride] = Field(default_factory=dict)
    memory_budget: int = Field(2 * 2**30, gt=0, description="bytes one stitching task may use; "
                               "accepts 2GiB, 512MiB, ...")
    max_stitch_bytes: Optional[int] = Field(None, ge=0, description="most child-fragment bytes one node is "
                                            "stitched from; a bigger node keeps no mesh and viewers load its "
                                            "children's (PCG's verified manifest). Default: (memory_budget - "
                                            "256MiB) / 2 / 160 (placement.node_limit)")
    highmem_layer: Optional[int] = Field(None, ge=2, description="layers at or above this one also ask "
                                         "Ray for one unit of highmem_resource (big-memory nodes)")
    highmem_resource: str = Field("raymesh_highmem", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="custom resource name the big-memory node group carries")
    placement_timeout: float = Field(0.0, ge=0, description="seconds to wait for a node that fits a "
                                     "task's request (an autoscaler adding one) before failing; 0: fail at once")
    chunks_per_task: int = Field(1, ge=1, description="chunks meshed one after another by one Ray task")
    shard_cache: bool = Field(True, description="keep written shards in Ray's object store for the layer above")
    shard_cache_bytes: Optional[int] = Field(None, gt=0, description="most shard bytes held for later layers; "
                                             "past it, shards are read back from storage. Default: half the "
                                             "cluster's object store")
    graph_meta: str = Field("auto", pattern="^(auto|write|dry-run|skip)$",
                            description="record custom_data['mesh'] in the graph meta (PCG update_meta): "
                            "auto = write for embedded graphs, dry-run for Bigtable")
    max_graph_reads: int = Field(32, ge=1, description="cluster-wide cap on concurrent hierarchy reads "
                                 "(Bigtable is shared with proofreading)")
    workers: Optional[int] = Field(None, ge=1, description="local Ray CPUs")
    address: Optional[str] = Field(None, description="Ray address: auto, ray://host:port; default local")
    executor: str = Field("auto", pattern="^(auto|ray|serial)$",
                          description="where chunks run: ray, serial (this process), or auto: Ray, except "
                          "a small job with no cluster to join, which runs in this process (starting a "
                          "local Ray costs more than such a job)")
    force: bool = False

    @field_validator("memory_budget", "shard_cache_bytes", "max_stitch_bytes", mode="before")
    @classmethod
    def _bytes(cls, v):
        if isinstance(v, str):
            units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "b": 1}
            text = v.strip().lower().replace(" ", "")
            for unit, scale in units.items():
                if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
                    return int(float(text[: -len(unit)]) * scale)
            if text.isdigit():
                return int(text)
            raise ValueError(f"{v!r} is not a size; write bytes or a number with KiB, MiB, GiB")
        return v

    @field_validator("chunk_start", "chunk_end")
    @classmethod
    def _three(cls, v):
        if v is not None and len(v) != 3:
            raise ValueError("needs three integers (x y z)")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if not v or any(layer < 2 for layer in v):
            raise ValueError("layers start at 2 (layer 1 is supervoxels, which have no meshes)")
        if v != sorted(set(v)):
            raise ValueError("layers must be increasing without repeats")
        return v

    @model_validator(mode="after")
    def _range(self):
        if (self.chunk_start is None) != (self.chunk_end is None):
            raise ValueError("chunk_start and chunk_end go together")
        return self


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (valid keys: {', '.join(MeshConfig.model_fields)})")
        else:
            lines.append(f"'{key}': {err['msg']}")
    return ConfigError(f"invalid config {source}: " + "; ".join(lines))


def load_config(path: str | None = None, **overrides: Any) -> MeshConfig:
    """A config from YAML (if given) with flag overrides (None means "not given")."""
    data: dict[str, Any] = {}
    source = "from flags"
    if path:
        source = path
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return MeshConfig(**data)
    except ValidationError as exc:
        raise _explain(exc, source) from None
