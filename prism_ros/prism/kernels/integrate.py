"""The map update (filter step 4) as two Warp kernels: :meth:`GaussianSdfMap.integrate` with ``backend="fused"``.

The torch reference (``GaussianSdfMap._pixel_table`` and ``_update_blocks``/``_fuse``) makes some thirty passes
over the full-resolution image and as many over every voxel of the touched blocks, with a gathered copy of the
state in between. Here:

- ``window_points`` + ``window_normals``: one thread per pixel each: the window-averaged vertex map and its
  normals (``map_normals``);
- ``pixel_table``: one thread per pixel of the padded table writes all its measurement inputs (depth edge test,
  camera-facing normal, n . q, sensor variance, ray length, colour) in the reference's layout, so the two
  paths share the table format and can be compared directly;
- ``band_blocks``: one thread per sample of the allocation rays (``_band_block_keys``): its block, looked up in
  the map's dense block index, is flagged as touched, or its key is listed for allocation, so only the new
  blocks need a sort;
- ``update_voxels``: one thread per voxel of the touched blocks: camera-frame centre, nearest pixel (pinhole, or
  OpenCV's rational model k1, k2, p1, p2, k3, k4, k5, k6 in the kernel), the gates, the measurement m, its
  weights, and the Gaussian product in place on the map's storage, its read-mean cache and count. A frame
  touches each voxel once, so only the updated-voxel counter is atomic.

The voxel centres are the reference's, bit for bit: block origins go to the camera frame in float64 on the
host (large world coordinates stay exact; a few hundred blocks), the rotated in-block offsets are one (B^3,3)
float32 table, and the kernel adds the two. The arithmetic follows the reference's operation order, so on
the CPU the two agree to float32 rounding; a centre within rounding of a pixel boundary may pick the other
pixel. Cameras with thin-prism or tilt coefficients (12 or 14) use the torch voxel update.
"""
from __future__ import annotations

import torch

from prism_ros.prism.kernels import array, launch, parts, warp

wp = warp()
wp.set_module_options({"enable_backward": False})  # forward only: halves the code compiled

_RATIONAL_COEFFICIENTS = 8  # k1, k2, p1, p2, k3, k4, k5, k6: what the voxel kernel projects with


@wp.kernel
def pixel_table(first: int, part: int, depth: wp.array(dtype=float), points: wp.array(dtype=wp.vec3),
                normals: wp.array(dtype=wp.vec3), colour: wp.array(dtype=wp.vec3), width: int, noise_a: float,
                noise_b: float, min_cos: float, edge_ratio: float, max_depth: float, table: wp.array2d(dtype=float)):
    """One pixel of the padded (H+2, W+2) table per thread (see ``GaussianSdfMap._pixel_table``; the image is
    flat, H*W, row-major): NaN depth on the border and where invalid; normals at depth edges or missing
    replaced by (0, 0, -1). (A flat launch: Warp's CPU loop over a 2-d launch costs several times more.)"""
    index = wp.tid() + first
    h, w = depth.shape[0] // width, width
    y = index // (w + 2) - 1
    x = index - (y + 1) * (w + 2) - 1
    if y < 0 or y >= h or x < 0 or x >= w:
        table[0, index] = wp.nan
        for channel in range(1, 10):
            table[channel, index] = 0.0
        return
    pixel = y * w + x
    d = depth[pixel]
    p = points[pixel]
    n = normals[pixel]
    # depth edge: the pixel and its 4 neighbours (all valid) span more than edge_ratio of its depth
    edge = False
    if x > 0 and x < w - 1 and y > 0 and y < h - 1:
        right, left, down, up = depth[pixel + 1], depth[pixel - 1], depth[pixel + w], depth[pixel - w]
        high = wp.max(wp.max(wp.max(right, left), wp.max(down, up)), d)
        low = wp.min(wp.min(wp.min(right, left), wp.min(down, up)), d)
        finite = wp.isfinite(right) and wp.isfinite(left) and wp.isfinite(down) and wp.isfinite(up)
        edge = finite and wp.isfinite(d) and high - low > edge_ratio * d
    has_normal = wp.isfinite(n[0]) and not edge
    if not has_normal:
        n = wp.vec3(0.0, 0.0, -1.0)
    offset = n[0] * p[0] + n[1] * p[1] + n[2] * p[2]
    ray_length = wp.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]) / d
    cos = 0.0
    if has_normal:
        cos = wp.abs(offset) / (ray_length * d)
    sigma = (noise_a + noise_b * (d * d)) / wp.max(cos, min_cos)
    valid = wp.isfinite(d) and d > 0.0 and d <= max_depth
    table[0, index] = wp.where(valid, d, wp.nan)
    table[1, index] = n[0]
    table[2, index] = n[1]
    table[3, index] = n[2]
    table[4, index] = offset
    table[5, index] = sigma * sigma
    table[6, index] = ray_length
    c = colour[pixel]
    table[7, index] = c[0]
    table[8, index] = c[1]
    table[9, index] = c[2]


@wp.func
def window_point(x: int, y: int, w: int, h: int, half: int, edge_ratio: float, depth: wp.array(dtype=float),
                 points: wp.array(dtype=wp.vec3)) -> wp.vec3:
    """The mean of the valid points in the (2 half + 1)^2 window at (x, y) (``map_normals``), NaN where the centre
    is invalid or the window's depth range exceeds edge_ratio x depth x half."""
    d = depth[y * w + x]
    if not (wp.isfinite(d) and d > 0.0):
        return wp.vec3(wp.nan, wp.nan, wp.nan)
    total = wp.vec3(0.0, 0.0, 0.0)
    count = float(0.0)
    high = d
    low = d
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            u = x + dx
            v = y + dy
            if u >= 0 and u < w and v >= 0 and v < h:
                neighbour = depth[v * w + u]
                if wp.isfinite(neighbour) and neighbour > 0.0:
                    total = total + points[v * w + u]
                    count = count + 1.0
                    high = wp.max(high, neighbour)
                    low = wp.min(low, neighbour)
    if high - low > edge_ratio * d * float(half):
        return wp.vec3(wp.nan, wp.nan, wp.nan)
    return wp.vec3(total[0] / count, total[1] / count, total[2] / count)


@wp.kernel
def window_points(first: int, part: int, depth: wp.array(dtype=float), points: wp.array(dtype=wp.vec3), width: int,
                  half: int, edge_ratio: float, smooth: wp.array(dtype=wp.vec3)):
    """One pixel per thread: its window-averaged point (``window_point``)."""
    index = wp.tid() + first
    y = index // width
    smooth[index] = window_point(index - y * width, y, width, depth.shape[0] // width, half, edge_ratio, depth,
                                 points)


@wp.kernel
def window_normals(first: int, part: int, smooth: wp.array(dtype=wp.vec3), width: int,
                   normals: wp.array(dtype=wp.vec3)):
    """One pixel per thread: central differences of the window-averaged vertex map, replicated at the image
    border, facing the camera (``normals_from_points``); NaN next to a missing or edge window."""
    index = wp.tid() + first
    w = width
    h = smooth.shape[0] // w
    y = index // w
    x = index - y * w
    du = smooth[y * w + wp.min(x + 1, w - 1)] - smooth[y * w + wp.max(x - 1, 0)]
    dv = smooth[wp.min(y + 1, h - 1) * w + x] - smooth[wp.max(y - 1, 0) * w + x]
    # component by component, in the reference's operation order (the compiler may still fuse a multiply-add:
    # the normals then differ from the reference's by an ulp)
    nx = du[1] * dv[2] - du[2] * dv[1]
    ny = du[2] * dv[0] - du[0] * dv[2]
    nz = du[0] * dv[1] - du[1] * dv[0]
    length = wp.sqrt(nx * nx + ny * ny + nz * nz)
    n = wp.vec3(nx / length, ny / length, nz / length)
    p = smooth[index]
    if n[0] * p[0] + n[1] * p[1] + n[2] * p[2] > 0.0:
        n = -n
    normals[index] = n


@wp.func
def nearest_pixel(xyz: wp.vec3, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                  distortion: wp.array(dtype=float), max_radius_sq: float) -> int:
    """Index into the padded table of the pixel nearest to a camera-frame point (``_nearest_pixel``): off-image,
    behind-camera and (distorted) beyond-the-fold points land on the invalid border."""
    u = -1.0
    v = -1.0
    if distortion.shape[0] > 0:
        if xyz[2] > 0.0:
            x = xyz[0] / xyz[2]
            y = xyz[1] / xyz[2]
            r2 = x * x + y * y
            if r2 <= max_radius_sq:
                r4 = r2 * r2
                r6 = r4 * r2
                k1, k2, p1, p2 = distortion[0], distortion[1], distortion[2], distortion[3]
                radial = (1.0 + k1 * r2 + k2 * r4 + distortion[4] * r6) / (
                    1.0 + distortion[5] * r2 + distortion[6] * r4 + distortion[7] * r6)
                xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
                yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
                u = fx * xd + cx
                v = fy * yd + cy
    else:
        inverse_z = 1.0 / wp.max(xyz[2], 1.0e-6)
        u = cx + fx * xyz[0] * inverse_z
        v = cy + fy * xyz[1] * inverse_z
    u = wp.clamp(wp.rint(u), -1.0, float(width))
    v = wp.clamp(wp.rint(v), -1.0, float(height))
    return (int(v) + 1) * (width + 2) + int(u) + 1


@wp.kernel
def update_voxels(first: int, part: int, origins: wp.array(dtype=wp.vec3), offsets: wp.array(dtype=wp.vec3),
                  block_shift: int, slots: wp.array(dtype=wp.int32),
                  depth: wp.array(dtype=float), values: wp.array2d(dtype=float),
                  fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                  distortion: wp.array(dtype=float), max_radius_sq: float,
                  truncation: float, slack: float, band_std_slope: float, colour_variance: float,
                  colour_slope: float, max_precision: float, prior_precision: float, prior_weighted_mean: float,
                  voxels: wp.array2d(dtype=float), read_mean: wp.array(dtype=float), count: wp.array(dtype=wp.int32),
                  updated: wp.array(dtype=wp.int32)):
    """One voxel of the touched blocks per thread (``_update_blocks`` + ``_fuse``); ``max_precision`` <= 0: no cap.
    ``updated[part]`` counts the range's updated voxels."""
    i = wp.tid() + first
    block = i >> block_shift
    local = i & ((1 << block_shift) - 1)
    xyz = origins[block] + offsets[local]
    pixel = nearest_pixel(xyz, fx, fy, cx, cy, width, height, distortion, max_radius_sq)
    d = depth[pixel]
    if not (d - xyz[2] > -truncation and xyz[2] > 0.0):  # NaN depth fails too
        return
    along_ray = (d - xyz[2]) * values[5, pixel]
    plane = values[0, pixel] * xyz[0] + values[1, pixel] * xyz[1] + values[2, pixel] * xyz[2] - values[3, pixel]
    m = along_ray
    if plane >= wp.min(along_ray, 0.0) - slack and plane <= wp.max(along_ray, 0.0) + slack:
        m = plane
    m = wp.clamp(m, -truncation, truncation)
    model_std = band_std_slope * wp.clamp(along_ray, -truncation, truncation)
    weight = 1.0 / (values[4, pixel] + model_std * model_std)
    colour_std = colour_slope * m
    colour_weight = 1.0 / (colour_variance + colour_std * colour_std)

    row = (slots[block] << block_shift) | local
    precision = voxels[1, row] + weight
    colour_precision = voxels[5, row] + colour_weight
    mean = voxels[0, row]
    mean = mean + weight / precision * (m - mean)
    gain = colour_weight / colour_precision
    for channel in range(3):
        colour = voxels[2 + channel, row]
        voxels[2 + channel, row] = colour + gain * (values[6 + channel, pixel] - colour)
    if max_precision > 0.0:
        keep = wp.min(max_precision / precision, 1.0)
        precision = precision * keep
        colour_precision = colour_precision * keep
    voxels[0, row] = mean
    voxels[1, row] = precision
    voxels[5, row] = colour_precision
    read_mean[row] = wp.min((prior_weighted_mean + precision * mean) / (precision + prior_precision), truncation)
    count[row] = count[row] + 1
    wp.atomic_add(updated, part, 1)



def fill_pixel_table(depth: torch.Tensor, points: torch.Tensor, normals: torch.Tensor, colour: torch.Tensor,
                     config) -> torch.Tensor:
    """The padded, flattened measurement table (10, (H+2)(W+2)) of depth (H,W), points and normals (H,W,3) and
    colour (H,W,3) (rows as in :class:`~prism_ros.prism.map.PixelTable`: depth, then its values)."""
    h, w = depth.shape
    table = torch.empty((10, (h + 2) * (w + 2)), dtype=torch.float32, device=depth.device)
    flat = lambda t: t.to(torch.float32).reshape(-1, *t.shape[2:])
    launch(pixel_table, (h + 2) * (w + 2), [
        array(flat(depth)), array(flat(points), wp.vec3), array(flat(normals), wp.vec3), array(flat(colour), wp.vec3),
        w, config.noise_a, config.noise_b, config.min_cos_incidence, config.depth_edge_ratio, config.max_depth,
        array(table)], depth.device)
    return table


def fill_window_normals(depth: torch.Tensor, points: torch.Tensor, window: int, edge_ratio: float) -> torch.Tensor:
    """(H,W,3) :func:`prism_ros.prism.map.map_normals` of depth (H,W) and points (H,W,3) for an odd ``window``."""
    h, w = depth.shape
    smooth = torch.empty((h * w, 3), dtype=torch.float32, device=depth.device)
    normals = torch.empty((h, w, 3), dtype=torch.float32, device=depth.device)
    launch(window_points, h * w, [array(depth.to(torch.float32).reshape(-1)),
                                  array(points.to(torch.float32).reshape(-1, 3), wp.vec3), w, window // 2,
                                  float(edge_ratio), array(smooth, wp.vec3)], depth.device)
    launch(window_normals, h * w, [array(smooth, wp.vec3), w, array(normals.view(-1, 3), wp.vec3)], depth.device)
    return normals


def supports(camera) -> bool:
    """Whether ``update_voxels`` projects with this camera's model (pinhole, or OpenCV's 4 to 8 coefficients)."""
    extra = camera.distortion[_RATIONAL_COEFFICIENTS:]
    return not camera.has_distortion or extra.numel() == 0 or not bool(extra.any())


def update_voxels_in_place(voxels: torch.Tensor, read_mean: torch.Tensor, count: torch.Tensor, slots: torch.Tensor,
                           origins: torch.Tensor, offsets: torch.Tensor, depth: torch.Tensor, values: torch.Tensor,
                           camera, config) -> int:
    """Fuse the frame into every measured voxel of the blocks ``slots`` (K,) whose camera-frame origins (K,3)
    and rotated in-block offsets (B^3,3) are given; returns how many voxels were updated."""
    device = voxels.device
    voxel_count = len(slots) * len(offsets)
    updated = torch.zeros(parts(voxel_count, device), dtype=torch.int32, device=device)
    if camera.has_distortion:
        distortion = camera.distortion[:_RATIONAL_COEFFICIENTS].to(device, torch.float32)
        distortion = torch.nn.functional.pad(distortion, (0, _RATIONAL_COEFFICIENTS - len(distortion)))
        max_radius_sq = min(camera._valid_radius_sq(), 3.0e38)
    else:
        distortion, max_radius_sq = torch.empty(0, device=device), 0.0
    prior_precision = 1.0 / config.prior_std**2
    launch(update_voxels, voxel_count, [
        array(origins.float(), wp.vec3), array(offsets.float(), wp.vec3), len(offsets).bit_length() - 1,
        array(slots.int()), array(depth), array(values), float(camera.fx), float(camera.fy), float(camera.cx),
        float(camera.cy), camera.width, camera.height, array(distortion), max_radius_sq, config.truncation,
        0.5 * config.voxel_size, config.band_std_slope, config.colour_std**2, config.colour_std / config.voxel_size,
        config.max_precision or 0.0, prior_precision, prior_precision * config.prior_mean, array(voxels),
        array(read_mean), array(count), array(updated)], device)
    return int(updated.sum())


@wp.kernel
def band_blocks(first: int, part: int, depth: wp.array2d(dtype=float), points: wp.array2d(dtype=wp.vec3),
                stride: int, columns_per_row: int, offsets: wp.array(dtype=float), max_depth: float, R: wp.mat33,
                t: wp.vec3, voxel_size: float, block_shift: int, key_offset: wp.int64, key_mask: wp.int64,
                dense: wp.array(dtype=wp.int32), low: wp.vec3i, shape: wp.vec3i, empty_column: int,
                voxels_per_block: int, touched: wp.array(dtype=wp.int32), missing: wp.array(dtype=wp.int64)):
    """Sample s of allocation ray r (thread r * S + s): the point at depth d + offsets[s] along the ray of pixel
    (row, col) = (r // columns_per_row, r % columns_per_row) * stride. Its block's slot is flagged in ``touched``
    when the dense index holds it; else its key (as :func:`prism_ros.prism.map.block_keys`) goes to ``missing[i]``
    (-1: nothing to add)."""
    i = wp.tid() + first
    samples = offsets.shape[0]
    ray = i // samples
    s = i - ray * samples
    row = (ray // columns_per_row) * stride
    col = (ray - (ray // columns_per_row) * columns_per_row) * stride
    missing[i] = wp.int64(-1)
    d = depth[row, col]
    if not (wp.isfinite(d) and d > 0.0 and d <= max_depth):
        return
    scale = wp.max(d + offsets[s], 1.0e-3) / d
    q = R @ (points[row, col] * scale) + t
    b = wp.vec3i(0, 0, 0)
    for a in range(3):
        b[a] = wp.int32(wp.round(q[a] / voxel_size)) >> block_shift
    inside = True
    cell = int(0)
    for a in range(3):
        c = b[a] - low[a]
        if c < 0 or c >= shape[a]:
            inside = False
        cell = cell * shape[a] + wp.clamp(c, 0, shape[a] - 1)
    if inside:
        column = dense[cell]
        if column != empty_column:
            touched[column // voxels_per_block] = 1
            return
    x = wp.int64(b[0]) + key_offset
    y = wp.int64(b[1]) + key_offset
    z = wp.int64(b[2]) + key_offset
    if x >= wp.int64(0) and x <= key_mask and y >= wp.int64(0) and y <= key_mask and z >= wp.int64(0) and z <= key_mask:
        missing[i] = (x << wp.int64(42)) | (y << wp.int64(21)) | z


def band_block_slots(sdf_map, level, T: torch.Tensor, offsets: torch.Tensor, stride: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Slots (sorted) of the allocated blocks the frame's band touches, and the sorted unique keys of the blocks it
    needs that are not allocated (``GaussianSdfMap._band_block_keys`` split by the dense index)."""
    c, dense = sdf_map.config, sdf_map._dense
    depth, points = level.depth.float(), level.points.float()
    rows, columns = (depth.shape[0] + stride - 1) // stride, (depth.shape[1] + stride - 1) // stride
    count = rows * columns * len(offsets)
    device = depth.device
    touched = torch.zeros(max(sdf_map.num_blocks, 1), dtype=torch.int32, device=device)
    missing = torch.empty(count, dtype=torch.int64, device=device)
    T32 = T.float().cpu()
    from prism_ros.prism.map import _KEY_MASK, _KEY_OFFSET

    launch(band_blocks, count, [
        array(depth), array(points, wp.vec3), stride, columns, array(offsets.float()), c.max_depth,
        wp.mat33(*T32[:3, :3].flatten().tolist()), wp.vec3(*T32[:3, 3].tolist()), c.voxel_size,
        sdf_map._block_shift, _KEY_OFFSET, _KEY_MASK, array(dense.columns), wp.vec3i(*dense.low),
        wp.vec3i(*dense.shape), sdf_map._empty_row, sdf_map._voxels_per_block, array(touched), array(missing)], device)
    keys = missing[missing >= 0]
    return touched.nonzero()[:, 0], torch.unique(torch.unique_consecutive(keys))
