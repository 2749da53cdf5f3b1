"""Gaussian SDF + colour map on sparse voxel blocks: PRISM's closed-form map update (filter step 4).

Every voxel holds an independent Gaussian over the truncated signed distance to the nearest surface
(metres, positive in free space) and a Gaussian over its colour. Integrating a frame multiplies each
voxel's Gaussian by one Gaussian measurement likelihood, so the map after t frames is the closed-form
filter q_t(M) = q(M | x_t, z_t) q_{t-1}(M) of the paper. The stored ``mean``/``precision`` are that
product of likelihoods (precision 0 = unobserved); the prior N(+truncation, prior_std^2) is multiplied
in when the map is read (``sample``, ``sample_nearest``, exports), so 0 keeps meaning "never observed"
and the forgetting cap acts on evidence only. The prior is broad (1 m) by default: one as narrow as the
truncation band pulls the weakly observed voxels (far, grazing) towards +truncation; on the synthetic
room that raised the near-surface error from 1.6 to 5.0 mm.

Storage: blocks of B^3 voxels (B = block_size, a power of two), in allocation order ("slots"). Block
coordinates (N,3) int64; the float channels of all voxels in one channel-major tensor (6, (capacity + 1)
* B^3): SDF mean, precision (1/m^2), colour (3), colour precision, plus one block of empty voxels (slot
``capacity``) that reads of unallocated space point at, so no read needs a mask; observation counts
int32. Channel-major keeps each channel contiguous for the per-voxel arithmetic, and a voxel is moved
with one gather and one scatter; ``mean``, ``precision``, ``colour``, ``colour_precision`` and ``count``
are (N,B,B,B[,3]) views. Capacity doubles on growth. The voxel with global integer index i (per axis)
has its centre at i * voxel_size; block b holds indices b*B .. b*B + B-1 (so block and in-block index
are a shift and a mask). A read-mean cache (one float per voxel column) holds the posterior SDF mean
(prior multiplied in, at most +truncation), or +truncation rounded up to the next float32 where a voxel
was never observed: the renderer's reads (``sample_mean``, ``sample_nearest_mean``, ``sample_surface``)
gather that one channel instead of two and get "observed" for free; ``integrate`` updates it for the
voxels it fuses.

Block lookup, two indexes (both rebuilt only when a frame adds blocks):
- dense (the reads): the first storage column of every block in the allocated blocks' bounding box,
  padded by one empty block on every side, int32; a lookup clamps the coordinates into the box and
  gathers once, with no search and no mask (a 10 x 10 x 5 m room at 16 cm blocks: 120k cells, 0.5 MB).
  It is not built where the box exceeds ``_MAX_DENSE_CELLS`` (64M cells, 256 MB; e.g. a 1.3 x 1.3 km
  outdoor map): its memory grows with the volume, not the surface;
- sorted keys (allocation, and the reads where there is no dense index): block coordinates are
  linearised to one int64 key (21 bits per axis: +-2^20 blocks, +-168 km at 16 cm blocks); a sorted
  copy of the keys with the slot of each lets ``torch.searchsorted`` find any batch of blocks on any
  device in O(log N), with no collisions and no custom kernels (a hash table needs a custom kernel or a
  Python probe loop in torch). A neighbour table (N,8) (the slots of the blocks b + {0,1}^3) lets a
  trilinear read search one block per point instead of eight.
Reads on the CPU are bound by memory traffic and per-op overhead, not arithmetic: they work on int32
indices and (3,N) coordinates, gather one channel at a time (a multi-channel gather costs several
times more per value) and reuse small constant tensors.

Measurement model (one per voxel of every block the frame touches; the voxel centre p is projected to
its nearest pixel, which gives the depth d, the camera-facing normal n (from the vertex map averaged over
``normal_window`` pixels, :func:`map_normals`) and the surface point q):
- kept when the projective distance d - z > -truncation (not hidden behind the surface) and d valid;
- value m = n . (p - q), the point-to-plane distance (the along-ray correction): exact for planes at any
  incidence, where the projective d - z overestimates |sdf| by up to 1/cos(incidence). It is used where
  it lies between 0 and the distance along the ray to q (+- half a voxel); elsewhere the normal is wrong
  and the along-ray distance is used (it bounds |sdf| of a free-space voxel). Normals are not trusted at
  depth edges (the pixel's 4-neighbourhood, or the averaging window, spans more than ``depth_edge_ratio`` of
  its depth per pixel), nor where missing: there n = (0, 0, -1), i.e. d - z. m is clipped to
  [-truncation, truncation];
- variance = sigma(d)^2 / max(cos, min_cos_incidence)^2 + (band_std_slope * r)^2 with sigma(z) =
  noise_a + noise_b z^2 and r the along-ray distance (clipped to the band): sensor noise, inflated at
  grazing incidence (unreliable normals, mixed pixels) and by a model error that grows linearly with
  the distance from the observed point (curvature, edges and clipping break the plane model there);
- colour: the pixel's colour with variance colour_std^2 (1 + (m / voxel_size)^2), since colour
  belongs to the surface and says little about voxels away from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from prism_ros.errors import InputError, read_torch_file
from prism_ros.geometry import PinholeCamera, transform_points
from prism_ros.prism.kernels import resolve_backend
from prism_ros.prism.observation import ObservationLevel

MAX_MAP_EXTENT_M = 10_000.0  # a map file's blocks lie within this distance of its origin
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)
_KEY_MASK = (1 << _KEY_BITS) - 1
_FILE_FORMAT = "prism_ros.GaussianSdfMap"
_FILE_VERSION = 1
_STATE = ("mean", "precision", "colour", "colour_precision", "count")
_MEAN, _PRECISION, _COLOUR, _COLOUR_PRECISION, _CHANNELS = 0, 1, slice(2, 5), 5, 6
_MAX_DENSE_CELLS = 1 << 26  # 64M int32 cells (256 MB): larger bounding boxes are read through the sorted keys
_FAR = float(1 << 30)  # voxel coordinates are clamped to +-this (int32-safe, far outside the key range)
_SURFACE_CHUNK = 16384  # points per stencil read (its int32 (32,N) temporaries: 2 MB)


@dataclass
class MapConfig:
    """Map resolution, sensor noise model, prior and budget (metres unless stated)."""

    voxel_size: float = 0.02
    block_size: int = 8  # voxels per block side
    truncation: float = 0.08  # SDF band; measurements are clipped to +-truncation
    noise_a: float = 0.0012  # depth noise sigma(z) = noise_a + noise_b * z^2 (Kinect-like default)
    noise_b: float = 0.0019
    min_cos_incidence: float = 0.1  # grazing inflation: variance / max(cos, this)^2
    depth_edge_ratio: float = 0.05  # normals are not trusted where the 3x3 depth spread exceeds this x depth
    band_std_slope: float = 0.2  # model std grows by this many metres per metre along the ray from the surface
    # the measurement normals come from the vertex map averaged over this many pixels per side (odd; 1 = the
    # observation's own central-difference normals), see map_normals; docs/prism.md has the measured effect
    normal_window: int = 3
    prior_std: float = 1.0  # prior N(+truncation, prior_std^2); broad (see the module docstring)
    max_precision: float | None = None  # forgetting: cap on the SDF precision (1/m^2); None = off
    colour_std: float = 0.05  # colour measurement std (colour in [0, 1])
    colour_prior: float = 0.5  # grey returned where no colour was observed
    max_depth: float = 6.0  # depth beyond this is not integrated
    allocation_rays: int = 160  # blocks are found from a grid of about this many rays across the image
    initial_capacity: int = 1024  # blocks (14.4 kB each at block_size 8); doubles on growth

    def __post_init__(self):
        positive = ("voxel_size", "truncation", "prior_std", "colour_std", "max_depth", "min_cos_incidence")
        bad = [name for name in positive if not getattr(self, name) > 0]
        power_of_two = self.block_size >= 2 and self.block_size & (self.block_size - 1) == 0
        if bad or not power_of_two or self.initial_capacity < 1 or self.allocation_rays < 1:
            raise InputError(f"bad map settings {bad or ['block_size/initial_capacity/allocation_rays']}",
                             "use positive sizes, a block_size of 2, 4, 8 or 16 and initial_capacity >= 1")
        if not (isinstance(self.normal_window, int) and self.normal_window >= 1 and self.normal_window % 2 == 1):
            raise InputError(f"normal_window must be an odd number of pixels >= 1, got {self.normal_window!r}",
                             "use 1 (the observation's normals), 3, 5, ...")
        if self.max_precision is not None and not self.max_precision > 0:
            raise InputError(f"max_precision must be positive or None, got {self.max_precision}")

    @property
    def prior_mean(self) -> float:
        return float(self.truncation)

    @property
    def block_extent(self) -> float:
        return self.block_size * self.voxel_size


@dataclass
class SdfSample:
    """The map read at N points: posterior SDF mean and std (N,), colour (N,3), observed (N,) bool."""

    mean: torch.Tensor
    std: torch.Tensor
    colour: torch.Tensor
    observed: torch.Tensor


@dataclass
class VoxelValues:
    """Observed voxels (V,...) for export: world centres, posterior mean/std, colour, observation count."""

    centres: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    colour: torch.Tensor
    count: torch.Tensor


# ----------------------------------------------------------------------------- block keys
def block_keys(coords: torch.Tensor) -> torch.Tensor:
    """Block coordinates (...,3) int64 -> linear keys (...) int64; -1 outside the +-2^20 block range."""
    shifted = coords + _KEY_OFFSET
    ok = ((shifted >= 0) & (shifted <= _KEY_MASK)).all(-1)
    keys = (shifted[..., 0] << (2 * _KEY_BITS)) | (shifted[..., 1] << _KEY_BITS) | shifted[..., 2]
    return torch.where(ok, keys, torch.full_like(keys, -1))


def coords_of_keys(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`block_keys` for valid keys (...) -> (...,3) int64."""
    parts = ((keys >> (2 * _KEY_BITS)) & _KEY_MASK, (keys >> _KEY_BITS) & _KEY_MASK, keys & _KEY_MASK)
    return torch.stack(parts, -1) - _KEY_OFFSET


def corner_offsets(device) -> torch.Tensor:
    """The 8 corners (8,3) int64 of a trilinear cell, x slowest."""
    return torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=device)


def trilinear(corners: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation (...,N) of corner values (2,2,2,...,N) (x slowest) at fractions (3,N)."""
    x = torch.lerp(corners[0], corners[1], frac[0])
    return bilinear(x, frac[1], frac[2])


def bilinear(corners: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation (...,N) of corner values (2,2,...,N) at fractions f0 (first axis), f1 (N,)."""
    first = torch.lerp(corners[0], corners[1], f0)
    return torch.lerp(first[0], first[1], f1)


def outer_sum(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(2,2,2,N) sums x[i] + y[j] + z[k] of per-axis pairs (2,N)."""
    return (x[:, None, None] + y[None, :, None]) + z[None, None, :]


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.index_select(1, index)`` for a channel-major (C,N) table, one channel at a time (several times
    faster per value on the CPU than one multi-channel gather)."""
    out = torch.empty((len(table), len(index)), dtype=table.dtype, device=table.device)
    for channel, values in zip(table, out):
        torch.index_select(channel, 0, index, out=values)
    return out


class DenseBlockIndex(NamedTuple):
    """First storage column (slot * B^3, int32, flat, x slowest) of every block in the allocated blocks'
    bounding box padded by one block on every side; the empty block's where nothing is allocated.
    Coordinates are clamped into the box, so every block outside it reads a padding cell: a lookup is
    arithmetic and one gather, with no mask."""

    columns: torch.Tensor
    low: tuple[int, int, int]  # block coordinates of cell (0, 0, 0)
    shape: tuple[int, int, int]

    def axis_cells(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        """Per-axis parts (3 x (...)) int32 of the flat cell index of block coordinates (3,...) int32 (their sum)."""
        strides = (self.shape[1] * self.shape[2], self.shape[2], 1)
        return [(blocks[a] - self.low[a]).clamp_(0, self.shape[a] - 1).mul_(strides[a]) for a in range(3)]

    def lookup(self, cells: torch.Tensor) -> torch.Tensor:
        """First storage columns (...) int32 of flat cell indices (...) int32."""
        return self.columns.index_select(0, cells.reshape(-1)).view(cells.shape)


# ----------------------------------------------------------------------------- the map
class PixelTable(NamedTuple):
    """Per-pixel measurement inputs, padded by one invalid pixel on each side and flattened: depth (P,)
    (NaN invalid) and values (9,P) = camera-facing normal (3), n . q (q: the pixel's point), sensor
    variance, ray length per metre of depth, colour (3). Channel-major: one gather gives contiguous rows."""

    depth: torch.Tensor
    values: torch.Tensor


class GaussianSdfMap:
    """Sparse block map of per-voxel Gaussians over truncated SDF and colour (see the module docstring).

    ``integrate`` fuses a frame; ``sample`` (trilinear), ``sample_nearest`` and ``is_allocated`` read it;
    ``voxel_centres_and_values``, ``save``/``load`` and :func:`prism_ros.prism.mesh.extract_mesh` export it.
    """

    def __init__(self, config: MapConfig | None = None, device: torch.device | str = "cpu"):
        self.config = config or MapConfig()
        self.device = torch.device(device)
        b = self.config.block_size
        grid = torch.meshgrid(*(torch.arange(b, device=self.device),) * 3, indexing="ij")
        self._local = torch.stack(grid, -1).reshape(-1, 3)  # (B^3,3) voxel offsets within a block, x slowest
        self._corner_codes = torch.arange(8, device=self.device)  # corners (i,j,k) in {0,1}^3 as 3-bit codes
        self._inverse_voxel = torch.eye(3, device=self.device) / self.config.voxel_size
        self._constants: dict[tuple, torch.Tensor] = {}
        # the read-mean cache's value for never-observed voxels: +truncation (the prior mean) rounded up to the
        # next float32, so that observed posterior means (clamped to +truncation) are exactly those <= truncation
        truncation = torch.tensor(self.config.truncation, dtype=torch.float32)
        self._unobserved = float(torch.nextafter(truncation, torch.tensor(math.inf)))
        self.reset()

    # ------------------------------------------------------------------ storage
    def reset(self) -> None:
        """Forget everything: no blocks, initial capacity."""
        self._num = 0
        self._allocate_storage(self.config.initial_capacity)
        self._sorted_keys = torch.empty(0, dtype=torch.int64, device=self.device)
        self._sorted_slots = torch.empty(0, dtype=torch.int64, device=self.device)
        self._dense = self._dense_index()

    @property
    def _voxels_per_block(self) -> int:
        return self.config.block_size ** 3

    @property
    def _block_shift(self) -> int:
        """log2(block_size): voxel -> block index and in-block offsets are shifts and masks."""
        return self.config.block_size.bit_length() - 1

    def _empty_voxel(self) -> torch.Tensor:
        """Channels (6,1) of a voxel never observed: prior mean, no precision, grey, no colour precision."""
        c = self.config
        return torch.tensor([[c.prior_mean], [0.0], [c.colour_prior], [c.colour_prior], [c.colour_prior], [0.0]],
                            device=self.device)

    def _allocate_storage(self, capacity: int) -> None:
        """(Re)create the slot tensors with ``capacity`` blocks, keeping the first ``num_blocks``. The voxel
        channels get one extra block (slot ``capacity``) of empty voxels that reads of unallocated space point
        at, so a lookup never needs a mask. The dense index holds columns of this layout: it is rebuilt after
        this (by ``_insert_keys``)."""
        n, used = self._num, self._num * self._voxels_per_block
        columns = (capacity + 1) * self._voxels_per_block
        coords = torch.zeros((capacity, 3), dtype=torch.int64, device=self.device)
        neighbours = torch.full((capacity, 8), -1, dtype=torch.int64, device=self.device)
        voxels = self._empty_voxel().repeat(1, columns)
        read_mean = torch.full((columns,), self._unobserved, device=self.device)
        count = torch.zeros(capacity * self._voxels_per_block, dtype=torch.int32, device=self.device)
        if n:
            coords[:n], neighbours[:n] = self._coords[:n], self._neighbours[:n]
            voxels[:, :used], count[:used] = self._voxels[:, :used], self._count[:used]
            read_mean[:used] = self._read_mean[:used]
        self._coords, self._neighbours, self._voxels, self._count = coords, neighbours, voxels, count
        self._read_mean = read_mean

    @property
    def _empty_slot(self) -> int:
        """The slot of the block of empty voxels past the capacity."""
        return len(self._coords)

    @property
    def _empty_row(self) -> int:
        return self._empty_slot * self._voxels_per_block

    def _ensure_capacity(self, blocks: int) -> None:
        capacity = len(self._coords)
        if blocks > capacity:
            self._allocate_storage(capacity * 2 ** math.ceil(math.log2(blocks / capacity)))

    @property
    def num_blocks(self) -> int:
        return self._num

    @property
    def capacity(self) -> int:
        """Blocks the storage holds before it doubles."""
        return len(self._coords)

    @property
    def block_coords(self) -> torch.Tensor:
        """(N,3) int64 coordinates of the allocated blocks, in slot order."""
        return self._coords[: self._num]

    def _channels(self, first: int, count: int = 1) -> torch.Tensor:
        """(count, N, B, B, B) view of storage channels first .. first + count - 1 of the allocated blocks."""
        b = self.config.block_size
        used = self._voxels[first:first + count, : self._num * self._voxels_per_block]
        return used.view(count, self._num, b, b, b)

    @property
    def mean(self) -> torch.Tensor:
        """(N,B,B,B) product-of-likelihoods SDF mean (meaningless where precision is 0)."""
        return self._channels(_MEAN)[0]

    @property
    def precision(self) -> torch.Tensor:
        """(N,B,B,B) accumulated SDF precision in 1/m^2 (0 = unobserved), prior excluded."""
        return self._channels(_PRECISION)[0]

    @property
    def colour(self) -> torch.Tensor:
        """(N,B,B,B,3) colour mean in [0, 1] (a strided view)."""
        return self._channels(_COLOUR.start, 3).permute(1, 2, 3, 4, 0)

    @property
    def colour_precision(self) -> torch.Tensor:
        return self._channels(_COLOUR_PRECISION)[0]

    @property
    def count(self) -> torch.Tensor:
        """(N,B,B,B) int32 number of measurements fused per voxel."""
        b = self.config.block_size
        return self._count[: self._num * self._voxels_per_block].view(self._num, b, b, b)

    # ------------------------------------------------------------------ lookup
    def _slots_of_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Slot (...) int64 of each key, -1 where the block is not allocated (the sorted index)."""
        if self._num == 0:
            return torch.full_like(keys, -1)
        position = torch.searchsorted(self._sorted_keys, keys).clamp_max_(self._num - 1)
        found = (self._sorted_keys.take(position) == keys) & (keys >= 0)
        return torch.where(found, self._sorted_slots.take(position), -1)

    def _dense_index(self) -> DenseBlockIndex | None:
        """The dense block index over the allocated blocks' bounding box (None where it would exceed
        ``_MAX_DENSE_CELLS``: the sorted index serves the reads then)."""
        if self._num == 0:
            low, high = [0, 0, 0], [0, 0, 0]
        else:
            low, high = (self.block_coords.amin(0) - 1).tolist(), (self.block_coords.amax(0) + 1).tolist()
        shape = tuple(h - l + 1 for l, h in zip(low, high))
        if math.prod(shape) > _MAX_DENSE_CELLS:
            return None
        index = DenseBlockIndex(torch.full((math.prod(shape),), self._empty_row, dtype=torch.int32,
                                           device=self.device), tuple(low), shape)
        if self._num:
            x, y, z = index.axis_cells(self.block_coords.T.int())
            slots = torch.arange(self._num, dtype=torch.int32, device=self.device)
            index.columns[(x + y + z).long()] = slots * self._voxels_per_block
        return index

    def _block_columns(self, blocks: torch.Tensor) -> torch.Tensor:
        """First storage column (slot * B^3, int32) of blocks (3,...) int32; the empty block's where unallocated."""
        if self._dense is not None:
            x, y, z = self._dense.axis_cells(blocks)
            return self._dense.lookup((x + y).add_(z))
        slots = self._slots_of_keys(block_keys(blocks.movedim(0, -1).long()))
        return (torch.where(slots >= 0, slots, self._empty_slot) * self._voxels_per_block).int()

    def _voxel_coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """World points (N,3) -> continuous voxel coordinates (3,N) float32 (voxel i centred at i), NaN and huge
        values moved far outside any block. (A matrix product transposes cheaply, also a (3,N) tensor's .T.)"""
        coords = torch.mm(self._inverse_voxel, points.to(torch.float32).T)
        return coords.nan_to_num_(nan=-_FAR, posinf=_FAR, neginf=-_FAR).clamp_(-_FAR, _FAR)

    def _voxel_rows(self, voxel: torch.Tensor) -> torch.Tensor:
        """Storage columns (N,) int32 of global voxel indices (3,N) int32 (the empty block where unallocated)."""
        shift = self._block_shift
        local = voxel & (self.config.block_size - 1)
        return self._block_columns(voxel >> shift) | (local[0] << (2 * shift)) | (local[1] << shift) | local[2]

    def _constant(self, values: tuple[int, ...]) -> torch.Tensor:
        """A small int32 tensor on the map's device, made once (a new tensor per read costs a copy each)."""
        if values not in self._constants:
            self._constants[values] = torch.tensor(values, dtype=torch.int32, device=self.device)
        return self._constants[values]

    def _stencil_rows(self, voxel: torch.Tensor, offsets: tuple[int, ...], boxes) -> torch.Tensor:
        """Storage columns (G,2,2,2,N) int32 of G boxes of voxels around voxels (3,N) int32: box g holds the
        voxels voxel + (offsets[i], offsets[j], offsets[k]) for i, j, k in its per-axis index pairs
        ``boxes[g]`` (3 slices of 2 into ``offsets``, sorted, spanning at most 2 blocks: a trilinear cell or
        the pairs of a central difference). Block lookups and in-block offsets are worked out per axis once,
        and all boxes' blocks are looked up in one gather."""
        shift, mask = self._block_shift, self.config.block_size - 1
        index = voxel[:, None, :] + self._constant(offsets)[:, None]  # (3,K,N)
        local = (index & mask) << self._constant((2 * shift, shift, 0))[:, None, None]
        shape = (len(boxes), 2, 2, 2, voxel.shape[1])
        in_block = torch.empty(shape, dtype=torch.int32, device=voxel.device)
        for box, (sx, sy, sz) in enumerate(boxes):
            torch.add(local[0, sx][:, None, None], local[1, sy][None, :, None] + local[2, sz][None, None, :],
                      out=in_block[box])
        if self._dense is None:
            blocks = index >> shift
            columns = torch.stack([self._box_columns_sorted(blocks[0, sx], blocks[1, sy], blocks[2, sz])
                                   for sx, sy, sz in boxes])
            return columns.add_(in_block)
        cx, cy, cz = self._dense.axis_cells(index >> shift)
        cells = torch.empty(shape, dtype=torch.int32, device=voxel.device)
        for box, (sx, sy, sz) in enumerate(boxes):
            torch.add(cx[sx][:, None, None], cy[sy][None, :, None] + cz[sz][None, None, :], out=cells[box])
        return self._dense.lookup(cells).add_(in_block)

    def _cell_rows(self, base: torch.Tensor) -> torch.Tensor:
        """Storage columns (2,2,2,N) int32 of the trilinear corners base + (i,j,k) of base voxels (3,N) int32."""
        return self._stencil_rows(base, (0, 1), [(slice(None),) * 3])[0]

    def _box_columns_sorted(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """First storage columns (2,2,2,N) int32 of the blocks (x[i], y[j], z[k]), block pairs (2,N) per axis
        whose second is the first or the next, from the sorted index: one key search per point, the other
        blocks from the neighbour table."""
        block = torch.stack((x[0], y[0], z[0]))
        carry = torch.stack((x[1], y[1], z[1])) - block
        slot = self._slots_of_keys(block_keys(block.T.long()))
        code = ((carry[0] << 2) | (carry[1] << 1) | carry[2]).long()
        corner_carry = self._corner_codes[:, None] & code  # (8,N)
        slots = self._neighbours.view(-1).take(corner_carry + slot.clamp_min(0) * 8)
        slots = torch.where(slot >= 0, slots, -1)
        orphan = (slot < 0) & (code > 0)  # outside the map but next to a block: look the corners up
        if bool(orphan.any()):
            offsets = corner_offsets(self.device)[:, None, :] * carry.T[orphan].long()
            slots[:, orphan] = self._slots_of_keys(block_keys(block.T[orphan].long() + offsets))
        slots = torch.where(slots >= 0, slots, self._empty_slot) * self._voxels_per_block
        return slots.int().view(2, 2, 2, -1)

    def _voxel_index(self, points: torch.Tensor) -> torch.Tensor:
        """Nearest global voxel index (N,3) int64 of world points (N,3); NaN maps far outside any block."""
        return self._to_index(torch.round(points.float() / self.config.voxel_size))

    @staticmethod
    def _to_index(scaled: torch.Tensor) -> torch.Tensor:
        """Float voxel coordinates -> int64, NaN and huge values clamped far outside the key range."""
        return torch.nan_to_num(scaled, nan=-1e12).clamp(-1e12, 1e12).long()

    def is_allocated(self, points: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the block of each point's nearest voxel is allocated (for empty-space skipping)."""
        block = self._voxel_coordinates(points).round_().int() >> self._block_shift
        return self._block_columns(block) != self._empty_row

    # ------------------------------------------------------------------ reading
    def _posterior(self, rows: torch.Tensor):
        """Prior x likelihood at storage columns (...): mean, variance, colour (3,...), colour seen, observed.
        One gather per channel (a multi-channel gather is several times slower per value on the CPU)."""
        c = self.config
        flat = rows.reshape(-1)
        read = lambda channel: self._voxels[channel].index_select(0, flat).view(rows.shape)
        precision = read(_PRECISION)
        prior_precision = 1.0 / c.prior_std**2
        total = precision + prior_precision
        mean = (prior_precision * c.prior_mean + precision * read(_MEAN)) / total
        colour = torch.stack([read(channel) for channel in range(_COLOUR.start, _COLOUR.stop)])
        return mean, 1.0 / total, colour, read(_COLOUR_PRECISION) > 0, precision > 0

    def _read_means(self, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        """The read-mean cache's values: the posterior mean (at most +truncation), or ``_unobserved``."""
        c = self.config
        prior_precision = 1.0 / c.prior_std**2
        posterior = (prior_precision * c.prior_mean + precision * mean) / (precision + prior_precision)
        return torch.where(precision > 0, posterior.clamp_max_(c.truncation), self._unobserved)

    def sample(self, points: torch.Tensor) -> SdfSample:
        """Trilinear posterior at world points (N,3), across block boundaries; unobserved corners give the
        prior. Colour is averaged over the corners that saw colour only (grey where none did): colour has
        no meaningful prior, and mixing grey in would darken the rim of the mapped region."""
        coords = self._voxel_coordinates(points)
        base = coords.floor()
        return self._cell_sample(self._cell_rows(base.int()), coords.sub_(base))

    def sample_surface(self, points: torch.Tensor) -> tuple[SdfSample, torch.Tensor]:
        """:meth:`sample` and the gradient (N,3) of the trilinear mean by central differences one voxel apart,
        from one read of the 32 voxels these take: the cell's 8, and 8 more beyond each pair of its faces.
        Read ``_SURFACE_CHUNK`` points at a time: the (32,N) temporaries then stay in a CPU's L2 cache."""
        parts = [self._sample_surface(chunk) for chunk in points.split(_SURFACE_CHUNK)]
        if len(parts) == 1:
            return parts[0]
        samples, gradients = zip(*parts)
        return SdfSample(*(torch.cat([getattr(sample, name) for sample in samples])
                           for name in SdfSample.__dataclass_fields__)), torch.cat(gradients)

    def _sample_surface(self, points: torch.Tensor) -> tuple[SdfSample, torch.Tensor]:
        coords = self._voxel_coordinates(points)
        base = coords.floor()
        fx, fy, fz = frac = coords.sub_(base)
        inner, outer = slice(1, 3), slice(0, 4, 3)  # offsets 0, 1 (the cell) and -1, 2 (beyond its faces)
        boxes = [(inner, inner, inner), (outer, inner, inner), (inner, outer, inner), (inner, inner, outer)]
        rows = self._stencil_rows(base.int(), (-1, 0, 1, 2), boxes)
        core, x, y, z = self._read_mean.index_select(0, rows.view(-1)).view(rows.shape)
        # F(p + e) - F(p - e) blends the corner differences one voxel up and down the axis
        gradient = torch.stack((
            bilinear(torch.lerp(core[1] - x[0], x[1] - core[0], fx), fy, fz),
            bilinear(torch.lerp(core[:, 1] - y[:, 0], y[:, 1] - core[:, 0], fy), fx, fz),
            bilinear(torch.lerp(core[:, :, 1] - z[:, :, 0], z[:, :, 1] - core[:, :, 0], fz), fx, fy)), -1)
        return self._cell_sample(rows[0], frac, core), gradient.mul_(0.5 / self.config.voxel_size)

    def _cell_sample(self, rows: torch.Tensor, frac: torch.Tensor, means: torch.Tensor | None = None) -> SdfSample:
        """The trilinear posterior from a cell's storage columns (2,2,2,N) and fractions (3,N) (``means``: the
        corners' read-mean values, where already read). Colour is fused with every SDF measurement, so the
        corners that saw colour are the observed ones."""
        c = self.config
        flat = rows.view(-1)
        read = lambda values: values.index_select(0, flat).view(rows.shape)
        means = read(self._read_mean) if means is None else means
        seen = torch.sub(self._unobserved, means).sign_()  # 1 where observed, 0 where the cache holds _unobserved
        observed = torch.minimum(*torch.minimum(*torch.minimum(seen[0], seen[1]))) > 0  # all 8 corners
        variance = trilinear((read(self._voxels[_PRECISION]) + 1.0 / c.prior_std**2).reciprocal_(), frac)
        colours = [trilinear(read(self._voxels[channel]).mul_(seen), frac)
                   for channel in range(_COLOUR.start, _COLOUR.stop)]
        weight = trilinear(seen, frac)
        colour = torch.stack(colours, -1).div_(weight.clamp_min(1e-12)[:, None])
        colour = torch.where((weight > 0)[:, None], colour, c.colour_prior)
        return SdfSample(trilinear(means, frac), variance.sqrt_(), colour, observed)

    def sample_nearest(self, points: torch.Tensor) -> SdfSample:
        """Posterior of each point's nearest voxel (one lookup per point; equals :meth:`sample` at centres)."""
        rows = self._voxel_rows(self._voxel_coordinates(points).round_().int())
        mean, variance, colour, colour_seen, observed = self._posterior(rows)
        return SdfSample(mean, variance.sqrt(), torch.where(colour_seen, colour, self.config.colour_prior).T,
                         observed)

    def sample_mean(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear posterior SDF mean (N,) at world points (N,3): :meth:`sample`'s mean from one channel (the
        read-mean cache; unobserved corners read +truncation rounded up to the next float32)."""
        coords = self._voxel_coordinates(points)
        base = coords.floor()
        rows = self._cell_rows(base.int())
        return trilinear(self._read_mean.index_select(0, rows.view(-1)).view(rows.shape), coords.sub_(base))

    def sample_nearest_mean(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior SDF mean (N,) of each point's nearest voxel (as :meth:`sample_mean`) and whether it was
        observed (N,) bool."""
        value = self._read_mean.index_select(0, self._voxel_rows(self._voxel_coordinates(points).round_().int()))
        return value, value <= self.config.truncation

    # ------------------------------------------------------------------ integration
    @torch.no_grad()
    def integrate(self, level: ObservationLevel, colour: torch.Tensor, T_world_camera, backend: str = "torch") -> dict:
        """Fuse one RGB-D frame seen from ``T_world_camera`` (4,4) into the map (closed-form Gaussian product).

        ``level``: any pyramid level (depth, points, normals, camera); ``colour`` (H,W,3) in [0, 1], at this
        level's or the full resolution (it is area-resampled). ``backend``: ``torch`` (the reference), ``fused``
        (:mod:`prism_ros.prism.kernels.integrate`, the same update in Warp kernels) or ``auto``. Returns stats: blocks
        allocated and touched, voxels updated, ms (wall-clock of the call; on CUDA the last kernels may still be
        running).
        """
        start = time.perf_counter()
        fused = backend != "torch" and resolve_backend(backend) == "fused"
        T = torch.as_tensor(T_world_camera, dtype=torch.float64, device=self.device)
        pixels = self._fused_pixel_table(level, colour) if fused else self._pixel_table(level, colour)
        if fused and self._dense is not None:
            added, slots = self._fused_band_blocks(level, T)
        else:
            added, slots = self._allocate(self._band_block_keys(level, T))
        updated = 0
        if len(slots):
            update = self._fused_update_blocks if fused else self._update_blocks
            updated = update(slots, pixels, level.camera, T)
        return {"allocated_blocks": added, "touched_blocks": len(slots), "updated_voxels": updated,
                "num_blocks": self._num, "ms": (time.perf_counter() - start) * 1e3}

    def _fused_pixel_table(self, level: ObservationLevel, colour: torch.Tensor) -> PixelTable:
        """:meth:`_pixel_table` in one Warp kernel (:mod:`prism_ros.prism.kernels.integrate`)."""
        from prism_ros.prism.kernels.integrate import fill_pixel_table, fill_window_normals

        rgb = self._colour_at_level(colour, level.depth.shape).permute(1, 2, 0)  # (H,W,3), a view at level 0
        normals = level.normals
        if self.config.normal_window > 1:
            normals = fill_window_normals(level.depth, level.points, self.config.normal_window,
                                          self.config.depth_edge_ratio)
        table = fill_pixel_table(level.depth, level.points, normals, rgb.contiguous(), self.config)
        return PixelTable(table[0], table[1:])

    def _fused_band_blocks(self, level: ObservationLevel, T: torch.Tensor) -> tuple[int, torch.Tensor]:
        """:meth:`_band_block_keys` + :meth:`_allocate` with one Warp kernel: samples in allocated blocks are found
        in the dense index, and only the keys of new blocks are sorted and allocated (same blocks, in slot order)."""
        from prism_ros.prism.kernels.integrate import band_block_slots

        stride, offsets = self._band_samples(level)
        existing, new_keys = band_block_slots(self, level, T, offsets, stride)
        added, new_slots = self._allocate(new_keys)
        return added, torch.cat((existing, new_slots))

    def _band_samples(self, level: ObservationLevel) -> tuple[int, torch.Tensor]:
        """The allocation rays' pixel stride and the depth offsets (S,) sampled along each (see _band_block_keys)."""
        c = self.config
        steps = math.ceil(2 * c.truncation / (0.25 * c.block_extent)) + 1
        return max(1, level.camera.width // c.allocation_rays), torch.linspace(-c.truncation, c.truncation, steps,
                                                                               device=self.device)

    def _fused_update_blocks(self, slots: torch.Tensor, pixels: PixelTable, camera: PinholeCamera,
                             T: torch.Tensor) -> int:
        """:meth:`_update_blocks` in one Warp kernel, in place on the storage (cameras whose distortion the
        kernel does not model take the torch update)."""
        from prism_ros.prism.kernels import integrate as kernels

        if not kernels.supports(camera):
            return self._update_blocks(slots, pixels, camera, T)
        origins, offsets = self._block_frames_in_camera(slots, T)
        return kernels.update_voxels_in_place(self._voxels, self._read_mean, self._count, slots, origins, offsets,
                                              pixels.depth, pixels.values, camera, self.config)

    def _valid_depth(self, depth: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(depth) & (depth > 0) & (depth <= self.config.max_depth)

    def _pixel_table(self, level: ObservationLevel, colour: torch.Tensor) -> PixelTable:
        """Measurement inputs of every pixel, computed on contiguous channel planes. Pixels without a normal
        get n = (0, 0, -1), which turns n . (p - q) into d - z, and the largest grazing inflation. Values of
        invalid pixels are never read (their depth is NaN)."""
        c = self.config
        h, w = level.depth.shape
        depth = level.depth.float().reshape(-1)
        points = level.points.float().reshape(-1, 3).T.contiguous()  # (3, H*W)
        normals = map_normals(level, c.normal_window, c.depth_edge_ratio).float().reshape(-1, 3).T
        has_normal = torch.isfinite(normals[0]) & ~self._depth_edges(level.depth.float()).reshape(-1)
        fallback = torch.tensor([[0.0], [0.0], [-1.0]], device=self.device)
        normals = torch.where(has_normal, normals, fallback)
        offset = (normals * points).sum(0)
        ray_length = (points * points).sum(0).sqrt_() / depth  # metres along the ray per metre of depth
        cos = torch.where(has_normal, offset.abs() / (ray_length * depth), 0.0)
        variance = ((c.noise_a + c.noise_b * depth**2) / cos.clamp_min_(c.min_cos_incidence)) ** 2
        table = torch.empty((10, h + 2, w + 2), device=self.device)  # only the depth border is ever read
        table[0] = float("nan")
        interior = table[:, 1:-1, 1:-1]
        interior[0] = torch.where(self._valid_depth(depth), depth, float("nan")).view(h, w)
        interior[1:4] = normals.view(3, h, w)
        interior[4] = offset.view(h, w)
        interior[5] = variance.view(h, w)
        interior[6] = ray_length.view(h, w)
        interior[7:] = self._colour_at_level(colour, (h, w))
        table = table.view(len(table), -1)
        return PixelTable(table[0], table[1:])

    def _depth_edges(self, depth: torch.Tensor) -> torch.Tensor:
        """(H,W) bool: a pixel and its 4 neighbours (those the central-difference normal uses) span more than
        ``depth_edge_ratio`` of its depth, so its normal mixes two surfaces (NaN neighbours give NaN normals
        already; shifted slices, as max_pool2d is 5x slower on the CPU)."""
        padded = F.pad(depth, (1, 1, 1, 1), value=float("nan"))
        neighbours = (padded[1:-1, 2:], padded[1:-1, :-2], padded[2:, 1:-1], padded[:-2, 1:-1])
        high = torch.maximum(torch.maximum(neighbours[0], neighbours[1]), torch.maximum(neighbours[2], neighbours[3]))
        low = torch.minimum(torch.minimum(neighbours[0], neighbours[1]), torch.minimum(neighbours[2], neighbours[3]))
        spread = torch.maximum(high, depth) - torch.minimum(low, depth)
        return spread > self.config.depth_edge_ratio * depth

    def _colour_at_level(self, colour: torch.Tensor, shape) -> torch.Tensor:
        """Colour (H,W,3) -> (3,h,w), area-resampled to the depth's (h,w) when it comes at another resolution."""
        colour = colour.to(self.device, torch.float32).permute(2, 0, 1)
        if tuple(colour.shape[1:]) == tuple(shape):
            return colour
        return F.interpolate(colour[None], size=tuple(shape), mode="area")[0]

    def _band_block_keys(self, level: ObservationLevel, T: torch.Tensor) -> torch.Tensor:
        """Sorted unique keys of the blocks within +-truncation (in depth) of the observed points: a grid of
        rays (every ``width // allocation_rays``-th pixel), each sampled at depths d + s, s in [-tau, tau], a
        quarter block apart (half a block missed 0.2 % of the band where rays cut block corners)."""
        stride, offsets = self._band_samples(level)
        depth = level.depth[::stride, ::stride].reshape(-1).float()
        points = level.points[::stride, ::stride].reshape(-1, 3).float()
        keep = self._valid_depth(depth)
        depth, points = depth[keep], points[keep]
        scale = ((depth[:, None] + offsets).clamp_min(1e-3) / depth[:, None])[..., None]  # (P,S,1)
        samples = transform_points(T.float(), (points[:, None, :] * scale).reshape(-1, 3))
        blocks = self._voxel_index(samples) >> self._block_shift
        keys = block_keys(blocks)  # (P*S,): a ray's samples are adjacent, and mostly in the same block
        return torch.unique(torch.unique_consecutive(keys[keys >= 0]))  # halves what the sort sees

    def _allocate(self, keys: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Slots (K,) of the blocks with ``keys`` (sorted, unique), allocating the missing ones."""
        slots = self._slots_of_keys(keys)
        missing = slots < 0
        new_keys = keys[missing]
        added = len(new_keys)
        if added:
            self._ensure_capacity(self._num + added)
            new_slots = torch.arange(self._num, self._num + added, device=self.device)
            self._coords[new_slots] = coords_of_keys(new_keys)
            slots[missing] = new_slots
            self._num += added
            self._insert_keys(new_keys, new_slots)
        return added, slots

    def _insert_keys(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Add new blocks to the sorted index and the neighbour table (only when a frame adds blocks)."""
        self._sorted_keys, order = torch.sort(torch.cat([self._sorted_keys, keys]))
        self._sorted_slots = torch.cat([self._sorted_slots, slots])[order]
        self._link_neighbours(slots)
        self._dense = self._dense_index()

    def _link_neighbours(self, slots: torch.Tensor) -> None:
        """Neighbour table entries of the blocks in ``slots``: their own 8 forward neighbours (b + {0,1}^3),
        and their entry in the blocks they are a forward neighbour of."""
        offsets = corner_offsets(self.device)
        coords = self._coords[slots][:, None, :]
        self._neighbours[slots] = self._slots_of_keys(block_keys(coords + offsets))
        behind = self._slots_of_keys(block_keys(coords - offsets))  # (A,8): block b - c has b at column c
        found = behind >= 0
        column = torch.arange(8, device=self.device).expand_as(behind)
        self._neighbours.view(-1)[(behind * 8 + column)[found]] = slots[:, None].expand_as(behind)[found]

    def _rebuild_index(self) -> None:
        self._sorted_keys, self._sorted_slots = torch.sort(block_keys(self.block_coords))
        self._neighbours.fill_(-1)
        self._link_neighbours(torch.arange(self._num, device=self.device))
        self._dense = self._dense_index()

    def _update_blocks(self, slots: torch.Tensor, pixels: PixelTable, camera: PinholeCamera,
                       T: torch.Tensor) -> int:
        """Closed-form Gaussian product for the voxels of the touched blocks that the frame measures (in
        front of, or less than a truncation behind, a valid depth); returns how many were updated."""
        c = self.config
        xyz = self._voxel_centres_in_camera(slots, T)  # (3, K*B^3)
        pixel = self._nearest_pixel(xyz, camera)
        depth, z = pixels.depth.index_select(0, pixel), xyz[2]
        measured = ((depth - z > -c.truncation) & (z > 0)).nonzero()[:, 0]  # NaN depth -> False
        xyz, pixel = xyz.index_select(1, measured), pixel.index_select(0, measured)
        depth = depth.index_select(0, measured)
        values = gather_rows(pixels.values, pixel)
        normal_x, normal_y, normal_z, offset, sensor_variance, ray_length = values[:6]
        along_ray = (depth - xyz[2]) * ray_length
        plane = normal_x * xyz[0] + normal_y * xyz[1] + normal_z * xyz[2] - offset
        m = self._plausible_plane_distance(plane, along_ray).clamp_(-c.truncation, c.truncation)
        weight = 1.0 / (sensor_variance + (c.band_std_slope * along_ray.clamp(-c.truncation, c.truncation)) ** 2)
        colour_weight = 1.0 / (c.colour_std**2 + (c.colour_std / c.voxel_size * m) ** 2)
        shift = self._block_shift * 3
        rows = (slots.index_select(0, measured >> shift) << shift) | (measured & ((1 << shift) - 1))
        self._fuse(rows, m, weight, values[6:], colour_weight)
        return len(rows)

    def _plausible_plane_distance(self, plane: torch.Tensor, along_ray: torch.Tensor) -> torch.Tensor:
        """The point-to-plane distance where it lies between 0 and the along-ray distance (half a voxel of
        slack for the nearest-pixel offset), else the along-ray distance. For a true plane |plane| =
        |along_ray| cos(incidence) with the same sign; outside that, the normal is wrong (depth edges,
        noise), and a free-space voxel is never farther from the surface than from the observed point."""
        slack = 0.5 * self.config.voxel_size
        low = torch.clamp(along_ray, max=0.0) - slack
        high = torch.clamp(along_ray, min=0.0) + slack
        return torch.where((plane >= low) & (plane <= high), plane, along_ray)

    def _voxel_centres_in_camera(self, slots: torch.Tensor, T_world_camera: torch.Tensor) -> torch.Tensor:
        """Camera-frame centres (3, K*B^3) of all voxels of the blocks in ``slots``."""
        origins, offsets = self._block_frames_in_camera(slots, T_world_camera)
        return (origins.T[:, :, None] + offsets.T[:, None, :]).view(3, -1)

    def _block_frames_in_camera(self, slots: torch.Tensor, T_world_camera: torch.Tensor):
        """Camera-frame origins (K,3) of the blocks in ``slots``, transformed in float64 (large world
        coordinates stay exact), and the rotated in-block voxel offsets (B^3,3), both float32: a voxel's
        centre is the sum of its block's origin and its offset."""
        c = self.config
        T_camera_world = torch.linalg.inv(T_world_camera)
        origins = transform_points(T_camera_world, self._coords[slots].double() * c.block_extent).float()
        offsets = (self._local.float() * c.voxel_size) @ T_camera_world[:3, :3].float().T
        return origins, offsets

    @staticmethod
    def _nearest_pixel(xyz: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
        """Index into the padded pixel table of each point's (3,N) nearest pixel; off-image and behind-camera
        points land on the invalid border."""
        if camera.has_distortion:
            uv, _ = camera.project(xyz.T)
            u, v = torch.nan_to_num(uv, nan=-1.0).T
        else:
            inverse_z = xyz[2].clamp_min(1e-6).reciprocal_()
            u = torch.addcmul(camera.cx, xyz[0], inverse_z, value=float(camera.fx))
            v = torch.addcmul(camera.cy, xyz[1], inverse_z, value=float(camera.fy))
        u = torch.round(u).clamp_(-1, camera.width)
        v = torch.round(v).clamp_(-1, camera.height)
        return torch.add(u, v, alpha=camera.width + 2).add_(camera.width + 3).int()  # (v+1)(W+2) + u+1

    def _fuse(self, rows, m, weight, rgb, colour_weight) -> None:
        """Gaussian product in place at voxel ``rows`` (unique): precision += w, mean += w / p (m - mean);
        same for colour (3,N); count += 1; the optional cap scales SDF and colour precision alike (forgetting)."""
        state = gather_rows(self._voxels, rows)  # a copy: updated in place, then scattered back
        mean, precision, colour, colour_precision = (state[_MEAN], state[_PRECISION], state[_COLOUR],
                                                     state[_COLOUR_PRECISION])
        precision.add_(weight)
        colour_precision.add_(colour_weight)
        mean.addcmul_(weight / precision, m - mean)
        colour.addcmul_(colour_weight / colour_precision, rgb - colour)
        if self.config.max_precision is not None:
            keep = (self.config.max_precision / precision).clamp_max_(1.0)
            precision.mul_(keep)
            colour_precision.mul_(keep)
        for channel, values in zip(self._voxels, state):
            channel.index_copy_(0, rows, values)
        prior_precision = 1.0 / self.config.prior_std**2  # the read-mean cache: all these voxels are observed
        posterior = (prior_precision * self.config.prior_mean + precision * mean) / (precision + prior_precision)
        self._read_mean.index_copy_(0, rows, posterior.clamp_max_(self.config.truncation))
        self._count.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))

    # ------------------------------------------------------------------ utilities
    def memory_bytes(self) -> int:
        """Bytes held by the map's tensors (allocated capacity and the key index)."""
        tensors = (self._coords, self._neighbours, self._sorted_keys, self._sorted_slots, self._voxels, self._count,
                   self._read_mean, *([self._dense.columns] if self._dense is not None else []))
        return sum(t.numel() * t.element_size() for t in tensors)

    def surface_area_estimate(self) -> float:
        """Mapped surface in m^2: observed voxels with |mean| < voxel_size / 2, times voxel_size^2 (a surface
        crosses a band one voxel thick, so for planes of any orientation this is unbiased)."""
        vs = self.config.voxel_size
        near = (self.precision > 0) & (self.mean.abs() < 0.5 * vs)
        return float(near.sum()) * vs * vs

    def voxel_centres_and_values(self, min_weight: float = 0.0) -> VoxelValues:
        """Observed voxels (precision > ``min_weight``): world centres (V,3) and their posterior values."""
        b = self.config.block_size
        rows = (self.precision > min_weight).view(-1).nonzero()[:, 0]
        per_block = self._voxels_per_block
        voxels = self._coords.index_select(0, rows // per_block) * b + self._local.index_select(0, rows % per_block)
        mean, variance, colour, _, _ = self._posterior(rows)
        return VoxelValues(voxels.float() * self.config.voxel_size, mean, variance.sqrt(), colour.T,
                           self._count.take(rows))

    def clone(self) -> "GaussianSdfMap":
        """An independent copy (same config and device)."""
        copy = GaussianSdfMap(self.config, self.device)
        copy._load_state(self.block_coords, {name: getattr(self, name) for name in _STATE})
        return copy

    def _load_state(self, coords: torch.Tensor, state: dict) -> None:
        """Replace the contents by ``coords`` (N,3) and the per-quantity tensors in ``state``."""
        self._num = 0
        self._allocate_storage(max(self.config.initial_capacity, len(coords)))
        self._num = len(coords)
        self._coords[: self._num] = coords.to(self.device)
        for name in _STATE:
            getattr(self, name).copy_(state[name])
        used = self._num * self._voxels_per_block
        self._read_mean[:used] = self._read_means(self.mean.reshape(-1), self.precision.reshape(-1))
        self._rebuild_index()

    def save(self, path: str | Path) -> None:
        """One file (torch.save of a dict): format tag, config and the allocated blocks' tensors."""
        data = {"format": _FILE_FORMAT, "version": _FILE_VERSION, "config": asdict(self.config),
                "block_coords": self.block_coords.cpu()}
        data.update({name: getattr(self, name).cpu().contiguous() for name in _STATE})
        torch.save(data, Path(path))

    @staticmethod
    def load(path: str | Path, device: torch.device | str = "cpu") -> "GaussianSdfMap":
        """Read a map written by :meth:`save`; InputError naming the file if it is corrupt or incompatible."""
        path = Path(path)
        if not path.is_file():
            raise InputError("map file not found", "check the path", path)
        data = read_torch_file(path, "not a readable map file", "re-create it with GaussianSdfMap.save", detail=False)
        config = check_saved_map(data, path)
        try:
            loaded = GaussianSdfMap(config, device)
            loaded._load_state(data["block_coords"], data)
        except (RuntimeError, MemoryError) as error:  # e.g. an initial_capacity no machine can hold
            raise InputError(f"the map cannot be allocated on {device} ({len(data['block_coords'])} blocks, "
                             f"initial_capacity {config.initial_capacity}): {str(error).splitlines()[0][:200]}",
                             "re-create it with GaussianSdfMap.save, or load it where there is the memory",
                             path) from None
        return loaded


def check_saved_map(data, path: Path) -> MapConfig:
    """Validate a loaded dict (tag, config keys, tensor shapes and dtypes); return its config."""
    fix = "re-create it with GaussianSdfMap.save"
    if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
        raise InputError("not a prism_ros map file (format tag missing)", fix, path)
    if data.get("version") != _FILE_VERSION:
        raise InputError(f"map file version {data.get('version')} is not supported (expected {_FILE_VERSION})",
                         fix, path)
    names = {f.name for f in fields(MapConfig)}
    saved = data.get("config")
    if not isinstance(saved, dict) or set(saved) != names:
        raise InputError(f"map config keys differ from MapConfig: {sorted(set(saved or {}) ^ names)}", fix, path)
    try:
        config = MapConfig(**saved)
    except (TypeError, InputError) as error:
        raise InputError(f"bad map config ({error})", fix, path) from None
    coords = data.get("block_coords")
    if not torch.is_tensor(coords) or coords.dtype != torch.int64 or coords.dim() != 2 or coords.shape[1] != 3:
        raise InputError("block_coords must be an (N,3) int64 tensor", fix, path)
    n, b = len(coords), config.block_size
    expected = {"mean": ((n, b, b, b), torch.float32), "precision": ((n, b, b, b), torch.float32),
                "colour": ((n, b, b, b, 3), torch.float32), "colour_precision": ((n, b, b, b), torch.float32),
                "count": ((n, b, b, b), torch.int32)}
    for name, (shape, dtype) in expected.items():
        tensor = data.get(name)
        if not torch.is_tensor(tensor) or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            got = (tuple(tensor.shape), tensor.dtype) if torch.is_tensor(tensor) else type(tensor).__name__
            raise InputError(f"{name} should be {shape} {dtype}, got {got}", fix, path)
    if len(torch.unique(block_keys(coords))) != n or bool((block_keys(coords) < 0).any()):
        raise InputError("block_coords has duplicate or out-of-range blocks", fix, path)
    if n and float(coords.abs().max()) * config.block_extent > MAX_MAP_EXTENT_M:
        raise InputError(f"blocks lie {float(coords.abs().max()) * config.block_extent:.3g} m from the origin (a "
                         f"map reaches at most {MAX_MAP_EXTENT_M:g} m)", fix, path)
    for name in ("mean", "precision", "colour", "colour_precision"):
        if not bool(torch.isfinite(data[name]).all()):
            raise InputError(f"{name} has non-finite values", fix, path)
    if bool((data["precision"] < 0).any() | (data["colour_precision"] < 0).any() | (data["count"] < 0).any()):
        raise InputError("precisions and counts must be >= 0", fix, path)
    return config


def map_normals(level: ObservationLevel, window: int, edge_ratio: float) -> torch.Tensor:
    """(H,W,3) normals for the map's point-to-plane measurement: central differences of the vertex map averaged
    over ``window`` x ``window`` pixels (the valid ones), NaN where that window spans a depth edge (its depth
    range exceeds ``edge_ratio`` x depth per pixel of its half-width, the 4-neighbour test scaled up).

    Kinect-class depth noise at 2-3 m is about a pixel's footprint, so central differences of single pixels
    tilt normals by tens of degrees; ``n . (p - q)`` then shrinks |sdf| systematically and the error does not
    average out over frames. Averaging the points first keeps planes planar and shrinks the tilt by about the
    window's area. ``window`` 1 returns the observation's normals unchanged. The sums run in the order of the
    fused kernel (``prism_ros.prism.kernels.integrate.window_points``), so the two agree to rounding.
    """
    if window == 1:
        return level.normals
    from prism_ros.prism.observation import normals_from_points

    half = window // 2
    h, w = level.depth.shape
    depth = level.depth.float()
    valid = torch.isfinite(depth) & (depth > 0)
    padded_depth = F.pad(torch.where(valid, depth, math.nan), (half,) * 4, value=math.nan)
    padded_points = F.pad(level.points.float().permute(2, 0, 1), (half,) * 4)
    total = torch.zeros((3, h, w), device=depth.device)
    count = torch.zeros((h, w), device=depth.device)
    high, low = depth.clone(), depth.clone()
    for dy in range(window):
        for dx in range(window):
            d = padded_depth[dy:dy + h, dx:dx + w]
            seen = torch.isfinite(d)
            total += torch.where(seen, padded_points[:, dy:dy + h, dx:dx + w], 0.0)
            count += seen.float()
            high = torch.where(seen, torch.maximum(high, d), high)
            low = torch.where(seen, torch.minimum(low, d), low)
    edge = (high - low) > edge_ratio * depth * float(half)
    smooth = torch.where(valid & ~edge, total / count.clamp_min(1.0), math.nan)
    return normals_from_points(smooth.permute(1, 2, 0))
