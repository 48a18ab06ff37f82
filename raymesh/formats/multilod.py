"""Neuroglancer's ``neuroglancer_multilod_draco`` mesh format (neuroglancer-multires.md 1-6): pure,
bytes in and bytes out, for writing an export and for reading one back to check it.

One segment is an octree: LOD ``k`` cells are ``chunk_shape * 2^k`` (stored-model units) from
``grid_origin``; each non-empty cell holds one Draco fragment whose integer vertices are
quantized to the cell with ``vertex_quantization_bits``. A manifest lists, per LOD, the cells in
Z-curve order and their fragments' byte sizes; the fragment data is the fragments in that order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import DracoPy
import numpy as np


class MultilodError(ValueError):
    """Bytes that do not follow the format (a manifest of the wrong size, cells out of order)."""


# ---- Z-curve order --------------------------------------------------------------------------------

def morton_codes(positions: np.ndarray) -> np.ndarray:
    """Morton codes of ``(n, 3)`` cell positions, bits interleaved ``... z1 y1 x1 z0 y0 x0``."""
    p = np.asarray(positions, dtype=np.uint64).reshape(-1, 3)
    code = np.zeros(len(p), dtype=np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((p[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return code


def zorder(positions: np.ndarray) -> np.ndarray:
    """Indices that sort cell positions in Z-curve order (the order the manifest needs)."""
    return np.argsort(morton_codes(positions), kind="stable")


# ---- manifest -------------------------------------------------------------------------------------

@dataclass
class Manifest:
    chunk_shape: np.ndarray  # (3,) float32, LOD-0 cell size
    grid_origin: np.ndarray  # (3,) float32
    lod_scales: np.ndarray  # (num_lods,) float32
    vertex_offsets: np.ndarray  # (num_lods, 3) float32
    positions: list[np.ndarray]  # per LOD, (n, 3) uint32 cell positions, Z-curve order
    sizes: list[np.ndarray]  # per LOD, (n,) uint32 fragment byte sizes

    @property
    def num_lods(self) -> int:
        return len(self.lod_scales)

    @property
    def data_bytes(self) -> int:
        return int(sum(int(s.sum()) for s in self.sizes))

    def fragment_ranges(self) -> list[list[tuple[int, int]]]:
        """Per LOD, each fragment's ``(start, stop)`` in the fragment data (LOD 0 first)."""
        out, at = [], 0
        for sizes in self.sizes:
            ranges = []
            for size in sizes.tolist():
                ranges.append((at, at + int(size)))
                at += int(size)
            out.append(ranges)
        return out

    def to_bytes(self) -> bytes:
        n = self.num_lods
        parts = [np.asarray(self.chunk_shape, "<f4").tobytes(), np.asarray(self.grid_origin, "<f4").tobytes(),
                 struct.pack("<I", n), np.asarray(self.lod_scales, "<f4").tobytes(),
                 np.asarray(self.vertex_offsets, "<f4").reshape(n, 3).tobytes(),
                 np.array([len(p) for p in self.positions], "<u4").tobytes()]
        for pos, sizes in zip(self.positions, self.sizes):
            parts.append(np.asarray(pos, "<u4").reshape(-1, 3).T.copy().tobytes())  # [3, n]: all x, then y, z
            parts.append(np.asarray(sizes, "<u4").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse a manifest; it must be consumed exactly (as CloudVolume and Neuroglancer require)."""
        data = bytes(data)
        if len(data) < 28:
            raise MultilodError(f"a manifest is at least 28 bytes; got {len(data)}")
        chunk_shape = np.frombuffer(data, "<f4", 3, 0).copy()
        grid_origin = np.frombuffer(data, "<f4", 3, 12).copy()
        (n,) = struct.unpack_from("<I", data, 24)
        at = 28
        need = at + n * 20
        if len(data) < need:
            raise MultilodError(f"manifest of {len(data)} bytes is too short for {n} LODs")
        lod_scales = np.frombuffer(data, "<f4", n, at).copy()
        at += 4 * n
        vertex_offsets = np.frombuffer(data, "<f4", 3 * n, at).reshape(n, 3).copy()
        at += 12 * n
        counts = np.frombuffer(data, "<u4", n, at).astype(np.int64)
        at += 4 * n
        expected = at + int(counts.sum()) * 16
        if len(data) != expected:
            raise MultilodError(f"manifest is {len(data)} bytes; its counts {counts.tolist()} need {expected}")
        positions, sizes = [], []
        for count in counts.tolist():
            positions.append(np.frombuffer(data, "<u4", 3 * count, at).reshape(3, count).T.copy())
            at += 12 * count
            sizes.append(np.frombuffer(data, "<u4", count, at).copy())
            at += 4 * count
        return cls(chunk_shape, grid_origin, lod_scales, vertex_offsets, positions, sizes)

    def problems(self) -> list[str]:
        """What breaks the format's rules: Z order within each LOD, and every cell of LOD k < top
        inside a cell of LOD k+1 (Neuroglancer's octree drops orphans)."""
        out = []
        for lod, pos in enumerate(self.positions):
            codes = morton_codes(pos)
            if len(codes) > 1 and not (np.diff(codes.astype(np.int64)) > 0).all():
                out.append(f"LOD {lod}: cells are not in strictly increasing Z-curve order")
            if lod + 1 < self.num_lods and len(pos):
                parents = {tuple(p) for p in np.asarray(self.positions[lod + 1]).tolist()}
                orphans = [p for p in (pos >> 1).tolist() if tuple(p) not in parents]
                if orphans:
                    out.append(f"LOD {lod}: {len(orphans)} cells have no parent cell at LOD {lod + 1} "
                               f"(first: child of {orphans[0]})")
        return out


# ---- fragments ------------------------------------------------------------------------------------

def quantize(vertices: np.ndarray, box_origin: np.ndarray, box_size: np.ndarray, bits: int) -> np.ndarray:
    """Stored-model vertices as the integers a fragment holds: its box in ``2^bits - 1`` steps
    per axis, clipped to the box (cloud-volume ``to_stored_model_space``)."""
    top = 2**bits - 1
    q = np.round((np.asarray(vertices, np.float64) - box_origin) / box_size * top)
    return np.clip(q, 0, top).astype(np.uint16 if bits <= 16 else np.uint32)


def partition_point(bits: int) -> int:
    """Where Neuroglancer splits a fragment above LOD 0 into its 8 child octants, in quantized
    units: ``(2^bits - 1) // 2 + 1`` (its Draco decoder; 32768 at 16 bits). A vertex there belongs
    to both halves; a triangle with corners on both sides of it crosses the child grid."""
    return (2**bits - 1) // 2 + 1


def crossing_child_grid(q: np.ndarray, faces: np.ndarray, bits: int) -> np.ndarray:
    """Faces of a fragment above LOD 0 that cross its child grid, as Neuroglancer partitions it."""
    if not len(faces):
        return np.zeros(0, dtype=bool)
    c = np.asarray(q, dtype=np.int64)[np.asarray(faces, dtype=np.int64)]
    mid = partition_point(bits)
    return ((c.min(axis=1) < mid) & (c.max(axis=1) > mid)).any(axis=1)


def dequantize(q: np.ndarray, box_origin: np.ndarray, box_size: np.ndarray, bits: int) -> np.ndarray:
    return np.asarray(box_origin, np.float64) + np.asarray(q, np.float64) / (2**bits - 1) * np.asarray(box_size)


def drop_degenerate(q: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces whose corners are three distinct points (after quantization: a triangle squeezed to
    a point or a segment draws nothing, and Draco refuses a mesh of only those)."""
    faces = np.asarray(faces).reshape(-1, 3)
    if not len(faces):
        return faces
    c = np.asarray(q)[faces]
    same = (c[:, 0] == c[:, 1]).all(1) | (c[:, 1] == c[:, 2]).all(1) | (c[:, 0] == c[:, 2]).all(1)
    return faces[~same]


def encode_fragment(q: np.ndarray, faces: np.ndarray, bits: int, compression_level: int = 7) -> bytes:
    """A fragment from quantized (integer) vertices: Draco stores them as an integer attribute,
    so they decode to exactly these integers (no Draco quantization on top). Degenerate triangles
    are left out; a fragment with none left is empty (0 bytes)."""
    faces = drop_degenerate(q, faces)
    if not len(faces):
        return b""  # an empty fragment: allowed, the cell stays in the octree
    top = float(2**bits - 1)
    return DracoPy.encode(np.ascontiguousarray(q), np.ascontiguousarray(faces, dtype=np.uint32),
                          quantization_bits=bits, quantization_range=top,
                          quantization_origin=np.zeros(3, dtype=np.float32),
                          compression_level=compression_level, create_metadata=True)


def decode_fragment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(integer vertices, faces)`` of a fragment (empty for a zero-size one)."""
    if not len(data):
        return np.zeros((0, 3), np.uint32), np.zeros((0, 3), np.uint32)
    mesh = DracoPy.decode(bytes(data))
    return np.asarray(mesh.points), np.asarray(mesh.faces, dtype=np.uint32).reshape(-1, 3)


# ---- files ----------------------------------------------------------------------------------------

def mesh_info(resolution, bits: int = 16, sharding: dict | None = None, mip: int = 0,
              transform: list[float] | None = None) -> dict:
    """The mesh dir's ``info``. ``transform`` maps stored-model units to nm (default: identity,
    as raymesh stores vertices in nm already)."""
    info = {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": int(bits),
            "transform": transform or [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], "lod_scale_multiplier": 1.0,
            "mip": int(mip)}
    if sharding is not None:
        info["sharding"] = sharding
    return info


def shard_file_name(shard: int, shard_bits: int) -> str:
    """``<hex shard>.shard``, zero-padded to ``ceil(shard_bits / 4)`` digits (precomputed, not graphene)."""
    digits = -(-int(shard_bits) // 4)
    return f"{int(shard):0{digits}x}.shard" if digits else f"{int(shard):x}.shard"


def shard_files(values: dict[int, tuple[bytes, bytes]], spec) -> dict[str, bytes]:
    """Sharded files for ``{segment id: (fragment data, manifest)}``: each value is the fragment
    data followed by the manifest, and the index points at the manifest (section 6)."""
    from raymesh.formats.sharding import ShardBuilder, canonical_order

    by_shard: dict[int, list[int]] = {}
    for key in values:
        by_shard.setdefault(int(spec.shard_of(np.array([key], dtype=np.uint64))[0]), []).append(int(key))
    out = {}
    for shard, keys in sorted(by_shard.items()):
        builder = ShardBuilder(spec, spool_bytes=2**62)
        try:
            for key in canonical_order(keys, spec):
                fragments, manifest = values[key]
                builder.add(key, fragments + manifest, skip=len(fragments))
            out[shard_file_name(shard, spec.shard_bits)] = b"".join(builder.pieces())
        finally:
            builder.close()
    return out
