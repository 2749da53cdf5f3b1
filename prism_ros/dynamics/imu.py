"""Strapdown IMU integration: the Euler (zero-order-hold) dynamics the filter propagates with.

State (R, p, v): body (IMU) orientation and position in the world, world velocity. Measurements are
in the body frame: gyro in rad/s, accel as specific force (reads +9.81 upwards at rest), so the world
acceleration is ``R (accel - b_a) + g`` with ``g = (0, 0, -9.81)``.

Two schemes over the samples ``t_0 < ... < t_{N-1}``:
- ``"euler"``: sample k is held constant on [t_k, t_{k+1}) (zero-order hold). Rotation
  ``R_{k+1} = R_k Exp(w_k dt)``, then ``v += a_k dt`` and ``p += v dt + a_k dt^2 / 2`` with
  ``a_k = R_k f_k + g`` (exact for a world acceleration constant over the step).
- ``"midpoint"``: the same with the mean of samples k and k+1 (gyro, and world acceleration after
  rotating each sample with its own orientation): second-order accurate.

Everything is batched over leading dimensions and vectorised over time: the orientation chain is a
parallel prefix product (log2 N batched matmuls), velocity and position are cumulative sums.
"""
from __future__ import annotations

import torch

from prism_ros.geometry.lie import so3_exp

GRAVITY = 9.81
METHODS = ("euler", "midpoint")


def gravity_vector(like: torch.Tensor, magnitude: float = GRAVITY) -> torch.Tensor:
    """World gravity (0, 0, -g) with the dtype and device of ``like``."""
    return torch.tensor([0.0, 0.0, -magnitude], dtype=like.dtype, device=like.device)


def cumulative_matmul(M: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix product ``M_0 M_1 ... M_k`` along dim -3 (Hillis-Steele scan, log2 N steps)."""
    out, n, step = M, M.shape[-3], 1
    while step < n:
        out = torch.cat([out[..., :step, :, :], out[..., :-step, :, :] @ out[..., step:, :, :]], dim=-3)
        step *= 2
    return out


def integrate_imu(R, p, v, t, gyro, accel, gravity=None, bias_gyro=None, bias_accel=None,
                  method: str = "euler", return_all: bool = False):
    """Propagate (R (...,3,3), p (...,3), v (...,3)) from ``t[0]`` to ``t[-1]`` through the samples.

    ``t`` (N,) sample times in seconds, ``gyro``/``accel`` (..., N, 3) body-frame samples, biases
    (...,3) subtracted from them, ``gravity`` the world gravity vector (default (0, 0, -9.81)).
    Returns the final (R, p, v), or with ``return_all`` the states at every sample time (..., N, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown IMU integration method {method!r}; use one of {METHODS}")
    R = torch.as_tensor(R)
    as_state = dict(dtype=R.dtype, device=R.device)
    p, v, gyro, accel = (torch.as_tensor(x, **as_state) for x in (p, v, gyro, accel))
    t = torch.as_tensor(t, dtype=torch.float64, device=R.device)  # epoch seconds need float64
    g = gravity_vector(R) if gravity is None else torch.as_tensor(gravity, **as_state)
    if bias_gyro is not None:
        gyro = gyro - torch.as_tensor(bias_gyro, **as_state)[..., None, :]
    if bias_accel is not None:
        accel = accel - torch.as_tensor(bias_accel, **as_state)[..., None, :]
    dt = (t[1:] - t[:-1]).to(R.dtype)[:, None]
    R_all = orientations(R, gyro, dt, method)
    acc_world = (R_all @ accel[..., None])[..., 0] + g
    acc_step = held(acc_world, method)
    v_all = prepend_zero(torch.cumsum(acc_step * dt, dim=-2)) + v[..., None, :]
    p_all = prepend_zero(torch.cumsum(v_all[..., :-1, :] * dt + 0.5 * acc_step * dt * dt, dim=-2))
    p_all = p_all + p[..., None, :]
    if return_all:
        return R_all, p_all, v_all
    return R_all[..., -1, :, :], p_all[..., -1, :], v_all[..., -1, :]


def orientations(R0: torch.Tensor, gyro: torch.Tensor, dt: torch.Tensor, method: str) -> torch.Tensor:
    """Orientation at every sample time (..., N, 3, 3) from the initial one and the gyro samples."""
    increments = so3_exp(held(gyro, method) * dt)
    chain = cumulative_matmul(increments) if increments.shape[-3] else increments
    R_all = R0[..., None, :, :] @ chain
    return torch.cat([R0[..., None, :, :].expand(*R_all.shape[:-3], 1, 3, 3), R_all], dim=-3)


def held(x: torch.Tensor, method: str) -> torch.Tensor:
    """Value used on each interval: the left sample (euler) or the mean of both ends (midpoint)."""
    return x[..., :-1, :] if method == "euler" else 0.5 * (x[..., :-1, :] + x[..., 1:, :])


def prepend_zero(x: torch.Tensor) -> torch.Tensor:
    """(..., N-1, 3) -> (..., N, 3) with a leading zero row (the cumulative sum before the first step)."""
    return torch.cat([torch.zeros_like(x[..., :1, :]), x], dim=-2)


def imu_window(t_imu, gyro, accel, t0: float, t1: float, method: str = "euler"):
    """Samples covering exactly [t0, t1]: boundary samples at t0 and t1 plus the ones strictly inside.

    The boundary values are what the scheme assumes there: the last sample at or before the time
    (zero-order hold, for "euler") or the linear interpolation of the neighbours (for "midpoint");
    before the first or after the last sample the nearest sample is used.
    Returns (t (M,), gyro (..., M, 3), accel (..., M, 3)) with M >= 2.
    """
    gyro, accel = torch.as_tensor(gyro), torch.as_tensor(accel)
    t_imu = torch.as_tensor(t_imu, dtype=torch.float64, device=gyro.device).contiguous()
    if not t1 > t0:
        raise ValueError(f"imu_window needs t1 > t0, got t0={t0}, t1={t1}")
    ends = torch.tensor([t0, t1], dtype=t_imu.dtype, device=t_imu.device)
    first = int(torch.searchsorted(t_imu, ends[:1], right=True))  # first sample after t0
    stop = int(torch.searchsorted(t_imu, ends[1:], right=False))  # first sample at or after t1
    inside = slice(first, stop)
    g_ends = sample_at(t_imu, gyro, ends, method)
    a_ends = sample_at(t_imu, accel, ends, method)
    t = torch.cat([ends[:1], t_imu[inside], ends[1:]])
    g = torch.cat([g_ends[..., :1, :], gyro[..., inside, :], g_ends[..., 1:, :]], dim=-2)
    a = torch.cat([a_ends[..., :1, :], accel[..., inside, :], a_ends[..., 1:, :]], dim=-2)
    return t, g, a


def sample_at(t_imu: torch.Tensor, x: torch.Tensor, times: torch.Tensor, method: str) -> torch.Tensor:
    """Samples (..., N, 3) evaluated at ``times``: held (euler) or linearly interpolated (midpoint)."""
    left, nxt, w = neighbours(t_imu, times, method)
    if method == "euler":
        return x[..., left, :]
    w = w.to(x.dtype)[:, None]
    return x[..., left, :] * (1 - w) + x[..., nxt, :] * w


def neighbours(t_imu: torch.Tensor, times: torch.Tensor, method: str):
    """Where :func:`sample_at` reads: the value at ``times`` is ``(1 - w) x[left] + w x[nxt]`` (w = 0 for euler)."""
    n = t_imu.shape[0]
    right = torch.searchsorted(t_imu, times, right=True).clamp(1, n) - 1  # last sample <= time
    if method == "euler":
        right = right.clamp(0, n - 1)
        return right, right, torch.zeros_like(times)
    left = right.clamp(0, max(n - 2, 0))
    nxt = (left + 1).clamp(max=n - 1)
    span = (t_imu[nxt] - t_imu[left]).clamp_min(1e-12)
    return left, nxt, ((times - t_imu[left]) / span).clamp(0.0, 1.0)


def window_weights(t_imu, t0: float, t1: float, method: str = "euler"):
    """:func:`imu_window` as a linear map of the stream: window sample k is
    ``weight[k, 0] x[index[k, 0]] + weight[k, 1] x[index[k, 1]]`` (index, weight (M, 2)). What chains a
    Jacobian with respect to the window's samples back to the stream's."""
    t_imu = torch.as_tensor(t_imu, dtype=torch.float64).contiguous()
    ends = torch.tensor([t0, t1], dtype=t_imu.dtype, device=t_imu.device)
    first = int(torch.searchsorted(t_imu, ends[:1], right=True))
    stop = int(torch.searchsorted(t_imu, ends[1:], right=False))
    left, nxt, w = neighbours(t_imu, ends, method)
    inside = torch.arange(first, max(stop, first), device=t_imu.device)
    index = torch.stack([torch.cat([left[:1], inside, left[1:]]), torch.cat([nxt[:1], inside, nxt[1:]])], -1)
    w = torch.cat([w[:1], torch.zeros_like(inside, dtype=w.dtype), w[1:]])
    return index, torch.stack([1 - w, w], -1)


def integrate_imu_between(R, p, v, t0: float, t1: float, t_imu, gyro, accel, method: str = "euler",
                          **kwargs):
    """Propagate the state from ``t0`` to ``t1`` with an IMU stream, handling partial end intervals."""
    t, g, a = imu_window(t_imu, gyro, accel, t0, t1, method)
    return integrate_imu(R, p, v, t, g, a, method=method, **kwargs)


class ImuDeadReckoning:
    """Streaming strapdown propagation of one body state (R, p, v) from IMU samples as they arrive.

    The pure-IMU baseline the demo evaluates (before the PRISM filter replaces it): start it from a
    known state, feed batches of samples, read the state. Samples at or before the current time are
    ignored, so overlapping or duplicated batches cannot double-integrate.
    """

    def __init__(self, bias_gyro=(0.0, 0.0, 0.0), bias_accel=(0.0, 0.0, 0.0), method: str = "euler",
                 dtype=torch.float64, device="cpu"):
        self.options = dict(dtype=dtype, device=device)
        self.bias_gyro = torch.as_tensor(bias_gyro, **self.options)
        self.bias_accel = torch.as_tensor(bias_accel, **self.options)
        self.method = method
        self.state = None  # (t, R, p, v, last gyro, last accel)

    @property
    def initialised(self) -> bool:
        return self.state is not None

    def reset(self, t: float, R, p, v, gyro=(0.0, 0.0, 0.0), accel=(0.0, 0.0, GRAVITY)) -> None:
        """Start from orientation R, position p, world velocity v at time t (last sample held)."""
        as_tensor = lambda x: torch.as_tensor(x, **self.options)
        self.state = (float(t), as_tensor(R), as_tensor(p), as_tensor(v), as_tensor(gyro), as_tensor(accel))

    def update(self, t, gyro, accel):
        """Integrate samples ``t`` (N,), ``gyro``/``accel`` (N,3); returns (t, R, p, v) after them."""
        t0, R, p, v, last_gyro, last_accel = self.state
        t = torch.as_tensor(t, dtype=torch.float64, device=self.options["device"])
        newer = t > t0
        if not bool(newer.any()):
            return t0, R, p, v
        t = torch.cat([t.new_tensor([t0]), t[newer]])
        gyro = torch.cat([last_gyro[None], torch.as_tensor(gyro, **self.options)[newer]])
        accel = torch.cat([last_accel[None], torch.as_tensor(accel, **self.options)[newer]])
        R, p, v = integrate_imu(R, p, v, t, gyro, accel, bias_gyro=self.bias_gyro,
                                bias_accel=self.bias_accel, method=self.method)
        self.state = (float(t[-1]), R, p, v, gyro[-1], accel[-1])
        return self.state[:4]
