"""Fused observation kernels: a pyramid level's points, normals and intensity gradient in one pass per pixel,
and the NaN-aware 2x2 depth reduction.

The torch reference (:func:`prism_ros.observation.make_level`, :func:`prism_ros.geometry.downsample_depth`) makes
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

from prism_ros.kernels import array, device_name, warp

warp()  # initialised before the kernels below are declared


@wp.kernel
def level_geometry(depth: wp.array2d(dtype=wp.float32), rays: wp.array2d(dtype=wp.vec3),
                   intensity: wp.array2d(dtype=wp.float32), points: wp.array2d(dtype=wp.vec3),
                   normals: wp.array2d(dtype=wp.vec3), gradient: wp.array3d(dtype=wp.float32)):
    v, u = wp.tid()
    h, w = depth.shape[0], depth.shape[1]
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
def halve_depth(depth: wp.array2d(dtype=wp.float32), max_rel_spread: wp.float32,
                out: wp.array2d(dtype=wp.float32)):
    v, u = wp.tid()
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


def level_arrays(depth: torch.Tensor, rays: torch.Tensor, intensity: torch.Tensor):
    """Points (H,W,3), normals (H,W,3) and intensity gradient (2,H,W) of one level (float32 on depth's device)."""
    h, w = depth.shape
    points = torch.empty((h, w, 3), dtype=torch.float32, device=depth.device)
    normals = torch.empty_like(points)
    gradient = torch.empty((2, h, w), dtype=torch.float32, device=depth.device)
    wp.launch(level_geometry, dim=(h, w), device=device_name(depth.device),
              inputs=[array(depth.float()), array(rays.float(), dtype=wp.vec3), array(intensity.float())],
              outputs=[array(points, dtype=wp.vec3), array(normals, dtype=wp.vec3), array(gradient)])
    return points, normals, gradient


def downsample_depth(depth: torch.Tensor, max_rel_spread: float = 0.05) -> torch.Tensor:
    """(H,W) depth -> (H//2, W//2): :func:`prism_ros.geometry.downsample_depth` in one pass."""
    h, w = depth.shape[0] // 2, depth.shape[1] // 2
    out = torch.empty((h, w), dtype=torch.float32, device=depth.device)
    if h and w:
        wp.launch(halve_depth, dim=(h, w), device=device_name(depth.device),
                  inputs=[array(depth.float()), float(max_rel_spread)], outputs=[array(out)])
    return out
