"""Noise calibration (prism_ros.evaluation.noise_fit) and the filter's frame-to-frame cross-covariance: known
noise parameters are recovered from data generated with them, and a filter chain with exact models gives
chi-square frame-to-frame NEES only with the cross-covariance."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.transform import Rotation

from prism_ros.dynamics.model import DynamicsConfig, boxplus, make_transition
from prism_ros.evaluation.calibration import LEVELS, coverage, pose_nees, relative_pose_nees
from prism_ros.evaluation.noise_fit import (
    CHI2_6DOF_MEDIAN,
    covariance_scale,
    fit_drift_scale,
    fit_motion_noise,
    motion_nll,
)
from prism_ros.geometry.lie import se3_exp, se3_log
from prism_ros.prism.state import GaussianState, PoseEstimate
from prism_ros.prism.velocity import condition_on_pose

F64 = dict(dtype=torch.float64)


def exp(xi) -> np.ndarray:
    return se3_exp(torch.as_tensor(np.asarray(xi, dtype=np.float64))).numpy()


def white_acceleration_path(frames: int, linear: float, angular: float, rng, fps: float = 30.0, substeps: int = 20,
                            dof: float = 0.0):
    """Camera poses at ``fps`` of a rig whose world velocity and body rate are random walks with the given
    white-noise acceleration densities (integrated finely between frames): the constant-velocity model's truth.
    With ``dof`` > 0 the motion jerks: each frame interval's densities are scaled by 1 / sqrt(g), g ~ Gamma(dof / 2,
    2 / dof), so that its accelerations are Student-t with ``dof`` degrees of freedom."""
    dt = 1.0 / fps / substeps
    p, v, R, w = np.zeros(3), np.zeros(3), np.eye(3), np.zeros(3)
    poses, scale = [], 1.0
    for k in range(frames * substeps):
        if k % substeps == 0:
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, p
            poses.append(T)
            scale = 1.0 / np.sqrt(rng.gamma(dof / 2, 2 / dof)) if dof else 1.0
        p, R = p + v * dt, R @ Rotation.from_rotvec(w * dt).as_matrix()
        v = v + scale * rng.normal(0, linear * np.sqrt(dt), 3)
        w = w + scale * rng.normal(0, angular * np.sqrt(dt), 3)
    return np.arange(frames) / fps, np.stack(poses)


def test_motion_noise_is_recovered_from_a_path_generated_with_it():
    """Densities 0.3 m/s^2/sqrt(Hz) and 0.5 rad/s^2/sqrt(Hz), fitted from a start 3x and 5x off: within 20 %."""
    stamps, poses = white_acceleration_path(120, 0.3, 0.5, np.random.default_rng(0))
    start = DynamicsConfig(model="constant_velocity", linear_acceleration_noise=1.0, angular_acceleration_noise=0.1)
    fitted, dof = fit_motion_noise(stamps, poses, start, gt_sigma=(1e-5, 1e-5), dof=None)
    assert fitted.linear_acceleration_noise == pytest.approx(0.3, rel=0.2)
    assert fitted.angular_acceleration_noise == pytest.approx(0.5, rel=0.2)
    assert dof == 0.0


def test_jerky_motion_is_fitted_with_heavy_tails_and_smooth_motion_without():
    """A path whose frame intervals jerk (Student-t accelerations, 3 degrees of freedom): the fitted densities are
    the path's within 20 % and the fitted prior has heavy tails (under 10 degrees of freedom; innovations mix
    several intervals, so they are lighter-tailed than one interval). The likelihood prefers heavy tails for that
    path and Gaussian ones for a smooth path."""
    start = DynamicsConfig(model="constant_velocity", linear_acceleration_noise=1.0, angular_acceleration_noise=0.1)
    stamps, jerky = white_acceleration_path(150, 0.3, 0.5, np.random.default_rng(1), dof=3.0)
    fitted, dof = fit_motion_noise(stamps, jerky, start, gt_sigma=(1e-5, 1e-5))
    assert fitted.linear_acceleration_noise == pytest.approx(0.3, rel=0.2)
    assert fitted.angular_acceleration_noise == pytest.approx(0.5, rel=0.2)
    assert 1.0 < dof < 10.0
    _, smooth = white_acceleration_path(150, 0.3, 0.5, np.random.default_rng(2))
    truth = dataclasses.replace(start, linear_acceleration_noise=0.3, angular_acceleration_noise=0.5)
    nll = lambda path, nu: motion_nll(stamps, path, truth, (1e-5, 1e-5), dof=nu)
    assert nll(jerky, 4.0) < nll(jerky, 0.0) and nll(smooth, 0.0) < nll(smooth, 4.0)


def test_a_path_interpolated_between_keyframes_is_refused_as_a_motion_record():
    """Poses interpolated on the geodesic between every 5th pose (constant velocity, then a jump, as some
    datasets' ground truth is): the fit's tails reach the bottom of the range and it says why."""
    stamps, poses = white_acceleration_path(60, 0.3, 0.5, np.random.default_rng(5))
    interpolated = np.stack([a @ exp(f * se3_log(torch.as_tensor(np.linalg.inv(a) @ b)).numpy())
                             for a, b in zip(poses[::5][:-1], poses[::5][1:]) for f in np.arange(5) / 5])
    with pytest.raises(ValueError, match="interpolated between keyframes"):
        fit_motion_noise(stamps[:len(interpolated)], interpolated, DynamicsConfig(model="constant_velocity"),
                         gt_sigma=(1e-5, 1e-5))


def random_covariances(n: int, rng, size: float = 1e-6) -> np.ndarray:
    A = rng.normal(0, 1, (n, 6, 6))
    return size * (A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(6))


def test_the_covariance_scale_is_recovered_from_errors_drawn_with_it():
    """Errors drawn from 7x the reported covariances: the fitted scale is 7 within 20 %, 1 for calibrated ones."""
    rng = np.random.default_rng(3)
    S = random_covariances(3000, rng)
    xi = np.einsum("nij,nj->ni", np.linalg.cholesky(7.0 * S), rng.normal(size=(3000, 6)))
    nees = np.einsum("ni,ni->n", xi, np.linalg.solve(S, xi[..., None])[..., 0])
    assert covariance_scale(nees) == pytest.approx(7.0, rel=0.2)
    assert covariance_scale(nees / 7.0) == pytest.approx(1.0, rel=0.2)


def test_the_drift_scale_is_recovered_from_a_path_drifting_with_it():
    """Map-relative covariances S and a unit drift D_k that grows along the path; absolute errors drawn from
    S + 40 D_k: the fitted drift scale is 40 within 20 %, and the NEES median is then chi-square's."""
    rng = np.random.default_rng(4)
    n = 1500
    S = random_covariances(n, rng)
    D = np.arange(n)[:, None, None] / 50.0 * random_covariances(1, rng)[0]
    xi = np.einsum("nij,nj->ni", np.linalg.cholesky(S + 40.0 * D + 1e-15 * np.eye(6)), rng.normal(size=(n, 6)))
    xi[0] = 0.0  # tied at the first frame
    gt = np.stack([exp(rng.normal(0, 0.3, 6)) for _ in range(n)])
    est = np.stack([np.linalg.inv(exp(x)) @ T for x, T in zip(xi, gt)])
    scale = fit_drift_scale(est, gt, S, D, np.ones(n, bool))
    assert scale == pytest.approx(40.0, rel=0.2)
    assert np.median(pose_nees(est, gt, S + scale * D)[1:]) == pytest.approx(CHI2_6DOF_MEDIAN, rel=0.01)


def test_relative_nees_uses_the_cross_covariance():
    """Frame k-1 exact, frame k off by v: the NEES is v^T (S_k + S_{k-1} - C - C^T)^-1 v."""
    rng = np.random.default_rng(5)
    gt = np.stack([exp(rng.normal(0, 0.5, 6)), exp(rng.normal(0, 0.5, 6))])
    v = np.array([2e-4, -1e-4, 3e-4, 1e-4, 2e-4, -2e-4])
    est = np.stack([gt[0], np.linalg.inv(exp(v)) @ gt[1]])
    S = np.stack([np.diag([4e-8, 5e-8, 6e-8, 4e-8, 4e-8, 5e-8]), np.diag([5e-8, 4e-8, 4e-8, 5e-8, 6e-8, 4e-8])])
    C = np.zeros((2, 6, 6))
    C[1] = 0.3 * np.sqrt(S[0] * S[1]) + np.diag([1e-9, 0, 0, 0, 0, 0])[::-1]  # correlated, not symmetric
    joint = S[0] + S[1] - C[1] - C[1].T
    assert relative_pose_nees(est, gt, S, C)[0] == pytest.approx(v @ np.linalg.solve(joint, v), rel=1e-3)
    assert relative_pose_nees(est, gt, S, np.zeros((2, 6, 6)))[0] == pytest.approx(relative_pose_nees(est, gt, S)[0])


def test_a_filter_chain_with_exact_models_is_calibrated_frame_to_frame_only_with_its_cross_covariance():
    """Many short runs of the constant-velocity model's own truth, each pose measured with noise R comparable to
    the prior: the predictions and pose updates carry cov(error_k, error_k-1), and with it the frame-to-frame NEES
    follows chi-square (coverage within 5 points); taken as independent, the same errors look over-dispersed
    the other way (the motion's covariance is overstated)."""
    rng = np.random.default_rng(6)
    generator = torch.Generator().manual_seed(6)
    config = DynamicsConfig(model="constant_velocity", linear_acceleration_noise=0.5, angular_acceleration_noise=0.8)
    model = make_transition(config)
    R = torch.diag(torch.tensor([6e-3] * 3 + [9e-3] * 3, **F64) ** 2)
    with_cross, without = [], []
    for _ in range(120):
        truth_T, truth_v = se3_exp(torch.as_tensor(rng.normal(0, 0.5, 6), **F64)), torch.zeros(6, **F64)
        state = GaussianState.initial(truth_T, t=0.0, pose_std=[2e-3] * 3 + [3e-3] * 3, velocity_std=[0.02] * 6)
        state.T = se3_exp(torch.as_tensor(rng.normal(0, 1, 6), **F64) * torch.sqrt(torch.diag(state.pose_covariance))
                          ) @ truth_T  # the start's error is drawn from its covariance
        est, gt, S, C = [], [], [], []
        for k in range(1, 9):
            t = k / 30.0
            predicted = model.predict(GaussianState(t - 1 / 30.0, truth_T, truth_v, torch.zeros(12, 12, **F64)), t)
            noise = torch.linalg.cholesky(predicted.covariance + 1e-18 * torch.eye(12, **F64)) @ torch.randn(
                12, generator=generator, **F64)
            truth_T, truth_v = boxplus(predicted.T, predicted.velocity, noise)
            prior = model.predict(state, t)
            measured = se3_exp(torch.linalg.cholesky(R) @ torch.randn(6, generator=generator, **F64)) @ truth_T
            innovation = se3_log(measured @ torch.linalg.inv(prior.T))
            gain = torch.linalg.solve(prior.pose_covariance + R, prior.pose_covariance).T
            pose = PoseEstimate(se3_exp(gain @ innovation) @ prior.T,
                                prior.pose_covariance - gain @ prior.pose_covariance, True)
            state = condition_on_pose(prior, pose)
            est.append(state.T.numpy()), gt.append(truth_T.numpy())
            S.append(state.pose_covariance.numpy()), C.append(state.previous_cross[:6, :6].numpy())
        est, gt, S, C = map(np.stack, (est, gt, S, C))
        with_cross.extend(relative_pose_nees(est, gt, S, C)[2:])
        without.extend(relative_pose_nees(est, gt, S)[2:])
    observed = coverage(np.array(with_cross))
    for level in LEVELS:
        assert abs(observed[f"{level:g}"] - level) < 0.05, observed
    print(f"\nframe-to-frame NEES median {np.median(with_cross):.2f} with the cross-covariance, "
          f"{np.median(without):.2f} without")
    assert np.median(without) < 0.5 * CHI2_6DOF_MEDIAN


def test_calibrate_writes_a_preset_the_filter_loads(tmp_path, synthetic_sequence):
    """`prism-ros calibrate` on a short synthetic sequence: a preset with the fitted settings and the command in
    its comments, which `prism-ros run --config` accepts."""
    from prism_ros.cli.main import main
    from prism_ros.prism.config import FilterConfig

    out = tmp_path / "calibrated.yaml"
    assert main(["calibrate", "--dataset", str(synthetic_sequence), "--frames", "0:20", "--out", str(out),
                 "--max-runs", "2", "--device", "cpu", "--quiet"]) == 0
    text = out.read_text()
    assert text.startswith("# Calibrated by: prism-ros calibrate")
    values = yaml.safe_load(text)
    assert values["map_drift"] > 0 and values["tracking"]["correlation_pixels"] > 0
    assert values["dynamics"]["model"] == "imu"  # the folder's preset is kept where nothing was fitted
    config = FilterConfig.from_yaml(out)
    assert config.map_drift == pytest.approx(values["map_drift"])
