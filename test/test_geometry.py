"""Camera vs OpenCV, pyramids (the Lie groups are in test_lie.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from prism_ros.frame import Intrinsics
from prism_ros.geometry import PinholeCamera, camera_pyramid, depth_pyramid, intensity_pyramid

DTYPES = [torch.float32, torch.float64]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# TUM fr1 colour camera: strong radial distortion with k3
FR1 = Intrinsics(517.3, 516.5, 318.6, 255.3, 640, 480, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))


# ---------------------------------------------------------------- camera
def random_points(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.5, 5.0, n)
    xy = rng.uniform([-0.6, -0.45], [0.6, 0.45], (n, 2)) * z[:, None]
    return np.c_[xy, z]


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_matches_cv2_project_points(dtype):
    P = random_points()
    uv_cv = cv2.projectPoints(P, np.zeros(3), np.zeros(3), FR1.K, np.array(FR1.distortion))[0][:, 0]
    cam = PinholeCamera.from_intrinsics(FR1, dtype=dtype)
    uv, z = cam.project(torch.tensor(P, dtype=dtype))
    assert uv.dtype == dtype and uv.shape == (len(P), 2)
    assert np.abs(uv.double().numpy() - uv_cv).max() < (1e-9 if dtype == torch.float64 else 2e-3)
    assert np.allclose(z.double().numpy(), P[:, 2])


def test_pixel_rays_match_cv2_undistort_points():
    intr = FR1.scaled(0.25)  # same field of view and distortion, fewer pixels
    cam = PinholeCamera.from_intrinsics(intr, dtype=torch.float64)
    rays = cam.pixel_rays()
    assert rays.shape == (120, 160, 3) and torch.all(rays[..., 2] == 1)
    v, u = np.mgrid[0:120, 0:160]
    uv = np.stack((u, v), -1).reshape(-1, 1, 2).astype(np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-15)
    xy_cv = cv2.undistortPoints(uv, intr.K, np.array(intr.distortion), criteria=criteria)[:, 0]
    xy = rays[..., :2].reshape(-1, 2).numpy()
    assert np.isfinite(xy).all()
    assert np.abs(xy - xy_cv).max() < 1e-6


@pytest.mark.parametrize("distortion", [(0.0,) * 5, FR1.distortion])
def test_backproject_then_project_returns_the_pixels(distortion):
    intr = Intrinsics(FR1.fx / 10, FR1.fy / 10, 31.8, 25.5, 64, 48, distortion)  # fr1's field of view
    cam = PinholeCamera.from_intrinsics(intr, dtype=torch.float64)
    depth = torch.rand(2, 48, 64, dtype=torch.float64) * 4 + 0.5
    depth[0, 3, 5] = float("nan")
    points = cam.backproject(depth)
    assert points.shape == (2, 48, 64, 3) and torch.isnan(points[0, 3, 5]).all()
    uv, z = cam.project(points.reshape(2, -1, 3))
    v, u = torch.meshgrid(torch.arange(48.0, dtype=torch.float64), torch.arange(64.0, dtype=torch.float64),
                          indexing="ij")
    grid = torch.stack((u, v), -1).reshape(1, -1, 2).expand(2, -1, -1)
    ok = torch.isfinite(uv).all(-1)
    assert ok.sum() == 2 * 48 * 64 - 1
    assert (uv[ok] - grid[ok]).abs().max() < 1e-6
    assert torch.allclose(z[ok], depth.reshape(2, -1)[ok])


def test_project_marks_points_behind_or_far_outside_as_nan():
    cam = PinholeCamera.from_intrinsics(FR1, dtype=torch.float64)
    pts = torch.tensor([[0.1, 0.1, -1.0], [0.0, 0.0, 0.0], [0.1, -0.1, 2.0], [40.0, 0.0, 1.0]], dtype=torch.float64,
                       requires_grad=True)
    uv, _ = cam.project(pts)
    assert torch.isnan(uv[:2]).all() and torch.isfinite(uv[2]).all()
    assert cam.inside(uv).tolist() == [False, False, True, False]
    (grad,) = torch.autograd.grad(uv[2].sum(), pts)
    assert torch.isfinite(grad).all()
    # barrel distortion r (1 - 0.3 r^2) folds back at r = 1.05: a point at r = 2 would land inside the image
    barrel = PinholeCamera.from_intrinsics(Intrinsics(500, 500, 320, 240, 640, 480, (-0.3, 0, 0, 0, 0)))
    uv, _ = barrel.project(torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.0, 1.0]]))
    assert torch.isnan(uv[0]).all() and barrel.inside(uv).tolist() == [False, True]


def test_camera_from_intrinsics_scaled_and_to():
    cam = PinholeCamera.from_intrinsics(FR1)
    assert cam.dtype == torch.float32 and torch.allclose(cam.K, torch.tensor(FR1.K, dtype=torch.float32))
    half = cam.scaled(0.5)
    ref = FR1.scaled(0.5)
    assert (half.width, half.height) == (ref.width, ref.height) == (320, 240)
    assert torch.allclose(torch.stack((half.fx, half.fy, half.cx, half.cy)),
                          torch.tensor([ref.fx, ref.fy, ref.cx, ref.cy]))
    assert cam.to(dtype=torch.float64).pixel_rays().dtype == torch.float64
    short = PinholeCamera.from_intrinsics(Intrinsics(500, 500, 320, 240, 640, 480, (0.1, 0.0, 0.0, 0.0)))
    assert short.distortion.shape == (5,) and short.has_distortion


# ---------------------------------------------------------------- pyramids
def test_intensity_pyramid_shapes():
    levels = intensity_pyramid(torch.rand(2, 3, 481, 640), 4)
    assert [tuple(x.shape) for x in levels] == [(2, 3, 481, 640), (2, 3, 240, 320), (2, 3, 120, 160), (2, 3, 60, 80)]
    assert [tuple(x.shape) for x in intensity_pyramid(torch.rand(1, 48, 64), 2)] == [(1, 48, 64), (1, 24, 32)]


def test_depth_pyramid_does_not_bleed_across_edges():
    depth = torch.ones(2, 48, 65)
    depth[..., 31:] = 3.0  # edge inside the 2x2 blocks of columns 30-31
    depth[0, :2, :2] = float("nan")
    depth[0, 10, 10] = float("nan")
    levels = depth_pyramid(depth, 3)
    assert [tuple(x.shape) for x in levels] == [(2, 48, 65), (2, 24, 32), (2, 12, 16)]
    for level in levels[1:]:
        finite = level[torch.isfinite(level)]
        assert torch.all((finite == 1.0) | (finite == 3.0))  # nothing in between
    assert torch.isnan(levels[1][:, :, 15]).all()  # blocks straddling the edge
    assert torch.isnan(levels[1][0, 0, 0]) and levels[1][0, 5, 5] == 1.0  # all-NaN block / 3 of 4 valid
    smooth = torch.linspace(2.0, 2.04, 64).expand(1, 32, 64)  # a smooth ramp is averaged, not cut
    assert torch.isfinite(depth_pyramid(smooth, 3)[2]).all()


def test_camera_pyramid_matches_image_pyramid_and_projection():
    cam = PinholeCamera.from_intrinsics(Intrinsics(500.0, 505.0, 320.3, 239.7, 641, 481), dtype=torch.float64)
    cams = camera_pyramid(cam, 4)
    images = intensity_pyramid(torch.rand(1, 1, 481, 641), 4)
    assert [(c.height, c.width) for c in cams] == [tuple(x.shape[-2:]) for x in images]
    p = torch.tensor([[0.3, -0.2, 2.0]], dtype=torch.float64)
    uv0 = cam.project(p)[0]
    for k, c in enumerate(cams):
        assert torch.allclose(c.project(p)[0], (uv0 + 0.5) / 2**k - 0.5)


# ---------------------------------------------------------------- CUDA
@CUDA
def test_camera_and_pyramid_on_cuda():
    cam = PinholeCamera.from_intrinsics(FR1, device="cuda")
    pts = torch.tensor(random_points(100), dtype=torch.float32, device="cuda")
    uv, _ = cam.project(pts)
    assert uv.device.type == "cuda"
    assert torch.allclose(uv.cpu(), PinholeCamera.from_intrinsics(FR1).project(pts.cpu())[0], atol=1e-3)
    depth = torch.rand(480, 640, device="cuda") + 1
    assert cam.backproject(depth).device.type == "cuda"
    assert depth_pyramid(depth, 3)[2].shape == (120, 160)
