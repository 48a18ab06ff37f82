"""The run record: what a mesh directory holds, so every later run extends it consistently.

``<mesh dir>/raymesh_run.json`` is written before the first chunk of the first run into a mesh
directory. It pins the graph state (time stamp) and the settings that decide the bytes (mip,
max_error, the layer-2 simplifier), and says whether the dir holds the LOD chain, so a run interrupted, resumed, rerun on part of the dataset or run layer by layer
meshes the same graph the same way, and it keeps the highest layer completed. Its fields only
move forward: ``max_layer`` never goes down and the time stamp never changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from raymesh.graph.base import read_ms


class RecordError(ValueError):
    """A run record that does not parse."""


@dataclass
class RunRecord:
    time_stamp: float  # POSIX seconds: the graph state the mesh dir's initial meshes show
    mip: int
    max_error: float
    max_layer: int = 0  # highest layer a run completed without failures (0: none yet)
    # The mesh dir holds the LOD chain (lod/): later runs keep it up to date unless told not to.
    # Like max_layer it only moves forward.
    lod_chain: bool = False
    # The layer-2 simplifier its meshes were made with (``MeshConfig.simplifier``); remeshing
    # after edits uses it too. Written only when it is not PCG's zmesh.
    simplifier: str = "zmesh"

    @property
    def initial_ts(self) -> float:
        """PCG's ``custom_data['mesh']['initial_ts']``: nodes created after it are remeshed into
        ``dynamic/`` (one millisecond past the read bound, as PCG records it)."""
        return read_ms(self.time_stamp) / 1000 + 0.001

    def to_bytes(self) -> bytes:
        fields = asdict(self)
        if not fields["lod_chain"]:
            del fields["lod_chain"]  # records of mesh dirs without the chain read as they always did
        if fields["simplifier"] == "zmesh":
            del fields["simplifier"]  # likewise for PCG's simplifier
        return json.dumps(fields, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "RunRecord":
        try:
            raw = json.loads(data)
            return cls(time_stamp=float(raw["time_stamp"]), mip=int(raw["mip"]),
                       max_error=float(raw["max_error"]), max_layer=int(raw.get("max_layer", 0)),
                       lod_chain=bool(raw.get("lod_chain", False)), simplifier=str(raw.get("simplifier", "zmesh")))
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"the run record {where} is unreadable ({exc}); restore it or delete it "
                              "(the next run then starts the mesh dir's record afresh)") from exc

    @classmethod
    def from_graph_settings(cls, settings: dict) -> "RunRecord | None":
        """A record from a graph's ``custom_data['mesh']`` (a mesh dir meshed before records
        existed, or by PCG); None when it lacks what a record needs."""
        try:
            return cls(time_stamp=float(settings["initial_ts"]) - 0.001, mip=int(settings["mip"]),
                       max_error=float(settings["max_error"]), max_layer=int(settings.get("max_layer", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def clashes(self, *, mip: int | None, max_error: float | None, time_stamp: float | None,
                simplifier: str | None = None) -> list[str]:
        """What a run asks for explicitly that differs from the record (None: not asked)."""
        out = []
        if simplifier is not None and simplifier != self.simplifier:
            out.append(f"simplifier {simplifier} (the mesh dir holds meshes simplified by {self.simplifier})")
        if mip is not None and int(mip) != self.mip:
            out.append(f"mip {mip} (the mesh dir holds mip {self.mip})")
        if max_error is not None and float(max_error) != self.max_error:
            out.append(f"max_error {max_error} (the mesh dir holds max_error {self.max_error})")
        if time_stamp is not None and abs(float(time_stamp) - self.time_stamp) > 0.001:
            out.append(f"time stamp {time_stamp} (the mesh dir holds the graph as of {self.time_stamp})")
        return out
