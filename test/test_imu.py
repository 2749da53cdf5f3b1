"""IMU integration (prism_ros.dynamics.imu) against closed forms, exact synthetic kinematics and real EuRoC data."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from shared_data import DATA as SHARED_DATA

from prism_ros.dynamics.imu import GRAVITY, ImuDeadReckoning, imu_window, integrate_imu, integrate_imu_between
from prism_ros.geometry.lie import so3_exp
from prism_ros.synthetic.imu import ImuModel, synthesize_imu
from prism_ros.synthetic.trajectory import make_trajectory

EUROC = SHARED_DATA / "euroc_V1_01_micro"
METHODS = ("euler", "midpoint")


def angle_deg(Ra, Rb) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(np.asarray(Ra).T @ np.asarray(Rb)).as_rotvec())))


def synthetic_errors(motion, rate, method, model=None, seed=0, horizon=2.0, use_bias=True):
    """Integrate the synthetic IMU from the true initial state: (max position error m, final angle deg)."""
    trajectory = make_trajectory(motion, seed)
    t = np.arange(int(round(horizon * rate)) + 1) / rate
    truth = trajectory.kinematics(t)
    imu = synthesize_imu(trajectory, t, rate, model, seed)
    bias = dict(bias_gyro=imu.bias_gyro, bias_accel=imu.bias_accel) if use_bias else {}
    R, p, _ = integrate_imu(truth.R[0], truth.p[0], truth.v[0], t, imu.gyro, imu.accel, method=method,
                            return_all=True, **bias)
    return float((p - truth.p).norm(dim=-1).max()), angle_deg(R[-1], truth.R[-1])


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("method", METHODS)
def test_spinning_at_rest_stays_put(method):
    """Constant yaw rate with gravity along the spin axis: the position must not move, exactly."""
    n, rate, w = 401, 200.0, 0.7
    t = torch.arange(n, dtype=torch.float64) / rate
    gyro = torch.tensor([0.0, 0.0, w], dtype=torch.float64).expand(n, 3)
    accel = torch.tensor([0.0, 0.0, GRAVITY], dtype=torch.float64).expand(n, 3)
    R, p, v = integrate_imu(torch.eye(3, dtype=torch.float64), torch.zeros(3), torch.zeros(3), t, gyro, accel,
                            method=method)
    assert p.abs().max() < 1e-12 and v.abs().max() < 1e-12
    expected = so3_exp(torch.tensor([0.0, 0.0, w * float(t[-1])], dtype=torch.float64))
    assert (R - expected).abs().max() < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_constant_world_acceleration_is_exact(method):
    """Fixed attitude, constant specific force: p = p0 + v0 t + a t^2 / 2 exactly (both schemes)."""
    n, rate = 101, 100.0
    t = torch.arange(n, dtype=torch.float64) / rate
    R0 = so3_exp(torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64))
    a_world = torch.tensor([0.4, -0.1, 0.25], dtype=torch.float64)
    g = torch.tensor([0.0, 0.0, -GRAVITY], dtype=torch.float64)
    accel = (R0.T @ (a_world - g)).expand(n, 3)
    p0, v0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([0.5, 0.0, -0.2], dtype=torch.float64)
    _, p, v = integrate_imu(R0, p0, v0, t, torch.zeros(n, 3, dtype=torch.float64), accel, method=method)
    T = float(t[-1])
    assert torch.allclose(p, p0 + v0 * T + 0.5 * a_world * T**2, atol=1e-12)
    assert torch.allclose(v, v0 + a_world * T, atol=1e-12)


def test_batched_equals_one_by_one():
    """A batch of states and sample streams integrates like each member alone (no loop over batch)."""
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    B, n = 4, 50
    t = torch.arange(n, dtype=torch.float64) * 0.005
    R0, p0, v0 = so3_exp(randn(B, 3)), randn(B, 3), randn(B, 3)
    gyro, accel = randn(B, n, 3), randn(B, n, 3)
    bg, ba = 0.01 * randn(B, 3), 0.1 * randn(B, 3)
    for method in METHODS:
        batch = integrate_imu(R0, p0, v0, t, gyro, accel, bias_gyro=bg, bias_accel=ba, method=method)
        for b in range(B):
            single = integrate_imu(R0[b], p0[b], v0[b], t, gyro[b], accel[b], bias_gyro=bg[b], bias_accel=ba[b],
                                   method=method)
            for x, y in zip(batch, single):
                assert torch.allclose(x[b], y, atol=1e-12)


def test_float32_with_epoch_timestamps():
    """Timestamps stay float64 internally: a float32 state with epoch times integrates like float64."""
    n = 201
    t = 1.7e9 + np.arange(n) * 0.005
    gyro = np.tile([0.1, -0.2, 0.3], (n, 1))
    accel = np.tile([0.2, 0.1, GRAVITY], (n, 1))
    out64 = integrate_imu(torch.eye(3, dtype=torch.float64), torch.zeros(3), torch.zeros(3), t, gyro, accel)
    out32 = integrate_imu(torch.eye(3), torch.zeros(3), torch.zeros(3), t, gyro, accel)
    for x, y in zip(out64, out32):
        assert y.dtype == torch.float32 and torch.allclose(x.float(), y, atol=1e-4)


def test_window_partial_intervals():
    """imu_window puts samples exactly at t0 and t1 (held or interpolated values), matches plain
    integration when the ends fall on samples, and splitting an interval at an arbitrary time changes
    the result only by the scheme's own within-step approximation (rotation exactly, for Euler)."""
    trajectory = make_trajectory("drone", 3)
    t_imu = np.arange(0, 401) / 200.0
    imu = synthesize_imu(trajectory, t_imu, 200.0, ImuModel(), seed=3)
    t0, t_mid, t1 = 0.0123, 0.7771, 1.5037
    t, g, a = imu_window(t_imu, imu.gyro, imu.accel, t0, t1)
    assert float(t[0]) == t0 and float(t[-1]) == t1 and len(t) == 2 + np.sum((t_imu > t0) & (t_imu < t1))
    assert torch.equal(g[0], torch.as_tensor(imu.gyro[2]))  # zero-order hold: the sample at 0.010 s
    _, g_mid, _ = imu_window(t_imu, imu.gyro, imu.accel, t0, t1, method="midpoint")
    assert torch.allclose(g_mid[0], torch.as_tensor(0.54 * imu.gyro[2] + 0.46 * imu.gyro[3]))
    truth = trajectory.kinematics([t0])
    state = (truth.R[0], truth.p[0], truth.v[0])
    for method in METHODS:
        on_grid = integrate_imu_between(*state, 0.1, 0.6, t_imu, imu.gyro, imu.accel, method=method)
        plain = integrate_imu(*state, t_imu[20:121], imu.gyro[20:121], imu.accel[20:121], method=method)
        for x, y in zip(on_grid, plain):
            assert torch.allclose(x, y, atol=1e-12)
        whole = integrate_imu_between(*state, t0, t1, t_imu, imu.gyro, imu.accel, method=method)
        first = integrate_imu_between(*state, t0, t_mid, t_imu, imu.gyro, imu.accel, method=method)
        split = integrate_imu_between(*first, t_mid, t1, t_imu, imu.gyro, imu.accel, method=method)
        assert torch.allclose(whole[0], split[0], atol=1e-12 if method == "euler" else 1e-7)
        assert (whole[1] - split[1]).norm() < 5e-5  # measured 8.7e-6 (euler), 1.4e-7 (midpoint)


# ----------------------------------------------------------------------------- synthetic kinematics
# Measured (seed 0, 2 s, 200 Hz): midpoint 0.084 mm (handheld) / 0.013 mm (drone), Euler ZOH 7.5 mm / 6.3 mm;
# Euler halves and midpoint quarters when the rate doubles.
@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_noise_free_imu_reproduces_ground_truth(motion):
    mid_200, rot_mid = synthetic_errors(motion, 200, "midpoint")
    euler_200, rot_euler = synthetic_errors(motion, 200, "euler")
    assert mid_200 < 0.3e-3 and rot_mid < 0.002
    assert euler_200 < 15e-3 and rot_euler < 0.15
    mid_400, _ = synthetic_errors(motion, 400, "midpoint")
    euler_400, _ = synthetic_errors(motion, 400, "euler")
    assert 1.6 < euler_200 / euler_400 < 2.4  # first order
    assert 3.0 < mid_200 / mid_400 < 5.0  # second order


# Noisy ADIS16448-like IMU with the biases known: expected 1-sigma position error after 2 s is ~6 mm
# (accel white noise ~3 mm/axis, gyro angle random walk coupling gravity ~4 mm); measured 3-9 mm.
@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_noisy_imu_with_known_bias_stays_within_noise_bound(motion):
    errors = [synthetic_errors(motion, 200, "midpoint", ImuModel(), seed=s)[0] for s in range(4)]
    assert max(errors) < 0.03 and np.median(errors) < 0.015
    unbiased = synthetic_errors(motion, 200, "midpoint", ImuModel(), seed=0, use_bias=False)[0]
    assert unbiased > 3 * errors[0]  # the drawn biases matter and are the ones in the data


# ----------------------------------------------------------------------------- real data: EuRoC V1_01
def load_euroc():
    if not EUROC.is_dir():
        pytest.skip(f"EuRoC data not found at {EUROC}")
    imu = np.loadtxt(EUROC / "mav0" / "imu0" / "data.csv", delimiter=",", comments="#")
    gt = np.loadtxt(EUROC / "groundtruth_V1_01_and_V1_02" / "V101_gt.txt", comments="#")  # TUM, body (IMU) pose
    t_origin = imu[0, 0] * 1e-9
    return imu[:, 0] * 1e-9 - t_origin, imu[:, 1:4], imu[:, 4:7], gt[:, 0] - t_origin, gt[:, 1:4], \
        Rotation.from_quat(gt[:, 4:8]).as_matrix()


def static_biases(t_imu, gyro, accel, t_gt, p_gt, R_gt):
    """Biases from the still start of the sequence: mean gyro, and mean accel minus the gravity reaction
    rotated by the ground-truth attitude (so they include the ground truth's attitude error)."""
    speed = np.linalg.norm(np.diff(p_gt, axis=0), axis=1) / np.diff(t_gt)
    still = t_imu < t_gt[np.argmax(speed > 0.02)] - 0.2
    R = R_gt[np.searchsorted(t_gt, t_imu[still]).clip(0, len(t_gt) - 1)]
    gravity_reaction = np.einsum("nji,j->ni", R, [0.0, 0.0, GRAVITY])
    return gyro[still].mean(0), (accel[still] - gravity_reaction).mean(0)


def euroc_window_errors(method, bias_gyro, bias_accel, horizon=0.5):
    """Integrate the real IMU over back-to-back windows between ground-truth poses; initial velocity from
    central differences of the ground truth. Returns position errors (m) and angle errors (deg)."""
    t_imu, gyro, accel, t_gt, p_gt, R_gt = load_euroc()
    n = int(round(horizon / np.median(np.diff(t_gt))))
    pos, ang = [], []
    for i in range(1, len(t_gt) - n - 1, n):
        j = i + n
        v0 = (p_gt[i + 1] - p_gt[i - 1]) / (t_gt[i + 1] - t_gt[i - 1])
        R, p, _ = integrate_imu_between(torch.tensor(R_gt[i]), torch.tensor(p_gt[i]), torch.tensor(v0), t_gt[i],
                                        t_gt[j], t_imu, gyro, accel, method=method, bias_gyro=bias_gyro,
                                        bias_accel=bias_accel)
        pos.append(np.linalg.norm(p.numpy() - p_gt[j]))
        ang.append(angle_deg(R, R_gt[j]))
    return np.array(pos), np.array(ang)


# Measured over 289 windows of 0.5 s (static-start biases): median 10.3 mm, p95 18 mm, max 23.6 mm,
# angle median 0.07 deg, max 0.26 deg (both schemes alike: the error grows ~H^2, i.e. it is the
# residual accel bias / ground-truth attitude error, not the discretisation). Zero biases: median 34 mm.
@pytest.mark.parametrize("method", METHODS)
def test_euroc_v1_01_short_horizon_propagation(method):
    bias_gyro, bias_accel = static_biases(*load_euroc())
    pos, ang = euroc_window_errors(method, bias_gyro, bias_accel)
    assert len(pos) > 250
    assert np.median(pos) < 0.02 and pos.max() < 0.05
    assert np.median(ang) < 0.2 and ang.max() < 0.6
    pos_zero_bias, _ = euroc_window_errors(method, np.zeros(3), np.zeros(3))
    assert np.median(pos_zero_bias) > 2 * np.median(pos)


def test_dead_reckoning_streamed_in_chunks_equals_one_batch():
    """Feeding samples in arbitrary, overlapping chunks integrates each sample exactly once."""
    trajectory = make_trajectory("drone", seed=3)
    t = np.arange(0.0, 1.0, 1 / 200.0)
    imu = synthesize_imu(trajectory, t, 200.0, model=None)
    gyro, accel = torch.as_tensor(imu.gyro), torch.as_tensor(imu.accel)
    k = trajectory.kinematics(torch.tensor(t[:1], dtype=torch.float64))
    R0, p0, v0 = k.R[0], k.p[0], k.v[0]
    batch = integrate_imu(R0, p0, v0, t, gyro, accel)
    streamed = ImuDeadReckoning()
    streamed.reset(t[0], R0, p0, v0, gyro=gyro[0], accel=accel[0])
    chunks = [(1, 40), (30, 41), (41, 120), (100, 200)]  # overlaps must be ignored
    for lo, hi in chunks:
        t_end, R, p, v = streamed.update(t[lo:hi], gyro[lo:hi], accel[lo:hi])
    assert t_end == pytest.approx(t[-1])
    torch.testing.assert_close(R, batch[0])
    torch.testing.assert_close(p, batch[1])
    torch.testing.assert_close(v, batch[2])
