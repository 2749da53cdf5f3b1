"""The fused tracking kernel (prism_ros.prism.kernels.track) against the torch reference (prism_ros.prism.tracking).

Both backends linearise the same points at the same pose; they differ only in float32 rounding (the kernel
sums in float64, per thread, in another order), so normal equations agree to ~1e-6 relative, counts exactly
(a point on a gate or pixel boundary could flip: a few are allowed), and whole track() calls to well below
the tracking accuracy. Synthetic: the perfect-map room of test_tracking; real: 7-Scenes redkitchen frames
tracked against a keyframe (a render made of an earlier frame's own depth and intensity).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from shared_data import sample
from test_tracking import (
    ICP_ONLY,
    PHOTOMETRIC_ONLY,
    PREDICTION_ERROR,
    QVGA,
    WEAK_PRIOR,
    left_error,
    map_render,
    moved,
    observe,
    pose_covariance,
    room,
)

from prism_ros.geometry import PinholeCamera
from prism_ros.prism import tracking
from prism_ros.prism.kernels import available
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import RenderResult
from prism_ros.prism.tracking import TrackingConfig, track

pytestmark = pytest.mark.skipif(not available(), reason="NVIDIA Warp is not installed")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CONFIGS = {"icp+photometric": {}, "icp": ICP_ONLY, "photometric": PHOTOMETRIC_ONLY,
           "tukey": dict(robust_loss="tukey", robust_scale=4.7), "no-loss": dict(robust_loss="none")}
COUNTS = ("covered", "associated", "inliers", "photometric_count", "rows")
BOUNDARY_CASES = 10  # points that float32 rounding moves across a gate, a pixel boundary or the inlier threshold


# quality numbers: 1e-3 relative, or these absolute floors for the residual statistics, which at a noise-free
# MAP are themselves float32 rounding (point-to-plane errors of ~1e-6 m on coordinates of a few metres)
QUALITY_FLOORS = dict(inlier_ratio=0.0, coverage=0.0, icp_rmse=1e-6, photometric_rmse=1e-4, mean_residual=1e-3,
                      min_eigenvalue=0.0, condition=0.0, prior_distance=1e-6)


def linearisations(obs, rendered, T, config):
    """(torch, fused) Linearisation of every tracking level at pose T."""
    from prism_ros.prism.kernels.track import lineariser

    reference = tracking.make_reference(rendered, config)
    T = np.asarray(T, dtype=np.float64)
    return [(tracking.linearise(T, level, reference, config), lineariser(level, reference, config)(T))
            for level in tracking.make_levels(obs, rendered, config)]


def compare_systems(obs, rendered, T, config, at_map: bool) -> dict:
    """Assert the two backends' normal equations and sums agree at T; returns the worst differences.

    Away from the MAP the residuals are many sigmas: float32 rounding of world coordinates (~1e-4 sigma) moves
    each robust weight by that much relative (and each bilinear sample by its gradient), so H agrees to ~1e-3 there
    and the Newton steps to ~1e-3 of
    their length; at the MAP (robust weights 1) H agrees to float32 summation rounding.
    """
    worst = dict(H=0.0, step=0.0, counts=0.0, sums=0.0)
    for reference, fused in linearisations(obs, rendered, T, config):
        scale = np.abs(reference.H).max()
        assert scale > 0 and fused.points == reference.points
        solve = lambda g, H=reference.H + 1e-9 * scale * np.eye(6): np.linalg.solve(H, g)
        step = np.abs(solve(reference.g - fused.g)).max() / (1.0 if at_map else np.abs(solve(reference.g)).max())
        expected, got = tracking.term_sums(reference, config), fused.sums
        counts = max(abs(getattr(expected, k) - getattr(got, k)) for k in COUNTS)
        sums = max(abs(getattr(expected, k) - getattr(got, k)) / abs(getattr(expected, k))
                   for k in ("icp_squared", "photometric_squared", "abs_residual") if getattr(expected, k))
        worst = dict(H=max(worst["H"], np.abs(reference.H - fused.H).max() / scale), step=max(worst["step"], step),
                     counts=max(worst["counts"], counts), sums=max(worst["sums"], sums))
    print({k: f"{v:.2g}" for k, v in worst.items()})
    assert worst["H"] < (1e-5 if at_map else 1e-2)
    assert worst["step"] < (1e-6 if at_map else 1e-2)  # m, rad at the MAP; else relative to the step
    assert worst["counts"] <= BOUNDARY_CASES and worst["sums"] < 1e-2
    return worst


def compare_tracks(obs, rendered, prior_T, prior_cov, config):
    """Assert whole track() calls agree: pose, covariance and quality."""
    reference = track(obs, rendered, prior_T, prior_cov, config)
    fused = track(obs, rendered, prior_T, prior_cov, config, backend="fused")
    pose = np.abs(left_error(reference.T, fused.T)).max()
    covariance = (reference.covariance - fused.covariance).abs().max() / reference.covariance.abs().max()
    print(f"pose {pose:.2g}, covariance {float(covariance):.2g}, iterations {reference.quality['iterations']} "
          f"{fused.quality['iterations']}")
    assert reference.ok and fused.ok, (reference.quality["reasons"], fused.quality["reasons"])
    assert pose < 1e-5 and covariance < 1e-3
    assert abs(fused.quality["valid_pixels"] - reference.quality["valid_pixels"]) <= BOUNDARY_CASES
    assert abs(fused.quality["iterations"] - reference.quality["iterations"]) <= 1
    for key, floor in QUALITY_FLOORS.items():
        a, b = reference.quality[key], fused.quality[key]
        assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=1e-3, abs=floor), key
    return reference, fused


# ----------------------------------------------------------------------------- synthetic room
@pytest.fixture(scope="module")
def frame0(room):
    T_true = room.poses[0]
    prior_T = moved(T_true, *PREDICTION_ERROR)
    return T_true, prior_T, observe(*room.frame(0), QVGA), map_render(room.scene, prior_T, QVGA)


@pytest.mark.parametrize("terms", CONFIGS.values(), ids=CONFIGS.keys())
def test_normal_equations_agree(frame0, terms):
    """At the predicted pose (3 cm / 2 deg off: large gradients) and at the truth (g near zero)."""
    T_true, prior_T, obs, rendered = frame0
    for T, at_map in ((prior_T, False), (T_true, True)):
        compare_systems(obs, rendered, T, TrackingConfig(**terms), at_map)


def test_distorted_render_camera_agrees(frame0):
    """A distorted render camera: uv from the torch projection, the rest in the kernel."""
    T_true, prior_T, obs, rendered = frame0
    camera = rendered.camera
    distorted = PinholeCamera(camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                              torch.tensor([0.08, -0.05, 0.002, -0.001, 0.01]))
    compare_systems(obs, replace(rendered, camera=distorted), prior_T, TrackingConfig(), at_map=False)


@pytest.mark.parametrize("terms", [CONFIGS[k] for k in ("icp+photometric", "icp", "tukey")],
                         ids=["icp+photometric", "icp", "tukey"])
def test_track_agrees(frame0, terms):
    T_true, prior_T, obs, rendered = frame0
    reference, fused = compare_tracks(obs, rendered, prior_T, WEAK_PRIOR, TrackingConfig(**terms))
    assert fused.ok and np.abs(left_error(T_true, fused.T)).max() < 1e-3


def test_lost_frame_agrees(room):
    """Facing away from the render: both backends call it lost for the same reasons."""
    prior_T = torch.as_tensor(room.poses[0])
    T_away = moved(room.poses[0], (0.0, 0.0, 0.3), (0.0, math.radians(150.0), 0.0))
    obs, rendered = observe(*room.frame(0), QVGA), map_render(room.scene, T_away, QVGA)
    estimates = [track(obs, rendered, prior_T, pose_covariance(0.05, 3.0), TrackingConfig(), backend=backend)
                 for backend in ("torch", "fused")]
    reasons = [[reason.split()[0] for reason in e.quality["reasons"]] for e in estimates]
    assert not estimates[0].ok and not estimates[1].ok and reasons[0] == reasons[1]


# ----------------------------------------------------------------------------- real frames
@pytest.fixture(scope="module")
def kitchen():
    """7-Scenes redkitchen frame 8 (VGA observation) and a QVGA keyframe render of frame 0 at its pose."""
    from prism_ros.datasets import open_dataset

    dataset = open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="0:9:8")
    key, current = (Observation.from_frame(frame) for frame in dataset)
    T_key = torch.as_tensor(dataset[0].pose)
    level = key.levels[1]
    valid = torch.isfinite(level.points[..., 2]) & torch.isfinite(level.normals[..., 2])
    R, t = T_key[:3, :3].float(), T_key[:3, 3].float()
    rendered = RenderResult(T_key, level.camera, level.depth, level.points @ R.T + t, level.normals @ R.T,
                            torch.zeros((*level.depth.shape, 3)), level.intensity, level.gradient,
                            torch.zeros_like(level.depth), valid)
    return current, rendered, torch.as_tensor(dataset[1].pose)


def test_real_frames_agree(kitchen):
    current, rendered, T_current = kitchen
    compare_systems(current, rendered, T_current, TrackingConfig(), at_map=False)
    prior_T = moved(T_current, 0.3 * PREDICTION_ERROR[0], 0.3 * PREDICTION_ERROR[1])
    compare_tracks(current, rendered, prior_T, pose_covariance(0.02, 1.0), TrackingConfig())


# ----------------------------------------------------------------------------- device
@CUDA
def test_cuda_matches_cpu(room):
    T_true = room.poses[0]
    prior_T = moved(T_true, *PREDICTION_ERROR)
    rgb, depth = room.frame(0)
    config = TrackingConfig()
    for (_, cpu), (reference, cuda) in zip(
            linearisations(observe(rgb, depth, QVGA), map_render(room.scene, prior_T, QVGA), prior_T, config),
            linearisations(observe(rgb, depth, QVGA, device="cuda"),
                           map_render(room.scene, prior_T, QVGA, device="cuda"), prior_T, config)):
        for other in (cpu, reference):
            assert np.abs(cuda.H - other.H).max() < 1e-5 * np.abs(other.H).max()
            assert np.abs(cuda.g - other.g).max() < 1e-4 * np.abs(other.g).max()
        assert np.abs(np.subtract(cuda.sums, cpu.sums)[[0, 1, 2, 4, 7]]).max() <= BOUNDARY_CASES
    estimate = track(observe(rgb, depth, QVGA, device="cuda"), map_render(room.scene, prior_T, QVGA, device="cuda"),
                     prior_T.cuda(), WEAK_PRIOR.cuda(), config, backend="fused")
    assert estimate.ok and estimate.T.device.type == "cuda"
    assert np.abs(left_error(T_true, estimate.T)).max() < 1e-3
