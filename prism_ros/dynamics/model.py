"""Transition models of the PRISM state: the Gaussian prediction of (pose, velocity) at the next frame.

State ``x = (T, v)`` as in :mod:`prism_ros.prism.state`: ``T = T_world_body``, ``v = [v_world (3), omega_body (3)]``.
The 12-D tangent of the covariance is defined by
    ``x (+) d = (exp(d[:6]^) T, v + d[6:])``     left (world-frame) pose perturbation, additive velocity,
    ``y (-) x = (log(T_y T_x^-1), v_y - v_x)``.
A model is a propagation ``x' = f(x, u)`` of the mean through inputs ``u`` (IMU samples or commands, each
with white noise ``n``). The prediction is ``N(f(x, u), F P F^T + G S_u G^T + Q)`` with
``F = d(f(x (+) d, u) (-) x')/dd`` and ``G = d(f(x, u + n) (-) x')/dn`` at zero: exact Jacobians by autodiff
through the very propagation code, residual MLP included (reverse mode on a batch of 12 copies: one forward,
one backward; see :meth:`TransitionModel.linearise`). The strapdown models use their closed form instead
(:meth:`EulerModel.linearise`, tested equal to the autodiff one), whose cost stays small for long IMU
windows. ``Q`` is the continuous process noise
of the constant-velocity model (zero for the input-driven ones, whose noise is in ``S_u``), plus the learned
velocity noise of a residual's std head (VSSM-LM's ``MLP_sigma``; trained in :mod:`prism_ros.dynamics.learning`).

Models (:func:`make_transition` by ``DynamicsConfig.model``):
- ``constant_velocity``: ``R' = R Exp(omega dt)``, ``p' = p + v dt``, ``v' = v`` (exact for a screw motion
  with constant world velocity and body rate); white-noise acceleration ``Q``.
- ``imu``: strapdown Euler (or midpoint) integration of the IMU samples between the two frames
  (:mod:`prism_ros.dynamics.imu`), biases subtracted; the angular velocity becomes the last gyro sample.
- ``control``: the same integration driven by commanded body acceleration (gravity excluded) and rates.

The pose is the body's (the IMU frame when there is one); the filter maps it to the camera with
``T @ T_body_camera``, and since that multiplies on the right the left-perturbation covariance is the same
for both. Predictions are detached (a filter must not grow an autograd graph over a sequence); training
code calls :meth:`TransitionModel.propagate` directly, which is differentiable and batched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from prism_ros.dynamics.imu import GRAVITY, METHODS, held, imu_window, integrate_imu, window_weights
from prism_ros.frame import ImuSamples
from prism_ros.geometry.lie import (
    se3_exp,
    se3_from_rt,
    se3_hat,
    se3_inverse,
    se3_log,
    skew,
    so3_exp,
    so3_right_jacobian,
    vee,
)
from prism_ros.prism.state import GaussianState

IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class DynamicsConfig:
    """Transition model and its noise. Every field has a default; tuples keep it YAML-friendly."""

    model: str = "constant_velocity"  # constant_velocity | imu | control
    # constant velocity: white-noise acceleration (velocity random walk), spectral densities
    # (fit to ground truth at 30 Hz: ~0.1 linear on TUM fr1/fr2, 0.16 on EuRoC V1_02; the defaults leave margin)
    linear_acceleration_noise: float = 0.3  # m/s^2/sqrt(Hz), world frame
    angular_acceleration_noise: float = 0.5  # rad/s^2/sqrt(Hz), body frame
    # IMU: white-noise densities of the ADIS16448 (EuRoC); per-sample sigma = density * sqrt(rate)
    imu_method: str = "euler"  # euler (zero-order hold) | midpoint
    gyro_noise_density: float = 1.6968e-4  # rad/s/sqrt(Hz)
    accel_noise_density: float = 2.0e-3  # m/s^2/sqrt(Hz)
    imu_rate: float = 200.0  # Hz, used when a window holds too few samples to measure the rate
    # Biases are fixed parameters, subtracted from the samples. To estimate them, append them to the state
    # (18-D, random walks with the sensor's bias diffusion, e.g. 1.9393e-5 rad/s^2/sqrt(Hz) and 3e-3
    # m/s^3/sqrt(Hz) on EuRoC): propagate() would read them from the state and autodiff gives F's columns.
    bias_gyro: tuple[float, ...] = (0.0, 0.0, 0.0)  # rad/s
    bias_accel: tuple[float, ...] = (0.0, 0.0, 0.0)  # m/s^2
    # uncertainty of those bias values (an uncalibrated MEMS IMU by default; lower them after calibration).
    # Without it the IMU prior is far tighter than the unmodelled bias error and drags the pose MAP along.
    gyro_bias_std: float = 0.05  # rad/s
    accel_bias_std: float = 0.3  # m/s^2
    # control: white noise per command (held over the interval), body frame. It covers the command noise and
    # what a held command misses (the motion changes within the interval, actuation lag): on the synthetic
    # drone (command noise 0.05 m/s^2 and 0.01 rad/s, 20 ms lag) 0.05/0.01 gave NEES median 18, these 4.2
    control_accel_sigma: float = 0.15  # m/s^2
    control_gyro_sigma: float = 0.03  # rad/s
    gravity: float = GRAVITY  # m/s^2, world gravity is (0, 0, -gravity)
    # IMU with an unknown world frame (the first camera pose is the identity, not gravity-aligned): the
    # first this many seconds are tracked with constant velocity, then gravity is solved from those poses
    # and the IMU (see GravityAlignment)
    gravity_alignment_s: float = 0.5
    T_body_camera: tuple[float, ...] = IDENTITY  # row-major 4x4 camera -> body; applied by the filter
    # residual MLP on the velocity update (VSSM-LM); zero-initialised, so it starts as the engineered model
    residual_mlp: bool = False
    residual_hidden: int = 64
    residual_layers: int = 2
    # a file from `prism-ros dynamics train`: predict with that learned residual (mean and velocity noise) on
    # top of this config's engineered model, which must be the one it was trained for; "" = none
    residual_model: str = ""


# ----------------------------------------------------------------------------- state tangent
def boxplus(T: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (+) delta``: left se(3) perturbation of the pose, additive velocity; batched over delta (..., 12)."""
    return se3_exp(delta[..., :6]) @ T, v + delta[..., 6:]


def boxminus(T_a: torch.Tensor, v_a: torch.Tensor, T_b: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
    """``x_a (-) x_b`` (..., 12): ``[log(T_a T_b^-1), v_a - v_b]``, the inverse of :func:`boxplus`."""
    return torch.cat([se3_log(T_a @ se3_inverse(T_b)), v_a - v_b], -1)


def symmetrise(P: torch.Tensor) -> torch.Tensor:
    return 0.5 * (P + P.transpose(-1, -2))


# ----------------------------------------------------------------------------- inputs
@dataclass
class InputWindow:
    """What drives one prediction over ``[t0, t1]``: samples (M, 6) ``[gyro or rates, accel]`` at ``times`` (M,)
    and the white-noise variance of each entry (M*6,). Empty (M = 0) for the constant-velocity model."""

    t0: float
    t1: float
    times: torch.Tensor
    values: torch.Tensor
    variance: torch.Tensor

    @property
    def dt(self) -> float:
        return self.t1 - self.t0


# ----------------------------------------------------------------------------- residual MLP hook
FEATURES = 16


def residual_features(T: torch.Tensor, v: torch.Tensor, u: torch.Tensor, dt: float) -> torch.Tensor:
    """(..., 16) rotation-invariant inputs of the residual: body velocity, body rate, gravity direction in the
    body, mean input (6; zeros without inputs) and dt, all at the start of the step."""
    R = T[..., :3, :3]
    velocity_in_body = (R.transpose(-1, -2) @ v[..., :3, None])[..., 0]
    up_in_body = R[..., 2, :]  # R^T e_z
    u_mean = u.mean(-2) if u.shape[-2] else torch.zeros_like(v)
    return torch.cat([velocity_in_body, v[..., 3:], up_in_body, u_mean, torch.full_like(v[..., :1], dt)], -1)


LOG_STD_UNTRAINED = -30.0  # log-std of the untrained noise head: exp(-30)^2 ~ 1e-26, no added variance


class ResidualMLP(nn.Module):
    """Learned correction of the velocity update (VSSM-LM): features (16,) -> mean [dv body (3), domega body (3)]
    and the log-std (6,) of extra white noise on that velocity update (the paper's ``MLP_mu`` and ``MLP_sigma``
    on one shared trunk).

    Both heads start with zero weights: the mean at zero and the log-std at ``log_std_init``, so an untrained
    residual leaves the engineered dynamics, mean and covariance, unchanged (to ~1e-26). Training starts the
    std head from a useful value (:func:`prism_ros.dynamics.learning.train_residual`): at exp(-30) its gradient
    would vanish. ``feature_offset``/``feature_scale`` whiten the inputs (identity until training sets them
    from the data: the accelerometer's ~9.8 m/s^2 would otherwise saturate the tanh units).
    ``trained_step`` (s; 0 = unknown) is the step it was trained at: every training step has that one dt, so the
    MLP cannot have learned how its output depends on dt. A prediction over another interval (the filter's
    frame interval) reads the features at the trained step and scales the output as a bias-like rate: the mean
    correction by dt / step, the std by sqrt(dt / step) (a velocity random walk); exact for a constant bias.
    Any module with the ``forward`` signature can be plugged in; ``distribution`` is optional.
    """

    def __init__(self, hidden: int = 64, layers: int = 2, dtype=torch.float64,
                 log_std_init: float = LOG_STD_UNTRAINED):
        super().__init__()
        sizes = [FEATURES] + [hidden] * layers
        self.trunk = nn.Sequential(*[m for a, b in zip(sizes[:-1], sizes[1:])
                                     for m in (nn.Linear(a, b, dtype=dtype), nn.Tanh())])
        self.output = nn.Linear(sizes[-1], 6, dtype=dtype)
        self.log_std = nn.Linear(sizes[-1], 6, dtype=dtype)
        for head, bias in ((self.output, 0.0), (self.log_std, log_std_init)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, bias)
        self.register_buffer("feature_offset", torch.zeros(FEATURES, dtype=dtype))
        self.register_buffer("feature_scale", torch.ones(FEATURES, dtype=dtype))
        self.register_buffer("trained_step", torch.zeros((), dtype=dtype))

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        return self.trunk((features - self.feature_offset) * self.feature_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Mean correction (..., 6)."""
        return self.output(self.hidden(features))

    def distribution(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean correction and log-std (..., 6) of the extra velocity noise, from one pass of the trunk."""
        h = self.hidden(features)
        return self.output(h), self.log_std(h)


# ----------------------------------------------------------------------------- models
class TransitionModel:
    """Gaussian prediction through a propagation ``step``; subclasses define ``step`` and ``inputs``."""

    def __init__(self, config: DynamicsConfig, residual: nn.Module | None = None):
        self.config = config
        self.residual = residual

    def predict(self, state: GaussianState, t_next: float, imu: ImuSamples | None = None,
                control=None) -> GaussianState:
        """The Gaussian prediction of (pose, velocity) at ``t_next`` (mean propagated, covariance linearised)."""
        t_next = float(t_next)
        if t_next < state.t:
            raise ValueError(f"cannot predict backwards in time: from {state.t} to {t_next}")
        if t_next == state.t:
            return replace(state, previous_cross=state.covariance)
        window = self.inputs(state, t_next, imu, control)
        T, v, F, G = self.linearise(state.T, state.velocity, window)
        cross = F @ state.covariance  # the new error is F e + independent noise
        P = cross @ F.T + (G * window.variance) @ G.T + self.process_noise(T, window.dt)
        P = P + self.residual_noise(state.T, state.velocity, window.values, window.dt)
        return GaussianState(t_next, T, v, symmetrise(P), cross)

    def propagate(self, T: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                  window: InputWindow) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean dynamics: engineered step, plus the residual MLP on the velocity when there is one."""
        T_next, v_next, _ = self.propagate_with_std(T, v, u, window)
        return T_next, v_next

    def propagate_with_std(self, T: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                           window: InputWindow) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`propagate` and the std (..., 6) of the residual's extra velocity noise, in the residual's body
        coordinates (None without a residual or a std head): what multi-step training rolls out."""
        T_next, v_next = self.step(T, v, u, window)
        if self.residual is None:
            return T_next, v_next, None
        increment, std = self.residual_outputs(T, v, u, window.dt)
        return T_next, v_next + increment, std

    def residual_outputs(self, T, v, u, dt: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The MLP's velocity correction in state coordinates (its linear part rotated to the world) and its
        noise std (..., 6) in body coordinates, or None when the module has no ``distribution`` head; over an
        interval other than the residual's ``trained_step``, rescaled to it (see :class:`ResidualMLP`)."""
        step = float(getattr(self.residual, "trained_step", 0.0))
        scale = dt / step if step > 0 else 1.0
        features = residual_features(T, v, u, step if step > 0 else dt)
        weight = next(self.residual.parameters(), features)  # the MLP may be float32 and elsewhere
        features, std = features.to(weight), None
        if hasattr(self.residual, "distribution"):
            r, log_std = self.residual.distribution(features)
            std = log_std.to(v).exp() * math.sqrt(scale)
        else:
            r = self.residual(features)
        r = r.to(v) * scale
        return torch.cat([(T[..., :3, :3] @ r[..., :3, None])[..., 0], r[..., 3:]], -1), std

    def residual_increment(self, T, v, u, dt: float) -> torch.Tensor:
        """The MLP's velocity correction in state coordinates: its linear part rotated to the world."""
        return self.residual_outputs(T, v, u, dt)[0]

    def residual_noise(self, T: torch.Tensor, v: torch.Tensor, u: torch.Tensor, dt: float) -> torch.Tensor:
        """(12, 12) covariance the residual's std head adds at the state: ``diag(std^2)`` on the velocity block,
        the linear part rotated to the world (``R diag(std_lin^2) R^T``) as the mean correction is; zero
        without a std head. Evaluated at the prior mean (the noise enters after the step, so F does not act on
        it)."""
        Q = T.new_zeros(12, 12)
        if self.residual is None:
            return Q
        with torch.no_grad():
            _, std = self.residual_outputs(T.detach(), v.detach(), u.detach(), dt)
        if std is None:
            return Q
        R, variance = T[:3, :3].detach(), std.detach() ** 2
        Q[6:9, 6:9] = (R * variance[:3]) @ R.T
        Q[9:, 9:] = torch.diag(variance[3:])
        return Q

    def linearise(self, T: torch.Tensor, v: torch.Tensor, window: InputWindow):
        """Propagated mean (T', v') and the exact Jacobians F (12,12) w.r.t. the state and G (12, M*6) w.r.t.
        the input noise, by reverse-mode autodiff through :meth:`propagate` on 12 copies at once.

        Copy i carries the perturbation ``z_i = [d (12), n (M*6)]`` (all zero) and only its i-th output
        coordinate enters the summed objective, so one backward pass gives all 12 rows. The pose is
        perturbed as ``(I + d^) T`` and read out as ``[t, vee(R)]`` of ``T(z) T'^-1``: both agree with
        ``exp``/``log`` to first order, which is all a Jacobian at zero sees. ``torch.func.jacfwd`` gives
        the same matrix (test_dynamics.py) but costs 20-40 ms on CPU against 1.5-3 ms here: forward-mode
        through kornia's rotation conversions is slow.
        """
        T, v, u = T.detach(), v.detach(), window.values.detach()
        with torch.enable_grad():
            z = T.new_zeros(12, 12 + u.numel(), requires_grad=True)
            T_z = T + se3_hat(z[:, :6]) @ T
            T_out, v_out = self.propagate(T_z, v + z[:, 6:12], u + z[:, 12:].reshape(12, *u.shape), window)
            T_next, v_next = T_out[0].detach(), v_out[0].detach()
            X = T_out @ se3_inverse(T_next)
            y = torch.cat([X[:, :3, 3], vee(X[:, :3, :3]), v_out], -1)  # (12 copies, 12 coordinates)
            (J,) = torch.autograd.grad(y.diagonal().sum(), z)
        return T_next, v_next, J[:, :12], J[:, 12:]

    def residual_jacobian(self, T: torch.Tensor, v: torch.Tensor, window: InputWindow):
        """The residual's velocity increment (6,) and its Jacobian (6, 12 + M*6) w.r.t. ``[d, n]``, by
        autodiff of the MLP alone (6 copies, perturbed as in :meth:`linearise`)."""
        u = window.values.detach()
        with torch.enable_grad():
            z = T.new_zeros(6, 12 + u.numel(), requires_grad=True)
            T_z = T + se3_hat(z[:, :6]) @ T
            r = self.residual_increment(T_z, v + z[:, 6:12], u + z[:, 12:].reshape(6, *u.shape), window.dt)
            (J,) = torch.autograd.grad(r.diagonal().sum(), z)
        return r[0].detach(), J

    def process_noise(self, T: torch.Tensor, dt: float) -> torch.Tensor:
        return T.new_zeros(12, 12)

    def inputs(self, state: GaussianState, t_next: float, imu, control) -> InputWindow:
        raise NotImplementedError

    def step(self, T, v, u, window):
        raise NotImplementedError


def held_weights(x: torch.Tensor, method: str, dim: int = 0) -> torch.Tensor:
    """Per-interval values (n-1, ...) spread onto the n samples as :func:`prism_ros.dynamics.imu.held` reads them:
    all to the left sample (euler), half to each end (midpoint); the transpose of ``held``."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    if method == "euler":
        return torch.cat([x, zero], dim)
    return 0.5 * (torch.cat([zero, x], dim) + torch.cat([x, zero], dim))


def suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive sums from each row to the last, along dim 0."""
    return x.flip(0).cumsum(0).flip(0)


class ConstantVelocity(TransitionModel):
    """Screw motion with constant world velocity and body rate, driven by white-noise acceleration."""

    def inputs(self, state, t_next, imu=None, control=None) -> InputWindow:
        empty = state.T.new_zeros(0, 6)
        return InputWindow(state.t, t_next, empty[:, 0], empty, empty.reshape(0))

    def step(self, T, v, u, window):
        dt = window.dt
        R = T[..., :3, :3] @ so3_exp(v[..., 3:] * dt)
        return se3_from_rt(R, T[..., :3, 3] + v[..., :3] * dt), v

    def process_noise(self, T: torch.Tensor, dt: float) -> torch.Tensor:
        """White-noise acceleration integrated over dt, mapped into the left tangent at the predicted pose.

        Per axis, velocity random walk with density q: cov(position, velocity) = q [[dt^3/3, dt^2/2],
        [dt^2/2, dt]] (world position / world velocity, and body rotation / body rate alike). A body-frame
        rotation error th and a world position error e are the left perturbation phi = R th,
        rho = e + p x phi (first order), hence G = [[I, [p]x R], [0, R]] on the pose block.
        """
        eye = torch.eye(3, dtype=T.dtype, device=T.device)
        Q = T.new_zeros(12, 12)
        for pose, vel, density in ((slice(0, 3), slice(6, 9), self.config.linear_acceleration_noise),
                                   (slice(3, 6), slice(9, 12), self.config.angular_acceleration_noise)):
            q = density**2 * eye
            Q[pose, pose], Q[vel, vel] = q * dt**3 / 3, q * dt
            Q[pose, vel] = Q[vel, pose] = q * dt**2 / 2
        G = torch.eye(12, dtype=T.dtype, device=T.device)
        G[:3, 3:6] = skew(T[:3, 3]) @ T[:3, :3]
        G[3:6, 3:6] = T[:3, :3]
        return G @ Q @ G.T


class EulerModel(TransitionModel):
    """Strapdown integration of body rates and accelerations (:func:`prism_ros.dynamics.imu.integrate_imu`).

    ``u`` rows are ``[rates, accel]``: a specific force with world ``gravity`` for the IMU, a body
    acceleration with zero gravity for commands. The angular velocity at ``t1`` is the rate held there
    (minus bias). The sample held at ``t1`` is remembered, so the next window, which starts with the
    samples after its ``t0`` (``Frame.imu``), still holds the right value on its first partial interval;
    without any sample at or before ``t0`` the first one after it is held back to ``t0``.
    """

    def __init__(self, config: DynamicsConfig, residual: nn.Module | None = None, method: str = "euler",
                 gravity=(0.0, 0.0, 0.0), bias_gyro=(0.0, 0.0, 0.0), bias_accel=(0.0, 0.0, 0.0)):
        super().__init__(config, residual)
        if method not in METHODS:
            raise ValueError(f"unknown imu_method {method!r}; use one of {METHODS}")
        self.method, self.gravity, self.bias_gyro, self.bias_accel = method, gravity, bias_gyro, bias_accel
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # (time (1,), sample (1, 6))

    def step(self, T, v, u, window):
        t, rates, accel = imu_window(window.times, u[..., :3], u[..., 3:], window.t0, window.t1, self.method)
        bias_gyro = T.new_tensor(self.bias_gyro)
        R, p, v_lin = integrate_imu(T[..., :3, :3], T[..., :3, 3], v[..., :3], t, rates, accel,
                                    gravity=T.new_tensor(self.gravity), bias_gyro=bias_gyro,
                                    bias_accel=T.new_tensor(self.bias_accel), method=self.method)
        return se3_from_rt(R, p), torch.cat([v_lin, rates[..., -1, :] - bias_gyro], -1)

    def linearise(self, T: torch.Tensor, v: torch.Tensor, window: InputWindow):
        """:meth:`TransitionModel.linearise` in closed form, vectorised over the samples: its cost grows slowly
        with the window, where autodiff's backward pass through 12 copies of the integration dominates the
        prediction once frames drop and windows hold hundreds of samples. A residual MLP only adds to the
        velocity, so its own Jacobian (autodiff of the MLP alone) adds to those rows.

        In world-frame errors (left rotation ``dth``, position ``dp``, linear velocity ``dv``) the scheme
        ``R_{k+1} = R_k Exp(w~_k dt_k)``, ``a_k = R_k f_k + g`` gives per step
        ``dth_{k+1} = dth_k + B_k dw~_k`` with ``B_k = R_{k+1} J_r(w~_k dt_k) dt_k`` and
        ``da_k = -[s_k]x dth_k + R_k df_k`` (``s_k = R_k f_k``). Velocity and position are linear in the
        samples' accelerations: ``v' = v + sum_i alpha_i a_i``, ``p' = p + v T + sum_i beta_i a_i``, with the
        interval weights ``dt_k`` and ``dt_k (t_end - (t_k + t_{k+1}) / 2)`` on the held value (left sample,
        or half to each end for midpoint). So ``dth`` of the state enters ``v'`` as ``-[sum alpha s]x``, and
        the gyro of interval j acts on all later samples: ``(dth, dv, dp)' = (B_j, -[S^a_j]x B_j,
        -[S^b_j]x B_j)`` with the suffix sums ``S^a_j = sum_{i>j} alpha_i s_i`` (``S^b`` likewise). The
        state tangent reads ``rho = dp + [p']x dth`` out and ``dp = rho - [p]x phi`` in; the angular velocity
        is the last window sample. Finally :func:`prism_ros.dynamics.imu.window_weights` maps the window's samples
        (held or interpolated ends) back to the given ones.
        """
        T, v, u = T.detach(), v.detach(), window.values.detach()
        t, rates, accel = imu_window(window.times, u[:, :3], u[:, 3:], window.t0, window.t1, self.method)
        rates, force = rates - T.new_tensor(self.bias_gyro), accel - T.new_tensor(self.bias_accel)
        R_all, p_all, v_all = integrate_imu(T[:3, :3], T[:3, 3], v[:3], t, rates, force,
                                            gravity=T.new_tensor(self.gravity), method=self.method,
                                            return_all=True)
        T_next, v_next = se3_from_rt(R_all[-1], p_all[-1]), torch.cat([v_all[-1], rates[-1]])
        dt = (t[1:] - t[:-1]).to(T.dtype)
        remaining = suffix_sum(dt) - 0.5 * dt  # t_end - (t_k + t_{k+1}) / 2 from the steps the integration sums
        alpha, beta = held_weights(dt, method=self.method), held_weights(dt * remaining, method=self.method)
        s = (R_all @ force[:, :, None])[..., 0]  # world specific force (world acceleration less gravity)
        B = R_all[1:] @ so3_right_jacobian(held(rates, self.method) * dt[:, None]) * dt[:, None, None]
        S_alpha = suffix_sum(alpha[:, None] * s)[1:]  # sum over the samples after each interval's left one
        S_beta = suffix_sum(beta[:, None] * s)[1:]
        p0, p1 = T[:3, 3], T_next[:3, 3]
        eye = torch.eye(3, dtype=T.dtype, device=T.device)
        F = torch.eye(12, dtype=T.dtype, device=T.device)
        F[:3, 3:6] = skew(p1 - p0 - (beta[:, None] * s).sum(0))
        F[:3, 6:9] = dt.sum() * eye
        F[6:9, 3:6] = -skew((alpha[:, None] * s).sum(0))
        F[9:, 9:] = 0.0  # the angular velocity is read from the gyro, not carried over
        interval = torch.cat([skew(p1 - S_beta) @ B, B, -skew(S_alpha) @ B, torch.zeros_like(B)], -2)  # (n-1, 12, 3)
        gyro = held_weights(interval, dim=0, method=self.method)
        gyro[-1, 9:] = eye
        accel = torch.cat([beta[:, None, None] * R_all, torch.zeros_like(R_all), alpha[:, None, None] * R_all,
                           torch.zeros_like(R_all)], -2)
        blocks = torch.cat([gyro, accel], -1)  # (n, 12, 6): the window's samples
        index, weight = window_weights(window.times, window.t0, window.t1, self.method)
        G = blocks.new_zeros(len(u), 12, 6).index_add_(
            0, index.reshape(-1), (blocks[:, None] * weight.to(T.dtype)[..., None, None]).reshape(-1, 12, 6))
        G = G.permute(1, 0, 2).reshape(12, -1)
        if self.residual is not None:
            increment, J = self.residual_jacobian(T, v, window)
            v_next, F[6:], G[6:] = v_next + increment, F[6:] + J[:, :12], G[6:] + J[:, 12:]
        return T_next, v_next, F, G

    def window(self, state: GaussianState, t1: float, times, rates, accel, sigma) -> InputWindow:
        """The samples covering [state.t, t1] as tensors, each entry with white-noise std ``sigma`` (6,)."""
        t0 = state.t
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        values = np.concatenate([np.asarray(rates).reshape(-1, 3), np.asarray(accel).reshape(-1, 3)], -1)
        if self.previous is not None and (len(times) == 0 or times[0] > t0) and self.previous[0][0] <= t0:
            times, values = np.concatenate([self.previous[0], times]), np.concatenate([self.previous[1], values])
        if len(times) == 0:
            raise ValueError(f"{type(self).__name__} needs inputs between {t0} and {t1}, got none")
        first = max(int(np.searchsorted(times, t0, side="right")) - 1, 0)  # last sample at or before t0
        last = min(int(np.searchsorted(times, t1, side="left")), len(times) - 1)  # first at or after t1
        times, values = times[first:last + 1], values[first:last + 1]
        held = max(int(np.searchsorted(times, t1, side="right")) - 1, 0)
        self.previous = (times[held:held + 1], values[held:held + 1])
        variance = np.tile(np.asarray(sigma, dtype=np.float64) ** 2, len(times))
        options = dict(dtype=state.T.dtype, device=state.T.device)
        return InputWindow(t0, t1, torch.as_tensor(times, dtype=torch.float64, device=state.T.device),
                           torch.as_tensor(values, **options), torch.as_tensor(variance, **options))


class ImuEuler(EulerModel):
    """IMU-driven prediction: gyro and specific force integrated between the frames, biases subtracted.

    Noise: white, per sample ``sigma = density * sqrt(rate)`` (the rate measured from the window), so a
    velocity accumulates ``density^2 dt`` of variance, as in continuous time.
    """

    def __init__(self, config: DynamicsConfig, residual: nn.Module | None = None):
        super().__init__(config, residual, config.imu_method, (0.0, 0.0, -config.gravity), config.bias_gyro,
                         config.bias_accel)
        self.alignment: GravityAlignment | None = None

    def align_gravity_first(self) -> None:
        """The world frame is not gravity-aligned (e.g. the first camera pose is the identity): predict with
        constant velocity for ``gravity_alignment_s`` and then solve gravity in the world frame."""
        self.alignment = GravityAlignment(self.config)

    def predict(self, state, t_next, imu=None, control=None) -> GaussianState:
        if self.alignment is not None:
            gravity = self.alignment.add(state, imu)
            if gravity is None:
                return self.alignment.fallback.predict(state, t_next)
            self.gravity, self.alignment = tuple(gravity.tolist()), None
        return super().predict(state, t_next, imu, control)

    def inputs(self, state, t_next, imu=None, control=None) -> InputWindow:
        if imu is None:
            raise ValueError("the imu transition model needs the IMU samples of the frame (Frame.imu)")
        density = np.array([self.config.gyro_noise_density] * 3 + [self.config.accel_noise_density] * 3)
        window = self.window(state, t_next, imu.t, imu.gyro, imu.accel, density)
        rate = 1.0 / float(window.times.diff().median()) if len(window.times) > 1 else self.config.imu_rate
        window.variance = window.variance * rate + self.bias_variance(window, len(window.times))
        return window

    def bias_variance(self, window: InputWindow, samples: int) -> torch.Tensor:
        """Per-sample variance that gives the window the spread of an unknown constant bias.

        A constant bias b held over the window moves the velocity by b * dt (variance std^2 dt^2); white
        noise of per-sample variance std^2 * n over n samples accumulates the same std^2 dt^2.
        """
        std = [self.config.gyro_bias_std] * 3 + [self.config.accel_bias_std] * 3
        per_sample = torch.as_tensor(std, dtype=window.variance.dtype, device=window.variance.device) ** 2
        return per_sample.repeat(samples) * samples


class GravityAlignment:
    """Gravity in an arbitrary world frame, from tracked body poses and the IMU (visual-inertial alignment).

    Between tracked poses ``T_k`` (times ``t_k``) the IMU is integrated without gravity, each interval
    starting from the tracked rotation ``R_k``, giving a double integral ``D_k`` of the world specific
    force with zero initial velocity. Then ``p_k - p_0 - D_k = v_0 tau_k + g tau_k^2 / 2`` (``tau_k =
    t_k - t_0``) is linear in the initial velocity and gravity, per axis: a least-squares fit over the
    window. The direction is kept and the magnitude set to ``config.gravity``. Until the window spans
    ``gravity_alignment_s``, predictions come from the constant-velocity model (``fallback``).
    """

    def __init__(self, config: DynamicsConfig):
        self.config, self.fallback = config, ConstantVelocity(config)
        self.poses: list[tuple[float, torch.Tensor]] = []
        self.imu: list[ImuSamples] = []
        self.fit_magnitude: float | None = None  # |g| of the unconstrained fit (a check of the alignment)

    def add(self, state: GaussianState, imu: ImuSamples | None) -> torch.Tensor | None:
        """Record the posterior at ``state.t`` and the IMU after it; gravity (3,) once the window is long enough."""
        if imu is None:
            raise ValueError("the imu transition model needs the IMU samples of the frame (Frame.imu)")
        self.poses.append((state.t, state.T.detach()))
        if len(imu):
            self.imu.append(imu)
        if state.t - self.poses[0][0] < self.config.gravity_alignment_s or len(self.poses) < 3 or not self.imu:
            return None
        return self.solve()

    def solve(self) -> torch.Tensor:
        T0 = self.poses[0][1]
        options = dict(dtype=T0.dtype, device=T0.device)
        t_imu = np.concatenate([s.t for s in self.imu])
        gyro = torch.as_tensor(np.concatenate([s.gyro for s in self.imu]), **options)
        accel = torch.as_tensor(np.concatenate([s.accel for s in self.imu]), **options)
        bias = dict(bias_gyro=torch.as_tensor(self.config.bias_gyro, **options),
                    bias_accel=torch.as_tensor(self.config.bias_accel, **options),
                    gravity=torch.zeros(3, **options))
        D, V, offsets = torch.zeros(3, **options), torch.zeros(3, **options), [torch.zeros(3, **options)]
        for (t0, T), (t1, _) in zip(self.poses[:-1], self.poses[1:]):
            window = imu_window(t_imu, gyro, accel, t0, t1, self.config.imu_method)
            _, D, V = integrate_imu(T[:3, :3], D, V, *window, method=self.config.imu_method, **bias)
            offsets.append(D)
        tau = torch.tensor([t - self.poses[0][0] for t, _ in self.poses], **options)
        positions = torch.stack([T[:3, 3] for _, T in self.poses])
        A = torch.stack([tau, 0.5 * tau**2], -1)  # (K, 2), the same for every axis
        b = positions - positions[0] - torch.stack(offsets)  # (K, 3)
        gravity = torch.linalg.lstsq(A, b).solution[1]
        self.fit_magnitude = float(gravity.norm())
        return gravity / gravity.norm() * self.config.gravity


class ControlEuler(EulerModel):
    """Command-driven prediction: commanded body acceleration (gravity excluded) and body rates.

    ``control`` is one command ``[ax, ay, az, wx, wy, wz]`` held over the interval (ideally the one in
    force since the previous frame, as in VSSM-LM's ``p(z_t+1 | z_t, u_t)``), or a command stream given as
    :class:`ImuSamples` (``gyro`` = rates, ``accel`` = body acceleration) integrated like IMU samples.
    Noise: white per command, ``control_*_sigma``.
    """

    def inputs(self, state, t_next, imu=None, control=None) -> InputWindow:
        if control is None:
            raise ValueError("the control transition model needs a command (Frame.control)")
        sigma = [self.config.control_gyro_sigma] * 3 + [self.config.control_accel_sigma] * 3
        if isinstance(control, ImuSamples):
            return self.window(state, t_next, control.t, control.gyro, control.accel, sigma)
        command = np.asarray(control, dtype=np.float64).reshape(6)
        return self.window(state, t_next, [state.t], command[3:], command[:3], sigma)


TRANSITIONS = {"constant_velocity": ConstantVelocity, "imu": ImuEuler, "control": ControlEuler}


def trained_residual(config: DynamicsConfig) -> nn.Module:
    """The residual in ``config.residual_model`` (InputError when unreadable or trained for another model)."""
    from prism_ros.dynamics.learning import load_residual
    from prism_ros.errors import InputError

    residual, trained, _, _ = load_residual(config.residual_model)
    if trained.model != config.model:
        raise InputError(f"the residual in {config.residual_model} was trained for the {trained.model} model, not "
                         f"{config.model}", f"set dynamics.model: {trained.model} or train one for {config.model}")
    return residual


def make_transition(config: DynamicsConfig | None = None, residual: nn.Module | None = None) -> TransitionModel:
    """The transition model named by ``config.model``, with ``residual`` if given, else the trained one in
    ``config.residual_model`` if set, else a zero-initialised :class:`ResidualMLP` when ``config.residual_mlp``."""
    config = config or DynamicsConfig()
    if config.model not in TRANSITIONS:
        raise ValueError(f"unknown dynamics model {config.model!r}; use one of {', '.join(TRANSITIONS)}")
    if residual is None and config.residual_model:
        residual = trained_residual(config)
    if residual is None and config.residual_mlp:
        residual = ResidualMLP(config.residual_hidden, config.residual_layers)
    return TRANSITIONS[config.model](config, residual)
