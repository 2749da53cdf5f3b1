"""Transition models (prism_ros.dynamics.model): exact kinematics, linearisation vs Monte Carlo, noise models,
IMU consistency (NEES), control vs IMU, the residual MLP hook."""
import functools

import numpy as np
import pytest
import torch
from torch.func import jacfwd

from prism_ros.dynamics.model import (
    ConstantVelocity,
    ControlEuler,
    DynamicsConfig,
    ImuEuler,
    ResidualMLP,
    boxminus,
    boxplus,
    make_transition,
)
from prism_ros.frame import ImuSamples
from prism_ros.geometry.lie import se3_exp, skew, so3_exp, so3_right_jacobian
from prism_ros.prism.state import GaussianState
from prism_ros.synthetic import ImuModel, make_trajectory, synthesize_imu
from prism_ros.synthetic.imu import true_control

F64 = dict(dtype=torch.float64)
IMU_RATE, FPS = 200.0, 30.0



def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


def random_covariance(n: int, scale: torch.Tensor, seed=0) -> torch.Tensor:
    """SPD matrix with standard deviations ``scale`` and random correlations."""
    A = randn(n, n, seed=seed)
    C = A @ A.T / n + 0.5 * torch.eye(n, **F64)
    d = C.diagonal().rsqrt()
    return (d[:, None] * C * d) * scale[:, None] * scale


def whitened_error(empirical: torch.Tensor, model: torch.Tensor) -> float:
    """max |L^-1 C_emp L^-T - I| with L L^T = C_model: scale-free covariance agreement."""
    L = torch.linalg.cholesky(model)
    W = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, empirical, upper=False).T, upper=False)
    return float((W - torch.eye(len(model), **F64)).abs().max())


def state_at(trajectory, t: float, covariance=None) -> GaussianState:
    T, v = truth(trajectory, [t])
    return GaussianState(float(t), T[0], v[0], torch.zeros(12, 12, **F64) if covariance is None else covariance)


@functools.lru_cache
def imu_stream(motion="handheld", seconds=5.0, noisy=False):
    """(trajectory, 200 Hz ImuSamples, ImuStream with the biases): exact, or with ADIS16448 noise and biases."""
    trajectory = make_trajectory(motion, 0)
    t = np.arange(int(seconds * IMU_RATE)) / IMU_RATE
    imu = synthesize_imu(trajectory, t, IMU_RATE, ImuModel() if noisy else None, seed=1)
    return trajectory, ImuSamples(t, imu.gyro, imu.accel), imu


def truth(trajectory, times):
    """True poses (N,4,4) and velocities (N,6) at ``times``."""
    k = trajectory.kinematics(torch.as_tensor(times, **F64))
    return k.poses(), torch.cat([k.v, k.omega], -1)


def screw_state(covariance=None) -> GaussianState:
    T = se3_exp(torch.tensor([1.5, -2.0, 1.2, 0.3, -0.4, 2.0], **F64))
    v = torch.tensor([0.4, -0.3, 0.1, 0.3, -0.5, 0.8], **F64)
    return GaussianState(2.0, T, v, torch.zeros(12, 12, **F64) if covariance is None else covariance)


# ----------------------------------------------------------------------------- tangent, registry
def test_boxplus_boxminus_are_inverse():
    T, v = se3_exp(randn(6)), randn(6, seed=1)
    delta = 0.3 * randn(5, 12, seed=2)
    T_d, v_d = boxplus(T, v, delta)
    assert torch.allclose(boxminus(T_d, v_d, T.expand(5, 4, 4), v.expand(5, 6)), delta, atol=1e-12)


def test_registry_and_time_checks():
    assert isinstance(make_transition(), ConstantVelocity)
    assert isinstance(make_transition(DynamicsConfig(model="imu")), ImuEuler)
    assert isinstance(make_transition(DynamicsConfig(model="control")), ControlEuler)
    assert isinstance(make_transition(DynamicsConfig(residual_mlp=True)).residual, ResidualMLP)
    with pytest.raises(ValueError, match="unknown dynamics model"):
        make_transition(DynamicsConfig(model="bicycle"))
    with pytest.raises(ValueError, match="unknown imu_method"):
        make_transition(DynamicsConfig(model="imu", imu_method="rk4"))
    model, state = make_transition(), screw_state()
    same = model.predict(state, state.t)  # no time passes: the same state, its error fully shared with the last
    assert same.T is state.T and same.covariance is state.covariance and same.previous_cross is state.covariance
    with pytest.raises(ValueError, match="backwards"):
        model.predict(state, state.t - 0.1)
    with pytest.raises(ValueError, match="IMU samples"):
        make_transition(DynamicsConfig(model="imu")).predict(state, state.t + 0.1)


# ----------------------------------------------------------------------------- constant velocity
def test_constant_velocity_is_exact_on_a_screw_motion():
    """R(t) = R0 Exp(w t), p(t) = p0 + v t is reproduced after 30 steps, to rounding."""
    model, state = make_transition(), screw_state()
    T0, v = state.T, state.velocity
    for k in range(30):
        state = model.predict(state, 2.0 + (k + 1) / FPS)
    assert torch.allclose(state.T[:3, :3], T0[:3, :3] @ so3_exp(v[3:] * 1.0), atol=1e-12)
    assert torch.allclose(state.T[:3, 3], T0[:3, 3] + v[:3] * 1.0, atol=1e-12)
    assert torch.equal(state.velocity, v)


def test_jacobian_equals_forward_mode_and_analytic_constant_velocity():
    """The batched reverse-mode F equals jacfwd through exp/log (+)/(-) and the hand derivation
    F = [[Ad(Trans(v dt)), dt [I;0], Ad(T') [0; J_r(w dt) dt]], [0, I]]."""
    model, state, dt = make_transition(), screw_state(), 0.1
    window = model.inputs(state, state.t + dt)
    T1, v1, F, _ = model.linearise(state.T, state.velocity, window)

    def perturbed(d):
        T_d, v_d = boxplus(state.T, state.velocity, d)
        return boxminus(*model.propagate(T_d, v_d, window.values, window), T1, v1)

    assert torch.allclose(F, jacfwd(perturbed)(torch.zeros(12, **F64)), atol=1e-12)
    v, w = state.velocity[:3], state.velocity[3:]
    expected = torch.eye(12, **F64)
    expected[:3, 3:6] = skew(v * dt)
    expected[:3, 6:9] = dt * torch.eye(3, **F64)
    body_rate = so3_right_jacobian(w * dt) * dt
    expected[:3, 9:] = skew(T1[:3, 3]) @ T1[:3, :3] @ body_rate
    expected[3:6, 9:] = T1[:3, :3] @ body_rate
    assert torch.allclose(F, expected, atol=1e-12)


def test_constant_velocity_covariance_matches_monte_carlo():
    """F P F^T against the empirical covariance of f(x (+) d) (-) f(x), d ~ N(0, P), 20000 samples (2 cm,
    1 deg, 0.1 m/s, 0.2 rad/s; at 2.5x that the second-order terms reach 6% of the whitened covariance)."""
    P = random_covariance(12, torch.tensor([0.02] * 3 + [0.02] * 3 + [0.1] * 3 + [0.2] * 3, **F64))
    config = DynamicsConfig(linear_acceleration_noise=0.0, angular_acceleration_noise=0.0)
    model, state, dt = make_transition(config), screw_state(P), 0.1
    prior = model.predict(state, state.t + dt)
    delta = randn(20000, 12, seed=3) @ torch.linalg.cholesky(P).T
    window = model.inputs(state, state.t + dt)
    T_s, v_s = boxplus(state.T, state.velocity, delta)
    T_next, v_next = model.propagate(T_s, v_s, window.values.expand(20000, 0, 6), window)
    errors = boxminus(T_next, v_next, prior.T, prior.velocity)
    assert whitened_error(errors.T.cov(), prior.covariance) < 0.06  # sampling error alone: ~0.03
    linearised = delta @ model.linearise(state.T, state.velocity, window)[2].T  # same samples, no sampling error
    assert whitened_error(errors.T.cov(), linearised.T.cov()) < 0.02


def test_process_noise_matches_simulated_white_acceleration():
    """Q against 20000 paths of a velocity random walk (world linear, body angular) in 30 sub-steps of one
    frame, far from the origin so that the p x phi term of the left perturbation matters. (Q neglects the
    rotation of body-rate noise over the step, O(|w| dt): at dt = 0.2 s, |w| = 1 rad/s it shows as 8%.)"""
    config = DynamicsConfig(linear_acceleration_noise=0.8, angular_acceleration_noise=1.5)
    model, state, dt = make_transition(config), screw_state(), 1 / FPS
    prior = model.predict(state, state.t + dt)
    n, steps = 20000, 30
    h = dt / steps
    R = state.T[:3, :3].expand(n, 3, 3)
    p, v = state.T[:3, 3].expand(n, 3), state.velocity.expand(n, 6)
    gen = torch.Generator().manual_seed(4)
    for _ in range(steps):
        density = torch.tensor([0.8] * 3 + [1.5] * 3, **F64)
        v_next = v + torch.randn(n, 6, generator=gen, **F64) * density * h**0.5
        mid = 0.5 * (v + v_next)
        R, p, v = R @ so3_exp(mid[:, 3:] * h), p + mid[:, :3] * h, v_next
    T = torch.eye(4, **F64).repeat(n, 1, 1)
    T[:, :3, :3], T[:, :3, 3] = R, p
    errors = boxminus(T, v, prior.T, prior.velocity)
    assert (errors.mean(0).abs() < 0.05 * errors.std(0)).all()
    assert whitened_error(errors.T.cov(), prior.covariance) < 0.06


def test_process_noise_scales_with_dt():
    """At the identity pose: position/rotation blocks grow as dt^3, cross blocks as dt^2, velocity as dt."""
    model = make_transition(DynamicsConfig(linear_acceleration_noise=0.3, angular_acceleration_noise=0.7))
    T = torch.eye(4, **F64)
    Q1, Q2 = model.process_noise(T, 0.05), model.process_noise(T, 0.1)
    for rows, cols, power in ((slice(0, 6), slice(0, 6), 3), (slice(0, 6), slice(6, 12), 2),
                              (slice(6, 12), slice(6, 12), 1)):
        assert torch.allclose(Q2[rows, cols], 2**power * Q1[rows, cols], rtol=1e-12, atol=0)
    assert torch.isclose(Q1[0, 0], torch.tensor(0.3**2 * 0.05**3 / 3, **F64))
    assert torch.isclose(Q1[9, 9], torch.tensor(0.7**2 * 0.05, **F64))
    assert Q1[0, 3] == 0 and Q1[0, 9] == 0  # linear and angular noise are independent


# ----------------------------------------------------------------------------- IMU
@pytest.mark.parametrize("motion, bounds", [("handheld", (1e-4, 3e-4, 3e-3, 2e-2)),
                                            ("drone", (1e-5, 5e-5, 5e-4, 5e-3))])
def test_imu_prediction_from_truth_within_euler_error(motion, bounds):
    """Noise-free 200 Hz IMU, one 1/30 s frame from the true state, 100 frames: Euler (zero-order hold) errors
    stay below (position m, rotation rad, velocity m/s, rate rad/s); measured max: handheld 2.4e-5 m,
    1.5e-4 rad, 1.5e-3 m/s, 8.9e-3 rad/s (the rate is the sample held at t1, up to 5 ms old); drone 2.6e-6 m,
    2.2e-5 rad, 1.6e-4 m/s, 1.2e-3 rad/s."""
    trajectory, samples, _ = imu_stream(motion)
    model = make_transition(DynamicsConfig(model="imu"))
    worst = torch.zeros(4, **F64)
    times = 0.5 + np.arange(101) / FPS
    poses, velocities = truth(trajectory, times)
    for i, t in enumerate(times[:-1]):
        state = GaussianState(t, poses[i], velocities[i], torch.zeros(12, 12, **F64))
        prior = model.predict(state, times[i + 1], imu=samples.between(t - 1 / FPS, t + 1 / FPS))
        T, v = poses[i + 1], velocities[i + 1]
        rotation = torch.linalg.matrix_norm(prior.T[:3, :3].T @ T[:3, :3] - torch.eye(3, **F64)) / 2**0.5
        errors = torch.stack([(prior.T[:3, 3] - T[:3, 3]).norm(), rotation, (prior.velocity[:3] - v[:3]).norm(),
                              (prior.velocity[3:] - v[3:]).norm()])
        worst = torch.maximum(worst, errors)
    assert (worst < torch.tensor(bounds, **F64)).all(), worst


def test_frame_chunks_equal_the_whole_stream():
    """Frame.imu holds the samples in (t_prev, t]: the model remembers the sample held at t_prev (the very
    first window must reach back to a sample at or before its start, else the first sample after it is held)."""
    trajectory, samples, _ = imu_stream(noisy=True)
    exact = DynamicsConfig(model="imu", gyro_bias_std=0.0, accel_bias_std=0.0)  # bias noise depends on the window
    chunked, whole = make_transition(exact), make_transition(exact)
    a = b = state_at(trajectory, 0.5, torch.eye(12, **F64) * 1e-6)
    for k in range(1, 10):
        t0, t1 = 0.5 + (k - 1) / FPS, 0.5 + k / FPS
        a = chunked.predict(a, t1, imu=samples.between(t0 - (0.01 if k == 1 else 0.0), t1))
        b = whole.predict(b, t1, imu=samples)
    assert torch.allclose(a.T, b.T, atol=1e-12) and torch.allclose(a.velocity, b.velocity, atol=1e-12)
    assert torch.allclose(a.covariance, b.covariance, atol=1e-15)


def test_imu_covariance_matches_monte_carlo_over_noise():
    """G S_u G^T against 20000 re-draws of the white noise on the window's samples (ADIS16448 densities)."""
    trajectory, samples, _ = imu_stream("drone")
    model = make_transition(DynamicsConfig(model="imu"))
    state, t1 = state_at(trajectory, 0.51), 0.51 + 1 / FPS
    prior = model.predict(state, t1, imu=samples)
    window = model.inputs(state, t1, samples)
    noise = randn(20000, *window.values.shape, seed=5) * window.variance.reshape(window.values.shape).sqrt()
    T, v = model.propagate(state.T, state.velocity, window.values + noise, window)
    errors = boxminus(T, v, prior.T, prior.velocity)
    assert whitened_error(errors.T.cov(), prior.covariance) < 0.06


@pytest.mark.parametrize("motion, method", [("handheld", "midpoint"), ("drone", "midpoint"), ("drone", "euler")])
def test_imu_prediction_error_is_chi_square_consistent(motion, method):
    """Noisy IMU with known biases, 144 one-frame predictions from the true state: mean NEES over the 12-D
    state ~ 12 and over the pose ~ 6 (measured 11.3 / 5.7 midpoint, 11.6 / 5.8 Euler on the drone). Euler at
    200 Hz is NOT consistent on the handheld profile (34 / 26): the zero-order-hold error of its 1.7 Hz
    head bob exceeds the ADIS16448 noise."""
    trajectory, samples, imu = imu_stream(motion, noisy=True)
    config = DynamicsConfig(model="imu", imu_method=method, gyro_bias_std=0.0, accel_bias_std=0.0,  # known biases
                            bias_gyro=tuple(imu.bias_gyro),
                            bias_accel=tuple(imu.bias_accel))
    model = make_transition(config)
    nees, nees_pose = [], []
    times = 0.1 + np.arange(145) / FPS
    poses, velocities = truth(trajectory, times)
    for i, t in enumerate(times[:-1]):
        state = GaussianState(t, poses[i], velocities[i], torch.zeros(12, 12, **F64))
        prior = model.predict(state, times[i + 1], imu=samples.between(t - 0.02, t + 0.06))
        e = boxminus(poses[i + 1], velocities[i + 1], prior.T, prior.velocity)
        nees.append(float(e @ torch.linalg.solve(prior.covariance, e)))
        nees_pose.append(float(e[:6] @ torch.linalg.solve(prior.covariance[:6, :6], e[:6])))
    # 144 chi2 draws: the mean has std sqrt(2 k / 144) = 0.41 (k = 12) and 0.29 (k = 6); bounds ~3 sigma
    assert 10.8 < np.mean(nees) < 13.2 and 5.1 < np.mean(nees_pose) < 6.9, (np.mean(nees), np.mean(nees_pose))


# ----------------------------------------------------------------------------- control
def command_stream(trajectory, samples: ImuSamples) -> ImuSamples:
    """True commands (body acceleration without gravity, body rates) at the IMU times."""
    u = true_control(trajectory, samples.t)
    return ImuSamples(samples.t, u[:, 3:], u[:, :3])


def test_control_with_true_commands_equals_imu_prediction():
    """Commanded body acceleration integrated without gravity is the IMU's specific force integrated with it."""
    trajectory, samples, _ = imu_stream("drone")
    commands = command_stream(trajectory, samples)
    imu_model = make_transition(DynamicsConfig(model="imu"))
    control_model = make_transition(DynamicsConfig(model="control"))
    state = state_at(trajectory, 1.0, torch.eye(12, **F64) * 1e-4)
    a = imu_model.predict(state, 1.0 + 1 / FPS, imu=samples)
    b = control_model.predict(state, 1.0 + 1 / FPS, control=commands)
    assert torch.allclose(a.T, b.T, atol=1e-12) and torch.allclose(a.velocity, b.velocity, atol=1e-12)
    # the covariances differ on purpose: an attitude error misplaces gravity for the IMU (specific force),
    # not for a command that excludes gravity, so only the IMU couples rotation into velocity by g
    coupling = lambda P: P[3:6, 6:9].abs().max()
    assert coupling(a.covariance) > 5 * coupling(b.covariance)


@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_held_command_agrees_with_imu_within_one_step_euler_error(motion):
    """One true command [a_body, w_body] at t0 held over the 1/30 s frame (Frame.control) vs the 200 Hz IMU:
    measured max over 60 frames: handheld 8.3e-5 m, 8.8e-4 rad, 8.1e-3 m/s; drone 7.9e-6 m, 1.2e-4 rad,
    7.8e-4 m/s."""
    trajectory, samples, _ = imu_stream(motion)
    imu_model = make_transition(DynamicsConfig(model="imu"))
    control_model = make_transition(DynamicsConfig(model="control"))
    worst = torch.zeros(3, **F64)
    times = 0.5 + np.arange(61) / FPS
    poses, velocities = truth(trajectory, times)
    commands = true_control(trajectory, times)
    for i, t in enumerate(times[:-1]):
        state = GaussianState(t, poses[i], velocities[i], torch.zeros(12, 12, **F64))
        a = imu_model.predict(state, times[i + 1], imu=samples.between(t - 0.02, t + 0.06))
        b = control_model.predict(state, times[i + 1], control=commands[i])
        rotation = torch.linalg.matrix_norm(a.T[:3, :3].T @ b.T[:3, :3] - torch.eye(3, **F64)) / 2**0.5
        worst = torch.maximum(worst, torch.stack([(a.T[:3, 3] - b.T[:3, 3]).norm(), rotation,
                                                  (a.velocity[:3] - b.velocity[:3]).norm()]))
    assert (worst < torch.tensor([2e-4, 2e-3, 2e-2], **F64)).all(), worst


# ----------------------------------------------------------------------------- residual MLP hook
@pytest.mark.parametrize("name", ["constant_velocity", "imu", "control"])
def test_zero_initialised_residual_leaves_prediction_unchanged(name):
    trajectory, samples, _ = imu_stream("drone", noisy=True)
    state = state_at(trajectory, 1.0, random_covariance(12, torch.full((12,), 0.05, **F64)))
    inputs = dict(imu=samples, control=true_control(trajectory, np.array([1.0]))[0])
    plain = make_transition(DynamicsConfig(model=name)).predict(state, 1.0 + 1 / FPS, **inputs)
    hooked = make_transition(DynamicsConfig(model=name, residual_mlp=True)).predict(state, 1.0 + 1 / FPS, **inputs)
    assert torch.equal(plain.T, hooked.T) and torch.equal(plain.velocity, hooked.velocity)
    assert torch.allclose(plain.covariance, hooked.covariance, rtol=0, atol=1e-18)


def test_untrained_std_head_adds_no_covariance_and_a_trained_one_adds_diag_std2():
    """The untrained residual (mean head zero, log-std exp(-30)) predicts exactly the engineered mean and the
    same covariance; a std head of s adds R diag(s_lin^2) R^T and diag(s_ang^2) on the velocity block only."""
    trajectory, samples, _ = imu_stream("drone", noisy=True)
    state = state_at(trajectory, 1.0, random_covariance(12, torch.full((12,), 0.05, **F64)))
    t1 = 1.0 + 1 / FPS
    plain = make_transition(DynamicsConfig(model="imu")).predict(state, t1, imu=samples)
    mlp = ResidualMLP(hidden=16)
    hooked = make_transition(DynamicsConfig(model="imu"), mlp).predict(state, t1, imu=samples)
    assert torch.equal(plain.T, hooked.T) and torch.equal(plain.velocity, hooked.velocity)
    assert torch.allclose(plain.covariance, hooked.covariance, rtol=0, atol=1e-18)
    std = torch.tensor([0.1, 0.2, 0.3, 0.01, 0.02, 0.03], **F64)
    with torch.no_grad():
        mlp.log_std.bias.copy_(std.log())
    noisy = make_transition(DynamicsConfig(model="imu"), mlp).predict(state, t1, imu=samples)
    assert torch.equal(plain.T, noisy.T) and torch.equal(plain.velocity, noisy.velocity)
    R = state.T[:3, :3]
    expected = torch.zeros(12, 12, **F64)
    expected[6:9, 6:9] = R @ torch.diag(std[:3] ** 2) @ R.T
    expected[9:, 9:] = torch.diag(std[3:] ** 2)
    assert torch.allclose(noisy.covariance - plain.covariance, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["constant_velocity", "imu"])
def test_linearisation_includes_the_residual_jacobian(name):
    """A trained (here: random) residual shifts the velocity by [R r_lin, r_ang] and its Jacobian enters F."""
    trajectory, samples, _ = imu_stream("drone")
    mlp = ResidualMLP(hidden=16)
    torch.nn.init.normal_(mlp.output.weight, std=0.3, generator=torch.Generator().manual_seed(6))
    plain, hooked = make_transition(DynamicsConfig(model=name)), make_transition(DynamicsConfig(model=name), mlp)
    state, t1 = state_at(trajectory, 1.0), 1.0 + 1 / FPS
    window = hooked.inputs(state, t1, samples)
    T1, v1, F, _ = hooked.linearise(state.T, state.velocity, window)
    T0, v0, F0, _ = plain.linearise(state.T, state.velocity, plain.inputs(state, t1, samples))
    assert torch.allclose(T1, T0, atol=1e-15)
    assert torch.allclose(v1 - v0, hooked.residual_increment(state.T, state.velocity, window.values, window.dt))

    def perturbed(d):
        T_d, v_d = boxplus(state.T, state.velocity, d)
        return boxminus(*hooked.propagate(T_d, v_d, window.values, window), T1, v1)

    assert torch.allclose(F, jacfwd(perturbed)(torch.zeros(12, **F64)), atol=1e-12)
    assert (F[6:] - F0[6:]).abs().max() > 1e-3  # the residual's own Jacobian is there



def test_bias_uncertainty_widens_the_imu_prediction():
    """Unknown biases (std b) add b^2 dt^2 to the velocity variance over a window, as a constant bias does."""
    trajectory = make_trajectory("handheld", seed=1)
    t = np.arange(0.0, 0.2, 1 / 200.0)
    imu = synthesize_imu(trajectory, t, 200.0, model=None)
    samples = ImuSamples(t, imu.gyro, imu.accel)
    k = trajectory.kinematics(torch.tensor([0.0], dtype=torch.float64))
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = k.R[0], k.p[0]
    v = torch.cat([k.v[0], k.omega[0]])
    state = GaussianState(0.0, T, v, torch.eye(12, dtype=torch.float64) * 1e-12)
    dt = 0.1
    tight = make_transition(DynamicsConfig(model="imu", gyro_bias_std=0.0, accel_bias_std=0.0))
    loose = make_transition(DynamicsConfig(model="imu", gyro_bias_std=0.0, accel_bias_std=0.3))
    extra = loose.predict(state, dt, imu=samples).covariance[6:9, 6:9] - \
        tight.predict(state, dt, imu=samples).covariance[6:9, 6:9]
    np.testing.assert_allclose(torch.diagonal(extra).numpy(), (0.3 * dt) ** 2, rtol=0.15)


# ----------------------------------------------------------------------------- gravity alignment
@pytest.mark.parametrize("motion,noisy,max_deg", [("handheld", False, 0.05), ("drone", False, 0.05),
                                                    ("handheld", True, 1.0), ("drone", True, 1.0)])
def test_gravity_alignment_finds_gravity_in_an_arbitrary_world_frame(motion, noisy, max_deg):
    """Poses given in a world frame rotated by Q (as when the first camera pose is the identity): the
    alignment recovers Q g from 0.5 s of poses and IMU. Noise-free: limited by Euler integration only
    (measured ~0.01 deg); with ADIS16448 noise and unmodelled biases ~0.3-0.6 deg, which the accelerometer
    bias uncertainty (0.3 m/s^2 ~ 1.7 deg of gravity) covers."""
    trajectory, samples, _ = imu_stream(motion, noisy=noisy)
    Q = se3_exp(torch.tensor([0.3, -1.0, 2.0, 1.2, -0.4, 0.7], **F64))
    model = make_transition(DynamicsConfig(model="imu"))
    model.align_gravity_first()
    times = 0.5 + np.arange(20) / FPS
    poses, velocities = truth(trajectory, times)
    for i, t in enumerate(times[:-1]):
        state = GaussianState(t, Q @ poses[i], velocities[i], torch.eye(12, **F64) * 1e-6)
        prior = model.predict(state, times[i + 1], imu=samples.between(t, times[i + 1]))
        if model.alignment is not None:  # still aligning: the constant-velocity prediction
            cv = ConstantVelocity(model.config).predict(state, times[i + 1])
            torch.testing.assert_close(prior.T, cv.T)
    assert model.alignment is None, "0.5 s of poses should have been enough"
    expected = Q[:3, :3] @ torch.tensor([0.0, 0.0, -9.81], **F64)
    found = torch.tensor(model.gravity, **F64)
    angle = torch.rad2deg(torch.arccos((found @ expected / found.norm() / expected.norm()).clamp(-1, 1)))
    assert float(found.norm()) == pytest.approx(9.81)
    assert float(angle) < max_deg, f"gravity off by {float(angle):.3f} deg"
