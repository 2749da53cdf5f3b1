"""Ray casting of the map's SDF mean from one pose: the one render per frame that PRISM tracks against.

Each pixel's ray (undistorted, parameterised by depth) is marched on the cheap nearest-voxel mean,
re-read trilinearly near zero: sphere tracing where the map is observed (a truncated SDF bounds the
distance to the surface), jumps through unobserved space, and only the first + -> - sign change
counts (back faces, - -> +, and the step from the +truncation prior into the - band behind a
surface are no hits). The crossing is located on the trilinear mean by regula falsi; colour, std and
the normal (central differences of the mean) are read there. Only rays still marching are processed at
each step, so the cost falls as rays terminate.

The field is duck-typed (the map's protocol): ``sample(points)`` (trilinear) and
``sample_nearest(points)`` return ``mean``, ``std`` (N), ``colour`` (N,3) in [0, 1] and ``observed`` (N)
bool, the prior (mean +truncation, unobserved) where nothing was seen; ``config.voxel_size``,
``truncation`` and ``block_size``. Optional: ``block_coords`` (N,3) int64, the allocated blocks
(block b holds voxel indices b*B .. b*B+B-1, voxel i centred at i*voxel_size; the boxes are padded
by a voxel): with it each ray starts at the nearest block over its image tile and stops after the
farthest, so the empty space in front of the map costs nothing. Also optional, the fast reads (see
:class:`FieldReads`): ``sample_nearest_mean``, ``sample_mean`` and ``sample_surface``.

Speed (CPU, one thread): the ray state is one (rows, M) tensor, so dropping finished rays is one gather;
masks are float 0/1 arithmetic (``torch.where`` and bool chains cost 5-40x a float op per element there).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from prism_ros.geometry import PinholeCamera
from prism_ros.prism.kernels import resolve_backend


@dataclass
class RenderResult:
    """What the map looks like from ``T_world_camera`` at one pyramid level (all (H,W,...) float32).

    depth: z in the camera frame, NaN where no surface was hit; vertex/normal: world frame (H,W,3),
    NaN where invalid, normals unit and facing the camera; colour (H,W,3) in [0,1]; intensity (H,W);
    gradient (2,H,W) of the intensity (d/du, d/dv; zero where the neighbourhood is invalid);
    sdf_std (H,W): posterior std of the SDF at the hit point (the uncertainty image); valid (H,W) bool.
    """

    T_world_camera: torch.Tensor
    camera: PinholeCamera
    depth: torch.Tensor
    vertex: torch.Tensor
    normal: torch.Tensor
    colour: torch.Tensor
    intensity: torch.Tensor
    gradient: torch.Tensor
    sdf_std: torch.Tensor
    valid: torch.Tensor


# ----------------------------------------------------------------------------- ray casting
LUMA = (0.299, 0.587, 0.114)


@dataclass
class RenderConfig:
    """Ray-casting settings; step sizes are in the field's truncations / voxels so they follow the map.

    Rays search depth (z) in [near, far], narrowed to the depth range of the blocks over their
    ``tile_size`` px tile (0: no block ranges). Observed space is sphere traced, step = clamp(step_scale
    * |mean|, min_step_voxels, truncation); unobserved space is jumped ``jump`` truncations at a time
    (< 2: the observed band around a surface, a truncation either side, is never cleared). A jump that
    lands on an observed mean <= 0 may have cleared the positive band: it is taken back and walked in
    ``walk`` truncation steps (< 1 so the band gets a sample). The march reads the nearest voxel, and
    the trilinear mean within ``trilinear_band_voxels`` of zero; the crossing is located on the
    trilinear mean by a secant after ``refine_iterations`` regula-falsi steps, and dropped if the mean
    there exceeds ``max_residual_voxels`` (an inconsistent map along the ray). Normals:
    central differences ``normal_step_voxels`` apart of the trilinear mean or, cheaper (6 nearest-voxel
    reads instead of 6 trilinear ones) but constant over a voxel, of the nearest voxels.
    ``min_std`` floors the uncertainty image (tracking weights stay finite).
    """

    near: float = 0.2
    far: float = 6.0
    max_steps: int = 200
    tile_size: int = 8
    jump: float = 1.5
    walk: float = 0.5
    min_step_voxels: float = 0.5
    step_scale: float = 1.0
    trilinear_band_voxels: float = 1.5
    refine_iterations: int = 1
    max_residual_voxels: float = 0.5
    trilinear_normals: bool = True
    normal_step_voxels: float = 1.0
    min_std: float = 1e-3


@dataclass
class Steps:
    """March step lengths in metres along the ray, from the field's truncation and voxel size."""

    jump: float
    walk: float
    max: float
    min: float

    @staticmethod
    def of(field, config: RenderConfig) -> "Steps":
        truncation, voxel = float(field.config.truncation), float(field.config.voxel_size)
        walk = config.walk * truncation
        minimum = min(config.min_step_voxels * voxel, truncation)
        return Steps(max(config.jump * truncation, walk), walk, truncation, minimum)


class FieldReads(NamedTuple):
    """The renderer's three reads of the field at points (N,3): ``nearest`` -> nearest-voxel mean (N,) and
    observed (N,) bool (the march), ``mean`` -> trilinear mean (N,) (band re-reads, regula falsi) and
    ``surface`` -> (trilinear sample, gradient (N,3) of the mean) at the hits. Taken from the field's fast
    methods where it has them (:class:`prism_ros.prism.map.GaussianSdfMap` reads one channel for the means and
    reads the gradient stencil with the hit), else from ``sample`` / ``sample_nearest``."""

    nearest: Callable
    mean: Callable
    surface: Callable
    voxel: float  # the field's voxel size

    @staticmethod
    def of(field, config: RenderConfig) -> "FieldReads":
        def nearest(points):
            sample = field.sample_nearest(points)
            return sample.mean, sample.observed

        def mean(points):
            return field.sample(points).mean

        nearest, mean = getattr(field, "sample_nearest_mean", nearest), getattr(field, "sample_mean", mean)
        eps = config.normal_step_voxels * float(field.config.voxel_size)
        stencil = lambda points: nearest(points)[0] if not config.trilinear_normals else mean(points)

        def surface(points):
            return field.sample(points), sdf_gradient(stencil, points, eps)

        one_voxel_stencil = config.trilinear_normals and config.normal_step_voxels == 1.0
        fast_surface = getattr(field, "sample_surface", surface) if one_voxel_stencil else surface
        return FieldReads(nearest, mean, fast_surface, float(field.config.voxel_size))


def as_float(mask: torch.Tensor) -> torch.Tensor:
    """bool -> float32 0/1 (through uint8: several times faster than a bool -> float cast on the CPU)."""
    return mask.view(torch.uint8).to(torch.float32)


_ROWS = ("t", "t_end", "prev_t", "prev_mean", "prev_positive", "prev_trilinear", "jumped", "walk_until",
         "depth_per_metre", "dx", "dy", "dz")


class ActiveRays:
    """Rays still marching, as one (rows, M) float32 state (so keeping a subset is one gather) and the pixel
    index (M,) int64. Rows: depth t (camera z) of the next sample and where to stop, the previous sample
    (depth, mean, 1 where it was observed and positive, 1 where its mean is trilinear), 1 where the step
    into the next sample is a jump, no jumps before ``walk_until`` (after a jump was taken back), metres ->
    depth factor, and the world direction with camera z = 1 (so the ray parameter is depth)."""

    def __init__(self, pixel: torch.Tensor, state: torch.Tensor):
        self.pixel, self.state = pixel, state
        for i, name in enumerate(_ROWS):
            setattr(self, name, state[i])

    @property
    def direction(self) -> torch.Tensor:
        """(3,M) world directions."""
        return self.state[_ROWS.index("dx"):]

    def keep(self, index: torch.Tensor) -> "ActiveRays":
        return ActiveRays(self.pixel.index_select(0, index), self.state.index_select(1, index))


@dataclass
class Crossings:
    """+ -> - sign changes of the mean: pixel, ray direction (K,3), bracket depths t0 < t1, the means there
    and 1 where the mean at t0 is the trilinear one (else the nearest voxel's; float)."""

    pixel: torch.Tensor
    direction: torch.Tensor
    t0: torch.Tensor
    t1: torch.Tensor
    mean0: torch.Tensor
    mean1: torch.Tensor
    trilinear0: torch.Tensor


@dataclass
class Hits:
    """Located surface points (K,...): pixel, depth, world vertex, unit normal, colour, std, valid."""

    pixel: torch.Tensor
    depth: torch.Tensor
    vertex: torch.Tensor
    normal: torch.Tensor
    colour: torch.Tensor
    std: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def render(field, T_world_camera: torch.Tensor, camera: PinholeCamera, config: RenderConfig | None = None,
           backend: str = "torch") -> RenderResult:
    """Ray cast the SDF mean seen from ``T_world_camera`` (4,4) by ``camera``: the frame's one prediction.
    ``backend``: 'torch' (this module) or 'fused' (:mod:`prism_ros.prism.kernels.render`, for a map with a dense block
    index; other fields take this module's path), or 'auto' (see :func:`prism_ros.prism.kernels.resolve_backend`)."""
    config = config or RenderConfig()
    if backend != "torch" and resolve_backend(backend) == "fused":
        from prism_ros.prism.kernels import render as fused

        if fused.supports(field):
            return fused.render(field, T_world_camera, camera, config)
    T = T_world_camera.to(device=camera.device, dtype=torch.float32)
    origin = T[:3, 3]
    reads, steps = FieldReads.of(field, config), Steps.of(field, config)
    rays = start_rays(field, T, camera_rays(camera, config.tile_size), steps, config)
    crossings = march(reads, origin, rays, steps, config)
    return to_images(T_world_camera, camera, locate_hits(reads, origin, crossings, config))


# ----------------------------------------------------------------------------- ray set-up
class CameraRays(NamedTuple):
    """Per-camera constants: the pixels with a ray (distortion rims have none) (P,) int64, their rays
    (3,P) (z = 1) and depth per metre along them (P,), the tile of each in a grid of ``tile_size`` px
    cells (normalised coordinates, origin ``low`` (2,), cell size ``cell`` (2,), ``cols`` x ``rows``)."""

    pixel: torch.Tensor
    rays: torch.Tensor
    depth_per_metre: torch.Tensor
    tile: torch.Tensor
    low: torch.Tensor
    cell: torch.Tensor
    cols: int
    rows: int


_CAMERA_RAYS: OrderedDict = OrderedDict()  # a few recent cameras (every frame brings a new, equal camera object)


def camera_rays(camera: PinholeCamera, tile_size: int) -> CameraRays:
    """:class:`CameraRays` of ``camera`` (cached by intrinsics, device and tile size)."""
    intrinsics = torch.cat((torch.stack((camera.fx, camera.fy, camera.cx, camera.cy)), camera.distortion))
    key = (camera.width, camera.height, str(camera.device), tile_size, *intrinsics.tolist())
    if key not in _CAMERA_RAYS:
        _CAMERA_RAYS[key] = compute_camera_rays(camera, tile_size)
        while len(_CAMERA_RAYS) > 8:
            _CAMERA_RAYS.popitem(last=False)
    _CAMERA_RAYS.move_to_end(key)
    return _CAMERA_RAYS[key]


def compute_camera_rays(camera: PinholeCamera, tile_size: int) -> CameraRays:
    rays = camera.pixel_rays().reshape(-1, 3).float()
    pixel = torch.isfinite(rays).all(-1).nonzero()[:, 0]  # NaN: distortion rim
    rays = rays[pixel]
    xy = rays[:, :2]
    cell = max(tile_size, 1) / torch.stack((camera.fx, camera.fy)).float()
    low = xy.amin(0) if len(xy) else torch.zeros(2, device=rays.device)
    cols, rows = ((((xy.amax(0) - low) / cell).floor().long() + 1).tolist() if len(xy) else (1, 1))
    index = ((xy - low) / cell).floor().long()
    tile = index[:, 1].clamp(0, rows - 1) * cols + index[:, 0].clamp(0, cols - 1)
    return CameraRays(pixel, rays.T.contiguous(), rays.norm(dim=-1).reciprocal_(), tile, low, cell, cols, rows)


def start_rays(field, T: torch.Tensor, table: CameraRays, steps: Steps, config: RenderConfig) -> ActiveRays:
    """Every ray of ``table`` that has a depth range, starting at ``near`` (or its tile's first block) and
    ending at ``far`` (or the last). A ray that starts at its tile's first block box (not at ``near``) starts
    in unallocated space: nothing can be observed within half a voxel of that point (the boxes are padded by
    a voxel), so its first sample would read the prior and jump; it is started one jump in (the same march,
    one read fewer)."""
    state = torch.zeros((len(_ROWS), len(table.pixel)), device=T.device)
    rows = ActiveRays(table.pixel, state)
    rows.prev_t.fill_(config.near)
    rows.t_end.fill_(config.far)
    if config.tile_size > 0 and hasattr(field, "block_coords"):
        block_near, block_far = block_depth_range(field, T, table, config.near)
        torch.maximum(rows.prev_t, block_near, out=rows.prev_t)
        torch.minimum(rows.t_end, block_far, out=rows.t_end)
    rows.walk_until.copy_(rows.prev_t)
    rows.jumped.copy_(as_float(rows.prev_t > config.near))
    rows.depth_per_metre.copy_(table.depth_per_metre)
    torch.addcmul(rows.prev_t, rows.jumped, rows.depth_per_metre, value=steps.jump, out=rows.t)
    torch.mm(T[:3, :3], table.rays, out=rows.direction)
    keep = (rows.t <= rows.t_end).nonzero()[:, 0]  # a ray whose first jump passes its end is not cast
    return rows.keep(keep)


def block_depth_range(field, T: torch.Tensor, table: CameraRays, near: float):
    """Per ray of ``table`` (P,): min / max depth of the allocated blocks whose image covers the ray's tile
    (inf / -inf where none does), from the blocks' boxes padded by one voxel.

    Tiles are cells of ``tile_size`` pixels in undistorted normalised coordinates (x/z, y/z), where a
    box's image is the bounding rectangle of its corners' images, so the range holds under distortion.
    Corners closer than ``near`` are also projected at ``near``: that covers the part of a box that
    reaches behind the near plane.
    """
    cols, rows = table.cols, table.rows
    x_near, x_far, z_near, z_far = block_boxes_in_camera(field, T, near)
    first = ((x_near - table.low) / table.cell).floor().long().clamp_min(0)
    last = ((x_far - table.low) / table.cell).floor().long().minimum(torch.tensor([cols - 1, rows - 1],
                                                                                  device=first.device))
    tiles, block = tiles_of_rectangles(first, last, cols)
    nearest = torch.full((cols * rows,), float("inf"), device=T.device).scatter_reduce(0, tiles, z_near[block], "amin")
    farthest = torch.full_like(nearest, -float("inf")).scatter_reduce(0, tiles, z_far[block], "amax")
    return nearest.index_select(0, table.tile), farthest.index_select(0, table.tile)


def block_boxes_in_camera(field, T: torch.Tensor, near: float):
    """Normalised-image rectangles (K,2) lower/upper and depth ranges (K,) of the blocks in front of ``near``."""
    c = field.config
    voxel, blocks = float(c.voxel_size), field.block_coords.to(T.device)
    cube = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=T.device)
    corners = ((blocks[:, None] * c.block_size + cube * (c.block_size + 1) - 1).float() * voxel)  # [bB-1, bB+B]
    camera_points = (corners - T[:3, 3]) @ T[:3, :3]  # (K,8,3) = R^T (p - o)
    z = camera_points[..., 2]
    z_near, z_far = z.amin(1), z.amax(1)
    front = (z_far >= near).nonzero()[:, 0]
    xy, z, z_near, z_far = camera_points[front, :, :2], z[front], z_near[front], z_far[front]
    straddles = (z_near < near)[:, None, None]
    projected = torch.cat((xy / z.clamp_min(near)[..., None], torch.where(straddles, xy / near, xy / z[..., None])), 1)
    return projected.amin(1), projected.amax(1), z_near.clamp_min(near), z_far


def tiles_of_rectangles(first: torch.Tensor, last: torch.Tensor, cols: int):
    """All tiles (flat index) of integer rectangles [first, last] (K,2) (x, y) and the rectangle of each."""
    size = (last - first + 1).clamp_min(0)
    count = size[:, 0] * size[:, 1]
    block = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)
    offset = torch.arange(len(block), device=count.device) - (torch.cumsum(count, 0) - count)[block]
    width = size[block, 0].clamp_min(1)
    x = first[block, 0] + offset % width
    y = first[block, 1] + offset // width
    return y * cols + x, block


# ----------------------------------------------------------------------------- the march
def march(reads: FieldReads, origin: torch.Tensor, rays: ActiveRays, steps: Steps, config: RenderConfig) -> Crossings:
    """Step every ray until its first + -> - sign change of the mean between two observed samples (see
    :func:`sample_march`); back faces (- -> +) and the step from the unobserved prior into the - band
    behind a surface are not crossings. A jump that lands in observed space is taken back (see
    RenderConfig)."""
    found = []
    band = config.trilinear_band_voxels * reads.voxel
    for _ in range(config.max_steps):
        if rays.pixel.numel() == 0:
            break
        points = torch.addcmul(origin[:, None], rays.direction, rays.t)  # (3,M)
        mean, observed, trilinear = sample_march(reads, points, band)
        negative = observed * as_float(mean <= 0)
        crossing = (rays.prev_positive * negative).bool()
        done = crossing.nonzero()[:, 0]
        if done.numel():
            found.append((rays.pixel.index_select(0, done), rays.state.index_select(1, done),
                          mean.index_select(0, done)))
        advance(rays, mean, observed, negative, trilinear, steps, config.step_scale)
        rays = rays.keep(((rays.t <= rays.t_end) & ~crossing).nonzero()[:, 0])
    return crossings_of(found, rays)


def sample_march(reads: FieldReads, points: torch.Tensor, band: float):
    """Mean (M,), observed (M,) and whether the mean is trilinear (M,) (all float) at points (3,M): the nearest
    voxel's, re-read on the trilinear mean where it is within ``band`` of zero. The two differ by at most
    the half voxel diagonal (times the gradient), so with a band wider than that every sign the march sees
    is the trilinear mean's: crossings bracket its zero, and a nearest voxel inside the surface does not
    stop an oblique or grazing ray early."""
    mean, observed = reads.nearest(points.T)
    near = mean.abs() < band
    index = near.nonzero()[:, 0]
    if index.numel():
        mean = mean.index_copy(0, index, reads.mean(points.index_select(1, index).T))
    return mean, as_float(observed), as_float(near)


def advance(rays: ActiveRays, mean, observed, negative, trilinear, steps: Steps, step_scale: float) -> None:
    """Next sample of every ray, in place: a sphere-tracing step where observed, a jump (or, after a jump was
    taken back, a walk) where not; a jump that landed on a mean <= 0 goes back to one walk past its start.
    Float 0/1 masks blend the cases."""
    landed = rays.jumped * negative
    traced = mean.abs().mul_(step_scale).clamp_(steps.min, steps.max)  # |sdf| never crosses a surface
    jump = as_float(rays.t >= rays.walk_until).sub_(observed).clamp_min_(0.0)  # unobserved, not walking
    metres = torch.add(traced.sub_(steps.walk).mul_(observed), jump, alpha=steps.jump - steps.walk).add_(steps.walk)
    t = rays.t.clone()
    back = torch.add(rays.prev_t, rays.depth_per_metre, alpha=steps.walk)
    torch.lerp(torch.addcmul(t, metres, rays.depth_per_metre), back, landed, out=rays.t)
    rays.walk_until.lerp_(t, landed)
    rays.prev_t.copy_(t)
    rays.prev_mean.copy_(mean)
    torch.sub(observed, negative, out=rays.prev_positive)  # observed and > 0 (a landed jump is negative)
    rays.prev_trilinear.copy_(trilinear)
    rays.jumped.copy_(jump)


def crossings_of(found: list, rays: ActiveRays) -> Crossings:
    """The recorded crossings (pixel, state columns, mean at t1) as :class:`Crossings`."""
    if not found:
        empty = rays.state[:, :0]
        return Crossings(rays.pixel[:0], empty[:3].T, empty[0], empty[0], empty[0], empty[0], empty[0])
    pixel, state, mean1 = (torch.cat(parts, -1) for parts in zip(*found))
    row = {name: state[i] for i, name in enumerate(_ROWS)}
    direction = state[_ROWS.index("dx"):].T
    return Crossings(pixel, direction, row["prev_t"], row["t"], row["prev_mean"], mean1, row["prev_trilinear"])


# ----------------------------------------------------------------------------- hits
def locate_hits(reads: FieldReads, origin: torch.Tensor, crossings: Crossings, config: RenderConfig) -> Hits:
    """Surface points on the trilinear mean: regula falsi on the march's bracket, then everything read at
    that point (colour, std, the gradient stencil; see :func:`surface_hits`)."""
    d = crossings.direction
    if len(d) == 0:
        return Hits(crossings.pixel, crossings.t0, d, d, d, crossings.t0, crossings.t0 > 0)
    t = refine_on_trilinear(reads, origin, crossings, config.refine_iterations)
    return surface_hits(reads, origin, crossings.pixel, d, t, config)


def surface_hits(reads: FieldReads, origin: torch.Tensor, pixel, direction, t, config: RenderConfig) -> Hits:
    """Everything read at the points at depth ``t`` on the rays ``direction`` (K,3); valid where the ray enters
    the surface from the front and the mean there is within ``max_residual_voxels`` of zero (else the map's
    mean is no consistent surface along that ray, e.g. views disagreeing near an object's rim, and a depth
    there would be a guess)."""
    vertex = torch.addcmul(origin, t[:, None], direction)
    centre, gradient = reads.surface(vertex)
    normal = gradient / gradient.norm(dim=-1, keepdim=True)  # into free space, towards the camera
    on_surface = centre.mean.abs() <= config.max_residual_voxels * reads.voxel
    front_facing = (gradient * direction).sum(-1) < 0  # d mean / d t < 0
    valid = front_facing & on_surface & torch.isfinite(normal).all(-1) & (t > 0)
    return Hits(pixel, t, vertex, normal, centre.colour.clamp(0, 1), centre.std.clamp_min(config.min_std), valid)


def refine_on_trilinear(reads: FieldReads, origin, crossings: Crossings, iterations: int) -> torch.Tensor:
    """Depth of the zero of the trilinear mean in [t0, t1] by regula falsi (t0's mean is re-read where the
    march took it from the nearest voxel)."""
    d, t0, t1, s0, s1 = crossings.direction, crossings.t0, crossings.t1, crossings.mean0.clone(), crossings.mean1
    index = (crossings.trilinear0 == 0).nonzero()[:, 0]
    nearest_t0 = torch.addcmul(origin, t0.index_select(0, index)[:, None], d.index_select(0, index))
    s0.index_copy_(0, index, reads.mean(nearest_t0))
    for _ in range(iterations):
        t = secant_zero(t0, s0, t1, s1)
        s = reads.mean(torch.addcmul(origin, t[:, None], d))
        ahead = s > 0
        t0, s0 = torch.where(ahead, t, t0), torch.where(ahead, s, s0)
        t1, s1 = torch.where(ahead, t1, t), torch.where(ahead, s1, s)
    return secant_zero(t0, s0, t1, s1)


def sdf_gradient(read: Callable, points: torch.Tensor, eps: float) -> torch.Tensor:
    """SDF mean gradient (K,3) at ``points`` by central differences ``eps`` apart of the means that ``read``
    returns (the trilinear mean, smooth, or the nearest voxels', six times cheaper on a hashed map but
    constant per voxel)."""
    offsets = torch.cat((eps * torch.eye(3, device=points.device), -eps * torch.eye(3, device=points.device)))
    means = read((points[None] + offsets[:, None]).reshape(-1, 3)).reshape(6, -1).to(points.dtype)
    return (means[0:3] - means[3:6]).T / (2 * eps)


def secant_zero(t0, s0, t1, s1) -> torch.Tensor:
    """Zero of the line through (t0, s0 > 0) and (t1, s1 <= 0), within [t0, t1]."""
    fraction = s0.clamp_min(0) / (s0.clamp_min(0) - s1).clamp_min(1e-12)
    return t0 + fraction.clamp(0, 1) * (t1 - t0)


# ----------------------------------------------------------------------------- images
def to_images(T_world_camera, camera: PinholeCamera, hits: Hits) -> RenderResult:
    """Scatter the valid hits into (H,W) images: NaN (depth, vertex, normal, std) or 0 (colour) elsewhere;
    intensity is the luma of the colour, its gradient zero next to invalid pixels. (Every hit is scattered,
    then the few invalid ones are reset: row gathers of the valid hits cost more.)"""
    h, w = camera.height, camera.width
    invalid = hits.pixel.index_select(0, (~hits.valid).nonzero()[:, 0])

    def image(values, fill, channels=()):
        out = torch.full((h * w, *channels), fill, dtype=torch.float32, device=camera.device)
        out.index_copy_(0, hits.pixel, values.to(torch.float32))
        return out.index_fill_(0, invalid, fill).view(h, w, *channels)

    valid = torch.zeros(h * w, dtype=torch.bool, device=camera.device).index_fill_(0, hits.pixel, True)
    valid = valid.index_fill_(0, invalid, False).view(h, w)
    nan = float("nan")
    return images_result(T_world_camera, camera, image(hits.depth, nan), image(hits.vertex, nan, (3,)),
                         image(hits.normal, nan, (3,)), image(hits.colour, 0.0, (3,)), image(hits.std, nan), valid)


def images_result(T_world_camera, camera: PinholeCamera, depth, vertex, normal, colour, std, valid) -> RenderResult:
    """The :class:`RenderResult` of the filled images: adds the intensity (luma of the colour) and its gradient."""
    intensity = colour @ torch.tensor(LUMA, device=camera.device)
    return RenderResult(T_world_camera, camera, depth, vertex, normal, colour, intensity,
                        intensity_gradient(intensity, valid), std, valid)


def intensity_gradient(intensity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(2,H,W) d/du, d/dv of the intensity per pixel, (I(u+1) - I(u-1)) / 2 (kornia's normalised "diff"
    kernel), zero unless the pixel and both neighbours are valid (so also on the image border)."""
    weight = as_float(valid)
    gradient = torch.zeros((2, *intensity.shape), device=intensity.device)
    gradient[0, :, 1:-1] = (intensity[:, 2:] - intensity[:, :-2]) * (weight[:, 2:] * weight[:, :-2] * weight[:, 1:-1])
    gradient[1, 1:-1] = (intensity[2:] - intensity[:-2]) * (weight[2:] * weight[:-2] * weight[1:-1])
    return gradient.mul_(0.5)
