"""Job configuration: a YAML file (configs/) and CLI flags, validated with clear errors.

pydantic does the type checking and unknown-key detection; the messages are rewritten to name the
offending key and the fix, since a config error should not need a traceback to understand.
"""

from __future__ import annotations

import re
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
    simplifier: str = Field("zmesh", pattern="^(zmesh|meshopt)$", description="layer-2 simplification: "
                            "zmesh (PCG's) or meshopt (meshoptimizer, faster; raymesh/simplify.py)")
    mesh_dir: str = "graphene_meshes"
    lod_chain: bool = Field(False, description="also write the LOD chain: a simplified mesh of every node of "
                            "layers 3 and up, made from its children's, beside initial/ (raymesh/lod). Off by "
                            "default: on the real volume it adds 23-28% to a run, not clearly under the 25% bar "
                            "(benchmarks/lod_chain.py)")
    lod_error: Optional[float] = Field(None, gt=0, description="base of the LOD error budget: a layer-L LOD "
                                       "mesh stays within lod_error * lod_growth^(L-2) nm of the layer-2 "
                                       "surface. Default: max_error")
    lod_growth: float = Field(2.0, ge=1.0, description="factor the LOD error budget grows by per layer")
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
    # Issue 23: with highmem_layer set, the layers below it ask for a sliver of this resource, which
    # only the general node group carries, so small tasks never land on (or make an autoscaler add)
    # big-memory nodes. null: they may run anywhere.
    general_resource: Optional[str] = Field("raymesh_general", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                            description="custom resource only the general node group carries; "
                                            "with highmem_layer, the layers below it ask for it (null: none)")
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

    @field_validator("chunk_start", "chunk_end", mode="before")
    @classmethod
    def _three(cls, v):
        if isinstance(v, str):  # "0 0 0" or "0,0,0", as on the command line
            v = parse_triple(v)
        if v is not None and len(v) != 3:
            raise ValueError("needs three integers (x y z)")
        return v

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_text(cls, v):
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return parse_layers(v)  # "2-7", "2,3", 5: what --layers takes
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        check_layers(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _layer_spellings(cls, data):
        """``layer: 5`` and ``max_layer: 7``, as the flags ``--layer`` and ``--max-layer``."""
        if isinstance(data, dict) and any(k in data for k in ("layer", "max_layer")):
            data = dict(data)
            data["layers"] = layers_setting(data)
        return data

    @model_validator(mode="after")
    def _range(self):
        if (self.chunk_start is None) != (self.chunk_end is None):
            given, missing = ("chunk_start", "chunk_end") if self.chunk_end is None else ("chunk_end", "chunk_start")
            raise ValueError(f"{given} needs {missing} too: a chunk range is two corners in chunks of the first "
                             "layer meshed, the start included and the end not (e.g. chunk_start 0 0 0 with "
                             "chunk_end 2 2 1 meshes 2x2x1 chunks)")
        if self.chunk_start is not None and any(s >= e for s, e in zip(self.chunk_start, self.chunk_end)):
            raise ValueError(f"chunk_end {' '.join(map(str, self.chunk_end))} must be greater than chunk_start "
                             f"{' '.join(map(str, self.chunk_start))} on every axis (the end is not included)")
        return self


LAYER_KEYS = ("layers", "layer", "max_layer")  # three spellings of one setting, as the three flags


def parse_triple(text: str) -> list[int]:
    """``"0 0 0"`` or ``"0,0,0"`` -> [0, 0, 0]."""
    try:
        return [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{text!r} is not three integers (x y z)") from None


def layers_flag(text: str, flag: str = "--layers") -> list[int]:
    """``parse_layers`` for a command-line flag: a ``ConfigError`` naming the flag."""
    try:
        return parse_layers(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} {text}: {exc}") from None


def parse_layers(text) -> list[int]:
    """What ``--layers`` and ``layers:`` take: ``5``; a range ``2-7``; a list ``2,3,5`` (items may
    be ranges: ``2-4,6``). Raises ValueError saying what is wrong and how to write it instead."""
    if isinstance(text, int) and not isinstance(text, bool):
        layers = [text]
    else:
        layers = []
        items = str(text).replace(" ", "").split(",")
        for item in items:
            lo, sep, hi = item.partition("-")
            try:
                a, b = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise ValueError("not a layer, a range like 2-7 or a list like 2,3,5") from None
            if b < a:
                where = f"{item} runs" if len(items) > 1 else "the range runs"
                raise ValueError(f"{where} backwards: write the lower layer first ({b}-{a})")
            layers.extend(range(a, b + 1))
    check_layers(layers)
    return layers


def check_layers(layers: list[int]) -> None:
    if not layers:
        raise ValueError("no layers: give at least one, e.g. 2, or 2-4")
    if min(layers) < 2:
        top = max(layers)
        raise ValueError(f"there are no meshes below layer 2 (layer 1 is the supervoxels): start at 2, e.g. "
                         f"{f'2-{top}' if top > 2 else '2'}")
    if layers != sorted(set(layers)):
        raise ValueError(f"list each layer once, lowest first: {','.join(map(str, sorted(set(layers))))}")


def layers_setting(data: dict) -> list[int]:
    """The layers that ``layers``, ``layer`` or ``max_layer`` (one of them) in ``data`` choose;
    removes ``layer`` and ``max_layer`` from ``data``."""
    given = [k for k in LAYER_KEYS if data.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {' and '.join(given)}: each chooses the layers to mesh")
    layer, top = data.pop("layer", None), data.pop("max_layer", None)
    if layer is not None:
        return parse_layers(layer)
    if top is not None:
        top = int(top)
        if top < 2:
            raise ValueError(f"max_layer {top}: the highest layer meshed must be 2 or more (layer 1 is the "
                             "supervoxels, which have no meshes), e.g. 4")
        return list(range(2, top + 1))
    return data.get("layers") or [2]


def _where(key: str, value, source: str, flags: set[str]) -> str:
    """A setting as the user wrote it: ``--layers 4-2`` on the command line, ``'layers: 4-2' in
    job.yaml`` in a config file, ``'layers' = '4-2'`` from Python."""
    if key in flags:
        flag = "--" + key.replace("_", "-")
        return f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"
    if source:
        return f"'{key}: {value}' in {source}"
    return f"'{key}' = {value!r}"


def _flag_words(msg: str, flags: set[str]) -> str:
    for key in flags:
        if "_" in key:  # chunk_start -> --chunk-start; plain words (layers) stay prose
            msg = re.sub(rf"\b{key}\b", "--" + key.replace("_", "-"), msg)
    return msg


GRAPH_HELP = "sqlite:///path/graph.sqlite, or bigtable://PROJECT/INSTANCE/TABLE for a PCG table"


def _explain(exc: ValidationError, data: dict, source: str, flags: set[str], from_flags: bool) -> ConfigError:
    valid = ", ".join([*MeshConfig.model_fields, "layer", "max_layer"])
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'{f' in {source}' if source else ''} (valid keys: {valid})")
        elif err["type"] == "missing" and key == "graph":
            lines.append(f"no graph to mesh: give --graph URL{f' or graph: in {source}' if source else ''} "
                         f"({GRAPH_HELP})")
        elif key:
            lines.append(f"{_where(key, data.get(key), source, flags)}: {msg}")
        else:  # a rule between settings
            # with no file, every setting is a flag (also the one that is missing)
            lines.append(_flag_words(msg, flags if source or not from_flags else set(MeshConfig.model_fields))
                         + (f" (in {source})" if source else ""))
    return ConfigError("; ".join(lines))


def load_config(path: str | None = None, *, from_flags: bool = False, **overrides: Any) -> MeshConfig:
    """A config from YAML (if given) with overrides (None means "not given"). ``from_flags``: the
    overrides came from the command line, and errors name them as flags (``--layers 4-2: ...``).

    A YAML file takes what the flags take: ``layers: 2-7``, ``layers: "2,3"``, ``layer: 5``,
    ``max_layer: 7``, ``chunk_start: 0 0 0``, ``memory_budget: 2GiB``. A layer flag replaces the
    file's layers however the file wrote them."""
    data: dict[str, Any] = {}
    source = ""
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
    given = {k: v for k, v in overrides.items() if v is not None}
    if any(k in given for k in LAYER_KEYS):
        data = {k: v for k, v in data.items() if k not in LAYER_KEYS}
    data.update(given)
    flags = set(given) if from_flags else set()
    chosen = [k for k in LAYER_KEYS if data.get(k) is not None]
    if len(chosen) > 1:
        names = [_where(k, data[k], source, flags) for k in chosen]
        raise ConfigError(f"give only one of {' and '.join(names)}: each chooses the layers to mesh")
    if chosen:  # checked here, where it is known how the user wrote them
        key = chosen[0]
        value = data.pop(key)
        try:
            if key == "max_layer":
                top = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
                data["layers"] = list(range(2, top + 1))
                if top < 2:
                    raise ValueError("the highest layer meshed must be 2 or more (there are no meshes below "
                                     "layer 2: layer 1 is the supervoxels), e.g. 4")
            elif isinstance(value, list):
                check_layers(value)
                data["layers"] = value
            else:
                data["layers"] = parse_layers(value)
        except (ValueError, TypeError) as exc:
            text = str(exc) if isinstance(exc, ValueError) and "invalid literal" not in str(exc) \
                else "not a layer number"
            raise ConfigError(f"{_where(key, value, source, flags)}: {text}") from None
    try:
        return MeshConfig(**data)
    except ValidationError as exc:
        raise _explain(exc, data, source, flags, from_flags) from None
