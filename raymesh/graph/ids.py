"""PCG node and chunk id codec (pcg-compat.md section 1).

A node id packs, from the most significant bit: layer (``layer_id_bits``), chunk x, y, z
(``s(layer)`` bits each) and a segment id. Field widths depend on the layer, so the layer is
always decoded first. Every method accepts a scalar or a numpy array and is vectorised; ids are
``np.uint64`` throughout because Python ints silently become float64 in mixed numpy arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

U64 = np.uint64
ArrayLike = int | np.integer | np.ndarray | Sequence[int]


class GraphLayoutError(ValueError):
    """Impossible graph geometry (too many layers for the spatial bits, coordinates out of range)."""


def compute_bitmasks(n_layers: int, spatial_bits: int = 10) -> dict[int, int]:
    """Spatial bits per layer, exactly as PCG's ``compute_bitmasks``.

    The root layer and the layer below get 1 bit, layer L >= 3 gets ``n_layers - L`` bits and
    layers 1 and 2 get ``spatial_bits``, which must be enough for the layer-2 grid.
    """
    if n_layers < 2:
        raise GraphLayoutError(f"a ChunkedGraph has at least 2 layers, got {n_layers}")
    masks: dict[int, int] = {}
    for layer in range(n_layers, 1, -1):
        bits = max(1, n_layers - layer)
        if layer == 2:
            if spatial_bits < bits:
                raise GraphLayoutError(
                    f"not enough spatial bits: {n_layers} layers need SPATIAL_BITS >= {bits}, "
                    f"got {spatial_bits}; raise spatial_bits or use a larger chunk size"
                )
            bits = max(spatial_bits, bits)
        masks[layer] = bits
    masks[1] = masks[2]
    return dict(sorted(masks.items()))


def layer_count_for(n_chunks: Sequence[int], fanout: int = 2) -> int:
    """``ceil(log_fanout(max chunks per axis)) + 2``: one chunk per axis gives 2 layers."""
    biggest = max(int(n) for n in n_chunks)
    if biggest < 1:
        raise GraphLayoutError(f"the layer-2 chunk grid must be non-empty, got {list(n_chunks)}")
    # Integer search instead of float log so 2**k chunks never round up to k+1.
    levels, reach = 0, 1
    while reach < biggest:
        reach *= fanout
        levels += 1
    return levels + 2


def _u64(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype=U64)


@dataclass(frozen=True)
class ChunkLayout:
    """The id bit layout and chunk grid of one graph.

    ``layer_chunk_bounds[L]`` is the chunk grid shape of layer L (2 .. n_layers-1; the root layer
    has one chunk). FANOUT other than 2 is accepted for ids but, like PCG, the chunk bounds use a
    literal 2 (pcg-compat.md 1.3 BUG?), so only 2 is consistent.
    """

    n_layers: int
    n_chunks: tuple[int, int, int]
    layer_id_bits: int = 8
    spatial_bits: int = 10
    fanout: int = 2
    bitmasks: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bitmasks", compute_bitmasks(self.n_layers, self.spatial_bits))
        object.__setattr__(self, "_tables", self._build_tables())
        object.__setattr__(self, "_stop_layers", {})  # l2 coords -> stop layer (asked for again and again)
        if self.fanout != 2:
            raise GraphLayoutError("only FANOUT = 2 is consistent with PCG's chunk bounds")

    @classmethod
    def from_voxels(
        cls,
        voxel_counts: Sequence[int],
        chunk_size: Sequence[int],
        *,
        layer_id_bits: int = 8,
        spatial_bits: int = 10,
        fanout: int = 2,
    ) -> "ChunkLayout":
        """Derive the layout from the dataset size (mip 0 voxels) and layer-2 chunk size."""
        if len(voxel_counts) != 3 or len(chunk_size) != 3:
            raise GraphLayoutError("voxel counts and chunk size must have 3 entries (x, y, z)")
        if any(int(c) <= 0 for c in chunk_size):
            raise GraphLayoutError(f"chunk size must be positive on every axis, got {list(chunk_size)}")
        if any(int(v) <= 0 for v in voxel_counts):
            raise GraphLayoutError(f"dataset size must be positive on every axis, got {list(voxel_counts)}")
        n_chunks = tuple(-(-int(v) // int(c)) for v, c in zip(voxel_counts, chunk_size))
        return cls(
            n_layers=layer_count_for(n_chunks, fanout),
            n_chunks=n_chunks,  # type: ignore[arg-type]
            layer_id_bits=layer_id_bits,
            spatial_bits=spatial_bits,
            fanout=fanout,
        )

    # ---- per-layer widths -------------------------------------------------------------------
    def spatial_bits_of(self, layer: int) -> int:
        return self.bitmasks[int(layer)]

    def segment_bits(self, layer: int) -> int:
        return 64 - self.layer_id_bits - 3 * self.spatial_bits_of(layer)

    def segment_id_limit(self, layer: int) -> int:
        return (1 << self.segment_bits(layer)) - 1

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._tables  # type: ignore[attr-defined]

    def _build_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Lookup tables indexed by layer: spatial bits and segment bits (0 for unused layers)."""
        size = 1 << self.layer_id_bits
        spatial = np.zeros(size, dtype=U64)
        seg = np.zeros(size, dtype=U64)
        for layer, bits in self.bitmasks.items():
            spatial[layer] = bits
            seg[layer] = 64 - self.layer_id_bits - 3 * bits
        return spatial, seg

    # ---- decoding ----------------------------------------------------------------------------
    def get_chunk_layer(self, ids: ArrayLike) -> np.ndarray | int:
        if isinstance(ids, int) and 0 <= ids < 1 << 64:  # one id: the stitching and LOD loops ask this often
            return ids >> (64 - self.layer_id_bits)
        arr = _u64(ids)
        out = arr >> U64(64 - self.layer_id_bits)
        return int(out) if out.ndim == 0 else out.astype(np.int64)

    def get_chunk_coordinates(self, ids: ArrayLike) -> np.ndarray:
        """Chunk coordinates at each id's own layer: shape (3,) for a scalar, (n, 3) for an array."""
        if isinstance(ids, int) and 0 <= ids < 1 << 64:  # one id: int arithmetic, ~20x the array path
            s = self.bitmasks.get(ids >> (64 - self.layer_id_bits), 0)
            x_off = 64 - self.layer_id_bits - s
            mask = (1 << s) - 1
            return np.array([(ids >> x_off) & mask, (ids >> (x_off - s)) & mask, (ids >> (x_off - 2 * s)) & mask],
                            dtype=np.int64)
        arr = _u64(ids)
        layers = arr >> U64(64 - self.layer_id_bits)
        spatial, _ = self._table()
        s = spatial[layers.astype(np.int64)]
        x_off = U64(64 - self.layer_id_bits) - s
        y_off = x_off - s
        z_off = y_off - s
        mask = (U64(1) << s) - U64(1)
        coords = np.stack([(arr >> x_off) & mask, (arr >> y_off) & mask, (arr >> z_off) & mask], axis=-1)
        return coords.astype(np.int64)

    def get_segment_id(self, ids: ArrayLike) -> np.ndarray | int:
        arr = _u64(ids)
        _, seg = self._table()
        layers = (arr >> U64(64 - self.layer_id_bits)).astype(np.int64)
        out = arr & ((U64(1) << seg[layers]) - U64(1))
        return int(out) if out.ndim == 0 else out

    def get_chunk_id(self, ids: ArrayLike) -> np.ndarray | int:
        """Chunk id of each node (its segment bits cleared)."""
        arr = _u64(ids)
        _, seg = self._table()
        layers = (arr >> U64(64 - self.layer_id_bits)).astype(np.int64)
        bits = seg[layers]
        out = (arr >> bits) << bits
        return int(out) if out.ndim == 0 else out

    # ---- encoding ----------------------------------------------------------------------------
    def chunk_id(self, layer: int, x: ArrayLike, y: ArrayLike, z: ArrayLike) -> np.ndarray | int:
        """``layer << (64-L_bits) | x << x_off | y << y_off | z << z_off``; errors out of range."""
        layer = int(layer)
        if layer not in self.bitmasks:
            raise GraphLayoutError(f"layer {layer} is outside 1..{self.n_layers}")
        s = self.spatial_bits_of(layer)
        if all(isinstance(v, (int, np.integer)) for v in (x, y, z)):
            # One chunk, in plain ints: the layer-2 task asks this a few thousand times per chunk
            # meshed, where the array path below costs ~0.1 ms a call.
            x_off = 64 - self.layer_id_bits - s
            for name, v in (("x", x), ("y", y), ("z", z)):
                if not 0 <= int(v) < (1 << s):
                    raise GraphLayoutError(
                        f"chunk coordinate {name}={int(v)} does not fit the {s} bits of layer {layer}")
            return (layer << (64 - self.layer_id_bits)) | (int(x) << x_off) | (int(y) << (x_off - s)) \
                | (int(z) << (x_off - 2 * s))
        xs, ys, zs = (np.asarray(v, dtype=np.int64) for v in (x, y, z))
        for name, v in (("x", xs), ("y", ys), ("z", zs)):
            if np.any(v < 0) or np.any(v >= (1 << s)):
                raise GraphLayoutError(
                    f"chunk coordinate {name}={v.tolist()} does not fit the {s} bits of layer {layer}"
                )
        x_off = 64 - self.layer_id_bits - s
        out = (
            (U64(layer) << U64(64 - self.layer_id_bits))
            | (xs.astype(U64) << U64(x_off))
            | (ys.astype(U64) << U64(x_off - s))
            | (zs.astype(U64) << U64(x_off - 2 * s))
        )
        return int(out) if np.ndim(out) == 0 else out

    def chunk_id_from_coords(self, layer: int, coords: Sequence[int] | np.ndarray) -> np.ndarray | int:
        c = np.asarray(coords, dtype=np.int64)
        return self.chunk_id(layer, c[..., 0], c[..., 1], c[..., 2])

    def node_id(self, chunk_id: ArrayLike, segment_id: ArrayLike) -> np.ndarray | int:
        seg = _u64(segment_id)
        layer = self.get_chunk_layer(np.asarray(chunk_id).reshape(-1)[:1])[0]
        if np.any(seg == 0) or np.any(seg > U64(self.segment_id_limit(int(layer)))):
            raise GraphLayoutError(f"segment id out of range 1..{self.segment_id_limit(int(layer))}")
        out = _u64(chunk_id) | seg
        return int(out) if out.ndim == 0 else out

    # ---- hierarchy ---------------------------------------------------------------------------
    def layer_chunk_bounds(self, layer: int) -> tuple[int, int, int]:
        """Chunks per axis at a layer; the root layer has exactly one chunk."""
        layer = int(layer)
        if layer == self.n_layers:
            return (1, 1, 1)
        if layer < 2 or layer > self.n_layers:
            raise GraphLayoutError(f"layer {layer} is outside 2..{self.n_layers}")
        div = 2 ** (layer - 2)
        return tuple(-(-n // div) for n in self.n_chunks)  # type: ignore[return-value]

    def parent_chunk_id(self, ids: ArrayLike, parent_layer: int) -> np.ndarray | int:
        """Chunk of each id's ancestor at ``parent_layer``.

        Layer-1 ids share their coordinates with their layer-2 chunk (pcg-compat.md 2.7), so the
        division by the fanout starts at layer 2.
        """
        if isinstance(ids, int):  # one id: the same, in ints
            steps = int(parent_layer) - max(self.get_chunk_layer(ids), 2)
            if steps < 0:
                raise GraphLayoutError(f"parent layer {parent_layer} is below the layer of some ids")
            x, y, z = (int(c) // self.fanout ** steps for c in self.get_chunk_coordinates(ids))
            return self.chunk_id(parent_layer, x, y, z)
        layers = np.maximum(np.atleast_1d(self.get_chunk_layer(ids)), 2)
        steps = int(parent_layer) - layers
        if np.any(steps < 0):
            raise GraphLayoutError(f"parent layer {parent_layer} is below the layer of some ids")
        coords = np.atleast_2d(self.get_chunk_coordinates(ids)) // (self.fanout ** steps)[:, None]
        out = self.chunk_id_from_coords(parent_layer, coords)
        return int(out[0]) if np.ndim(ids) == 0 else out

    def parent_chunk_ids(self, node_id: int) -> list[int]:
        """``[own chunk, parent at L+1, ..., root chunk]``: index 0 is the node's own chunk."""
        layer = int(self.get_chunk_layer(node_id))
        return [int(self.get_chunk_id(node_id))] + [
            int(self.parent_chunk_id(node_id, p)) for p in range(max(layer + 1, 2), self.n_layers + 1)
        ]

    def children_chunk_ids(self, chunk_id: int) -> list[int]:
        """Child chunks in PCG order (dz fastest), dropping those outside the dataset."""
        layer = int(self.get_chunk_layer(chunk_id))
        if layer == 1:
            return []
        if layer == 2:
            return [int(self.get_chunk_id(chunk_id))]
        coords = self.get_chunk_coordinates(chunk_id)
        bounds = self.layer_chunk_bounds(layer - 1)
        out = []
        for dx in range(self.fanout):
            for dy in range(self.fanout):
                for dz in range(self.fanout):
                    c = coords * self.fanout + np.array([dx, dy, dz])
                    if all(c[i] < bounds[i] for i in range(3)):
                        out.append(int(self.chunk_id_from_coords(layer - 1, c)))
        return out

    def chunk_position_number(self, ids: ArrayLike) -> np.ndarray | int:
        """CloudVolume's shard file number: the packed x|y|z bits (mask assumes 8 layer bits)."""
        arr = _u64(ids)
        _, seg = self._table()
        layers = (arr >> U64(64 - self.layer_id_bits)).astype(np.int64)
        out = (arr & U64(0x00FFFFFFFFFFFFFF)) >> seg[layers]
        return int(out) if out.ndim == 0 else out

    def iter_chunk_coords(
        self, layer: int, start: Sequence[int] | None = None, end: Sequence[int] | None = None,
        descending: bool = False,
    ) -> Iterator[tuple[int, int, int]]:
        """Chunk coordinates of a layer in ``[start, end)`` (x outer, z inner), lazily; with
        ``descending``, from the last to the first."""
        bounds = self.layer_chunk_bounds(layer)
        lo = tuple(start) if start is not None else (0, 0, 0)
        hi = tuple(end) if end is not None else bounds
        axes = [range(a, b) for a, b in zip(lo, hi)]
        if descending:
            axes = [r[::-1] for r in axes]
        for x in axes[0]:
            for y in axes[1]:
                for z in axes[2]:
                    yield (x, y, z)

    def stop_layer(self, l2_coords: Sequence[int]) -> int:
        """Lowest layer whose chunk contains the 2x2x2 neighbourhood (pcg-compat.md 6.3 step 1).

        Neighbours that cannot be represented at some layer are skipped; representable ones outside
        the dataset are kept, as PCG does (BUG? 19), so stop layers match PCG's byte for byte.
        """
        key = tuple(int(v) for v in l2_coords)
        cached = self._stop_layers.get(key)
        if cached is None:
            if len(self._stop_layers) > 1 << 16:  # a long-lived worker: keep the cache small
                self._stop_layers.clear()
            cached = self._stop_layers[key] = self._stop_layer(key)
        return cached

    def _stop_layer(self, l2_coords: tuple[int, int, int]) -> int:
        # Chunk coordinates per layer (fanout 2: a right shift per layer) stand in for the chunk
        # ids PCG compares; a neighbour whose chunk at some layer has no id is skipped, as PCG's
        # id arithmetic skips it.
        layers = range(2, self.n_layers + 1)
        limits = [1 << self.spatial_bits_of(layer) for layer in layers]
        lists = []
        cx, cy, cz = l2_coords
        for x in (cx, cx + 1):
            for y in (cy, cy + 1):
                for z in (cz, cz + 1):
                    chain = [(x >> i, y >> i, z >> i) for i in range(len(limits))]
                    if all(0 <= v < limit for c, limit in zip(chain, limits) for v in c):
                        lists.append(chain)
        first = lists[0]
        for i in range(len(first)):
            if all(lst[i] == first[i] for lst in lists):
                return 2 + i
        return self.n_layers  # unreachable: the root chunk is shared

    def spatial_bit_masks(self) -> dict[str, int]:
        """The graphene info's ``spatial_bit_masks`` (keys are layer numbers as strings)."""
        return {str(k): v for k, v in self.bitmasks.items()}

