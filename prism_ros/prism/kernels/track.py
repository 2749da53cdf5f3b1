"""Fused tracking linearisation: one Warp kernel per Gauss-Newton iteration (PRISM steps 1-2).

:func:`prism_ros.prism.tracking.linearise` builds (7,N) Jacobian rows per term in float32 and multiplies them
out: about 60 torch calls and a dozen passes over N-sized buffers per iteration. The kernel here does the
same per observed point in one pass and never writes per-point data:

- transform by T and T_render_camera, project into the render (pinhole in the kernel; for a distorted render
  camera the torch :func:`~prism_ros.prism.tracking.project` supplies uv, because OpenCV's 5-14 coefficient model
  and its fold-back radius live in :class:`~prism_ros.geometry.PinholeCamera`);
- nearest-pixel surfel lookup, distance and normal gates, point-to-plane residual and Jacobian row;
- the photometric term with ``grid_sample``'s bilinear semantics (align_corners, zero padding, the
  valid channel) and its pinhole Jacobian, only for points that passed the ICP gates;
- robust (IRLS) weights, and the tempered normal equations [J^T W J | J^T W r] plus the sums that
  :func:`~prism_ros.prism.tracking.assess` needs (:class:`~prism_ros.prism.tracking.Sums`).

Reduction: each thread takes ``chunk`` consecutive points, accumulates in float64 registers and adds its
totals atomically to one float64 vector of :data:`OUTPUTS` values, read back once per iteration. Warp runs a
CPU launch on one core, so there a large chunk only saves atomics; on CUDA a small chunk gives enough threads
to fill the GPU while each thread's 50 atomics stay few next to its point work.
Per-point arithmetic is float32 as in the torch path; only the accumulation order differs.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch

from prism_ros.prism.kernels import array, device_name, parts, run_parallel, warp
from prism_ros.prism.tracking import Level, Linearisation, Reference, Sums, TrackingConfig, project

wp = warp()
wp.set_module_options({"enable_backward": False})  # forward only: halves the compile time

LOSSES = {"huber": 0, "tukey": 1, "none": 2}
HUBER = wp.constant(0)
TUKEY = wp.constant(1)
OUTSIDE = wp.constant(-1.0e4)  # as tracking.OUTSIDE: pixel of a point behind the render camera
# output layout: H (6x6, row-major), g (6), then the Sums fields in their order
G_AT = wp.constant(36)
SUMS_AT = wp.constant(42)
OUTPUTS = 42 + len(Sums._fields)
CHUNK = {"cpu": 1024, "cuda": 16}  # points per thread (see the module docstring)

vec5 = wp.types.vector(length=5, dtype=wp.float32)
vec6d = wp.types.vector(length=6, dtype=wp.float64)
vec8d = wp.types.vector(length=8, dtype=wp.float64)  # the Sums
mat66d = wp.types.matrix(shape=(6, 6), dtype=wp.float64)


@wp.func
def robust_weight(r: float, loss: int, k: float) -> float:
    """IRLS weight of a normalised residual (as tracking.robust_weights)."""
    if loss == HUBER:
        return wp.min(k / wp.max(wp.abs(r), 1.0e-12), 1.0)
    if loss == TUKEY:
        s = wp.max(1.0 - (r / k) * (r / k), 0.0)
        return s * s
    return 1.0


@wp.func
def jacobian_row(q: wp.vec3, a: wp.vec3) -> vec6d:
    """d r / d delta = [a, q x a] of r = a . exp(delta^) q + const, in float64 for the accumulation."""
    c = wp.cross(q, a)
    return vec6d(wp.float64(a[0]), wp.float64(a[1]), wp.float64(a[2]),
                 wp.float64(c[0]), wp.float64(c[1]), wp.float64(c[2]))


@wp.func
def corner(image: wp.array3d(dtype=float), x: int, y: int) -> vec5:
    """The 5 channels at integer pixel (x, y), zeros outside (grid_sample's zero padding)."""
    if x < 0 or y < 0 or x >= image.shape[2] or y >= image.shape[1]:
        return vec5()
    return vec5(image[0, y, x], image[1, y, x], image[2, y, x], image[3, y, x], image[4, y, x])


@wp.func
def bilinear(image: wp.array3d(dtype=float), gx: float, gy: float) -> vec5:
    """grid_sample(image, (gx, gy), bilinear, zeros padding, align_corners=True) with the CPU kernel's weights."""
    x = (gx + 1.0) * (float(image.shape[2] - 1) * 0.5)
    y = (gy + 1.0) * (float(image.shape[1] - 1) * 0.5)
    x0 = wp.floor(x)
    y0 = wp.floor(y)
    if not (x0 >= -1.0 and x0 < float(image.shape[2]) and y0 >= -1.0 and y0 < float(image.shape[1])):
        return vec5()  # all four neighbours outside (also NaN): no int conversion of far-off coordinates
    w = x - x0
    n = y - y0
    e = 1.0 - w
    s = 1.0 - n
    i = int(x0)
    j = int(y0)
    return (corner(image, i, j) * (s * e) + corner(image, i + 1, j) * (s * w)
            + corner(image, i, j + 1) * (n * e) + corner(image, i + 1, j + 1) * (n * w))


@wp.kernel
def linearise_kernel(first: int, part: int, points: wp.array2d(dtype=float), normals: wp.array2d(dtype=float),
                     intensity: wp.array(dtype=float), normal_gate: wp.array(dtype=float),
                     surfels: wp.array2d(dtype=float), image: wp.array3d(dtype=float),
                     uv_given: wp.array2d(dtype=float), distorted: int,
                     R: wp.mat33, t: wp.vec3, R_render: wp.mat33, t_render: wp.vec3, R_world_render: wp.mat33,
                     focal: wp.vec2, centre: wp.vec2, width: int, height: int, gain: wp.vec2, offset: wp.vec2,
                     max_distance_sq: float, inlier_sigmas: float, icp_factor: wp.float64,
                     photometric: int, photometric_factor: wp.float64, loss: int, scale: float,
                     chunk: int, out: wp.array2d(dtype=wp.float64)):
    """Points [c chunk, (c + 1) chunk), c = tid + first, of a level at pose (R, t) -> their share of the normal
    equations, added to row ``part`` of ``out``."""
    start = (wp.tid() + first) * chunk
    end = wp.min(start + chunk, points.shape[1])
    H = mat66d()
    g = vec6d()
    covered = wp.float64(0.0)
    associated = wp.float64(0.0)
    inliers = wp.float64(0.0)
    icp_squared = wp.float64(0.0)
    photometric_count = wp.float64(0.0)
    photometric_squared = wp.float64(0.0)
    abs_residual = wp.float64(0.0)
    rows = wp.float64(0.0)
    for i in range(start, end):
        p = wp.vec3(points[0, i], points[1, i], points[2, i])
        q = R @ p + t
        q_render = R_render @ p + t_render
        inv_z = 1.0 / wp.max(q_render[2], 1.0e-6)
        u = OUTSIDE
        v = OUTSIDE
        if distorted != 0:
            u = uv_given[0, i]
            v = uv_given[1, i]
        elif q_render[2] > 0.0:
            u = centre[0] + (q_render[0] * inv_z) * focal[0]
            v = centre[1] + (q_render[1] * inv_z) * focal[1]
        # projective association: the nearest render pixel, else the table's invalid last column
        col = wp.floor(u + 0.5)
        row = wp.floor(v + 0.5)
        index = width * height
        if col >= 0.0 and col < float(width) and row >= 0.0 and row < float(height):
            index = int(row) * width + int(col)
        valid = surfels[7, index] > 0.0
        vertex = wp.vec3(surfels[0, index], surfels[1, index], surfels[2, index])
        normal = wp.vec3(surfels[3, index], surfels[4, index], surfels[5, index])
        difference = q - vertex
        normal_obs = R @ wp.vec3(normals[0, i], normals[1, i], normals[2, i])
        gated = (valid and wp.dot(difference, difference) < max_distance_sq
                 and wp.dot(normal_obs, normal) > normal_gate[i])
        # point to plane
        error = wp.dot(difference, normal)
        inv_sigma = 1.0 / wp.sqrt(surfels[6, index])
        r = error * inv_sigma
        mask = wp.where(gated, wp.float64(1.0), wp.float64(0.0))
        covered += wp.where(valid, wp.float64(1.0), wp.float64(0.0))
        associated += mask
        inliers += wp.where(wp.abs(r) < inlier_sigmas, mask, wp.float64(0.0))
        icp_squared += mask * wp.float64(error * error)
        J = jacobian_row(q, normal * inv_sigma)
        icp_weight = mask * icp_factor * wp.float64(robust_weight(r, loss, scale))
        active = wp.where(icp_factor > wp.float64(0.0), mask, wp.float64(0.0))
        # photometric, depth-consistent points only (a zero sample is not valid)
        sample = vec5()
        if photometric != 0 and gated:
            sample = bilinear(image, offset[0] + u * gain[0], offset[1] + v * gain[1])
        mask_photometric = wp.where(sample[4] > 0.999, wp.float64(1.0), wp.float64(0.0))
        du = sample[1] * inv_z
        dv = sample[2] * inv_z
        dz = (du * q_render[0] + dv * q_render[1]) * (-inv_z)
        J_photometric = jacobian_row(q, R_world_render @ wp.vec3(du, dv, dz))
        r_photometric = sample[0] - intensity[i] * sample[3]
        error_photometric = wp.where(sample[4] > 0.999, r_photometric / sample[3], 0.0)
        photometric_count += mask_photometric
        photometric_squared += wp.float64(error_photometric * error_photometric)
        photometric_weight = mask_photometric * photometric_factor * wp.float64(
            robust_weight(r_photometric, loss, scale))
        # accumulate unconditionally (zero weights outside the masks): no per-branch copies of H
        weighted = J * icp_weight
        weighted_photometric = J_photometric * photometric_weight
        H += wp.outer(weighted, J) + wp.outer(weighted_photometric, J_photometric)
        g += weighted * wp.float64(r) + weighted_photometric * wp.float64(r_photometric)
        abs_residual += active * wp.float64(wp.abs(r)) + mask_photometric * wp.float64(wp.abs(r_photometric))
        rows += active + mask_photometric
    if covered == wp.float64(0.0):
        return
    for a in range(6):
        for b in range(6):
            wp.atomic_add(out, part, a * 6 + b, H[a, b])
        wp.atomic_add(out, part, G_AT + a, g[a])
    sums = vec8d(covered, associated, inliers, icp_squared, photometric_count, photometric_squared, abs_residual,
                 rows)
    for k in range(8):
        wp.atomic_add(out, part, SUMS_AT + k, sums[k])


def lineariser(level: Level, ref: Reference, config: TrackingConfig) -> Callable[[np.ndarray], Linearisation]:
    """``linearise(T) -> Linearisation`` of ``level`` against ``ref`` with the kernel (the torch path:
    :func:`prism_ros.prism.tracking.linearise`); the launch is recorded once, each call sets the pose."""
    if config.robust_loss not in LOSSES:
        raise ValueError(f"unknown robust_loss {config.robust_loss!r}: use huber, tukey or none")
    device = level.points.device
    name = device_name(device)
    n = level.points.shape[1]
    chunk = CHUNK["cuda" if device.type == "cuda" else "cpu"]
    photometric = config.photometric_weight > 0
    offset = max(level.offset, 0)
    if photometric:
        render_image = ref.images[offset]
        image = render_image.image[0]
        gain, image_offset = render_image.gain.tolist(), render_image.offset.tolist()
    else:
        image, gain, image_offset = torch.zeros((5, 1, 1), device=device), [0.0, 0.0], [0.0, 0.0]
    distorted = bool(ref.camera.has_distortion)
    uv = torch.zeros((2, n if distorted else 1), device=device)
    chunks = max((n + chunk - 1) // chunk, 1)
    pieces = parts(n, device)  # ranges of chunks on as many CPU threads; one on CUDA
    out = torch.zeros((pieces, OUTPUTS), dtype=torch.float64, device=device)
    max_distance = config.max_point_distance * 2.0 ** offset
    inputs = [array(level.points), array(level.normals), array(level.intensity), array(level.normal_gate),
              array(ref.surfels), array(image), array(uv), int(distorted),
              wp.mat33(), wp.vec3(), wp.mat33(), wp.vec3(), wp.mat33(*ref.R_world_render.cpu().flatten().tolist()),
              wp.vec2(*ref.focal.flatten().tolist()), wp.vec2(*ref.centre.flatten().tolist()),
              int(ref.camera.width), int(ref.camera.height), wp.vec2(*gain), wp.vec2(*image_offset),
              float(max_distance) ** 2, float(config.inlier_sigmas), level.kappa * max(config.icp_weight, 0.0),
              int(photometric), level.kappa * max(config.photometric_weight, 0.0), LOSSES[config.robust_loss],
              float(config.robust_scale), chunk, array(out)]
    bounds = [chunks * k // pieces for k in range(pieces + 1)]
    launches = [wp.launch(linearise_kernel, dim=bounds[k + 1] - bounds[k], inputs=[bounds[k], k, *inputs],
                          device=name, record_cmd=True) for k in range(pieces)]
    stream = wp.stream_from_torch(torch.cuda.current_stream(device)) if device.type == "cuda" else None

    def linearise(T: np.ndarray) -> Linearisation:
        poses = np.concatenate((T[:3], (ref.T_render_world @ T)[:3])).astype(np.float32)
        params = {"R": wp.mat33(*poses[:3, :3].ravel().tolist()), "t": wp.vec3(*poses[:3, 3].tolist()),
                "R_render": wp.mat33(*poses[3:, :3].ravel().tolist()), "t_render": wp.vec3(*poses[3:, 3].tolist())}
        for launch in launches:
            for key, value in params.items():
                launch.set_param_by_name(key, value)
        if distorted:
            pose = torch.as_tensor(poses[3:], device=device)
            uv.copy_(project(ref, torch.addmm(pose[:, 3:], pose[:, :3], level.points))[0])
        out.zero_()
        run_parallel([partial(launch.launch, stream) for launch in launches])
        values = out.sum(0).cpu().numpy()
        H = values[:36].reshape(6, 6)
        return Linearisation(0.5 * (H + H.T), values[36:42].copy(), None, None, n,
                             Sums(*values[42:].tolist()))

    linearise.tensors = (level, ref, image, uv, out)  # behind the recorded launch's pointers: kept alive
    return linearise
