"""Draco quantization grids aligned to chunk boundaries (pcg-compat.md 6.1, 6.8, 7.3, 7.4).

Every chunk's quantization origin is a multiple of the integer bin size B, so every decoded vertex
of every chunk lies on one global grid (multiples of B nm). That is what makes the two sides of a
chunk boundary decode to the same coordinates, and what stitching relies on.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import DracoPy
import numpy as np

from raymesh.graph.ids import ChunkLayout


class DracoError(ValueError):
    """A mesh Draco cannot encode (no faces, all triangles degenerate) or bytes it cannot decode."""


def calc_quantization(r_min: float, b_max: int, bits: int | None = None) -> tuple[int, int, int]:
    """``(bits, range, bin)`` with ``range = bin * (2^bits - 1)``, ``bin <= b_max`` and room for
    the origin to be floored to a multiple of ``bin`` (PCG calculate_quantization_bits_and_range)."""
    if bits is None:
        bits = math.ceil(math.log2(r_min / b_max + 1))
    n = 2**bits - 1
    b = math.ceil(r_min / n)
    r = b * n
    if r < r_min + b:
        if b == b_max:
            return calc_quantization(r_min, b_max, bits + 1)
        b, r = b + 1, r + n
    return bits, r, b


@dataclass(frozen=True)
class DracoSettings:
    bits: int
    range: int
    origin: tuple[int, int, int]

    @property
    def bin(self) -> int:
        b, rem = divmod(self.range, 2**self.bits - 1)
        if rem:
            raise DracoError(f"quantization range {self.range} is not a multiple of 2^{self.bits}-1")
        return b

    def encoder_kwargs(self) -> dict:
        return {"quantization_bits": self.bits, "quantization_range": float(self.range),
                "quantization_origin": np.asarray(self.origin, dtype=np.float32),
                "compression_level": 1, "create_metadata": True}


@dataclass(frozen=True)
class MeshGrid:
    """The geometry meshing at one mip needs: block shapes, chunk offsets and Draco settings."""

    layout: ChunkLayout
    chunk_size: tuple[int, int, int]  # layer-2 chunk, mip-0 voxels
    resolution: tuple[float, float, float]  # mesh mip
    base_resolution: tuple[float, float, float]  # mip 0
    voxel_offset: tuple[int, int, int]  # mesh mip
    mip: int = 0

    @classmethod
    def from_meta(cls, meta, mip: int) -> "MeshGrid":
        return cls(
            layout=meta.layout, chunk_size=tuple(int(c) for c in meta.chunk_size),
            resolution=tuple(float(r) for r in meta.resolution_at(mip)),
            base_resolution=tuple(float(r) for r in meta.resolution_at(0)),
            voxel_offset=tuple(int(v) for v in meta.voxel_offset_at(mip)), mip=mip,
        )

    @property
    def distortion(self) -> np.ndarray:
        return (np.asarray(self.resolution) // np.asarray(self.base_resolution)).astype(np.int64)

    def block_shape(self, layer: int) -> np.ndarray:
        """Mesh-mip voxels of one chunk of ``layer``: ``CHUNK_SIZE * 2^max(0, L-2) // distortion``."""
        return (np.asarray(self.chunk_size) * 2 ** max(0, layer - 2)) // self.distortion

    def chunk_offset(self, chunk_id: int) -> np.ndarray:
        """Lower corner of a chunk in nm: ``(coords * block + voff(mip)) * res(mip)``."""
        layer = int(self.layout.get_chunk_layer(chunk_id))
        coords = self.layout.get_chunk_coordinates(chunk_id)
        return (coords * self.block_shape(layer) + np.asarray(self.voxel_offset)) * np.asarray(self.resolution)

    @property
    def b_max(self) -> int:
        return int(math.floor(min(self.resolution) / math.sqrt(2)))

    def chunk_settings(self, chunk_id: int, high_padding: int = 1) -> DracoSettings:
        """Layer-2-style settings: the chunk plus its overlap voxel fits, origin floored to B."""
        layer = int(self.layout.get_chunk_layer(chunk_id))
        r_min = float(np.max((self.block_shape(layer) + high_padding) * np.asarray(self.resolution)))
        bits, rng, b = calc_quantization(r_min, self.b_max)
        offset = self.chunk_offset(chunk_id)
        origin = offset - np.mod(offset, b)
        return DracoSettings(bits, rng, tuple(int(v) for v in origin))

    def next_layer_settings(self, prev: DracoSettings, chunk_id: int) -> DracoSettings:
        """Settings for a parent chunk from its child's (PCG get_next_layer_draco_encoding_settings).
        Memoised: every fragment lifted through a chunk asks the same question (a LOD task lifts
        tens of thousands), and both arguments and the grid are immutable."""
        return _next_layer_settings(self, prev, int(chunk_id))

    def _next_layer_settings(self, prev: DracoSettings, chunk_id: int) -> DracoSettings:
        layer = int(self.layout.get_chunk_layer(chunk_id))
        b_old = prev.range // (2**prev.bits - 1)
        r_min = float(np.max(self.block_shape(layer) * np.asarray(self.resolution))) + 2 * b_old
        bits, rng, b = calc_quantization(r_min, self.b_max)
        start = self.chunk_offset(chunk_id) - b_old
        origin = start - np.mod(start, b)
        return DracoSettings(bits, rng, tuple(int(v) for v in origin))

    def uniform_grid_size(self, max_layer: int) -> int | None:
        """B if the next-layer chain keeps the same bin at every layer up to max_layer, else None."""
        chunk = int(self.layout.chunk_id(2, 0, 0, 0))
        settings = self.chunk_settings(chunk)
        b = settings.bin
        for layer in range(3, max_layer + 1):
            settings = self.next_layer_settings(settings, int(self.layout.parent_chunk_id(chunk, layer)))
            if settings.bin != b:
                return None
        return b


@functools.lru_cache(maxsize=1 << 16)
def _next_layer_settings(grid: MeshGrid, prev: DracoSettings, chunk_id: int) -> DracoSettings:
    return grid._next_layer_settings(prev, chunk_id)


def snap(vertices: np.ndarray, settings: DracoSettings) -> np.ndarray:
    """Vertices moved to the nearest grid point of ``settings`` (PCG transform_draco_vertices)."""
    origin = np.asarray(settings.origin, dtype=np.float64)
    b = settings.bin
    return origin + b * np.floor((np.asarray(vertices, dtype=np.float64) - origin) / b + 0.5)


def encode(vertices: np.ndarray, faces: np.ndarray, settings: DracoSettings) -> bytes:
    """Draco bytes with the quantization metadata stitching reads back."""
    if len(faces) == 0:
        raise DracoError("mesh has no faces")
    try:
        return DracoPy.encode(np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.uint32),
                              **settings.encoder_kwargs())
    except Exception as exc:  # DracoPy raises EncodingFailedException ("Invalid mesh", degenerate)
        raise DracoError(f"Draco could not encode {len(vertices)} vertices, {len(faces)} faces: {exc}") from exc


@dataclass
class Fragment:
    vertices: np.ndarray  # float64 (n, 3) nm
    faces: np.ndarray  # uint32 (m, 3)
    settings: DracoSettings


def decode(data: bytes) -> Fragment:
    """Vertices, faces and the quantization settings recorded in the fragment's metadata."""
    try:
        mesh = DracoPy.decode(bytes(data))
    except Exception as exc:
        raise DracoError(f"fragment of {len(data)} bytes is not valid Draco: {exc}") from exc
    faces = getattr(mesh, "faces", None)
    if faces is None or len(faces) == 0:
        raise DracoError("fragment decodes to a point cloud, not a mesh")
    opts = mesh.encoding_options
    if opts is None or opts.quantization_bits is None:
        raise DracoError("fragment has no quantization metadata (written without create_metadata)")
    settings = DracoSettings(int(opts.quantization_bits), int(round(opts.quantization_range)),
                             tuple(int(round(v)) for v in opts.quantization_origin))
    return Fragment(np.asarray(mesh.points, dtype=np.float64), np.asarray(faces, dtype=np.uint32), settings)
