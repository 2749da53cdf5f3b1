"""Smooth analytic 6-DoF motion profiles of the body (IMU) frame, with exact derivatives.

The body frame is FLU (x forward, y left, z up) in a z-up world. Position is a sum of sinusoids (plus
a circular path around the room centre), so velocity and acceleration are closed forms; the
orientation is a torch function of time and its rate comes from forward-mode autodiff
(``torch.func.jvp``), exact to rounding. Profiles:
- ``handheld``: a slow loop (~0.3 m/s) around the room centre at head height, looking ahead along the
  path and slightly into the room, with head bob, sway and slow gaze sweeps (rates up to ~35 deg/s);
- ``drone``: a faster loop (~1 m/s) with altitude changes; roll and pitch follow the lateral
  acceleration like a quadrotor (thrust axis along ``a - g``), heading along the path plus a sweep.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp

from prism_ros.dynamics.imu import GRAVITY
from prism_ros.errors import InputError
from prism_ros.geometry.lie import vee

PROFILES = ("handheld", "drone")
ROOM_SIZE = (6.0, 5.0, 3.0)


@dataclass(frozen=True)
class Sinusoids:
    """``f_d(t) = offset_d + rate_d t + sum_k amplitude_dk sin(omega_dk t + phase_dk)``, D outputs."""

    offset: np.ndarray  # (D,)
    rate: np.ndarray  # (D,)
    amplitude: np.ndarray  # (D, K)
    omega: np.ndarray  # (D, K) rad/s
    phase: np.ndarray  # (D, K)

    def __call__(self, t: torch.Tensor, order: int = 0) -> torch.Tensor:
        """The ``order``-th time derivative at times ``t`` (N,) -> (N, D), closed form."""
        as_t = dict(dtype=t.dtype, device=t.device)
        amp, omega, phase = (torch.as_tensor(x, **as_t) for x in (self.amplitude, self.omega, self.phase))
        waves = (amp * omega**order * torch.sin(omega * t[:, None, None] + phase + order * np.pi / 2)).sum(-1)
        if order == 0:
            return waves + torch.as_tensor(self.offset, **as_t) + torch.as_tensor(self.rate, **as_t) * t[:, None]
        if order == 1:
            return waves + torch.as_tensor(self.rate, **as_t)
        return waves


@dataclass
class Kinematics:
    """Body state at times ``t`` (N,): orientation R_wb (N,3,3), position, velocity, acceleration in the
    world (N,3) and body angular velocity (N,3), all float64 torch."""

    t: torch.Tensor
    R: torch.Tensor
    p: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    omega: torch.Tensor

    def poses(self) -> torch.Tensor:
        """4x4 T_world_body (N,4,4)."""
        T = torch.eye(4, dtype=self.R.dtype, device=self.R.device).repeat(len(self.t), 1, 1)
        T[:, :3, :3], T[:, :3, 3] = self.R, self.p
        return T


@dataclass(frozen=True)
class Trajectory:
    """A motion profile: position sinusoids plus either ZYX Euler-angle sinusoids (yaw, pitch, roll)
    or, for ``thrust_tilt``, a yaw sinusoid with roll/pitch from the acceleration."""

    name: str
    position: Sinusoids
    angles: Sinusoids
    thrust_tilt: bool = False

    def rotation(self, t: torch.Tensor) -> torch.Tensor:
        """R_world_body (N,3,3) at times ``t`` (N,)."""
        angles = self.angles(t)
        if self.thrust_tilt:
            return thrust_rotation(self.position(t, 2), angles[:, 0])
        return euler_zyx(angles[:, 0], angles[:, 1], angles[:, 2])

    def kinematics(self, t) -> Kinematics:
        """Exact state and derivatives at times ``t`` (seconds from the start of the profile)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        R, R_dot = jvp(self.rotation, (t,), (torch.ones_like(t),))
        omega = vee(R.transpose(-1, -2) @ R_dot)
        return Kinematics(t, R, self.position(t), self.position(t, 1), self.position(t, 2), omega)


def euler_zyx(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Rz(yaw) Ry(pitch) Rx(roll) (N,3,3); in FLU a positive pitch tilts the nose down."""
    cy, sy, cp, sp, cr, sr = (f(x) for x in (yaw, pitch, roll) for f in (torch.cos, torch.sin))
    return torch.stack([
        cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
        sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
        -sp, cp * sr, cp * cr,
    ], -1).reshape(-1, 3, 3)


def thrust_rotation(acceleration: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Quadrotor attitude: body z along the thrust ``a + (0,0,g)``, body x as close to the heading
    ``yaw`` as that allows (columns x_b, y_b, z_b)."""
    thrust = acceleration + torch.tensor([0.0, 0.0, GRAVITY], dtype=acceleration.dtype, device=acceleration.device)
    z_b = thrust / thrust.norm(dim=-1, keepdim=True)
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw)], -1)
    y_b = torch.linalg.cross(z_b, heading)
    y_b = y_b / y_b.norm(dim=-1, keepdim=True)
    x_b = torch.linalg.cross(y_b, z_b)
    return torch.stack([x_b, y_b, z_b], -1)


def make_trajectory(motion: str = "handheld", seed: int = 0) -> Trajectory:
    """The seeded motion profile ``motion`` (one of :data:`PROFILES`)."""
    if motion not in PROFILES:
        raise InputError(f"unknown motion profile {motion!r}", f"use one of {', '.join(PROFILES)}")
    rng = np.random.default_rng([seed, PROFILES.index(motion)])
    return handheld(rng) if motion == "handheld" else drone(rng)


def loop_position(rng, radii, speed, height, bob, wobble) -> tuple[Sinusoids, float, float]:
    """Position: an ellipse around the room centre at ``speed`` m/s, plus vertical terms ``bob``
    [(amplitude m, frequency Hz)] and random horizontal ``wobble`` (amplitude m, frequency range Hz).
    Returns the sinusoids, the loop rate (rad/s, signed) and the start angle."""
    centre = np.array(ROOM_SIZE[:2]) / 2 + rng.uniform(-0.15, 0.15, 2)
    rx, ry = rng.uniform(*radii[0]), rng.uniform(*radii[1])
    rate = rng.choice([-1.0, 1.0]) * speed / (0.5 * (rx + ry))
    start = rng.uniform(0, 2 * np.pi)
    n_wobble = 2
    amp = np.zeros((3, 1 + max(n_wobble, len(bob))))
    omega, phase = np.zeros_like(amp), np.zeros_like(amp)
    amp[:2, 0], omega[:2, 0], phase[:2, 0] = (rx, ry), rate, (start + np.pi / 2, start)
    amp[:2, 1:1 + n_wobble] = rng.uniform(0.5, 1.0, (2, n_wobble)) * wobble[0]
    omega[:2, 1:1 + n_wobble] = 2 * np.pi * rng.uniform(*wobble[1], (2, n_wobble))
    phase[:2, 1:] = rng.uniform(0, 2 * np.pi, (2, amp.shape[1] - 1))
    for k, (a, f) in enumerate(bob):
        amp[2, k], omega[2, k], phase[2, k] = a, 2 * np.pi * f, rng.uniform(0, 2 * np.pi)
    offset = np.array([*centre, height + rng.uniform(-0.1, 0.1)])
    return Sinusoids(offset, np.zeros(3), amp, omega, phase), rate, start


def angle_sinusoids(rng, mean: list[float], rate: list[float], waves: list[list[tuple[float, float]]]) -> Sinusoids:
    """Angle sinusoids: per angle a mean (rad), a constant rate (rad/s) and (amplitude deg, freq Hz) waves."""
    k = max(len(w) for w in waves)
    amp, omega = np.zeros((len(mean), k)), np.zeros((len(mean), k))
    for d, row in enumerate(waves):
        for j, (a_deg, f) in enumerate(row):
            amp[d, j], omega[d, j] = np.deg2rad(a_deg), 2 * np.pi * f
    return Sinusoids(np.array(mean), np.array(rate), amp, omega, rng.uniform(0, 2 * np.pi, amp.shape))


def handheld(rng) -> Trajectory:
    """Slow walk around the room with a head-height camera."""
    step = rng.uniform(1.6, 1.9)  # walking cadence, Hz
    position, rate, start = loop_position(
        rng, radii=((0.8, 1.0), (0.55, 0.7)), speed=0.3, height=1.45,
        bob=[(0.012, step), (0.05, 0.1)], wobble=(0.06, (0.1, 0.3)))
    yaw0 = start + np.sign(rate) * np.deg2rad(90 + 15)  # ahead along the loop, slightly inwards
    angles = angle_sinusoids(
        rng, mean=[yaw0, np.deg2rad(4.0), 0.0], rate=[rate, 0.0, 0.0],
        waves=[[(10.0, 0.07), (4.0, 0.2)], [(4.0, 0.11), (0.8, step)], [(3.0, 0.13), (0.8, step / 2)]])
    return Trajectory("handheld", position, angles)


def drone(rng) -> Trajectory:
    """Faster loop of a quadrotor: attitude tilted by the acceleration, heading along the path."""
    position, rate, start = loop_position(
        rng, radii=((1.3, 1.5), (0.95, 1.1)), speed=1.0, height=1.4,
        bob=[(0.25, 0.15), (0.1, 0.37)], wobble=(0.1, (0.2, 0.4)))
    yaw0 = start + np.sign(rate) * np.deg2rad(90 + 10)
    angles = angle_sinusoids(rng, mean=[yaw0], rate=[rate], waves=[[(15.0, 0.1)]])
    return Trajectory("drone", position, angles, thrust_tilt=True)
