"""Ray casting of the map's SDF mean from one pose: the one render per frame that PRISM tracks against.

Each pixel's ray (undistorted, parameterised by depth) is marched on the cheap nearest-voxel mean,
re-read trilinearly near zero: sphere tracing where the map is observed (a truncated SDF bounds the
distance to the surface), jumps through unobserved space, and only the first + -> - sign change
counts (back faces, - -> +, and the step from the +truncation prior into the - band behind a
surface are no hits). The crossing is located on the trilinear mean by regula falsi; colour, std and
the normal (central differences of the mean) are read there. Only rays still marching are processed
at each step, so the cost falls as rays terminate.

The field is duck-typed (the map's protocol): ``sample(points)`` (trilinear) and
``sample_nearest(points)`` return ``mean``, ``std`` (N), ``colour`` (N,3) in [0, 1] and ``observed`` (N)
bool, the prior (mean +truncation, unobserved) where nothing was seen; ``config.voxel_size``,
``truncation`` and ``block_size``. Optional: ``block_coords`` (N,3) int64, the allocated blocks
(block b holds voxel indices b*B .. b*B+B-1, voxel i centred at i*voxel_size; the boxes are padded
by a voxel): with it each ray starts at the nearest block over its image tile and stops after the
farthest, so the empty space in front of the map costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient

from prism_ros.geometry import PinholeCamera


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


@dataclass
class ActiveRays:
    """Rays still marching (all (M,...)): pixel index, world direction with camera z = 1 (so the ray
    parameter t is depth), metres -> depth factor, the depth to stop at, and the previous sample."""

    pixel: torch.Tensor
    direction: torch.Tensor
    depth_per_metre: torch.Tensor
    t: torch.Tensor
    t_end: torch.Tensor
    prev_t: torch.Tensor
    prev_mean: torch.Tensor
    prev_observed: torch.Tensor
    jumped: torch.Tensor  # the step into this sample was a jump through unobserved space
    walk_until: torch.Tensor  # no jumps before this depth (after a jump was taken back)

    def keep(self, mask: torch.Tensor) -> "ActiveRays":
        """Compact to the rays in ``mask`` so later steps cost only what is still marching."""
        index = mask.nonzero()[:, 0]
        return ActiveRays(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


@dataclass
class Crossings:
    """+ -> - sign changes of the trilinear mean: pixel, ray direction, bracket depths t0 < t1, mean at t1."""

    pixel: torch.Tensor
    direction: torch.Tensor
    t0: torch.Tensor
    t1: torch.Tensor
    mean1: torch.Tensor


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


def render(field, T_world_camera: torch.Tensor, camera: PinholeCamera, config: RenderConfig | None = None
           ) -> RenderResult:
    """Ray cast the SDF mean seen from ``T_world_camera`` (4,4) by ``camera``: the frame's one prediction."""
    config = config or RenderConfig()
    T = T_world_camera.to(device=camera.device, dtype=torch.float32)
    origin = T[:3, 3]
    crossings = march(field, origin, start_rays(field, T, camera, config), Steps.of(field, config), config)
    return to_images(T_world_camera, camera, locate_hits(field, origin, crossings, config))


def start_rays(field, T: torch.Tensor, camera: PinholeCamera, config: RenderConfig) -> ActiveRays:
    """Every pixel's ray, starting at ``near`` (or its tile's first block) and ending at ``far`` (or the last)."""
    rays = camera.pixel_rays().reshape(-1, 3).float()
    t_start = torch.full_like(rays[:, 0], config.near)
    t_end = torch.full_like(rays[:, 0], config.far)
    if config.tile_size > 0 and hasattr(field, "block_coords"):
        block_near, block_far = block_depth_range(field, T, camera, config)
        t_start, t_end = t_start.maximum(block_near), t_end.minimum(block_far)
    pixel = (torch.isfinite(rays).all(-1) & (t_start <= t_end)).nonzero()[:, 0]  # NaN: distortion rim
    direction = rays[pixel] @ T[:3, :3].T
    t, t_end = t_start[pixel], t_end[pixel]
    no = torch.zeros_like(pixel, dtype=torch.bool)
    return ActiveRays(pixel, direction, 1.0 / direction.norm(dim=-1), t, t_end, t, torch.zeros_like(t), no, no, t)


def block_depth_range(field, T: torch.Tensor, camera: PinholeCamera, config: RenderConfig):
    """Per pixel (H*W,): min / max depth of the allocated blocks whose image covers the pixel's tile
    (inf / -inf where none does), from the blocks' boxes padded by one voxel.

    Tiles are cells of ``tile_size`` pixels in undistorted normalised coordinates (x/z, y/z), where a
    box's image is the bounding rectangle of its corners' images, so the range holds under distortion.
    Corners closer than ``near`` are also projected at ``near``: that covers the part of a box that
    reaches behind the near plane.
    """
    rays = camera.pixel_rays().reshape(-1, 3).float()[:, :2]
    cell = config.tile_size / torch.stack((camera.fx, camera.fy))
    lo = torch.nan_to_num(rays, nan=float("inf")).amin(0)
    cols, rows = (((torch.nan_to_num(rays, nan=-float("inf")).amax(0) - lo) / cell).floor().long() + 1).tolist()
    x_near, x_far, z_near, z_far = block_boxes_in_camera(field, T, config.near)
    first = ((x_near - lo) / cell).floor().long().clamp_min(0)
    last = ((x_far - lo) / cell).floor().long().minimum(torch.tensor([cols - 1, rows - 1], device=lo.device))
    tiles, block = tiles_of_rectangles(first, last, cols)
    nearest = torch.full((cols * rows,), float("inf"), device=lo.device).scatter_reduce(0, tiles, z_near[block], "amin")
    farthest = torch.full_like(nearest, -float("inf")).scatter_reduce(0, tiles, z_far[block], "amax")
    pixel_tile = torch.nan_to_num((rays - lo) / cell, nan=0.0).floor().long()
    pixel_tile = pixel_tile[:, 1].clamp(0, rows - 1) * cols + pixel_tile[:, 0].clamp(0, cols - 1)
    return nearest[pixel_tile], farthest[pixel_tile]


def block_boxes_in_camera(field, T: torch.Tensor, near: float):
    """Normalised-image rectangles (K,2) lower/upper and depth ranges (K,) of the blocks in front of ``near``."""
    c = field.config
    voxel, blocks = float(c.voxel_size), field.block_coords.to(T.device)
    cube = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=T.device)
    corners = ((blocks[:, None] + cube) * c.block_size - 1 + cube).float() * voxel  # padded: [bB - 1, bB + B]
    camera_points = (corners - T[:3, 3]) @ T[:3, :3]  # (K,8,3) = R^T (p - o)
    z = camera_points[..., 2]
    z_near, z_far = z.amin(1), z.amax(1)
    front = z_far >= near
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


def march(field, origin: torch.Tensor, rays: ActiveRays, steps: Steps, config: RenderConfig) -> Crossings:
    """Step every ray until its first + -> - sign change of the mean between two observed samples (see
    :func:`sample_march`); back faces (- -> +) and the step from the unobserved prior into the - band
    behind a surface are not crossings. A jump that lands in observed space is taken back (see
    RenderConfig)."""
    found = []
    band = config.trilinear_band_voxels * float(field.config.voxel_size)
    for _ in range(config.max_steps):
        if rays.pixel.numel() == 0:
            break
        mean, observed = sample_march(field, origin + rays.t[:, None] * rays.direction, band)
        landed = observed & rays.jumped & (mean <= 0)  # may have cleared the + band: walk it instead
        crossing = rays.prev_observed & observed & (rays.prev_mean > 0) & (mean <= 0)
        done = crossing.nonzero()[:, 0]
        if done.numel():
            found.append([x[done] for x in (rays.pixel, rays.direction, rays.prev_t, rays.t, mean)])
        rays = advance(rays, mean, observed, landed, steps, config.step_scale)
        rays = rays.keep(~crossing & (rays.t <= rays.t_end))
    if not found:
        return Crossings(*(x[:0] for x in (rays.pixel, rays.direction, rays.t, rays.t, rays.t)))
    return Crossings(*(torch.cat(parts) for parts in zip(*found)))


def sample_march(field, points: torch.Tensor, band: float):
    """Mean (N,) and observed (N,) for the march: the nearest voxel's, re-read on the trilinear mean where
    it is within ``band`` of zero. The two differ by at most the half voxel diagonal (times the gradient),
    so with a band wider than that every sign the march sees is the trilinear mean's: crossings bracket
    its zero, and a nearest voxel inside the surface does not stop an oblique or grazing ray early."""
    sample = field.sample_nearest(points)
    mean = sample.mean.to(points.dtype)
    index = (mean.abs() < band).nonzero()[:, 0]
    mean[index] = field.sample(points[index]).mean.to(mean.dtype)
    return mean, sample.observed


def advance(rays: ActiveRays, mean, observed, landed, steps: Steps, step_scale: float) -> ActiveRays:
    """Next sample of every ray: a sphere-tracing step where observed, a jump (or, after a jump was taken
    back, a walk) where not; a ``landed`` jump goes back to one walk past its start."""
    traced = (step_scale * mean.abs()).clamp(steps.min, steps.max)  # |sdf| never crosses a surface
    jump = ~observed & (rays.t >= rays.walk_until)
    metres = torch.where(observed, traced, torch.where(jump, steps.jump, steps.walk))
    t = torch.where(landed, rays.prev_t + steps.walk * rays.depth_per_metre, rays.t + metres * rays.depth_per_metre)
    return ActiveRays(rays.pixel, rays.direction, rays.depth_per_metre, t, rays.t_end, rays.t, mean,
                      observed & ~landed, jump, torch.where(landed, rays.t, rays.walk_until))


def locate_hits(field, origin: torch.Tensor, crossings: Crossings, config: RenderConfig) -> Hits:
    """Surface points on the trilinear mean: regula falsi on the march's bracket, then everything read at
    that point (colour, std, the gradient stencil). A hit whose mean there is still farther than
    ``max_residual_voxels`` from zero is dropped: the map's mean is no consistent surface along that
    ray (views disagreeing near an object's rim), and a depth there would be a guess."""
    voxel = float(field.config.voxel_size)
    d = crossings.direction
    if len(d) == 0:
        return Hits(crossings.pixel, crossings.t0, d, d, d, crossings.t0, crossings.t0 > 0)
    t = refine_on_trilinear(field, origin, crossings, config.refine_iterations)
    points = origin + t[:, None] * d
    centre = field.sample(points)
    gradient = sdf_gradient(field, points, config.normal_step_voxels * voxel, config.trilinear_normals)
    normal = gradient / gradient.norm(dim=-1, keepdim=True)  # into free space, towards the camera
    front_facing = (gradient * d).sum(-1) < 0
    on_surface = centre.mean.abs() <= config.max_residual_voxels * voxel
    valid = front_facing & on_surface & torch.isfinite(normal).all(-1) & (t > 0)
    return Hits(crossings.pixel, t, points, normal, centre.colour.to(t.dtype).clamp(0, 1),
                centre.std.to(t.dtype).clamp_min(config.min_std), valid)


def refine_on_trilinear(field, origin, crossings: Crossings, iterations: int) -> torch.Tensor:
    """Depth of the zero of the trilinear mean in [t0, t1] by regula falsi (t0's mean is re-read: the march
    may have taken it from the nearest voxel)."""
    d, t0, t1, s1 = crossings.direction, crossings.t0, crossings.t1, crossings.mean1
    s0 = field.sample(origin + t0[:, None] * d).mean.to(t0.dtype)
    for _ in range(iterations):
        t = secant_zero(t0, s0, t1, s1)
        s = field.sample(origin + t[:, None] * d).mean.to(t.dtype)
        ahead = s > 0
        t0, s0 = torch.where(ahead, t, t0), torch.where(ahead, s, s0)
        t1, s1 = torch.where(ahead, t1, t), torch.where(ahead, s1, s)
    return secant_zero(t0, s0, t1, s1)


def sdf_gradient(field, points: torch.Tensor, eps: float, trilinear: bool) -> torch.Tensor:
    """SDF mean gradient (K,3) at ``points`` by central differences ``eps`` apart, of the trilinear mean
    (smooth) or of the nearest voxels (six times cheaper on a hashed map, but constant per voxel)."""
    offsets = torch.cat((eps * torch.eye(3, device=points.device), -eps * torch.eye(3, device=points.device)))
    stencil = (points[None] + offsets[:, None]).reshape(-1, 3)
    means = (field.sample if trilinear else field.sample_nearest)(stencil).mean.reshape(6, -1).to(points.dtype)
    return (means[0:3] - means[3:6]).T / (2 * eps)


def secant_zero(t0, s0, t1, s1) -> torch.Tensor:
    """Zero of the line through (t0, s0 > 0) and (t1, s1 <= 0), within [t0, t1]."""
    fraction = s0.clamp_min(0) / (s0.clamp_min(0) - s1).clamp_min(1e-12)
    return t0 + fraction.clamp(0, 1) * (t1 - t0)


def to_images(T_world_camera, camera: PinholeCamera, hits: Hits) -> RenderResult:
    """Scatter the valid hits into (H,W) images: NaN (depth, vertex, normal, std) or 0 (colour) elsewhere;
    intensity is the luma of the colour, its gradient zero next to invalid pixels."""
    h, w = camera.height, camera.width
    pixel = hits.pixel[hits.valid]

    def image(values, fill, channels=()):
        out = torch.full((h * w, *channels), fill, dtype=torch.float32, device=camera.device)
        out[pixel] = values[hits.valid].to(torch.float32)
        return out.reshape(h, w, *channels)

    valid = torch.zeros(h * w, dtype=torch.bool, device=camera.device)
    valid[pixel] = True
    valid = valid.reshape(h, w)
    colour = image(hits.colour, 0.0, (3,))
    intensity = colour @ torch.tensor(LUMA, device=camera.device)
    nan = float("nan")
    return RenderResult(T_world_camera, camera, image(hits.depth, nan), image(hits.vertex, nan, (3,)),
                        image(hits.normal, nan, (3,)), colour, intensity, intensity_gradient(intensity, valid),
                        image(hits.std, nan), valid)


def intensity_gradient(intensity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(2,H,W) d/du, d/dv of the intensity per pixel, (I(u+1) - I(u-1)) / 2 (kornia's normalised "diff"
    kernel), zero unless the pixel and both neighbours are valid (so also on the image border)."""
    gradient = spatial_gradient(intensity[None, None], mode="diff", order=1, normalized=True)[0, 0]
    padded = F.pad(valid[None, None].float(), (1, 1, 1, 1))[0, 0] > 0  # outside the image: invalid
    along_u = valid & padded[1:-1, :-2] & padded[1:-1, 2:]
    along_v = valid & padded[:-2, 1:-1] & padded[2:, 1:-1]
    return gradient * torch.stack((along_u, along_v))
