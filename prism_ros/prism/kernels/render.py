"""The fused render: :func:`prism_ros.prism.render.render` of a :class:`~prism_ros.prism.map.GaussianSdfMap` with a
dense block index, one Warp kernel thread per ray.

Each thread does what the torch reference does in ~20k small tensor ops: the whole march (nearest-voxel reads
of the read-mean cache, the trilinear re-read within the band, sphere tracing, jumps through unobserved space
and taking back a jump that landed on a mean <= 0, the first + -> - crossing between observed samples,
``max_steps``), regula falsi on the trilinear mean, the surface read at the hit (the map's ``sample_surface``:
trilinear posterior mean, std and colour, and the 32-voxel central-difference gradient; or the generic
``sdf_gradient`` stencil when the config asks for another one), the validity test, and writes into the
output images. Same float32 arithmetic in the same order as the reference (including ``torch.lerp``'s two
branches), so the two differ only by rounding (fused multiply-adds) at the odd decision threshold.

What stays torch, and why: the ray set-up (``camera_rays``, cached per camera, and ``start_rays`` with the
per-block depth ranges, a few ops per *block* rather than per ray) hands the kernel each ray's initial
state; the intensity image and its gradient are a handful of whole-image ops. Neither loops per ray.

Map reads follow :class:`~prism_ros.prism.map.DenseBlockIndex`: block coordinates clamped into the padded box, one
gather for the block's first storage column, in-block offsets as shifts.
"""
from __future__ import annotations

import torch

from prism_ros.prism.kernels import array, launch, warp
from prism_ros.prism.render import RenderConfig, RenderResult, Steps, camera_rays, images_result, start_rays

wp = warp()
wp.set_module_options({"enable_backward": False})  # forward only: no adjoint code to generate and compile

vec8f = wp.types.vector(length=8, dtype=wp.float32)
FAR = wp.constant(float(1 << 30))  # as prism_ros.prism.map._FAR: voxel coordinates are clamped to +-this
SURFACE_STENCIL, TRILINEAR_STENCIL, NEAREST_STENCIL = 0, 1, 2  # gradient read at the hits (see March.gradient)


@wp.struct
class DenseMap:
    """The map's read state: read-mean cache, precision and colour channels (storage columns), dense index."""

    read_mean: wp.array(dtype=wp.float32)
    precision: wp.array(dtype=wp.float32)
    red: wp.array(dtype=wp.float32)
    green: wp.array(dtype=wp.float32)
    blue: wp.array(dtype=wp.float32)
    columns: wp.array(dtype=wp.int32)
    low: wp.vec3i
    shape: wp.vec3i
    stride: wp.vec3i
    shift: wp.int32
    inverse_voxel: wp.float32
    unobserved: wp.float32  # the read-mean cache's value of never-observed voxels
    prior_precision: wp.float32
    colour_prior: wp.float32


@wp.struct
class March:
    """Per-render constants: camera origin (world) and the RenderConfig / Steps values in metres."""

    origin: wp.vec3
    max_steps: wp.int32
    band: wp.float32
    step_min: wp.float32
    step_max: wp.float32
    step_scale: wp.float32
    walk: wp.float32
    jump_minus_walk: wp.float32
    refine_iterations: wp.int32
    max_residual: wp.float32
    min_std: wp.float32
    gradient: wp.int32  # SURFACE_STENCIL (the map's sample_surface), TRILINEAR_ or NEAREST_STENCIL (sdf_gradient)
    eps: wp.float32
    two_eps: wp.float32
    half_inverse_voxel: wp.float32


# ----------------------------------------------------------------------------- arithmetic as torch does it
@wp.func
def lerp(a: wp.float32, b: wp.float32, w: wp.float32):
    """torch.lerp: exact at w = 0 and w = 1."""
    d = b - a
    if wp.abs(w) < 0.5:
        return a + w * d
    return b - d * (1.0 - w)


@wp.func
def bilinear(c00: wp.float32, c01: wp.float32, c10: wp.float32, c11: wp.float32, f0: wp.float32, f1: wp.float32):
    """prism_ros.prism.map.bilinear of corners c[first axis][second axis]."""
    return lerp(lerp(c00, c10, f0), lerp(c01, c11, f0), f1)


@wp.func
def trilinear(c: vec8f, f: wp.vec3):
    """prism_ros.prism.map.trilinear of corners c[4 i + 2 j + k] (x slowest)."""
    return bilinear(lerp(c[0], c[4], f[0]), lerp(c[1], c[5], f[0]), lerp(c[2], c[6], f[0]), lerp(c[3], c[7], f[0]),
                    f[1], f[2])


@wp.func
def secant_zero(t0: wp.float32, s0: wp.float32, t1: wp.float32, s1: wp.float32):
    """prism_ros.prism.render.secant_zero."""
    positive = wp.max(s0, 0.0)
    fraction = positive / wp.max(positive - s1, 1e-12)
    return t0 + wp.clamp(fraction, 0.0, 1.0) * (t1 - t0)


# ----------------------------------------------------------------------------- map reads
@wp.func
def clean(x: wp.float32):
    if wp.isnan(x):
        return -FAR
    return wp.clamp(x, -FAR, FAR)


@wp.func
def voxel_coordinates(m: DenseMap, p: wp.vec3):
    """Continuous voxel coordinates of a world point (voxel i centred at i), NaN and huge values far out."""
    return wp.vec3(clean(p[0] * m.inverse_voxel), clean(p[1] * m.inverse_voxel), clean(p[2] * m.inverse_voxel))


@wp.func
def axis_part(m: DenseMap, v: wp.int32, a: wp.int32):
    """Voxel index v along axis a -> its block's part of the flat dense cell index, and its in-block part of the
    storage column (DenseBlockIndex.axis_cells and the in-block shifts)."""
    cell = wp.clamp((v >> m.shift) - m.low[a], 0, m.shape[a] - 1) * m.stride[a]
    return cell, (v & ((1 << m.shift) - 1)) << ((2 - a) * m.shift)


@wp.struct
class Box:
    """Axis parts (see axis_part) of the voxels base + o, o = -1 .. 2 per axis (index o + 1): the trilinear
    cell of base, and the surface stencil one voxel beyond its faces. Worked out once per read, not per voxel."""

    cx: wp.vec4i
    cy: wp.vec4i
    cz: wp.vec4i
    lx: wp.vec4i
    ly: wp.vec4i
    lz: wp.vec4i


@wp.func
def box(m: DenseMap, base: wp.vec3i, stencil: bool):
    """The Box of base: offsets 0, 1 (the cell), and -1, 2 where ``stencil``."""
    b = Box()
    for o in range(4):
        if stencil or o == 1 or o == 2:
            cx, lx = axis_part(m, base[0] + o - 1, 0)
            cy, ly = axis_part(m, base[1] + o - 1, 1)
            cz, lz = axis_part(m, base[2] + o - 1, 2)
            b.cx[o] = cx
            b.cy[o] = cy
            b.cz[o] = cz
            b.lx[o] = lx
            b.ly[o] = ly
            b.lz[o] = lz
    return b


@wp.func
def read(m: DenseMap, b: Box, i: wp.int32, j: wp.int32, k: wp.int32):
    """Read-mean of the voxel base + (i, j, k), i, j, k in -1 .. 2."""
    column = m.columns[b.cx[i + 1] + b.cy[j + 1] + b.cz[k + 1]]
    return m.read_mean[column + b.lx[i + 1] + b.ly[j + 1] + b.lz[k + 1]]


@wp.func
def cell_row(m: DenseMap, b: Box, i: wp.int32, j: wp.int32, k: wp.int32):
    """Storage column of the cell corner base + (i, j, k), i, j, k in 0, 1."""
    return m.columns[b.cx[i + 1] + b.cy[j + 1] + b.cz[k + 1]] + b.lx[i + 1] + b.ly[j + 1] + b.lz[k + 1]


@wp.func
def nearest_mean(m: DenseMap, p: wp.vec3):
    """sample_nearest_mean's value (observed where < m.unobserved)."""
    c = voxel_coordinates(m, p)
    cx, lx = axis_part(m, wp.int32(wp.rint(c[0])), 0)
    cy, ly = axis_part(m, wp.int32(wp.rint(c[1])), 1)
    cz, lz = axis_part(m, wp.int32(wp.rint(c[2])), 2)
    return m.read_mean[m.columns[cx + cy + cz] + lx + ly + lz]


@wp.func
def cell_means(m: DenseMap, b: Box):
    c = vec8f()
    for i in range(2):
        for j in range(2):
            for k in range(2):
                c[4 * i + 2 * j + k] = read(m, b, i, j, k)
    return c


@wp.func
def floor_index(c: wp.vec3):
    b = wp.vec3(wp.floor(c[0]), wp.floor(c[1]), wp.floor(c[2]))
    return b, wp.vec3i(wp.int32(b[0]), wp.int32(b[1]), wp.int32(b[2]))


@wp.func
def trilinear_mean(m: DenseMap, p: wp.vec3):
    """sample_mean: the trilinear read-mean."""
    c = voxel_coordinates(m, p)
    b, base = floor_index(c)
    return trilinear(cell_means(m, box(m, base, False)), c - b)


@wp.func
def stencil_mean(m: DenseMap, s: March, p: wp.vec3):
    """The mean that sdf_gradient differentiates: trilinear, or the nearest voxel's."""
    if s.gradient == NEAREST_STENCIL:
        return nearest_mean(m, p)
    return trilinear_mean(m, p)


@wp.func
def surface_gradient(m: DenseMap, b: Box, core: vec8f, f: wp.vec3):
    """sample_surface's gradient: central differences one voxel apart of the trilinear mean, from the cell's
    corners ``core`` and the 8 voxels beyond each pair of its faces."""
    # corner pairs [j][k], [i][k], [i][j] of the differences up (core[1] - beyond[-1]) and down each axis
    gx = bilinear(lerp(core[4] - read(m, b, -1, 0, 0), read(m, b, 2, 0, 0) - core[0], f[0]),
                  lerp(core[5] - read(m, b, -1, 0, 1), read(m, b, 2, 0, 1) - core[1], f[0]),
                  lerp(core[6] - read(m, b, -1, 1, 0), read(m, b, 2, 1, 0) - core[2], f[0]),
                  lerp(core[7] - read(m, b, -1, 1, 1), read(m, b, 2, 1, 1) - core[3], f[0]), f[1], f[2])
    gy = bilinear(lerp(core[2] - read(m, b, 0, -1, 0), read(m, b, 0, 2, 0) - core[0], f[1]),
                  lerp(core[3] - read(m, b, 0, -1, 1), read(m, b, 0, 2, 1) - core[1], f[1]),
                  lerp(core[6] - read(m, b, 1, -1, 0), read(m, b, 1, 2, 0) - core[4], f[1]),
                  lerp(core[7] - read(m, b, 1, -1, 1), read(m, b, 1, 2, 1) - core[5], f[1]), f[0], f[2])
    gz = bilinear(lerp(core[1] - read(m, b, 0, 0, -1), read(m, b, 0, 0, 2) - core[0], f[2]),
                  lerp(core[3] - read(m, b, 0, 1, -1), read(m, b, 0, 1, 2) - core[2], f[2]),
                  lerp(core[5] - read(m, b, 1, 0, -1), read(m, b, 1, 0, 2) - core[4], f[2]),
                  lerp(core[7] - read(m, b, 1, 1, -1), read(m, b, 1, 1, 2) - core[6], f[2]), f[0], f[1])
    return wp.vec3(gx, gy, gz)


@wp.func
def surface(m: DenseMap, s: March, p: wp.vec3):
    """The hit read (``_cell_sample`` and the gradient): trilinear posterior mean, std, colour averaged over
    the observed corners (the colour prior where none is), and the mean's gradient."""
    c = voxel_coordinates(m, p)
    low, index = floor_index(c)
    f = c - low
    b = box(m, index, s.gradient == SURFACE_STENCIL)
    core = vec8f()
    variance = vec8f()
    seen = vec8f()
    red = vec8f()
    green = vec8f()
    blue = vec8f()
    for i in range(2):
        for j in range(2):
            for k in range(2):
                n = 4 * i + 2 * j + k
                row = cell_row(m, b, i, j, k)
                core[n] = m.read_mean[row]
                variance[n] = 1.0 / (m.precision[row] + m.prior_precision)
                seen[n] = wp.where(core[n] < m.unobserved, 1.0, 0.0)
                red[n] = m.red[row] * seen[n]
                green[n] = m.green[row] * seen[n]
                blue[n] = m.blue[row] * seen[n]
    weight = trilinear(seen, f)
    colour = wp.vec3(m.colour_prior, m.colour_prior, m.colour_prior)
    if weight > 0.0:
        colour = wp.vec3(trilinear(red, f), trilinear(green, f), trilinear(blue, f)) / wp.max(weight, 1e-12)
    gradient = wp.vec3()
    if s.gradient == SURFACE_STENCIL:
        gradient = surface_gradient(m, b, core, f) * s.half_inverse_voxel
    else:
        for a in range(3):
            offset = wp.vec3()
            offset[a] = s.eps
            gradient[a] = (stencil_mean(m, s, p + offset) - stencil_mean(m, s, p - offset)) / s.two_eps
    return trilinear(core, f), wp.sqrt(trilinear(variance, f)), colour, gradient


# ----------------------------------------------------------------------------- the kernel
@wp.kernel
def render_rays(first: wp.int32, part: wp.int32, m: DenseMap, s: March, state: wp.array2d(dtype=wp.float32),
                pixel: wp.array(dtype=wp.int64),
                depth: wp.array(dtype=wp.float32), vertex: wp.array(dtype=wp.vec3), normal: wp.array(dtype=wp.vec3),
                colour: wp.array(dtype=wp.vec3), std: wp.array(dtype=wp.float32), valid: wp.array(dtype=wp.bool)):
    """One ray (state rows as prism_ros.prism.render._ROWS): march, refine, read the hit, write its pixel."""
    r = wp.tid() + first
    t = state[0, r]
    t_end = state[1, r]
    prev_t = state[2, r]
    prev_mean = state[3, r]
    prev_positive = state[4, r]
    prev_trilinear = state[5, r]
    jumped = state[6, r]
    walk_until = state[7, r]
    depth_per_metre = state[8, r]
    d = wp.vec3(state[9, r], state[10, r], state[11, r])

    found = bool(False)
    t0 = float(0.0)
    t1 = float(0.0)
    s0 = float(0.0)
    s1 = float(0.0)
    trilinear0 = float(0.0)
    for _step in range(s.max_steps):
        p = s.origin + d * t
        mean = nearest_mean(m, p)
        observed = wp.where(mean < m.unobserved, 1.0, 0.0)
        is_trilinear = float(0.0)
        if wp.abs(mean) < s.band:
            mean = trilinear_mean(m, p)
            is_trilinear = 1.0
        negative = wp.where(mean <= 0.0, observed, 0.0)
        if prev_positive * negative > 0.0:  # the first + -> - crossing between observed samples
            found = True
            t0 = prev_t
            t1 = t
            s0 = prev_mean
            s1 = mean
            trilinear0 = prev_trilinear
            break
        # advance (prism_ros.prism.render.advance): trace where observed, jump or walk where not,
        # take a landed jump back
        landed = jumped * negative
        traced = wp.clamp(wp.abs(mean) * s.step_scale, s.step_min, s.step_max)
        jump = wp.max(wp.where(t >= walk_until, 1.0, 0.0) - observed, 0.0)
        metres = (traced - s.walk) * observed + jump * s.jump_minus_walk + s.walk
        t_old = t
        t = lerp(t + metres * depth_per_metre, prev_t + depth_per_metre * s.walk, landed)
        walk_until = lerp(walk_until, t_old, landed)
        prev_t = t_old
        prev_mean = mean
        prev_positive = observed - negative
        prev_trilinear = is_trilinear
        jumped = jump
        if not (t <= t_end):
            break
    if not found:
        return

    # regula falsi on the trilinear mean (t0's mean re-read where the march took the nearest voxel's)
    if trilinear0 == 0.0:
        s0 = trilinear_mean(m, s.origin + d * t0)
    for _iteration in range(s.refine_iterations):
        tm = secant_zero(t0, s0, t1, s1)
        sm = trilinear_mean(m, s.origin + d * tm)
        if sm > 0.0:
            t0 = tm
            s0 = sm
        else:
            t1 = tm
            s1 = sm
    t = secant_zero(t0, s0, t1, s1)

    point = s.origin + d * t
    mean, sdf_std, rgb, gradient = surface(m, s, point)
    n = gradient / wp.length(gradient)  # into free space, towards the camera
    finite = wp.isfinite(n[0]) and wp.isfinite(n[1]) and wp.isfinite(n[2])
    if wp.dot(gradient, d) < 0.0 and wp.abs(mean) <= s.max_residual and finite and t > 0.0:
        q = pixel[r]
        depth[q] = t
        vertex[q] = point
        normal[q] = n
        colour[q] = wp.vec3(wp.clamp(rgb[0], 0.0, 1.0), wp.clamp(rgb[1], 0.0, 1.0), wp.clamp(rgb[2], 0.0, 1.0))
        std[q] = wp.max(sdf_std, s.min_std)
        valid[q] = True


# ----------------------------------------------------------------------------- host side
def supports(field) -> bool:
    """Whether ``field`` is a map this kernel reads: a GaussianSdfMap with a dense block index."""
    from prism_ros.prism.map import GaussianSdfMap

    return isinstance(field, GaussianSdfMap) and field._dense is not None


def dense_map(field) -> DenseMap:
    """The kernel's view of ``field`` (zero-copy; valid until the map next grows)."""
    c, dense = field.config, field._dense
    m = DenseMap()
    m.read_mean = array(field._read_mean)
    m.precision, m.red, m.green, m.blue = (array(field._voxels[channel]) for channel in (1, 2, 3, 4))
    m.columns = array(dense.columns)
    m.low, m.shape = wp.vec3i(*dense.low), wp.vec3i(*dense.shape)
    m.stride = wp.vec3i(dense.shape[1] * dense.shape[2], dense.shape[2], 1)
    m.shift = field._block_shift
    m.inverse_voxel = float(field._inverse_voxel[0, 0])
    m.unobserved = field._unobserved
    m.prior_precision = 1.0 / c.prior_std**2
    m.colour_prior = c.colour_prior
    return m


def march_constants(field, origin: torch.Tensor, config: RenderConfig) -> March:
    steps, voxel = Steps.of(field, config), float(field.config.voxel_size)
    s = March()
    s.origin = wp.vec3(*origin.tolist())
    s.max_steps, s.refine_iterations = config.max_steps, config.refine_iterations
    s.band = config.trilinear_band_voxels * voxel
    s.step_min, s.step_max, s.step_scale = steps.min, steps.max, config.step_scale
    s.walk, s.jump_minus_walk = steps.walk, steps.jump - steps.walk
    s.max_residual, s.min_std = config.max_residual_voxels * voxel, config.min_std
    if config.trilinear_normals and config.normal_step_voxels == 1.0:
        s.gradient = SURFACE_STENCIL
    else:
        s.gradient = TRILINEAR_STENCIL if config.trilinear_normals else NEAREST_STENCIL
    s.eps = config.normal_step_voxels * voxel
    s.two_eps = 2 * s.eps
    s.half_inverse_voxel = 0.5 / voxel
    return s


def render(field, T_world_camera: torch.Tensor, camera, config: RenderConfig) -> RenderResult:
    """:func:`prism_ros.prism.render.render` of a map that :func:`supports`, by the kernel."""
    T = T_world_camera.to(device=camera.device, dtype=torch.float32)
    rays = start_rays(field, T, camera_rays(camera, config.tile_size), Steps.of(field, config), config)
    size, device = camera.height * camera.width, camera.device
    nan = float("nan")
    depth, std = torch.full((size,), nan, device=device), torch.full((size,), nan, device=device)
    vertex, normal = torch.full((size, 3), nan, device=device), torch.full((size, 3), nan, device=device)
    colour = torch.zeros((size, 3), device=device)
    valid = torch.zeros(size, dtype=torch.bool, device=device)
    if rays.pixel.numel():
        launch(render_rays, rays.pixel.numel(), [
            dense_map(field), march_constants(field, T[:3, 3], config), array(rays.state), array(rays.pixel),
            array(depth), array(vertex, wp.vec3), array(normal, wp.vec3), array(colour, wp.vec3), array(std),
            array(valid)], device)
    h, w = camera.height, camera.width
    return images_result(T_world_camera, camera, depth.view(h, w), vertex.view(h, w, 3), normal.view(h, w, 3),
                         colour.view(h, w, 3), std.view(h, w), valid.view(h, w))
