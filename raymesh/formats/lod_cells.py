"""The LOD chain's stored value for a node simplified in units: one Draco mesh per unit, behind a
small header, so that no task ever encodes (or decodes into one array) a whole big node's mesh.
Draco's encoder takes ~100 bytes a face of its own memory; for the root node of the real volume
(53k faces) that was the root task's peak, 5.7 of its 11 MiB.

A value that starts with neither magic is a plain Draco mesh (every node under the split size).
Layout, little-endian::

    MAGIC (8 bytes) | count (u32) | count sizes (u32) | nx, ny, nz (u32) | nx + ny + nz planes (f64)
        | the count Draco meshes, in order

The planes are where the meshes meet, per axis, as the meshes' vertices hold them (on the node's
Draco grid): a reader merges vertices lying exactly on one of them. ``MAGIC_V1`` values (written
before units, one mesh per child cell, no planes: they meet on the node's mid-planes) still read.

Only raymesh reads these (``lod/`` and ``lod_dynamic/``); the export re-encodes every LOD into
Neuroglancer's own format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from raymesh.formats.draco import DracoError

MAGIC = b"RMLODCE2"
MAGIC_V1 = b"RMLODCEL"


class CellsError(DracoError):
    """A cell container that does not parse (truncated or corrupt): a value that does not decode,
    to every reader of LOD values."""


@dataclass
class Cells:
    blobs: list[bytes]  # Draco meshes
    planes: list[np.ndarray] | None  # per axis, where they meet; None: the node's mid-planes (v1)


def pack_cells(blobs: list[bytes], planes: list[np.ndarray] | None = None) -> bytes:
    """One value holding ``blobs`` (a single blob is stored as itself), meeting on ``planes``."""
    if len(blobs) == 1:
        return bytes(blobs[0])
    if planes is None or len(planes) != 3:
        raise ValueError("a cell container needs its planes, per axis")
    planes = [np.unique(np.asarray(p, dtype="<f8")) for p in planes]
    head = MAGIC + struct.pack(f"<I{len(blobs)}I", len(blobs), *(len(b) for b in blobs))
    head += struct.pack("<3I", *(len(p) for p in planes)) + b"".join(p.tobytes() for p in planes)
    return head + b"".join(blobs)


def unpack_cells(data: bytes) -> Cells:
    """The Draco meshes of a stored value (itself, or its cells in order) and their planes."""
    data = bytes(data)
    v1 = data.startswith(MAGIC_V1)
    if not (v1 or data.startswith(MAGIC)):
        return Cells([data], None)
    at = len(MAGIC)
    if len(data) < at + 4:
        raise CellsError(f"a LOD cell container of {len(data)} bytes has no count")
    (count,) = struct.unpack_from("<I", data, at)
    at += 4
    if count < 2 or len(data) < at + 4 * count:
        raise CellsError(f"a LOD cell container says {count} cells but has no room for their sizes")
    sizes = struct.unpack_from(f"<{count}I", data, at)
    at += 4 * count
    planes = None
    if not v1:
        if len(data) < at + 12:
            raise CellsError("a LOD cell container has no room for its plane counts")
        counts = struct.unpack_from("<3I", data, at)
        at += 12
        if len(data) < at + 8 * sum(counts):
            raise CellsError(f"a LOD cell container says {sum(counts)} planes but has no room for them")
        planes = []
        for n in counts:
            planes.append(np.frombuffer(data, dtype="<f8", count=n, offset=at).astype(np.float64))
            at += 8 * n
    if at + sum(sizes) != len(data):
        raise CellsError(f"a LOD cell container's {count} cells of {sum(sizes)} bytes do not fill its "
                         f"{len(data) - at} bytes")
    blobs = []
    for size in sizes:
        blobs.append(data[at:at + size])
        at += size
    return Cells(blobs, planes)

