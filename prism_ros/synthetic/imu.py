"""IMU and control streams synthesised from a trajectory's exact kinematics.

IMU (body frame, FLU): ``gyro = omega_b + b_g + n_g`` and ``accel = R_wb^T (a_w - g_w) + b_a + n_a`` with
``g_w = (0, 0, -9.81)`` (specific force: +9.81 up at rest). Noise is white with the continuous
densities of an ADIS16448 (the EuRoC IMU), i.e. per-sample sigma = density * sqrt(rate); biases are
constant over the sequence, drawn once from the seed.

Control (the "commanded" input of a controlled platform): body-frame linear acceleration with gravity
excluded, ``R_wb^T a_w``, and body rates ``omega_b``, stacked ``[ax, ay, az, wx, wy, wz]``. The command
at time t is what the vehicle does ``lag`` seconds later (commands lead the motion), plus white noise:
``control(t) = true(t + lag) + n``. ``noise=False`` gives the exact true values at t (no lag, no noise).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from prism_ros.dynamics.imu import GRAVITY
from prism_ros.synthetic.trajectory import Trajectory


@dataclass(frozen=True)
class ImuModel:
    """IMU error model: white-noise densities and the spread of the constant biases drawn by seed."""

    gyro_noise_density: float = 1.6968e-4  # rad/s/sqrt(Hz)
    accel_noise_density: float = 2.0e-3  # m/s^2/sqrt(Hz)
    gyro_bias_sigma: float = 0.005  # rad/s, per axis
    accel_bias_sigma: float = 0.05  # m/s^2, per axis

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ControlModel:
    """Command model: lead time and white noise of the commanded acceleration and rates."""

    lag: float = 0.02  # s
    accel_sigma: float = 0.05  # m/s^2
    gyro_sigma: float = 0.01  # rad/s

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImuStream:
    """Synthesised IMU: gyro, accel (N,3) numpy float64 at the given times, and the biases used."""

    gyro: np.ndarray
    accel: np.ndarray
    bias_gyro: np.ndarray
    bias_accel: np.ndarray


def true_imu(trajectory: Trajectory, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free gyro and specific force (N,3) at profile times ``t`` (s)."""
    k = trajectory.kinematics(torch.as_tensor(t, dtype=torch.float64))
    gravity = torch.tensor([0.0, 0.0, -GRAVITY], dtype=torch.float64)
    specific_force = (k.R.transpose(-1, -2) @ (k.a - gravity)[..., None])[..., 0]
    return k.omega.numpy(), specific_force.numpy()


def synthesize_imu(trajectory: Trajectory, t: np.ndarray, rate: float, model: ImuModel | None = ImuModel(),
                   seed: int = 0) -> ImuStream:
    """IMU samples at profile times ``t`` (sampled at ``rate`` Hz); ``model=None`` gives exact values."""
    gyro, accel = true_imu(trajectory, t)
    if model is None:
        return ImuStream(gyro, accel, np.zeros(3), np.zeros(3))
    rng = np.random.default_rng([seed, 11])
    bias_gyro = rng.normal(0.0, model.gyro_bias_sigma, 3)
    bias_accel = rng.normal(0.0, model.accel_bias_sigma, 3)
    gyro = gyro + bias_gyro + rng.normal(0.0, model.gyro_noise_density * np.sqrt(rate), gyro.shape)
    accel = accel + bias_accel + rng.normal(0.0, model.accel_noise_density * np.sqrt(rate), accel.shape)
    return ImuStream(gyro, accel, bias_gyro, bias_accel)


def true_control(trajectory: Trajectory, t: np.ndarray) -> np.ndarray:
    """Body acceleration without gravity and body rates (N,6) at profile times ``t``."""
    k = trajectory.kinematics(torch.as_tensor(t, dtype=torch.float64))
    accel_body = (k.R.transpose(-1, -2) @ k.a[..., None])[..., 0]
    return torch.cat([accel_body, k.omega], -1).numpy()


def synthesize_control(trajectory: Trajectory, t: np.ndarray, model: ControlModel | None = ControlModel(),
                       seed: int = 0) -> np.ndarray:
    """Commands (N,6) ``[ax, ay, az, wx, wy, wz]`` at profile times ``t``; ``model=None`` gives exact values."""
    if model is None:
        return true_control(trajectory, t)
    rng = np.random.default_rng([seed, 13])
    sigma = np.r_[[model.accel_sigma] * 3, [model.gyro_sigma] * 3]
    return true_control(trajectory, np.asarray(t) + model.lag) + rng.normal(0.0, 1.0, (len(t), 6)) * sigma
