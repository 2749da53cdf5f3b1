"""Predictive rollouts (prism_ros.dynamics.rollout): the samples follow the control input, their spread is the filter's
linearised covariance, they are reproducible, bad controls are InputErrors, and `prism-ros dynamics predict`
writes its files. Predicted depth at the mean future pose is the render at that pose."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prism_ros.cli.main import app
from prism_ros.dynamics.model import DynamicsConfig, ImuEuler, ResidualMLP, make_transition
from prism_ros.dynamics.rollout import linearised_rollout, predicted_depth, sample_rollouts, world_position_covariance
from prism_ros.errors import InputError
from prism_ros.frame import ImuSamples
from prism_ros.prism.state import GaussianState

HORIZON, STEP = 1.0, 0.05
K = 20


def state_at(velocity=(0.0,) * 6, pose_std=1e-4, velocity_std=1e-3) -> GaussianState:
    return GaussianState.initial(torch.eye(4, dtype=torch.float64), pose_std=(pose_std,) * 6,
                                 velocity_std=(velocity_std,) * 6, velocity=list(velocity))


def seeded(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def yaw(T: torch.Tensor) -> torch.Tensor:
    return torch.atan2(T[..., 1, 0], T[..., 0, 0])


def test_constant_body_acceleration_moves_half_a_t_squared():
    """A held body acceleration along x from rest: the noiseless path is 0.5 a t^2 exactly (Euler is exact for a
    constant acceleration); without noise and with a point start every sample is that path; with the command
    noise the sample mean lies within sampling error of it."""
    model, a = make_transition(DynamicsConfig(model="control")), 0.8
    t = torch.arange(K + 1, dtype=torch.float64) * STEP
    point = GaussianState.initial(torch.eye(4, dtype=torch.float64), pose_std=(0.0,) * 6, velocity_std=(0.0,) * 6)
    exact = sample_rollouts(model, point, [a, 0, 0, 0, 0, 0], HORIZON, STEP, 8, seeded(), noise=False)
    assert exact.poses.shape == (8, K + 1, 4, 4) and exact.velocities.shape == (8, K + 1, 6)
    assert torch.allclose(exact.times, t)
    assert torch.allclose(exact.nominal_poses[:, 0, 3], 0.5 * a * t**2, atol=1e-12)
    assert torch.allclose(exact.nominal_velocities[:, 0], a * t, atol=1e-12)
    assert torch.allclose(exact.poses, exact.nominal_poses.expand_as(exact.poses), atol=1e-12)
    assert torch.allclose(exact.mean_poses, exact.nominal_poses, atol=1e-12)
    assert exact.position_covariance.abs().max() < 1e-20

    noisy = sample_rollouts(model, state_at(), [a, 0, 0, 0, 0, 0], HORIZON, STEP, 400, seeded())
    std = noisy.position_covariance[-1].diagonal().sqrt()
    error = noisy.mean_poses[-1, :3, 3] - torch.tensor([0.5 * a * HORIZON**2, 0.0, 0.0], dtype=torch.float64)
    assert (error.abs() < 4 * std / math.sqrt(400)).all(), (error, std)
    assert torch.allclose(noisy.nominal_poses[:, 0, 3], 0.5 * a * t**2, atol=1e-12)  # row 0 carries no noise


def test_a_body_rate_turns_the_heading_and_a_sequence_is_followed_step_by_step():
    """A held yaw rate w turns the heading by w t; a (K, 6) sequence that turns only in the second half
    leaves the heading unchanged for K/2 steps, then turns it at that rate."""
    model, w = make_transition(DynamicsConfig(model="control")), 0.6
    t = torch.arange(K + 1, dtype=torch.float64) * STEP
    held = sample_rollouts(model, state_at(), [0.5, 0, 0, 0, 0, w], HORIZON, STEP, 200, seeded())
    assert torch.allclose(yaw(held.nominal_poses), w * t, atol=1e-12)
    assert torch.allclose(held.nominal_velocities[1:, 5], torch.full((K,), w, dtype=torch.float64))  # body rate
    assert abs(float(yaw(held.mean_poses[-1])) - w * HORIZON) < 0.01  # command noise 0.03 rad/s: ~2 mrad/sqrt(N)
    assert float(held.nominal_poses[-1, 1, 3]) > 0.01  # forward acceleration while turning left curves to +y

    sequence = torch.zeros(K, 6, dtype=torch.float64)
    sequence[K // 2:, 5] = w
    turned = sample_rollouts(model, state_at(), sequence, HORIZON, STEP, 0, seeded())
    assert torch.allclose(yaw(turned.nominal_poses), w * (t - t[K // 2]).clamp_min(0), atol=1e-12)
    assert turned.poses.shape == (0, K + 1, 4, 4)
    assert torch.allclose(turned.mean_poses, turned.nominal_poses)  # no samples: the mean is the nominal path


def test_constant_velocity_moves_v_t():
    velocity = (0.4, -0.2, 0.1, 0.0, 0.0, 0.0)
    model = make_transition(DynamicsConfig())
    rollouts = sample_rollouts(model, state_at(velocity), None, HORIZON, STEP, 400, seeded())
    t = torch.arange(K + 1, dtype=torch.float64) * STEP
    v = torch.tensor(velocity[:3], dtype=torch.float64)
    assert torch.allclose(rollouts.nominal_poses[:, :3, 3], t[:, None] * v, atol=1e-12)
    std = rollouts.position_covariance[-1].diagonal().sqrt()
    assert ((rollouts.mean_poses[-1, :3, 3] - HORIZON * v).abs() < 4 * std / math.sqrt(400)).all()


def test_held_imu_sample_at_rest_keeps_the_velocity():
    """The imu model with one held sample (the gravity reaction, no rotation): 'constant current IMU' ahead
    of the last sample cancels gravity, so the body coasts at its velocity."""
    model = make_transition(DynamicsConfig(model="imu"))
    imu = ImuSamples(np.zeros(1), np.zeros((1, 3)), np.array([[0.0, 0.0, model.config.gravity]]))
    rollouts = sample_rollouts(model, state_at((0.3, 0.0, 0.0, 0.0, 0.0, 0.0)), imu, HORIZON, STEP, 16, seeded())
    t = torch.arange(K + 1, dtype=torch.float64) * STEP
    assert torch.allclose(rollouts.nominal_poses[:, 0, 3], 0.3 * t, atol=1e-9)
    assert rollouts.nominal_poses[:, 1:3, 3].abs().max() < 1e-9


def residual_imu() -> ImuEuler:
    """The imu model with a residual whose std head adds 0.05 m/s per step on the linear velocity."""
    residual = ResidualMLP(16, 1)
    with torch.no_grad():
        residual.log_std.bias[:3] = math.log(0.05)
    return ImuEuler(DynamicsConfig(model="imu", gyro_bias_std=0.005, accel_bias_std=0.05), residual)


@pytest.mark.parametrize("case", ["control", "constant_velocity", "imu_residual"])
def test_sample_spread_grows_and_matches_the_linearised_prediction(case):
    """The samples' position covariance at K/2 and K steps is the filter's predict chained K times (world
    position covariance of its left perturbation) within 15 % for small noise, for the command noise, the
    white-noise acceleration (turning, away from the origin: the rotation term matters) and the IMU's input
    noise plus a residual's std head; the spread grows with the horizon."""
    if case == "control":
        model, controls, velocity = make_transition(DynamicsConfig(model="control")), [0.5, 0, 0, 0, 0, 0.4], None
    elif case == "constant_velocity":
        model, controls, velocity = make_transition(DynamicsConfig()), None, (1.0, 0.2, 0.0, 0.0, 0.0, 0.3)
    else:
        model, velocity = residual_imu(), (0.5, 0.0, 0.0, 0.0, 0.0, 0.0)
        controls = ImuSamples(np.zeros(1), np.array([[0.0, 0.0, 0.2]]), np.array([[0.3, 0.0, 9.81]]))
    state = state_at(velocity or (0.0,) * 6, pose_std=1e-3, velocity_std=0.01)
    rollouts = sample_rollouts(model, state, controls, HORIZON, STEP, 3000, seeded())
    states = linearised_rollout(model, state, controls, HORIZON, STEP)
    assert len(states) == K + 1
    for k in (K // 2, K):
        expected = world_position_covariance(states[k])
        sampled = rollouts.position_covariance[k]
        ratio = sampled.diagonal() / expected.diagonal()
        assert ((ratio > 0.85) & (ratio < 1.15)).all(), (k, ratio)
        assert torch.allclose(rollouts.mean_poses[k, :3, 3], states[k].T[:3, 3],
                              atol=float(4 * expected.diagonal().max().sqrt() / math.sqrt(3000)) + 1e-3)
    trace = rollouts.position_covariance.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert (trace[1:] > trace[:-1]).all()


def test_rollouts_are_reproducible_with_a_seed_and_leave_the_model_as_it_was():
    model = make_transition(DynamicsConfig(model="control"))
    model.previous = (np.array([-0.01]), np.zeros((1, 6)))
    first = sample_rollouts(model, state_at(), [0.2, 0, 0, 0, 0, 0.1], HORIZON, STEP, 32, seeded(7))
    again = sample_rollouts(model, state_at(), [0.2, 0, 0, 0, 0, 0.1], HORIZON, STEP, 32, seeded(7))
    other = sample_rollouts(model, state_at(), [0.2, 0, 0, 0, 0, 0.1], HORIZON, STEP, 32, seeded(8))
    assert torch.equal(first.poses, again.poses) and torch.equal(first.velocities, again.velocities)
    assert not torch.equal(first.poses, other.poses)
    assert model.previous[0][0] == -0.01  # the filter's held sample is restored


def test_bad_controls_are_input_errors():
    control, imu = make_transition(DynamicsConfig(model="control")), make_transition(DynamicsConfig(model="imu"))
    with pytest.raises(InputError, match=r"\(21, 6\) do not fit 20 steps"):
        sample_rollouts(control, state_at(), torch.zeros(K + 1, 6), HORIZON, STEP, 4)
    with pytest.raises(InputError, match="do not fit"):
        sample_rollouts(control, state_at(), [1.0, 2.0, 3.0], HORIZON, STEP, 4)
    with pytest.raises(InputError, match="needs commands"):
        sample_rollouts(control, state_at(), None, HORIZON, STEP, 4)
    with pytest.raises(InputError, match="takes no controls"):
        sample_rollouts(make_transition(DynamicsConfig()), state_at(), [0.0] * 6, HORIZON, STEP, 4)
    with pytest.raises(InputError, match="needs IMU samples"):
        sample_rollouts(imu, state_at(), [0.0] * 6, HORIZON, STEP, 4)
    with pytest.raises(InputError, match="empty"):
        sample_rollouts(imu, state_at(), ImuSamples.empty(), HORIZON, STEP, 4)
    with pytest.raises(InputError, match="horizon"):
        sample_rollouts(control, state_at(), [0.0] * 6, 0.01, STEP, 4)


# ----------------------------------------------------------------------------- predicted depth and the CLI
PLANE_Z = 1.5


@pytest.fixture(scope="module")
def plane_map():
    """A map of the wall z = 1.5 m, fused from one exact 64x48 depth frame at the identity (optical frame)."""
    from prism_ros.geometry import PinholeCamera
    from prism_ros.prism.map import GaussianSdfMap, MapConfig
    from prism_ros.prism.observation import make_level
    from prism_ros.synthetic.writer import intrinsics_for

    camera = PinholeCamera.from_intrinsics(intrinsics_for(64, 48))
    sdf_map = GaussianSdfMap(MapConfig())
    depth = torch.full((48, 64), PLANE_Z)
    sdf_map.integrate(make_level(camera, depth, torch.full((48, 64), 0.5)), torch.full((48, 64, 3), 0.5),
                      torch.eye(4, dtype=torch.float64))
    return sdf_map, camera


def test_predicted_depth_at_the_mean_future_pose_is_the_render_there(plane_map):
    """Coasting towards the wall at 0.5 m/s: depth at the mean pose after t is the render at that pose, and
    about 1.5 - 0.5 t in the middle of the image."""
    from prism_ros.prism.render import render

    sdf_map, camera = plane_map
    rollouts = sample_rollouts(make_transition(DynamicsConfig()), state_at((0.0, 0.0, 0.5, 0.0, 0.0, 0.0)), None,
                               HORIZON, STEP, 32, seeded())
    index = [K // 2, K]
    depth = predicted_depth(sdf_map, rollouts.mean_poses[index], torch.eye(4), camera)
    assert depth.shape == (2, 48, 64) and depth.dtype == torch.float32
    for image, k in zip(depth, index):
        direct = render(sdf_map, rollouts.mean_poses[k], camera).depth
        assert torch.equal(torch.isnan(image), torch.isnan(direct))
        assert torch.allclose(image.nan_to_num(-1), direct.nan_to_num(-1))
        expected = PLANE_Z - float(rollouts.mean_poses[k, 2, 3])
        assert abs(float(image[24, 32]) - expected) < 0.02, (float(image[24, 32]), expected)


def test_cli_predict_writes_its_files_and_rejects_a_bad_command(tmp_path, plane_map):
    sdf_map, camera = plane_map
    sdf_map.save(tmp_path / "map.pt")
    out = tmp_path / "predict"
    runner = CliRunner()
    result = runner.invoke(app, ["dynamics", "predict", "--model", "control", "--velocity", "0,0,0.3",
                                 "--command", "0,0,0.2,0,0.1,0", "--samples", "16", "--horizon", "0.5",
                                 "--map", str(tmp_path / "map.pt"), "--intrinsics",
                                 f"{float(camera.fx)},{float(camera.fy)},{float(camera.cx)},{float(camera.cy)},64,48",
                                 "--depth-views", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "control: 16 samples x 10 steps (0.5 s): final mean position" in result.output
    data = np.load(out / "rollouts.npz")
    assert data["poses"].shape == (16, 11, 4, 4) and data["depth"].shape == (2, 48, 64)
    assert np.allclose(data["depth_times"], [0.25, 0.5])
    assert len(list((out / "tum").glob("sample_*.txt"))) == 16
    for name in ("mean.txt", "nominal.txt", "rollouts.png", "depth_0.25s.png", "depth_0.50s.png"):
        assert (out / name).stat().st_size > 0, name

    bad = runner.invoke(app, ["dynamics", "predict", "--model", "control", "--command", "1,2", "--out",
                              str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "bad --command '1,2'" in bad.output and "Traceback" not in bad.output
