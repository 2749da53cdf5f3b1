"""The learned residual transition (prism_ros.dynamics.learning): untrained = engineered, training lowers the
held-out NLL and removes a known IMU bias on a synthetic drone, the model file, and the CLI on real EuRoC."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from shared_data import sample

from prism_ros.cli.main import main
from prism_ros.dynamics.learning import (
    MotionData,
    TrainingConfig,
    calibrate_std,
    compare,
    evaluate_model,
    load_residual,
    make_windows,
    predict_windows,
    save_residual,
    still_biases,
    train_residual,
    train_windows,
    window_starts,
)
from prism_ros.dynamics.model import DynamicsConfig, ImuEuler, ResidualMLP
from prism_ros.errors import InputError
from prism_ros.frame import ImuSamples
from prism_ros.synthetic import ControlModel, ImuModel, make_trajectory, synthesize_control, synthesize_imu

IMU_RATE = 200.0
BIAS_ACCEL = np.array([0.3, -0.25, 0.2])  # m/s^2, body frame, injected into the synthetic IMU


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_drone(seconds: float = 40.0, noisy: bool = True) -> MotionData:
    """Drone profile: 200 Hz IMU (ADIS16448 white noise, no drawn biases) plus the constant ``BIAS_ACCEL``;
    exact ground-truth poses and velocities at 20 Hz."""
    trajectory = make_trajectory("drone", 0)
    t = np.arange(int(seconds * IMU_RATE)) / IMU_RATE
    model = ImuModel(gyro_bias_sigma=0.0, accel_bias_sigma=0.0) if noisy else None
    imu = synthesize_imu(trajectory, t, IMU_RATE, model, seed=2)
    t_gt = t[::10]
    k = trajectory.kinematics(torch.as_tensor(t_gt, dtype=torch.float64))
    return MotionData(ImuSamples(t, imu.gyro, imu.accel + BIAS_ACCEL), t_gt, k.poses().numpy(), k.v.numpy(),
                      "synthetic drone")


FAST = TrainingConfig(horizon=0.5, steps=120, batch=128, stride=0.1, eval_stride=0.1, learning_rate=1e-2)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data = synthetic_drone()
    dynamics = DynamicsConfig(model="imu", residual_mlp=True, residual_hidden=32)
    return data, dynamics, train_residual(data, dynamics, FAST)


def test_untrained_residual_rollout_equals_engineered():
    """Zero-initialised mean head, std head at exp(-30): the same positions and no learned covariance."""
    data = synthetic_drone(seconds=5.0, noisy=False)
    windows = make_windows(data, window_starts(data, 1.0, 0.5), 20, 0.05)
    config = DynamicsConfig(model="imu", bias_accel=tuple(BIAS_ACCEL))
    plain = predict_windows(ImuEuler(config), windows)
    with torch.no_grad():
        hooked = predict_windows(ImuEuler(config, ResidualMLP()), windows)
    assert torch.equal(plain.positions, hooked.positions) and torch.equal(plain.velocities, hooked.velocities)
    assert float(hooked.cov_position.abs().max()) < 1e-20 and float(plain.cov_position.abs().max()) == 0.0
    # and, given the bias, the engineered rollout is the exact-IMU truth to within the zero-order-hold error
    assert float((plain.positions[:, -1] - windows.positions[:, -1]).norm(dim=-1).max()) < 0.01


def test_still_biases_recover_the_accelerometer_bias():
    """A still start (hover-free synthetic: hold the first pose for 2 s) gives back the injected bias."""
    t = np.arange(400) / IMU_RATE
    pose = np.eye(4)
    pose[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0.2], [0.3, 0, -0.1], [-0.2, 0.1, 0]],
                                                        dtype=torch.float64)).numpy()
    reaction = pose[:3, :3].T @ np.array([0.0, 0.0, 9.81])
    imu = ImuSamples(t, np.tile([0.01, -0.02, 0.03], (400, 1)), np.tile(reaction + BIAS_ACCEL, (400, 1)))
    data = MotionData(imu, t[::10], np.repeat(pose[None], 40, 0), np.zeros((40, 3)))
    bias_gyro, bias_accel = still_biases(data)
    np.testing.assert_allclose(bias_gyro, [0.01, -0.02, 0.03], atol=1e-12)
    np.testing.assert_allclose(bias_accel, BIAS_ACCEL, atol=1e-9)


def test_training_lowers_the_held_out_loss(trained):
    _, _, result = trained
    assert result.extra["train_windows"] > 100 and result.extra["held_out_windows"] > 50
    assert result.held_out_after < result.held_out_before - 1.0, (result.held_out_before, result.held_out_after)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_learned_residual_removes_most_of_the_bias_error(trained):
    """Held-out 0.5 s position error: the engineered model (zero bias) drifts by the injected accelerometer
    bias (~0.5 |b| t^2 = 5 cm); the learned residual removes >= 70 % of it, and its 95 % ellipsoids hold
    the truth about 95 % of the time."""
    data, dynamics, result = trained
    results = compare(data, result.residual, dynamics, FAST, start=result.split_time)
    engineered, learned = results["engineered"], results["learned"]
    assert engineered["median_0.5"] > 0.03
    assert learned["median_0.5"] < 0.3 * engineered["median_0.5"], results
    assert 0.8 <= learned["coverage_0.5"] <= 1.0, results
    # the same model with the right bias given: what the residual should approach
    calibrated = dataclasses.replace(dynamics, bias_accel=tuple(BIAS_ACCEL))
    windows = make_windows(data, window_starts(data, 0.5, 0.1, start=result.split_time), 10, 0.05)
    assert evaluate_model(ImuEuler(calibrated), windows, FAST)["median_0.5"] < learned["median_0.5"]


def test_residual_on_the_control_model_learns_a_command_bias():
    """Commands instead of IMU samples (the control model): the drone's commanded body acceleration is off by a
    constant (a thrust miscalibration, ``-BIAS_ACCEL``); the residual removes most of the held-out error."""
    trajectory = make_trajectory("drone", 0)
    t = np.arange(int(40.0 * IMU_RATE)) / IMU_RATE
    commands = synthesize_control(trajectory, t, ControlModel(), seed=3)  # [ax, ay, az, wx, wy, wz], 20 ms lead
    t_gt = t[::10]
    k = trajectory.kinematics(torch.as_tensor(t_gt, dtype=torch.float64))
    data = MotionData(ImuSamples(t, commands[:, 3:], commands[:, :3] - BIAS_ACCEL), t_gt, k.poses().numpy(),
                      k.v.numpy(), "synthetic drone commands")
    dynamics = DynamicsConfig(model="control", residual_mlp=True, residual_hidden=32)
    result = train_residual(data, dynamics, FAST)
    results = compare(data, result.residual, dynamics, FAST, start=result.split_time)
    engineered, learned = results["engineered"], results["learned"]
    assert engineered["median_0.5"] > 0.03
    assert learned["median_0.5"] < 0.3 * engineered["median_0.5"], results


def test_std_calibration_undoes_an_over_confident_std(trained):
    """The calibration part (between training and held-out) scales the learned std up to 95 % coverage there:
    an over-confident std is brought to that point, and taking 2 off its log again gets exactly 2 back, with
    the held-out coverage (a 0.1 mm ground-truth floor, so that the std, not the floor, decides the coverage of
    these mm-sized errors)."""
    import copy

    data, dynamics, result = trained
    assert result.extra["calibration_windows"] > 30 and result.extra["std_scale"] >= 1.0
    config = dataclasses.replace(FAST, position_floor=1e-4)
    _, calibration, held_out, _ = train_windows(data, config)
    residual = copy.deepcopy(result.residual)
    model = ImuEuler(dynamics, residual)
    with torch.no_grad():
        residual.log_std.bias[:3] -= 4.0  # std x 0.02
    assert calibrate_std(model, calibration, config) > 0.0
    coverage = lambda windows: [evaluate_model(model, windows, config)["coverage_0.5"]]
    assert abs(np.mean(coverage(calibration)) - 0.95) < 0.02
    calibrated = coverage(held_out)
    with torch.no_grad():
        residual.log_std.bias[:3] -= 2.0  # std x 0.14
    before = coverage(held_out)
    assert abs(calibrate_std(model, calibration, config) - 2.0) < 1e-3
    assert np.allclose(coverage(held_out), calibrated)
    assert max(before) < 0.6 and min(calibrated) > 0.8, (before, calibrated)
    assert calibrate_std(model, calibration, config) == 0.0  # calibrated: nothing more to inflate


def test_residual_over_another_interval_scales_like_a_bias(trained):
    """The residual sees one dt in training, so over another interval (the filter's frame interval) it is read
    at its trained step and scaled: the correction by dt / step, the std by sqrt(dt / step)."""
    data, dynamics, result = trained
    residual = result.residual
    assert float(residual.trained_step) == FAST.step
    model = ImuEuler(dynamics, residual)
    windows = make_windows(data, window_starts(data, 0.5, 2.0), 10, 0.05)
    T, v, u = windows.T0, windows.v0, windows.u[:, 0]
    at_step, std_at_step = model.residual_outputs(T, v, u, FAST.step)
    for factor in (0.5, 3.0):
        increment, std = model.residual_outputs(T, v, u, factor * FAST.step)
        assert torch.allclose(increment, factor * at_step, rtol=1e-12, atol=1e-15)
        assert torch.allclose(std, np.sqrt(factor) * std_at_step, rtol=1e-12)
    assert at_step[:, :3].norm(dim=-1).median() > 0.5 * 0.05 * np.linalg.norm(BIAS_ACCEL)  # it learned the bias


def test_model_file_round_trip_and_bad_files(trained, tmp_path):
    data, dynamics, result = trained
    path = tmp_path / "model.pt"
    save_residual(path, result.residual, dynamics, FAST, {"split_time": result.split_time})
    residual, loaded_dynamics, config, extra = load_residual(path)
    assert loaded_dynamics == dynamics and config == FAST and extra["split_time"] == result.split_time
    for name, value in result.residual.state_dict().items():
        assert torch.equal(residual.state_dict()[name], value), name
    windows = make_windows(data, window_starts(data, 0.5, 2.0), 10, 0.05)
    a, b = (predict_windows(ImuEuler(dynamics, r), windows) for r in (result.residual, residual))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.cov_position, b.cov_position)

    # a file written before the trained step was stored: the step comes from its training config
    blob = torch.load(path, weights_only=True)
    del blob["state_dict"]["trained_step"]
    torch.save(blob, tmp_path / "older.pt")
    assert float(load_residual(tmp_path / "older.pt")[0].trained_step) == FAST.step

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="unreadable model file.*prism-ros dynamics train"):
        load_residual(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not a prism_ros dynamics residual file"):
        load_residual(other)
    with pytest.raises(InputError, match="no such model file"):
        load_residual(tmp_path / "missing.pt")

    # the filter's switch: dynamics.residual_model makes make_transition predict with the trained residual
    from dataclasses import replace

    from prism_ros.dynamics.model import make_transition

    switched = make_transition(replace(dynamics, residual_mlp=False, residual_model=str(path)))
    c = predict_windows(switched, windows)
    assert torch.equal(a.positions, c.positions) and torch.equal(a.cov_position, c.cov_position)
    with pytest.raises(InputError, match="trained for the imu model, not control"):
        make_transition(replace(dynamics, model="control", residual_model=str(path)))


def test_cli_trains_and_evaluates_on_euroc(tmp_path, capsys):
    """A short real run: V1_01's first 40 s (held-out: the last 25 %), then V1_02's first 15 s (all windows)."""
    euroc = sample("euroc_V1_01_micro")
    model = tmp_path / "residual.pt"
    code = main(["dynamics", "train", "--dataset", str(euroc), "--out", str(model), "--seconds", "0:40",
                 "--steps", "5", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and model.is_file(), out
    assert "held-out" in out and "engineered" in out and "learned" in out
    code = main(["dynamics", "eval", "--model", str(model), "--dataset", str(euroc / "V1_02_imu_gt_subset"),
                 "--seconds", "0:15"])
    out = capsys.readouterr().out
    assert code == 0 and "all windows" in out and "V1_02_imu_gt_subset" in out, out
    learned = [line for line in out.splitlines() if line.startswith("learned")][0]
    assert len(learned.split()) == 7  # 4 errors + 2 coverages after the name
    code = main(["dynamics", "eval", "--model", str(model), "--dataset", str(euroc), "--seconds", "0:40"])
    assert code == 0 and "after the training split" in capsys.readouterr().out

    for args, text in ((["eval", "--model", str(tmp_path / "none.pt"), "--dataset", str(euroc)], "no such model"),
                       (["train", "--dataset", str(tmp_path / "nowhere"), "--out", str(model)], "no such dataset"),
                       (["train", "--dataset", str(euroc), "--out", str(model), "--seconds", "x:y"], "bad --seconds"),
                       (["train", "--dataset", str(euroc), "--out", str(model), "--model", "control",
                         "--calibrate-still"], "--calibrate-still estimates IMU biases"),
                       (["train", "--dataset", str(euroc), "--out", str(model), "--model", "cv"], "unknown --model")):
        code = main(["dynamics", *args])
        err = capsys.readouterr().err
        assert code == 2 and "error:" in err and text in err and "Traceback" not in err, err
