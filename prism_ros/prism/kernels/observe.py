"""Fused observation kernels: a pyramid level's points, normals and intensity gradient in one pass per pixel,
and the NaN-aware 2x2 depth reduction.

The torch reference (:func:`prism_ros.prism.observation.make_level`, :func:`prism_ros.geometry.downsample_depth`) makes
a dozen full-image passes per level (back-projection, padding, two differences, a cross product, a norm, the
facing flip, kornia's gradient); here one thread per pixel reads its 3x3 neighbourhood once. The semantics are the
reference's: points = depth x the camera's cached undistorted ray (NaN where either is NaN); the normal is the
cross product of the central differences of the points with replicated borders, unit, turned to face the camera
(NaN where a neighbour is NaN or the difference is degenerate); the gradient is kornia's normalised 'diff'
kernel, (I(u+1) - I(u-1)) / 2, with replicated borders. The intensity pyramid (a Gaussian blur, already one
convolution) and colour registration stay in torch.
"""
from __future__ import annotations

import torch
import warp as wp

from prism_ros.prism.kernels import array, launch, warp

warp()  # initialised before the kernels below are declared


@wp.kernel
def level_geometry(first: int, part: int, depth: wp.array2d(dtype=wp.float32), rays: wp.array2d(dtype=wp.vec3),
                   intensity: wp.array2d(dtype=wp.float32), points: wp.array2d(dtype=wp.vec3),
                   normals: wp.array2d(dtype=wp.vec3), gradient: wp.array3d(dtype=wp.float32)):
    h, w = depth.shape[0], depth.shape[1]
    i = wp.tid() + first
    v = i // w
    u = i - v * w
    left, right = wp.max(u - 1, 0), wp.min(u + 1, w - 1)
    up, down = wp.max(v - 1, 0), wp.min(v + 1, h - 1)
    p = depth[v, u] * rays[v, u]
    points[v, u] = p
    du = depth[v, right] * rays[v, right] - depth[v, left] * rays[v, left]
    dv = depth[down, u] * rays[down, u] - depth[up, u] * rays[up, u]
    n = wp.cross(du, dv)
    n = n / wp.sqrt(wp.dot(n, n))  # 0 / 0 and NaN stay NaN, as in the reference
    if wp.dot(n, p) > 0.0:
        n = -n
    normals[v, u] = n
    gradient[0, v, u] = 0.5 * (intensity[v, right] - intensity[v, left])
    gradient[1, v, u] = 0.5 * (intensity[down, u] - intensity[up, u])


@wp.kernel
def halve_depth(first: int, part: int, depth: wp.array2d(dtype=wp.float32), max_rel_spread: wp.float32,
                out: wp.array2d(dtype=wp.float32)):
    i = wp.tid() + first
    v = i // out.shape[1]
    u = i - v * out.shape[1]
    total = wp.float32(0.0)
    count = wp.float32(0.0)
    low = wp.float32(3.0e38)
    high = wp.float32(-3.0e38)
    for dy in range(2):
        for dx in range(2):
            d = depth[2 * v + dy, 2 * u + dx]
            if wp.isfinite(d) and d > 0.0:
                total += d
                count += 1.0
                low = wp.min(low, d)
                high = wp.max(high, d)
    if count > 0.0 and high - low <= max_rel_spread * low:
        out[v, u] = total / count
    else:
        out[v, u] = wp.nan



@wp.func
def tap(k: int):
    """The 6-tap filter [1, 5, 10, 10, 5, 1] (a 2x2 mean of the binomial [1, 4, 6, 4, 1]), unnormalised."""
    if k == 0 or k == 5:
        return wp.float32(1.0)
    if k == 1 or k == 4:
        return wp.float32(5.0)
    return wp.float32(10.0)


@wp.func
def reflect(i: int, size: int):
    """Index into [0, size) mirrored about the edge pixels (torch's 'reflect' padding, for pads < size)."""
    if i < 0:
        return -i
    if i >= size:
        return 2 * size - 2 - i
    return i


@wp.kernel
def pyramid_down(first: int, part: int, image: wp.array2d(dtype=wp.float32), out: wp.array2d(dtype=wp.float32)):
    """kornia's ``pyrdown`` of an even-sized image in one pass: the 5x5 binomial blur (reflected borders) followed
    by the half-size bilinear resample is, per axis, the 6-tap filter [1, 5, 10, 10, 5, 1] / 32 at 2y - 2 .. 2y + 3."""
    i = wp.tid() + first
    y = i // out.shape[1]
    x = i - y * out.shape[1]
    h, w = image.shape[0], image.shape[1]
    total = wp.float32(0.0)
    for a in range(6):
        row = reflect(2 * y + a - 2, h)
        line = wp.float32(0.0)
        for b in range(6):
            line += tap(b) * image[row, reflect(2 * x + b - 2, w)]
        total += tap(a) * line
    out[y, x] = total / 1024.0


@wp.kernel
def colour_of_depth(first: int, part: int, depth: wp.array(dtype=wp.float32), rays: wp.array(dtype=wp.vec3),
                    R: wp.mat33, t: wp.vec3, fx: float, fy: float, cx: float, cy: float, scale_x: float,
                    scale_y: float, colour: wp.array3d(dtype=wp.float32), out: wp.array2d(dtype=wp.float32)):
    """One depth pixel: its point in the colour camera, projected (pinhole) and sampled bilinearly with zeros
    outside, as ``register_colour``'s grid_sample (align_corners, the same grid arithmetic)."""
    i = wp.tid() + first
    p = R @ (depth[i] * rays[i]) + t
    height, width = colour.shape[0], colour.shape[1]
    sx = wp.float32(-2.0)
    sy = wp.float32(-2.0)
    if p[2] > 0.0:
        sx = (p[0] / p[2] * fx + cx) * scale_x - 1.0
        sy = (p[1] / p[2] * fy + cy) * scale_y - 1.0
    if not (wp.isfinite(sx) and wp.isfinite(sy)):
        sx = -2.0
        sy = -2.0
    x = (sx + 1.0) / 2.0 * wp.float32(width - 1)
    y = (sy + 1.0) / 2.0 * wp.float32(height - 1)
    x0 = int(wp.floor(x))
    y0 = int(wp.floor(y))
    fx1 = x - wp.float32(x0)
    fy1 = y - wp.float32(y0)
    for c in range(3):
        value = wp.float32(0.0)
        for dy in range(2):
            for dx in range(2):
                xx = x0 + dx
                yy = y0 + dy
                if xx >= 0 and xx < width and yy >= 0 and yy < height:
                    weight = wp.where(dx == 1, fx1, 1.0 - fx1) * wp.where(dy == 1, fy1, 1.0 - fy1)
                    value += weight * colour[yy, xx, c]
        out[i, c] = value


def level_arrays(depth: torch.Tensor, rays: torch.Tensor, intensity: torch.Tensor):
    """Points (H,W,3), normals (H,W,3) and intensity gradient (2,H,W) of one level (float32 on depth's device)."""
    h, w = depth.shape
    points = torch.empty((h, w, 3), dtype=torch.float32, device=depth.device)
    normals = torch.empty_like(points)
    gradient = torch.empty((2, h, w), dtype=torch.float32, device=depth.device)
    launch(level_geometry, h * w, [array(depth.float()), array(rays.float(), dtype=wp.vec3), array(intensity.float()),
                                   array(points, dtype=wp.vec3), array(normals, dtype=wp.vec3), array(gradient)],
           depth.device)
    return points, normals, gradient


def downsample_depth(depth: torch.Tensor, max_rel_spread: float = 0.05) -> torch.Tensor:
    """(H,W) depth -> (H//2, W//2): :func:`prism_ros.geometry.downsample_depth` in one pass."""
    h, w = depth.shape[0] // 2, depth.shape[1] // 2
    out = torch.empty((h, w), dtype=torch.float32, device=depth.device)
    if h and w:
        launch(halve_depth, h * w, [array(depth.float()), float(max_rel_spread), array(out)], depth.device)
    return out


def intensity_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(H,W) image -> ``levels`` images halved each level, as :func:`prism_ros.geometry.intensity_pyramid`
    (kornia's Gaussian pyramid); a level of odd size and the ones after it are left to kornia."""
    pyramid = [image.float()]
    for _ in range(levels - 1):
        current = pyramid[-1]
        h, w = current.shape
        if h % 2 or w % 2 or h < 4 or w < 4:  # odd: kornia resamples by size / floor(size / 2), not exactly 2
            from prism_ros.geometry import intensity_pyramid as reference

            return pyramid[:-1] + [level[0, 0] for level in reference(current[None, None], levels - len(pyramid) + 1)]
        out = torch.empty((h // 2, w // 2), dtype=torch.float32, device=image.device)
        launch(pyramid_down, out.numel(), [array(current), array(out)], image.device)
        pyramid.append(out)
    return pyramid


def register_colour(colour: torch.Tensor, colour_camera, depth: torch.Tensor, rays: torch.Tensor,
                    T_color_depth) -> torch.Tensor | None:
    """:func:`prism_ros.prism.observation.register_colour` in one pass for an undistorted colour camera (None for a
    distorted one: the caller takes the torch path)."""
    if colour_camera.has_distortion:
        return None
    h, w = depth.shape
    T = torch.eye(4, dtype=torch.float32) if T_color_depth is None else \
        torch.as_tensor(T_color_depth, dtype=torch.float32).cpu()
    out = torch.empty((h, w, 3), dtype=torch.float32, device=depth.device)
    launch(colour_of_depth, h * w, [
        array(depth.reshape(-1)), array(rays.reshape(-1, 3), wp.vec3), wp.mat33(*T[:3, :3].flatten().tolist()),
        wp.vec3(*T[:3, 3].tolist()), float(colour_camera.fx), float(colour_camera.fy), float(colour_camera.cx),
        float(colour_camera.cy), 2.0 / (colour_camera.width - 1), 2.0 / (colour_camera.height - 1),
        array(colour.contiguous()), array(out.view(h * w, 3))], depth.device)
    return out
