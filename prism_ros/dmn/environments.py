"""Procedural Rooms and Mazes domains for DMN sparse localization, drawn by a batched 2.5-D ray caster.

The DMN paper (Karkus et al., 2020, appendix C.1) uses the GQN Rooms and Mazes data, which cannot be
downloaded here, so this module generates equivalent domains:

* **Rooms**: one square room per environment (a 7x7 grid of 1 m cells whose border cells are walls, so a
  5x5 m floor), a random pattern and two colours per wall (or one for the whole room), random floor and
  ceiling colours, a random light (ambient level and direction), 1-3 vertical cylinders of random
  radius, height, colour and banding at random free places, and 10 views per environment.
* **Mazes**: a 15x15 grid: a random spanning tree (depth-first backtracker) on the 7x7 grid of odd cells,
  a few extra openings (loops) and a few carved rooms; each wall cell gets one of 3 materials of a
  per-environment palette, so views are highly ambiguous; 300 views per environment.

Frames and poses. World x runs along the grid's first index, y along its second, z is up (metres,
cell (i, j) covers [i, i+1) x [j, j+1) times the cell size). A pose is (x, y, yaw): yaw 0 looks along
+x, counter-clockwise (towards +y) is positive. Poses are stored normalised to [-1, 1] as in the paper:
x and y are scaled so the free interior (inside the border walls) spans [-1, 1], yaw is in radians
divided by pi, in [-1, 1). Images are (3, H, W) RGB, row 0 at the top, column 0 on the left.

Renderer (Wolfenstein-style): per image column one ray is marched through the occupancy grid by DDA
(a fixed number of steps, stopped early once all rays hit), giving the perpendicular wall depth; each
pixel row is then a wall, floor or ceiling hit by its height at that depth, and cylinders are cut in
analytically (ray-circle intersection per column, side or top cap per pixel) with a depth test. Colour
is a pattern of the hit point (stripes, checks or hashed blocks between two colours) times Lambert
shading and a mild distance fall-off, so it is the same from every view. All of it is batched torch over
environments, views, columns and rows (and objects); Python loops run only over DDA steps, over chunks
of views (to bound memory), and over seeds to draw each environment's random numbers from its own
stream (plus the 7x7 spanning tree of a maze; object placement loops over the <= 3 object slots).

Determinism. Environment k depends only on ``seeds[k]``: its random numbers come from its own numpy
``SeedSequence(seed, spawn_key=(domain, purpose))`` streams (layout, appearance, poses), and the
renderer uses only correctly rounded arithmetic per element (trigonometry only per view/environment, in
float64), so on the CPU the same seed gives bit-identical images and poses in any batch (another device
may differ in the last bits). ``sample_poses`` with
fewer views gives a prefix of the views with more.

Throughput at 32x32 on one torch thread of a shared 2-core CPU (load ~1.6 from other jobs), CPU only,
everything included (seed streams, layouts, poses, rendering), measured 2026-11-21 with
``nice -n 10 .venv/bin/python -m prism_ros.dmn.environments`` (:func:`benchmark`, 256 environments):
rooms 6,500 views/s (2,560 views in 0.39 s), mazes 10,400 views/s (76,800 views in 7.4 s); and with
``generate('rooms', split_seeds('train', 4096))``: 40,960 views in 5.9 s (7,000 views/s). The cylinders'
per-pixel depth test is about a third of the Rooms render time (same views rendered without them).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from prism_ros.errors import InputError, check_int, check_tensor, file_kind, read_torch_file

DOMAINS = ("rooms", "mazes")
SPLITS = {"train": 0, "val": 10**8, "test": 2 * 10**8}  # first seed of each split
SPLIT_SIZE = 10**8  # seeds per split: the ranges are disjoint
DATASET_FORMAT = "prism_ros.dmn.environments"
DATASET_VERSION = 1

# Surface ids of RenderBuffers.surface: object k is OBJECT + k (side or top).
CEILING, FLOOR, WALL, OBJECT = 0, 1, 2, 3
# Material table rows: ceiling, floor, the wall palette, then one per object slot.
CEILING_MATERIAL, FLOOR_MATERIAL, PALETTE_MATERIAL = 0, 1, 2
# Material table columns: colour A (3), colour B (3), pattern weights, pattern scale (1/m), noise salt.
COLOUR_A, COLOUR_B, ALONG, ACROSS, NOISE, SCALE, SALT = slice(0, 3), slice(3, 6), 6, 7, 8, 9, 10
MATERIAL_COLUMNS = 11
# Wall patterns as (ALONG, ACROSS, NOISE) weights: the pattern value is the parity of
# ALONG*floor(u*scale) + ACROSS*floor(v*scale), or a NOISE_TABLE level hashed per block when NOISE is 1.
PATTERNS = {"plain": (0, 0, 0), "horizontal stripes": (0, 1, 0), "vertical stripes": (1, 0, 0),
            "checks": (1, 1, 0), "blocks": (0, 0, 1)}
PATTERN_ODDS = (0.15, 0.2, 0.2, 0.2, 0.25)  # in PATTERNS order
STREAM_LAYOUT, STREAM_APPEARANCE, STREAM_POSES = 0, 1, 2
POSE_CANDIDATES = 16  # positions tried per view (the first free one is kept)
OBJECT_CANDIDATES = 12  # positions tried per object
OBJECT_GAP = 0.1  # m between objects and between objects and walls
MAX_PLANE_DEPTH = 1e3  # m: floor/ceiling depth at the horizon row (keeps everything finite)
NOISE_LEVELS = 4  # pattern values 0, 1/3, 2/3, 1 between colour A and colour B
NOISE_TABLE_SIZE = 4096  # the "blocks" pattern looks its level up in a fixed random table
NOISE_TABLE = torch.from_numpy(np.random.default_rng(20200531).integers(0, NOISE_LEVELS, NOISE_TABLE_SIZE))


@dataclass(frozen=True)
class DomainConfig:
    """Geometry, appearance ranges and view count of one domain (lengths in metres)."""

    name: str
    grid_cells: int  # square occupancy grid, odd; the border cells are walls
    cell_size: float = 1.0
    wall_height: float = 1.5  # = ceiling height
    camera_height: float = 0.6
    views: int = 10  # views per environment
    image_size: int = 32  # square images
    field_of_view: float = 90.0  # degrees, horizontal (= vertical)
    palette_size: int = 4  # wall materials per environment
    objects: tuple[int, int] = (0, 0)  # min, max cylinders per environment
    object_radius: tuple[float, float] = (0.2, 0.45)
    object_height: tuple[float, float] = (0.3, 1.2)
    wall_clearance: float = 0.2  # views keep this far from walls ...
    object_clearance: float = 0.15  # ... and from object surfaces
    maze_rooms: int = 0  # rooms carved into a maze
    maze_openings: int = 0  # extra wall cells removed from the spanning tree (loops)
    light_falloff: float = 0.06  # brightness / (1 + falloff * depth)

    @property
    def extent(self) -> tuple[float, float]:
        """(low, high) of the free interior along x and y in metres: normalised -1 and 1."""
        return self.cell_size, (self.grid_cells - 1) * self.cell_size

    @property
    def max_objects(self) -> int:
        return self.objects[1]

    @property
    def material_count(self) -> int:
        return PALETTE_MATERIAL + self.palette_size + self.max_objects

    def focal(self, width: int) -> float:
        """Focal length in pixels of a ``width``-pixel image."""
        return 0.5 * width / math.tan(math.radians(self.field_of_view) / 2)


def domain_config(name: str, image_size: int = 32) -> DomainConfig:
    """The configuration of domain ``name`` ("rooms" or "mazes") for square images of ``image_size``."""
    if name not in DOMAINS:
        raise InputError(f"unknown DMN domain {name!r}", f"use one of {', '.join(DOMAINS)}")
    if not isinstance(image_size, int) or image_size < 8:
        raise InputError(f"image size {image_size!r} is not an integer >= 8", "pass e.g. image_size=32")
    if name == "rooms":
        return DomainConfig("rooms", grid_cells=7, views=10, image_size=image_size, palette_size=4,
                            objects=(1, 3))
    return DomainConfig("mazes", grid_cells=15, wall_height=1.2, camera_height=0.5, views=300,
                        image_size=image_size, palette_size=3, maze_rooms=3, maze_openings=6)


def _config(domain: str | DomainConfig) -> DomainConfig:
    return domain if isinstance(domain, DomainConfig) else domain_config(domain)


# ----------------------------------------------------------------------------- poses
def normalise_pose(pose: Tensor, config: DomainConfig) -> Tensor:
    """World poses (..., 3) [x m, y m, yaw rad] -> normalised [-1, 1] poses (float64 maths, input dtype)."""
    low, high = config.extent
    p = pose.double()
    xy = 2 * (p[..., :2] - low) / (high - low) - 1
    yaw = torch.remainder(p[..., 2] + math.pi, 2 * math.pi) / math.pi - 1
    return torch.cat([xy, yaw[..., None]], -1).to(pose.dtype)


def denormalise_pose(pose: Tensor, config: DomainConfig) -> Tensor:
    """Normalised poses (..., 3) -> world poses [x m, y m, yaw rad] (float64 maths, input dtype)."""
    low, high = config.extent
    p = pose.double()
    xy = low + (p[..., :2] + 1) * (0.5 * (high - low))
    return torch.cat([xy, p[..., 2:] * math.pi], -1).to(pose.dtype)


# ----------------------------------------------------------------------------- environments
@dataclass
class Environments:
    """A batch of E environment descriptions of one domain (tensors on one device).

    occupancy (E,G,G) bool, indexed [env, x cell, y cell]; wall_material (E,G,G) int64 row of ``materials``
    per wall cell; materials (E,M,11) float32, columns COLOUR_A..SALT, rows CEILING_MATERIAL,
    FLOOR_MATERIAL, the wall palette, then one per object slot; light (E,5) [unit direction towards the
    light (3), ambient, diffuse]; objects (E,O,4) [x, y, radius, height] in metres with object_present
    (E,O) bool (absent slots are ignored)."""

    config: DomainConfig
    seeds: Tensor
    occupancy: Tensor
    wall_material: Tensor
    materials: Tensor
    light: Tensor
    objects: Tensor
    object_present: Tensor

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        return self.occupancy.device

    def _tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in ("seeds", "occupancy", "wall_material", "materials", "light",
                                              "objects", "object_present")}

    def to(self, device) -> "Environments":
        return replace(self, **{k: v.to(device) for k, v in self._tensors().items()})

    def select(self, index) -> "Environments":
        """The environments at ``index`` (a slice, an int list or tensor)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1)
        return replace(self, **{k: v[index] for k, v in self._tensors().items()})


def _as_seeds(seeds: Sequence[int] | Tensor) -> Tensor:
    """Seeds as an int64 (E,) tensor of non-negative integers (InputError otherwise)."""
    try:
        tensor = torch.as_tensor(seeds).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"seeds {seeds!r} are not a list of integers", "pass e.g. split_seeds('train', 100)") from None
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"seeds have dtype {tensor.dtype}, not integer", "pass integer seeds")
    if int(tensor.min()) < 0:
        raise InputError("seeds must be >= 0", "pass e.g. split_seeds('train', 100)")
    return tensor.to(torch.int64).cpu()


def _stream(seed: int, config: DomainConfig, purpose: int) -> np.random.Generator:
    """The independent random stream ``purpose`` of one environment (depends on seed and domain only)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(DOMAINS.index(config.name), purpose)))


def _appearance_fields(config: DomainConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the uniform numbers each environment draws for its appearance and objects (in order)."""
    objects = config.max_objects
    return {"palette": (config.palette_size, 9), "floor": (5,), "ceiling": (3,), "light": (4,),
            "shared_material": (1,), "object_count": (1,), "objects": (objects, 9),
            "object_candidates": (objects, OBJECT_CANDIDATES, 2)}


def _split_uniforms(block: Tensor, fields: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Cut an (E, total) block of uniforms into the named fields, each (E, *shape)."""
    out, start = {}, 0
    for name, shape in fields.items():
        size = math.prod(shape)
        out[name] = block[:, start:start + size].reshape(len(block), *shape)
        start += size
    return out


def make_environments(domain: str | DomainConfig, seeds: Sequence[int] | Tensor) -> Environments:
    """Environment descriptions (layout, materials, light, objects) for ``seeds`` on the CPU.

    Environment k is a function of ``seeds[k]`` alone (its own random streams), whatever the batch."""
    config = _config(domain)
    if config.grid_cells % 2 == 0 or config.grid_cells < 5:
        raise InputError(f"grid of {config.grid_cells} cells: it must be odd and >= 5", "use e.g. grid_cells=7")
    seeds = _as_seeds(seeds)
    fields = _appearance_fields(config)
    total = sum(math.prod(shape) for shape in fields.values())
    block = np.zeros((len(seeds), total))
    layouts = []
    for row, seed in enumerate(seeds.tolist()):  # per-seed streams; everything else is vectorised below
        block[row] = _stream(seed, config, STREAM_APPEARANCE).random(total)
        if config.name == "mazes":
            layouts.append(_maze_layout(_stream(seed, config, STREAM_LAYOUT), config))
    uniforms = _split_uniforms(torch.from_numpy(block), fields)
    if config.name == "mazes":
        g = config.grid_cells
        occupancy = torch.from_numpy(np.array([o for o, _ in layouts], dtype=bool).reshape(-1, g, g))
        palette = np.array([m for _, m in layouts], dtype=np.int64).reshape(-1, g, g)
        wall_material = PALETTE_MATERIAL + torch.from_numpy(palette)
    else:
        occupancy, wall_material = _room_layout(config, uniforms["shared_material"][:, 0])
    objects, present = _place_objects(config, uniforms)
    return Environments(config, seeds, occupancy, wall_material.to(torch.int64),
                        _materials(config, uniforms), _light(uniforms["light"]), objects, present)


def _room_layout(config: DomainConfig, shared_u: Tensor) -> tuple[Tensor, Tensor]:
    """Border walls for every room; wall material by side (x=0, x=max, y=0, y=max), or palette entry 0
    for all walls of the rooms whose ``shared_u`` < 0.5."""
    g, e = config.grid_cells, len(shared_u)
    occupancy = torch.ones(g, g, dtype=torch.bool)
    occupancy[1:-1, 1:-1] = False
    side = torch.zeros(g, g, dtype=torch.int64)
    side[-1, :], side[:, 0], side[:, -1] = 1, 2, 3
    side[0, :] = 0
    side = side % config.palette_size
    material = torch.where((shared_u < 0.5)[:, None, None], 0, side)
    return occupancy.expand(e, g, g).clone(), PALETTE_MATERIAL + material


def _maze_layout(rng: np.random.Generator, config: DomainConfig) -> tuple[np.ndarray, np.ndarray]:
    """One maze: (occupancy (G,G) bool, palette index (G,G) int64) from the layout stream ``rng``.

    Cells (2i+1, 2j+1) form a coarse n x n grid; a depth-first backtracker opens the wall cell between
    neighbours it visits (a spanning tree: every free cell is connected), then ``maze_openings`` random
    interior walls between coarse cells are removed (loops) and ``maze_rooms`` rooms of 2-3 x 2-3 coarse
    cells are carved out."""
    g = config.grid_cells
    n = (g - 1) // 2
    occupancy = np.ones((g, g), dtype=bool)
    visited = np.zeros((n, n), dtype=bool)
    start = (int(rng.integers(n)), int(rng.integers(n)))
    visited[start] = True
    occupancy[2 * start[0] + 1, 2 * start[1] + 1] = False
    stack = [start]
    while stack:
        i, j = stack[-1]
        options = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                   if 0 <= i + di < n and 0 <= j + dj < n and not visited[i + di, j + dj]]
        if not options:
            stack.pop()
            continue
        a, b = options[int(rng.integers(len(options)))]
        occupancy[i + a + 1, j + b + 1] = False  # the wall cell between (2i+1, 2j+1) and (2a+1, 2b+1)
        occupancy[2 * a + 1, 2 * b + 1] = False
        visited[a, b] = True
        stack.append((a, b))
    inner = np.arange(1, g - 1)
    x, y = np.meshgrid(inner, inner, indexing="ij")
    between = ((x % 2) != (y % 2)) & occupancy[1:-1, 1:-1]  # walls separating two coarse cells
    walls = np.stack([x[between], y[between]], -1)
    if len(walls) and config.maze_openings:
        chosen = walls[rng.choice(len(walls), size=min(config.maze_openings, len(walls)), replace=False)]
        occupancy[chosen[:, 0], chosen[:, 1]] = False
    for _ in range(config.maze_rooms):
        w, h = int(rng.integers(2, 4)), int(rng.integers(2, 4))
        i0, j0 = int(rng.integers(0, n - w + 1)), int(rng.integers(0, n - h + 1))
        occupancy[2 * i0 + 1:2 * (i0 + w), 2 * j0 + 1:2 * (j0 + h)] = False
    return occupancy, rng.integers(0, config.palette_size, size=(g, g))


def _materials(config: DomainConfig, u: dict[str, Tensor]) -> Tensor:
    """Material table (E, M, 11) float32 from the appearance uniforms (float64 maths)."""
    e = len(u["palette"])
    table = torch.zeros(e, config.material_count, MATERIAL_COLUMNS, dtype=torch.float64)
    flags = torch.tensor(list(PATTERNS.values()), dtype=torch.float64)
    thresholds = torch.tensor(np.cumsum(PATTERN_ODDS)[:-1], dtype=torch.float64)
    palette = u["palette"]  # (E,P,9): pattern, scale, salt, colour A, colour B
    pattern = torch.searchsorted(thresholds, palette[..., 0].contiguous(), right=True)
    walls = table[:, PALETTE_MATERIAL:PALETTE_MATERIAL + config.palette_size]
    walls[..., COLOUR_A] = 0.08 + 0.87 * palette[..., 3:6]
    walls[..., COLOUR_B] = 0.08 + 0.87 * palette[..., 6:9]
    walls[..., ALONG:NOISE + 1] = flags[pattern]
    walls[..., SCALE] = 1.5 + 2.5 * palette[..., 1]
    walls[..., SALT] = torch.floor(palette[..., 2] * 2**20)
    floor = u["floor"]  # colour (3), contrast, scale: low-contrast checks
    table[:, FLOOR_MATERIAL, COLOUR_A] = 0.1 + 0.7 * floor[:, :3]
    table[:, FLOOR_MATERIAL, COLOUR_B] = table[:, FLOOR_MATERIAL, COLOUR_A] * (1 - 0.3 * floor[:, 3:4])
    table[:, FLOOR_MATERIAL, ALONG:NOISE + 1] = flags[list(PATTERNS).index("checks")]
    table[:, FLOOR_MATERIAL, SCALE] = 1 + floor[:, 4]
    table[:, CEILING_MATERIAL, COLOUR_A] = 0.3 + 0.65 * u["ceiling"]
    table[:, CEILING_MATERIAL, COLOUR_B] = table[:, CEILING_MATERIAL, COLOUR_A]
    table[:, CEILING_MATERIAL, SCALE] = 1
    objects = u["objects"]  # (E,O,9): radius, height, colour A, colour B, banded?
    first = PALETTE_MATERIAL + config.palette_size
    slots = table[:, first:first + config.max_objects]
    slots[..., COLOUR_A] = 0.05 + 0.9 * objects[..., 2:5]
    slots[..., COLOUR_B] = 0.05 + 0.9 * objects[..., 5:8]
    slots[..., ACROSS] = (objects[..., 8] < 0.5).double()  # horizontal bands on half of the objects
    slots[..., SCALE] = 4 + 4 * objects[..., 8]
    return table.float()


def _light(u: Tensor) -> Tensor:
    """(E,5) [direction towards the light (3), ambient, diffuse] from (E,4) uniforms."""
    azimuth, elevation = 2 * math.pi * u[:, 0], math.radians(20) + math.radians(50) * u[:, 1]
    direction = torch.stack([torch.cos(elevation) * torch.cos(azimuth), torch.cos(elevation) * torch.sin(azimuth),
                             torch.sin(elevation)], -1)
    return torch.cat([direction, 0.3 + 0.3 * u[:, 2:3], 0.45 + 0.3 * u[:, 3:4]], -1).float()


def _place_objects(config: DomainConfig, u: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Objects (E,O,4) [x, y, radius, height] and presence (E,O): a count uniform in ``config.objects``,
    each object at the first of its candidate positions that keeps OBJECT_GAP from the walls and from the
    objects placed before it (an object with no such candidate is left out; the first one never is)."""
    e, slots = len(u["objects"]), config.max_objects
    low, high = config.extent
    lo_count, hi_count = config.objects
    count = lo_count + torch.floor(u["object_count"][:, 0] * (hi_count - lo_count + 1))
    radius = config.object_radius[0] + (config.object_radius[1] - config.object_radius[0]) * u["objects"][..., 0]
    height = config.object_height[0] + (config.object_height[1] - config.object_height[0]) * u["objects"][..., 1]
    margin = radius + OBJECT_GAP  # (E,O)
    candidates = low + margin[..., None, None] + (high - low - 2 * margin)[..., None, None] * u["object_candidates"]
    centres = torch.zeros(e, slots, 2, dtype=torch.float64)
    present = torch.zeros(e, slots, dtype=torch.bool)
    for k in range(slots):  # at most 3: later objects avoid the earlier ones
        free = torch.ones(e, OBJECT_CANDIDATES, dtype=torch.bool)
        for j in range(k):
            distance = (candidates[:, k] - centres[:, j, None]).square().sum(-1).sqrt()
            free &= ~present[:, j, None] | (distance >= radius[:, k, None] + radius[:, j, None] + OBJECT_GAP)
        first = free.int().argmax(-1)
        centres[:, k] = candidates[torch.arange(e), k, first]
        present[:, k] = (k < count) & free.any(-1)
    objects = torch.cat([centres, radius[..., None], height[..., None]], -1).float()
    return objects, present


# ----------------------------------------------------------------------------- views
def sample_poses(envs: Environments, views: int | None = None) -> Tensor:
    """Normalised poses (E, V, 3) float32 of ``views`` (default: the domain's) random views per environment:
    uniform over free cells, at least ``wall_clearance`` from walls and ``object_clearance`` from objects,
    uniform yaw. Drawn from each seed's pose stream: fewer views give a prefix of more."""
    config = envs.config
    views = config.views if views is None else int(views)
    if views < 1:
        raise InputError(f"views must be >= 1 (got {views})", "pass views=None for the domain's default")
    e, g, c, cell = len(envs), config.grid_cells, POSE_CANDIDATES, config.cell_size
    draws = np.zeros((e, views, 1 + 3 * c))
    for row, seed in enumerate(envs.seeds.tolist()):
        draws[row] = _stream(seed, config, STREAM_POSES).random((views, 1 + 3 * c))
    draws_t = torch.from_numpy(draws).to(envs.device)
    yaw = 2 * draws_t[..., 0] - 1  # normalised, in [-1, 1)
    u = draws_t[..., 1:].reshape(e, views * c, 3)
    occupancy = envs.occupancy
    free = ~occupancy.reshape(e, -1)
    cumulative = free.long().cumsum(-1)
    rank = torch.minimum(torch.floor(u[..., 0] * cumulative[:, -1:]).long(), cumulative[:, -1:] - 1)
    cell_index = torch.searchsorted(cumulative, rank + 1)  # the rank-th free cell
    ix, iy = cell_index // g, cell_index % g
    x, y = (ix + u[..., 1]) * cell, (iy + u[..., 2]) * cell
    # clearance to the 8 neighbouring cells that are walls (free cells are never on the border)
    env = torch.arange(e, device=envs.device)[:, None]
    wall_clearance = torch.full_like(x, math.inf)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == dy == 0:
                continue
            nx, ny = (ix + dx).clamp(0, g - 1), (iy + dy).clamp(0, g - 1)
            gap_x = torch.maximum(nx * cell - x, x - (nx + 1) * cell).clamp_min(0)
            gap_y = torch.maximum(ny * cell - y, y - (ny + 1) * cell).clamp_min(0)
            distance = (gap_x.square() + gap_y.square()).sqrt()
            wall_clearance = torch.where(occupancy[env, nx, ny], torch.minimum(wall_clearance, distance),
                                         wall_clearance)
    objects = envs.objects.double()
    if objects.shape[1]:
        centre_distance = ((x[..., None] - objects[:, None, :, 0]).square()
                           + (y[..., None] - objects[:, None, :, 1]).square()).sqrt()
        surface = torch.where(envs.object_present[:, None], centre_distance - objects[:, None, :, 2], math.inf)
        object_clearance = surface.min(-1).values
    else:
        object_clearance = torch.full_like(x, math.inf)
    ok = (wall_clearance >= config.wall_clearance) & (object_clearance >= config.object_clearance)
    slack = torch.minimum(wall_clearance - config.wall_clearance, object_clearance - config.object_clearance)
    ok, slack = ok.reshape(e, views, c), slack.reshape(e, views, c)
    choice = torch.where(ok.any(-1), ok.int().argmax(-1), slack.argmax(-1))  # first free, else the best
    x = x.reshape(e, views, c).gather(-1, choice[..., None])[..., 0]
    y = y.reshape(e, views, c).gather(-1, choice[..., None])[..., 0]
    world = torch.stack([x, y, torch.zeros_like(x)], -1)
    normalised = normalise_pose(world, config)
    normalised[..., 2] = yaw
    return normalised.float()


# ----------------------------------------------------------------------------- rendering
class RenderBuffers(NamedTuple):
    """rgb (E,V,3,H,W) float32 in [0, 1] (a channel-first view of an (E,V,H,W,3) tensor); depth (E,V,H,W)
    metres along the view axis (not along the ray); surface (E,V,H,W) int64: CEILING, FLOOR, WALL or
    OBJECT + object slot."""

    rgb: Tensor
    depth: Tensor
    surface: Tensor


def _check_poses(envs: Environments, poses: Tensor) -> Tensor:
    if not isinstance(poses, Tensor) or poses.dim() != 3 or poses.shape[-1] != 3 or len(poses) != len(envs):
        shape = tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__
        raise InputError(f"poses {shape} are not (E={len(envs)}, V, 3)", "pass normalised poses, one row per view")
    return poses.to(envs.device)


def render_buffers(envs: Environments, poses: Tensor, image_size: int | None = None) -> RenderBuffers:
    """Ray cast V views per environment at normalised ``poses`` (E,V,3) in one batch (no chunking)."""
    poses = _check_poses(envs, poses)
    config = envs.config
    size = config.image_size if image_size is None else int(image_size)
    e = len(envs)
    device, f32 = envs.device, torch.float32
    world = denormalise_pose(poses.double(), config)
    x, y = world[..., 0].float(), world[..., 1].float()  # (E,V)
    cos_yaw, sin_yaw = torch.cos(world[..., 2]).float(), torch.sin(world[..., 2]).float()
    half_width = math.tan(math.radians(config.field_of_view) / 2)
    column = ((1 - 2 * (torch.arange(size, dtype=torch.float64) + 0.5) / size) * half_width).to(device, f32)
    dir_x = cos_yaw[..., None] - sin_yaw[..., None] * column  # (E,V,W): forward + column * left,
    dir_y = sin_yaw[..., None] + cos_yaw[..., None] * column  # forward component 1: t is view-axis depth
    t_wall, hit_x_face, hit_cell = _cast_columns(envs, x[..., None], y[..., None], dir_x, dir_y)
    t_wall = t_wall * config.cell_size  # metres
    along_wall = torch.where(hit_x_face, y[..., None] + t_wall * dir_y, x[..., None] + t_wall * dir_x)

    # A pixel row sees height camera_height + slope * depth, so each column's wall covers the rows whose
    # slope lies between its foot and its top.
    row_slope = ((size / 2 - (torch.arange(size, dtype=torch.float64) + 0.5)) / config.focal(size)).to(device, f32)
    slope = row_slope[:, None]  # (H,1)
    h_cam, h_wall = config.camera_height, config.wall_height
    plane_depth = torch.where(slope < 0, h_cam / -slope, (h_wall - h_cam) / slope).clamp_max(MAX_PLANE_DEPTH)
    below = slope < 0  # floor rows; the others see the ceiling
    foot, top = (-h_cam / t_wall)[:, :, None], ((h_wall - h_cam) / t_wall)[:, :, None]  # (E,V,1,W)
    is_wall = (slope >= foot) & (slope <= top)  # (E,V,H,W)

    light = envs.light
    lx, ly, lz, ambient, diffuse = (light[:, i].view(e, 1, 1, 1) for i in range(5))
    facing = torch.where(hit_x_face, torch.where(dir_x < 0, lx[..., 0], -lx[..., 0]),  # normal faces the camera
                         torch.where(dir_y < 0, ly[..., 0], -ly[..., 0]))
    wall_shade = ambient[..., 0] + diffuse[..., 0] * facing.clamp_min(0)  # (E,V,W)
    wall_material = envs.wall_material.reshape(-1)[hit_cell]  # (E,V,W)

    depth = torch.where(is_wall, t_wall[:, :, None, :], plane_depth)
    surface = torch.where(is_wall, WALL, torch.where(below, FLOOR, CEILING))
    material = torch.where(is_wall, wall_material[:, :, None, :],
                           torch.where(below, FLOOR_MATERIAL, CEILING_MATERIAL))
    shade = torch.where(is_wall, wall_shade[:, :, None, :],
                        torch.where(below, ambient + diffuse * lz, ambient + 0.25 * diffuse))
    if envs.objects.shape[1]:
        depth, surface, material, shade = _cut_in_objects(envs, x, y, dir_x, dir_y, slope, depth, surface,
                                                           material, shade)

    # surface coordinates of the pattern: walls (along the wall, height), floor (x, y), objects (-, height)
    on_floor = surface == FLOOR
    along = torch.where(on_floor, x[:, :, None, None] + depth * dir_x[:, :, None, :], along_wall[:, :, None, :])
    across = torch.where(on_floor, y[:, :, None, None] + depth * dir_y[:, :, None, :], h_cam + slope * depth)
    brightness = shade / (1 + config.light_falloff * depth)
    rgb = (_albedo(envs.materials, material, along, across) * brightness[..., None]).clamp_(0, 1)
    return RenderBuffers(rgb.permute(0, 1, 4, 2, 3), depth, surface.to(torch.int64))


def _cast_columns(envs: Environments, px: Tensor, py: Tensor, dir_x: Tensor, dir_y: Tensor):
    """DDA through the occupancy grid for rays (E,V,W) from (px, py) metres along (dir_x, dir_y).

    Returns the ray parameter of the first wall hit in cells (= view-axis depth in cells, as the
    directions have unit forward component), whether it hit an x face (a wall cell's side normal to x),
    and the flat index of the hit cell into (E,G,G)."""
    config = envs.config
    g, cell = config.grid_cells, config.cell_size
    e = len(envs)
    px, py = (px / cell).expand_as(dir_x), (py / cell).expand_as(dir_y)
    map_x, map_y = torch.floor(px).long(), torch.floor(py).long()
    delta_x, delta_y = (1 / dir_x).abs(), (1 / dir_y).abs()  # inf for an axis-parallel ray
    step_x = torch.where(dir_x < 0, -1, 1)
    step_y = torch.where(dir_y < 0, -1, 1)
    side_x = torch.where(dir_x == 0, math.inf,
                         torch.where(dir_x < 0, px - map_x, map_x + 1 - px) * delta_x)
    side_y = torch.where(dir_y == 0, math.inf,
                         torch.where(dir_y < 0, py - map_y, map_y + 1 - py) * delta_y)
    occupancy = envs.occupancy.reshape(-1)
    env_base = (torch.arange(e, device=envs.device) * g * g).view(e, 1, 1)
    t_hit = torch.full_like(dir_x, math.inf)
    hit_x_face = torch.zeros_like(dir_x, dtype=torch.bool)
    hit_cell = torch.zeros_like(map_x)
    done = torch.zeros_like(hit_x_face)
    for step in range(2 * g + 2):  # a ray crosses at most 2G cells before leaving the grid
        go_x = side_x < side_y
        t = torch.where(go_x, side_x, side_y)
        map_x = map_x + torch.where(go_x, step_x, 0)
        map_y = map_y + torch.where(go_x, 0, step_y)
        side_x = torch.where(go_x, side_x + delta_x, side_x)
        side_y = torch.where(go_x, side_y, side_y + delta_y)
        cell_index = env_base + map_x.clamp(0, g - 1) * g + map_y.clamp(0, g - 1)
        new = occupancy[cell_index] & ~done
        t_hit = torch.where(new, t, t_hit)
        hit_x_face = torch.where(new, go_x, hit_x_face)
        hit_cell = torch.where(new, cell_index, hit_cell)
        done = done | new
        if step % 4 == 3 and bool(done.all()):
            break
    return t_hit, hit_x_face, hit_cell


def _cut_in_objects(envs: Environments, x: Tensor, y: Tensor, dir_x: Tensor, dir_y: Tensor, slope: Tensor,
                    depth: Tensor, surface: Tensor, material: Tensor, shade: Tensor):
    """Depth test the vertical cylinders (sides and top caps) against the walls, floor and ceiling.

    Per column a cylinder is entered at t_near and left at t_far (ray-circle intersection); its side
    covers the rows whose slope lies in [-camera_height, rise] / t_near (rise = height - camera height),
    and a cap below the camera the rows up to rise / t_far, seen at depth rise / slope."""
    config = envs.config
    e, slots = envs.objects.shape[:2]
    h_cam = config.camera_height
    cx, cy, radius, height = (envs.objects[..., i].view(e, 1, 1, slots) for i in range(4))
    dx, dy = dir_x[..., None], dir_y[..., None]  # (E,V,W,1)
    ox, oy = x[..., None, None] - cx, y[..., None, None] - cy  # (E,V,1,O)
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    t_near, t_far = (-b - root) / a, (-b + root) / a  # (E,V,W,O) view-axis depth
    crosses = envs.object_present.view(e, 1, 1, slots) & (disc > 0) & (t_near > 0)
    rise = height - h_cam
    lowest = torch.where(crosses, -h_cam / t_near, math.inf)[:, :, None]  # (E,V,1,W,O)
    side_top = (rise / t_near)[:, :, None]
    highest = torch.maximum(side_top, (rise / t_far)[:, :, None])
    row = slope[..., None]  # (H,1,1)
    visible = (row >= lowest) & (row <= highest)  # (E,V,H,W,O)
    on_side = row <= side_top
    t_cap = rise[:, :, None] / row  # (E,1,H,1,O), used only on cap rows (row < 0)
    candidate = torch.where(visible, torch.where(on_side, t_near[:, :, None], t_cap), math.inf)
    nearest, slot = candidate.min(-1)  # (E,V,H,W)
    front = nearest < depth
    on_top = ~on_side.gather(-1, slot[..., None])[..., 0]
    light = envs.light
    ambient, diffuse = light[:, 3].view(e, 1, 1, 1), light[:, 4].view(e, 1, 1, 1)
    hit_x, hit_y = ox + t_near * dx, oy + t_near * dy  # hit point relative to the centre
    facing = (hit_x * light[:, 0].view(e, 1, 1, 1) + hit_y * light[:, 1].view(e, 1, 1, 1)) / radius
    side_shade = (ambient + diffuse * facing.clamp_min(0))[:, :, None]  # (E,V,1,W,O)
    side_shade = side_shade.expand(*candidate.shape).gather(-1, slot[..., None])[..., 0]
    object_shade = torch.where(on_top, ambient + diffuse * light[:, 2].view(e, 1, 1, 1), side_shade)
    first_material = PALETTE_MATERIAL + config.palette_size
    return (torch.where(front, nearest, depth), torch.where(front, OBJECT + slot, surface),
            torch.where(front, first_material + slot, material), torch.where(front, object_shade, shade))


def _albedo(materials: Tensor, material: Tensor, along: Tensor, across: Tensor) -> Tensor:
    """Colour (E,V,H,W,3) of material rows (E,V,H,W) at surface coordinates (along, across) in metres.

    The pattern level is 0 or 3 by the parity of the pattern's blocks (stripes, checks), or a level
    0..3 from a fixed random table hashed by block and salt (blocks); the colour is then one of four
    mixes of colour A and B. All integer maths is exact in float32 (values < 2**24)."""
    e, count = materials.shape[:2]
    index = (torch.arange(e, device=material.device).view(e, 1, 1, 1) * count + material).reshape(-1)
    params = materials[..., ALONG:SALT + 1].reshape(-1, SALT + 1 - ALONG).index_select(0, index)
    flag_along, flag_across, flag_noise, scale, salt = params.view(*material.shape, -1).unbind(-1)
    block_u, block_v = torch.floor(along * scale), torch.floor(across * scale)
    parity = torch.remainder(flag_along * block_u + flag_across * block_v, 2) * (NOISE_LEVELS - 1)
    hashed = torch.remainder(block_u * 97 + block_v * 131 + salt, NOISE_TABLE_SIZE).long()
    noise = NOISE_TABLE.to(material.device)[hashed]
    level = (parity + flag_noise * (noise - parity)).long()
    weights = torch.arange(NOISE_LEVELS, dtype=torch.float32, device=materials.device) / (NOISE_LEVELS - 1)
    colour_a, colour_b = materials[..., None, COLOUR_A], materials[..., None, COLOUR_B]
    mixes = (colour_a + (colour_b - colour_a) * weights[:, None]).reshape(-1, 3)  # (E*M*4, 3)
    return mixes.index_select(0, (index.view_as(level) * NOISE_LEVELS + level).reshape(-1)).view(*level.shape, 3)


def render(envs: Environments, poses: Tensor, image_size: int | None = None, dtype: torch.dtype = torch.uint8,
           chunk_views: int = 128) -> Tensor:
    """Images (E,V,3,H,W) of the views at normalised ``poses`` (E,V,3): uint8, or float in [0, 1] for a
    floating ``dtype``. Rendered ``chunk_views`` views at a time to bound memory (results do not depend on it)."""
    poses = _check_poses(envs, poses)
    size = envs.config.image_size if image_size is None else int(image_size)
    e, v = poses.shape[:2]
    view_chunk = max(1, min(v, chunk_views))
    env_chunk = max(1, chunk_views // view_chunk)
    images = torch.empty(e, v, 3, size, size, dtype=dtype, device=envs.device)
    for e0 in range(0, e, env_chunk):
        part = envs.select(slice(e0, e0 + env_chunk))
        for v0 in range(0, v, view_chunk):
            rgb = render_buffers(part, poses[e0:e0 + env_chunk, v0:v0 + view_chunk], size).rgb
            if dtype == torch.uint8:
                rgb = torch.floor(rgb.mul_(255).add_(0.5))
            images[e0:e0 + env_chunk, v0:v0 + view_chunk] = rgb  # also turns (E,V,H,W,3) into (E,V,3,H,W)
    return images


# ----------------------------------------------------------------------------- data sets
def split_seeds(split: str, count: int, start: int = 0) -> Tensor:
    """``count`` seeds (int64) of ``split`` ("train", "val" or "test") from offset ``start``: the splits
    use the disjoint ranges [0, 1e8), [1e8, 2e8) and [2e8, 3e8), so no environment is in two splits."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if count < 0 or start < 0 or start + count > SPLIT_SIZE:
        raise InputError(f"seeds [{start}, {start + count}) do not fit in a split of {SPLIT_SIZE}",
                         "use 0 <= start and start + count <= 1e8")
    return torch.arange(SPLITS[split] + start, SPLITS[split] + start + count, dtype=torch.int64)


def generate(domain: str, seeds: Sequence[int] | Tensor, views: int | None = None, image_size: int = 32,
             device: str | torch.device = "cpu", batch: int = 256) -> dict:
    """A data set: dict(images uint8 (E,V,3,H,W), poses float32 (E,V,3) normalised, seeds int64 (E,),
    domain str), ``views`` per environment (default: the domain's), built ``batch`` environments at a time
    (rendered on ``device``, returned on the CPU)."""
    config = domain_config(domain, image_size)
    seeds = _as_seeds(seeds)
    images, poses = [], []
    for start in range(0, len(seeds), max(1, batch)):
        envs = make_environments(config, seeds[start:start + max(1, batch)]).to(device)
        view_poses = sample_poses(envs, views)
        images.append(render(envs, view_poses).cpu())
        poses.append(view_poses.cpu())
    v = config.views if views is None else int(views)
    empty = lambda *shape, dtype: torch.zeros(0, v, *shape, dtype=dtype)
    return {"images": torch.cat(images) if images else empty(3, image_size, image_size, dtype=torch.uint8),
            "poses": torch.cat(poses) if poses else empty(3, dtype=torch.float32),
            "seeds": seeds, "domain": config.name}


def save_dataset(data: dict, path) -> Path:
    """Write a :func:`generate` dict with a header (format, version, domain, image size) by torch.save."""
    missing = {"images", "poses", "seeds", "domain"} - set(data)
    if missing:
        raise InputError(f"the data set lacks {sorted(missing)}", "pass the dict returned by generate()")
    path = Path(path)
    torch.save({"format": DATASET_FORMAT, "version": DATASET_VERSION, "domain": str(data["domain"]),
                "image_size": int(data["images"].shape[-1]), "images": data["images"].cpu(),
                "poses": data["poses"].cpu(), "seeds": data["seeds"].cpu()}, path)
    return path


def load_dataset(path) -> dict:
    """Read a :func:`save_dataset` file back: dict(images, poses, seeds, domain, image_size). A file that is
    unreadable, of another kind or inconsistent (shapes, types, non-finite or out-of-range poses, seeds outside
    the splits) is an InputError naming the problem and the fix."""
    fix = "generate it again with `prism-ros dmn generate`"
    raw = read_torch_file(path, "cannot read the DMN data set", fix)
    if not isinstance(raw, dict) or raw.get("format") != DATASET_FORMAT:
        raise InputError(f"not a DMN environments data set (no format header){file_kind(raw)}", fix, path)
    if raw.get("version") != DATASET_VERSION:
        raise InputError(f"DMN data set version {raw.get('version')!r:.40}, this code reads {DATASET_VERSION}",
                         fix, path)
    if raw.get("domain") not in DOMAINS:
        raise InputError(f"unknown domain {raw.get('domain')!r:.80} in the data set", fix, path)
    size = check_int(raw.get("image_size"), "image_size", 1, 4096, fix, path)
    images = check_tensor(raw.get("images"), "images", (None, None, 3, size, size), fix, path, (torch.uint8,))
    if images.shape[0] == 0 or images.shape[1] == 0:
        raise InputError(f"the data set has no views (images {tuple(images.shape)})", fix, path)
    poses = check_tensor(raw.get("poses"), "poses", (*images.shape[:2], 3), fix, path, (torch.float32,))
    if bool((poses.abs() > 1.0).any()):
        raise InputError(f"poses must be normalised to [-1, 1] (largest {float(poses.abs().max()):.3g})", fix, path)
    seeds = check_tensor(raw.get("seeds"), "seeds", (len(images),), fix, path, (torch.int64,))
    if bool(((seeds < 0) | (seeds >= len(SPLITS) * SPLIT_SIZE)).any()):
        raise InputError(f"seeds must lie in [0, {len(SPLITS) * SPLIT_SIZE}) (the splits)", fix, path)
    return {"images": images, "poses": poses, "seeds": seeds, "domain": raw["domain"], "image_size": size}


# ----------------------------------------------------------------------------- plots
def draw_layout(ax, env_index: int, envs: Environments, poses: Tensor | None = None, arrow: float = 0.12,
                pose_colour: str = "crimson"):
    """Draw environment ``env_index`` top-down on matplotlib ``ax`` in normalised coordinates: wall cells in
    their material's first colour, objects as circles, and optionally normalised poses (V,3) as arrows of
    length ``arrow``. The free interior is [-1, 1]^2. Returns ``ax``."""
    from matplotlib.patches import Circle

    config = envs.config
    low, high = config.extent
    to_normal = lambda metres: 2 * (metres - low) / (high - low) - 1
    occupancy = envs.occupancy[env_index].cpu().numpy()
    colours = envs.materials[env_index, :, COLOUR_A].cpu().numpy()[envs.wall_material[env_index].cpu().numpy()]
    image = np.ones((*occupancy.shape, 4))
    image[occupancy, :3] = colours[occupancy]
    image[~occupancy, 3] = 0
    edge = config.grid_cells * config.cell_size
    extent = (to_normal(0.0), to_normal(edge), to_normal(0.0), to_normal(edge))
    ax.imshow(image.transpose(1, 0, 2), origin="lower", extent=extent, interpolation="nearest")
    objects, present = envs.objects[env_index].cpu().numpy(), envs.object_present[env_index].cpu().numpy()
    object_colours = envs.materials[env_index, PALETTE_MATERIAL + config.palette_size:, COLOUR_A].cpu().numpy()
    for (x, y, radius, _), shown, colour in zip(objects, present, object_colours):
        if shown:
            ax.add_patch(Circle((to_normal(x), to_normal(y)), 2 * radius / (high - low), facecolor=colour,
                                edgecolor="black", linewidth=0.5))
    if poses is not None:
        p = poses.detach().cpu().double().numpy().reshape(-1, 3)
        ax.quiver(p[:, 0], p[:, 1], np.cos(np.pi * p[:, 2]), np.sin(np.pi * p[:, 2]), color=pose_colour,
                  angles="xy", scale_units="xy", scale=1 / arrow, width=0.006)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    return ax


# ----------------------------------------------------------------------------- throughput
def benchmark(domain: str, environments: int = 256, image_size: int = 32) -> dict[str, float]:
    """Seconds spent making environments, sampling poses and rendering, and rendered views per second."""
    config = domain_config(domain, image_size)
    seeds = split_seeds("train", environments)
    start = time.perf_counter()
    envs = make_environments(config, seeds)
    made = time.perf_counter()
    poses = sample_poses(envs)
    posed = time.perf_counter()
    render(envs, poses)
    done = time.perf_counter()
    views = environments * config.views
    return {"views": views, "make_s": made - start, "poses_s": posed - made, "render_s": done - posed,
            "views_per_s": views / (done - start)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in DOMAINS:
        print(name, benchmark(name))
