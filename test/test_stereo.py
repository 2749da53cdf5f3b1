"""Stereo depth (prism_ros.prism.stereo): exact synthetic pairs, the real EuRoC micro sample, bad input.

Run with ``-s`` to see the measured figures (error, valid fraction, ms per pair).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from shared_data import sample

from prism_ros.errors import InputError
from prism_ros.frame import Frame, Intrinsics
from prism_ros.prism.stereo import StereoConfig, StereoDepthDataset, StereoRectifier, rgbd_frame

# EuRoC-like camera. Non-integer principal point: the synthetic renderer's rays through the exact
# principal point (direction component 0) come back invalid, which would put a line of holes in the truth.
CAMERA = Intrinsics(458.0, 458.0, 367.3, 248.6, 752, 480)
EUROC_BASELINE = 0.11
# left camera in the room centre-left, looking along +x (optical z = world x, y down = world -z)
T_WORLD_LEFT = np.eye(4)
T_WORLD_LEFT[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
T_WORLD_LEFT[:3, 3] = [1.0, 2.5, 1.4]


def translation(x, y=0.0, z=0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [x, y, z]
    return T


def uint8(render) -> np.ndarray:
    return (render.rgb.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene():
    from prism_ros.synthetic import make_scene

    return make_scene(0, keep_out=[T_WORLD_LEFT[:3, 3], (T_WORLD_LEFT @ translation(EUROC_BASELINE))[:3, 3]])


def depth_errors(depth: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(median relative error on pixels valid in both, valid fraction of the estimate)."""
    both = np.isfinite(depth) & np.isfinite(truth) & (truth > 0)
    return float(np.median(np.abs(depth[both] - truth[both]) / truth[both])), float(np.isfinite(depth).mean())


# ------------------------------------------------------------------------------------ synthetic, exact
def test_synthetic_pair_gives_exact_depth_to_two_percent(scene):
    """Two renders 0.11 m apart along the camera x axis: SGBM depth against the exact rendered depth."""
    from prism_ros.synthetic import render_scene

    T_left_right = translation(EUROC_BASELINE)
    left, right = render_scene(scene, T_WORLD_LEFT, CAMERA), render_scene(scene, T_WORLD_LEFT @ T_left_right, CAMERA)
    rectifier = StereoRectifier(CAMERA, CAMERA, T_left_right)
    assert np.allclose(rectifier.R_rect_left, np.eye(3), atol=1e-9)  # already rectified: no rotation
    assert rectifier.baseline == pytest.approx(EUROC_BASELINE)
    result = rectifier.compute(uint8(left), uint8(right))
    truth = render_scene(scene, T_WORLD_LEFT @ rectifier.T_left_rect, rectifier.intrinsics).depth.cpu().numpy()
    error, valid = depth_errors(result.depth, truth)
    print(f"\nsynthetic, pure 0.11 m baseline: median relative depth error {error:.4f}, valid {valid:.3f}, "
          f"depth {np.nanmin(truth):.2f}-{np.nanmax(truth):.2f} m")
    assert result.depth.dtype == np.float32 and result.depth.shape == (CAMERA.height, CAMERA.width)
    assert error < 0.02
    assert valid > 0.7
    assert np.all(np.isnan(result.depth[:, :StereoConfig().num_disparities - 1]))  # no match at the left border


def test_synthetic_general_rig_rectified_camera_is_what_the_docs_say(scene):
    """A rig with a rotated, slightly offset right camera: the rectified left image is the pinhole view
    from ``T_world_left @ T_left_rect`` with the rectified intrinsics, and depth matches that view."""
    from prism_ros.synthetic import render_scene

    T_left_right = translation(EUROC_BASELINE, 0.004, -0.003)
    T_left_right[:3, :3] = Rotation.from_euler("xyz", [0.5, 1.0, 0.3], degrees=True).as_matrix()
    left, right = render_scene(scene, T_WORLD_LEFT, CAMERA), render_scene(scene, T_WORLD_LEFT @ T_left_right, CAMERA)
    rectifier = StereoRectifier(CAMERA, CAMERA, T_right_left=np.linalg.inv(T_left_right))
    angle = np.degrees(np.linalg.norm(Rotation.from_matrix(rectifier.R_rect_left).as_rotvec()))
    assert angle > 1.0  # the rectification really rotates the left camera here
    assert np.allclose(rectifier.T_left_rect @ rectifier.T_rect_left, np.eye(4))
    assert rectifier.intrinsics.distortion == (0.0,) * 5
    T_world_rect = T_WORLD_LEFT @ rectifier.T_left_rect
    direct = render_scene(scene, T_world_rect, rectifier.intrinsics)
    left_rect, right_rect = rectifier.rectify(uint8(left), uint8(right))
    # interpolation only (~0.3 grey levels); a wrong rotation convention or focal length gives tens
    assert np.abs(left_rect.astype(float) - uint8(direct)).mean() < 1.5
    direct_right = render_scene(scene, T_world_rect @ translation(rectifier.baseline), rectifier.intrinsics)
    assert np.abs(right_rect.astype(float) - uint8(direct_right)).mean() < 1.5
    result = rectifier.compute(uint8(left), uint8(right))
    error, valid = depth_errors(result.depth, direct.depth.cpu().numpy())
    print(f"\nsynthetic, general rig ({angle:.2f} deg rectifying rotation): median relative depth error "
          f"{error:.4f}, valid {valid:.3f}")
    assert error < 0.025 and valid > 0.7


# ------------------------------------------------------------------------------------ real EuRoC pair
@pytest.fixture(scope="module")
def euroc():
    from prism_ros.datasets.euroc import EurocDataset

    return EurocDataset(sample("euroc_V1_01_micro"))


def test_euroc_pair_gives_plausible_depth(euroc):
    frame = euroc[0]
    rectifier = StereoRectifier.from_frame(frame)
    rect = rectifier.intrinsics
    assert rect.distortion == (0.0,) * 5 and (rect.width, rect.height) == (752, 480)
    assert rect.fx == rect.fy and rect.fx > 0 and 0 < rect.cx < rect.width and 0 < rect.cy < rect.height
    assert rectifier.baseline == pytest.approx(0.110, abs=0.002)
    rectifier.compute(frame.rgb, frame.right)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        result = rectifier.compute(frame.rgb, frame.right)
        times.append(time.perf_counter() - start)
    depth = result.depth[np.isfinite(result.depth)]
    p5, p50, p95 = np.percentile(depth, [5, 50, 95])
    print(f"\nEuRoC V1_01 pair 0: valid {result.valid_fraction:.3f}, depth p5/p50/p95 {p5:.2f}/{p50:.2f}/{p95:.2f} m, "
          f"{1e3 * np.median(times):.0f} ms per pair (752x480, median of 5)")
    assert result.valid_fraction > 0.5
    assert 0.5 <= p5 and p95 <= 10.0 and 1.0 < p50 < 6.0
    assert result.image.shape == frame.rgb.shape and result.image.dtype == np.uint8
    # the vehicle stands still over the first frames: depth ten frames later agrees
    later = rectifier.compute(euroc[10].rgb, euroc[10].right).depth
    both = np.isfinite(result.depth) & np.isfinite(later)
    assert both.mean() > 0.4
    assert np.median(np.abs(later[both] - result.depth[both]) / result.depth[both]) < 0.02


def test_rgbd_frame_and_dataset_compose_the_rectification(euroc):
    frame = euroc[3]
    assert frame.pose is not None
    dataset = StereoDepthDataset(euroc)
    rgbd = dataset[3]
    T_left_rect = dataset.rectifier.T_left_rect
    assert rgbd.depth.shape == (480, 752) and rgbd.depth.dtype == np.float32
    assert rgbd.rgb.shape == (480, 752, 3) and rgbd.rgb.dtype == np.uint8
    assert rgbd.intrinsics == dataset.rectifier.intrinsics
    assert rgbd.right is None and rgbd.T_left_right is None and rgbd.right_intrinsics is None
    assert np.allclose(rgbd.pose, frame.pose @ T_left_rect)
    assert rgbd.timestamp == frame.timestamp and len(rgbd.imu) == len(frame.imu)
    assert np.allclose(rgbd.extras["T_left_rect"], T_left_rect)
    assert 0.5 < rgbd.extras["stereo_valid_fraction"] <= 1.0
    std = rgbd.extras["depth_std"]
    assert np.all(np.isfinite(std) == np.isfinite(rgbd.depth))
    assert np.nanmax(std) > np.nanmin(std) > 0
    assert np.allclose(dataset.T_imu_camera, euroc.T_imu_camera @ T_left_rect)
    (t, poses), (t0, poses0) = dataset.ground_truth(), euroc.ground_truth()
    assert np.array_equal(t, t0) and np.allclose(poses, poses0 @ T_left_rect)
    assert len(dataset) == len(euroc) and np.array_equal(dataset.timestamps, euroc.timestamps)
    standalone = rgbd_frame(frame)  # builds its own rectifier: same result
    assert np.array_equal(np.isnan(standalone.depth), np.isnan(rgbd.depth))


# ------------------------------------------------------------------------------------ bad input
def bad(**change) -> Intrinsics:
    from dataclasses import replace

    return replace(CAMERA, **change)


@pytest.mark.parametrize("left, right, extrinsic, needle", [
    (bad(fx=0.0), CAMERA, translation(0.11), "focal length must be positive"),
    (CAMERA, bad(fy=-458.0), translation(0.11), "focal length must be positive"),
    (CAMERA, bad(width=640), translation(0.11), "image sizes differ"),
    (CAMERA, CAMERA, translation(0.0), "baseline is zero"),
    (CAMERA, CAMERA, translation(-0.11), "lies to the left"),
    (CAMERA, CAMERA, translation(0.0, 0.11), "vertical"),
    (CAMERA, CAMERA, np.eye(3), "4x4"),
    (CAMERA, CAMERA, 2 * translation(0.11), "not a rigid transform"),
    (CAMERA, bad(distortion=(0.1,)), translation(0.11), "distortion coefficients"),
])
def test_bad_calibration_raises_input_error(left, right, extrinsic, needle):
    with pytest.raises(InputError, match=needle) as caught:
        StereoRectifier(left, right, extrinsic)
    assert caught.value.fix


def test_bad_images_config_and_frames_raise_input_error():
    rectifier = StereoRectifier(CAMERA, CAMERA, translation(0.11))
    image = np.zeros((480, 752), np.uint8)
    with pytest.raises(InputError, match="calibration is 752x480"):
        rectifier.compute(image, np.zeros((240, 376), np.uint8))
    with pytest.raises(InputError, match="8-bit"):
        rectifier.compute(image, image.astype(np.float32))
    with pytest.raises(InputError, match="exactly one"):
        StereoRectifier(CAMERA, CAMERA, translation(0.11), T_right_left=translation(-0.11))
    with pytest.raises(InputError, match="multiple of 16"):
        StereoRectifier(CAMERA, CAMERA, translation(0.11), config=StereoConfig(num_disparities=50))
    with pytest.raises(InputError, match="min_depth"):
        StereoConfig(min_depth=5.0, max_depth=1.0).check()
    mono = Frame(0, 0.0, np.zeros((480, 752, 3), np.uint8), None, CAMERA)
    with pytest.raises(InputError, match="no right image"):
        rgbd_frame(mono)
    with pytest.raises(InputError, match="no right camera calibration"):
        StereoRectifier.from_frame(mono)


def test_textureless_pair_is_all_nan_and_depth_std_grows_with_depth():
    rectifier = StereoRectifier(CAMERA, CAMERA, translation(0.11))
    flat = np.full((480, 752), 128, np.uint8)
    result = rectifier.compute(flat, flat)
    assert result.valid_fraction < 0.01
    std = rectifier.depth_std(np.array([1.0, 2.0, 4.0]))
    assert std[1] == pytest.approx(4 * std[0]) and std[2] == pytest.approx(16 * std[0])
