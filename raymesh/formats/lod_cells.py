"""The LOD chain's stored value for a node simplified cell by cell: one Draco mesh per child
cell, behind a small header, so that no task ever encodes (or decodes into one array) a whole big
node's mesh. Draco's encoder takes ~100 bytes a face of its own memory; for the root node of the
real volume (53k faces) that was the root task's peak, 5.7 of its 11 MiB.

A value that does not start with ``MAGIC`` is a plain Draco mesh (every node under the split
size, and every value written before cells were stored apart). Layout, little-endian::

    MAGIC (8 bytes) | count (u32) | count sizes (u32 each) | the count Draco meshes, in order

Only raymesh reads these (``lod/`` and ``lod_dynamic/``); the export re-encodes every LOD into
Neuroglancer's own format.
"""

from __future__ import annotations

import struct

from raymesh.formats.draco import DracoError

MAGIC = b"RMLODCEL"


class CellsError(DracoError):
    """A cell container that does not parse (truncated or corrupt): a value that does not decode,
    to every reader of LOD values."""


def pack_cells(blobs: list[bytes]) -> bytes:
    """One value holding ``blobs`` (a single blob is stored as itself)."""
    if len(blobs) == 1:
        return bytes(blobs[0])
    head = MAGIC + struct.pack(f"<I{len(blobs)}I", len(blobs), *(len(b) for b in blobs))
    return head + b"".join(blobs)


def cell_blobs(data: bytes) -> list[bytes]:
    """The Draco meshes of a stored value: itself, or its cells in order."""
    data = bytes(data)
    if not data.startswith(MAGIC):
        return [data]
    at = len(MAGIC)
    if len(data) < at + 4:
        raise CellsError(f"a LOD cell container of {len(data)} bytes has no count")
    (count,) = struct.unpack_from("<I", data, at)
    at += 4
    if count < 2 or len(data) < at + 4 * count:
        raise CellsError(f"a LOD cell container says {count} cells but has no room for their sizes")
    sizes = struct.unpack_from(f"<{count}I", data, at)
    at += 4 * count
    if at + sum(sizes) != len(data):
        raise CellsError(f"a LOD cell container's {count} cells of {sum(sizes)} bytes do not fill its "
                         f"{len(data) - at} bytes")
    out = []
    for size in sizes:
        out.append(data[at:at + size])
        at += size
    return out
