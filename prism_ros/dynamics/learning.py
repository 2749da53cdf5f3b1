"""Learning the residual transition (VSSM-LM): the engineered IMU Euler dynamics plus a residual MLP with mean
and std heads, fit by the multi-step predictive likelihood of a ground-truth trajectory.

Data: an IMU stream and the ground-truth body (IMU-frame) trajectory of one sequence, world frame
gravity-aligned (z up), both on one clock (:class:`MotionData`). Training windows start at ground-truth
times: the true pose and world velocity there, then ``K`` steps of ``dt`` rolled out through
:meth:`prism_ros.dynamics.model.TransitionModel.propagate_with_std`, all windows at once (one batched call per
step). The inputs of window ``b`` are the IMU samples nearest to ``t_b + k dt + j h`` (``h = dt / n``, the
stream's own period), so every step sees the same ``n + 1`` relative sample times and one
:class:`~prism_ros.dynamics.model.InputWindow` serves the whole batch.

Uncertainty along a rollout (kept simple, documented here): the std head's noise ``w_k ~ N(0, R_k diag(s_k^2)
R_k^T)`` enters the linear velocity at the end of step k, and (position, velocity) is propagated as a
linear-Gaussian random walk: ``S_pp += dt (S_pv + S_pv^T) + dt^2 S_vv``, ``S_pv += dt S_vv``,
``S_vv += W_k``. The attitude's share (gyro noise moving gravity) is not propagated separately: the learned
velocity noise absorbs it with everything else the engineered model misses. A fixed floor (ground-truth
noise, ``position_floor``/``velocity_floor``) is added to both marginals.

Loss: the mean over windows and steps of the Gaussian negative log-likelihood of the true position and of
the true velocity (two 3-D marginals; the cross-covariance is ignored). Split: by time, the last
``held_out`` fraction of the sequence; no training window reaches into it. Only the linear rows of the heads
are trained: the loss scores positions and velocities, which the IMU model's angular output (the gyro) never
reaches, so the angular correction and its noise stay at zero.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp

from prism_ros.datasets.common import check_increasing, numeric, read_rows, read_trajectory, seconds_from_ns
from prism_ros.dynamics.imu import GRAVITY
from prism_ros.dynamics.model import (
    ControlEuler,
    DynamicsConfig,
    ImuEuler,
    InputWindow,
    ResidualMLP,
    TransitionModel,
    residual_features,
)
from prism_ros.errors import InputError, read_torch_file
from prism_ros.frame import ImuSamples

FILE_FORMAT = "prism_ros.dynamics_residual"
CHI2_95_3D = 7.814727903251178  # chi-square quantile, 3 degrees of freedom, 0.95
IMU_NAMES = ("mav0/imu0/data.csv", "imu0/data.csv", "imu0_data.csv")
GROUND_TRUTH_NAMES = ("mav0/state_groundtruth_estimate0/data.csv", "state_groundtruth_estimate0/data.csv")
GROUND_TRUTH_PATTERNS = ("*gt*.txt", "*groundtruth*.txt", "*groundtruth*.csv", "*gt*.csv")


# ----------------------------------------------------------------------------- data
@dataclass
class MotionData:
    """One sequence: IMU samples (body frame) and the ground-truth body trajectory (``T_world_body`` (N,4,4),
    world linear velocity (N,3)) at times ``t`` (N,) seconds, on the IMU's clock."""

    imu: ImuSamples
    t: np.ndarray
    poses: np.ndarray
    velocities: np.ndarray
    source: str = ""

    def span(self) -> tuple[float, float]:
        """Times covered by both the IMU and the ground truth."""
        return max(self.imu.t[0], self.t[0]), min(self.imu.t[-1], self.t[-1])

    def slice(self, start: float, end: float) -> "MotionData":
        """The part between ``start`` and ``end`` seconds after the first IMU sample."""
        t0 = self.imu.t[0]
        keep = (self.t >= t0 + start) & (self.t <= t0 + end)
        return MotionData(self.imu.between(t0 + start - 0.1, t0 + end), self.t[keep], self.poses[keep],
                          self.velocities[keep], f"{self.source} [{start:g}:{end:g} s]")


def velocities_from_positions(t: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """World velocity (N,3) by second-order finite differences (for ground truth without velocities)."""
    return np.gradient(positions, t, axis=0)


def read_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, T_world_body, world velocity) from a TUM file or an ASL csv; the ASL state estimate's velocity
    columns when present (``state_groundtruth_estimate0``), else finite differences of the positions."""
    t, poses = read_trajectory(path)
    velocities = None
    if path.suffix.lower() == ".csv":
        rows = read_rows(path, 8)
        if all(len(row) >= 11 for row in rows):
            velocities = numeric(rows, slice(8, 11), path)
    if velocities is None:
        velocities = velocities_from_positions(t, poses[:, :3, 3])
    return t, poses, velocities


def read_imu_csv(path: Path) -> ImuSamples:
    """EuRoC/ASL IMU csv: ``timestamp_ns, wx, wy, wz, ax, ay, az`` (body frame, rad/s and m/s^2)."""
    rows = read_rows(path, 7, "each line must be 'timestamp_ns,wx,wy,wz,ax,ay,az'")
    values = numeric(rows, slice(1, 7), path)
    return ImuSamples(check_increasing(seconds_from_ns(rows, path), path), values[:, :3], values[:, 3:])


def find_ground_truth(folder: Path, imu: ImuSamples) -> Path | None:
    """The ground truth of an ASL folder: the state estimate, else the nearby file (``*gt*``, ``*groundtruth*``,
    here or one folder down) overlapping the IMU stream longest (so another sequence's file is ignored)."""
    for name in GROUND_TRUTH_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted({p for pattern in GROUND_TRUTH_PATTERNS for depth in ("", "*/")
                         for p in folder.glob(depth + pattern) if p.is_file()})
    best, best_overlap = None, 0.0
    for candidate in candidates:
        try:
            t, _ = read_trajectory(candidate)
        except InputError:
            continue
        overlap = min(t[-1], imu.t[-1]) - max(t[0], imu.t[0])
        if overlap > best_overlap:
            best, best_overlap = candidate, overlap
    return best


def load_motion_data(path: Path, fmt: str = "euroc", imu: Path | None = None,
                     groundtruth: Path | None = None) -> MotionData:
    """IMU + ground truth of an EuRoC/ASL folder (``mav0/imu0/data.csv`` or ``imu0_data.csv``; ground truth as in
    :func:`find_ground_truth`), or explicit ``imu``/``groundtruth`` files.

    EuRoC's IMU defines the body frame (``imu0/sensor.yaml``: ``T_BS`` = identity) and its
    ``state_groundtruth_estimate0`` is that body's pose, time-aligned to the IMU by the batch solution; a TUM
    file is assumed to be the same (checked on V1_01: gravity and gyro agree with zero lag).
    """
    path = Path(path)
    if fmt != "euroc":
        raise InputError(f"unknown format '{fmt}'", "use --format euroc (ASL IMU csv + ground truth)")
    if not path.exists():
        raise InputError("no such dataset", "give an EuRoC/ASL folder with an IMU csv and ground truth", path)
    if imu is None:
        imu = next((path / name for name in IMU_NAMES if (path / name).is_file()), None)
        if imu is None:
            raise InputError("no IMU csv here (looked for " + ", ".join(IMU_NAMES) + ")",
                             "give an EuRoC/ASL folder or --imu FILE", path)
    samples = read_imu_csv(Path(imu))
    if groundtruth is None:
        groundtruth = find_ground_truth(path, samples)
        if groundtruth is None:
            raise InputError("no ground truth overlapping the IMU here", "give --groundtruth FILE (TUM or ASL csv)",
                             path)
    t, poses, velocities = read_ground_truth(Path(groundtruth))
    data = MotionData(samples, t, poses, velocities, f"{imu} + {groundtruth}")
    start, end = data.span()
    if end - start <= 0:
        raise InputError("the ground truth does not overlap the IMU stream in time",
                         "give the ground truth of the same sequence", groundtruth)
    return data


def still_biases(data: MotionData, speed: float = 0.02, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Gyro and accelerometer biases from the still start of a sequence: the mean gyro, and the mean specific
    force minus the gravity reaction rotated by the ground-truth attitude (until ``margin`` s before the
    ground-truth speed first exceeds ``speed``). The calibration an engineered model would be given."""
    moving = np.flatnonzero(np.linalg.norm(data.velocities, axis=1) > speed)
    until = data.t[moving[0]] - margin if len(moving) else data.t[-1]
    still = (data.imu.t >= data.t[0]) & (data.imu.t < until)
    if still.sum() < 20:
        raise InputError("the sequence does not start still (no 0.1 s at rest)", "give the biases explicitly")
    rotations = Rotation.from_matrix(data.poses[:, :3, :3])
    R = Slerp(data.t, rotations)(data.imu.t[still])
    reaction = R.inv().apply([0.0, 0.0, GRAVITY])
    return data.imu.gyro[still].mean(0), (data.imu.accel[still] - reaction).mean(0)


# ----------------------------------------------------------------------------- windows
@dataclass
class Windows:
    """``B`` rollout windows of ``K`` steps: start poses ``T0`` (B,4,4) and velocities ``v0`` (B,6) (world
    linear from ground truth, body rate = first raw gyro sample: :func:`predict_windows` subtracts the model's gyro
    bias, as the filter's state holds after an IMU step), inputs ``u`` (B, K, n+1, 6) ``[gyro, accel]``,
    true positions and velocities at the end of every step (B, K, 3), start times ``t`` (B,)."""

    t: np.ndarray
    T0: torch.Tensor
    v0: torch.Tensor
    u: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor
    dt: float

    def __len__(self) -> int:
        return len(self.t)

    @property
    def steps(self) -> int:
        return self.u.shape[1]

    def subset(self, index) -> "Windows":
        index = torch.as_tensor(index)
        return Windows(self.t[index.numpy()], self.T0[index], self.v0[index], self.u[index], self.positions[index],
                       self.velocities[index], self.dt)


def imu_period(imu: ImuSamples) -> float:
    if len(imu) < 2:
        raise InputError("fewer than two IMU samples", "give a longer IMU stream")
    return float(np.median(np.diff(imu.t)))


def window_starts(data: MotionData, horizon: float, stride: float, start: float | None = None,
                  end: float | None = None) -> np.ndarray:
    """Ground-truth times (spaced at least ``stride``) that start a window of ``horizon`` s inside
    [start, end] and inside the span of both streams (the IMU must have a sample at or before the start)."""
    lo, hi = data.span()
    lo, hi = max(lo, start if start is not None else lo), min(hi, end if end is not None else hi)
    t = data.t[(data.t >= lo) & (data.t + horizon <= hi + 1e-9)]
    if len(t) == 0:
        return t
    keep = np.floor((t - t[0]) / stride + 1e-6)
    return t[np.r_[True, np.diff(keep) > 0]]


def make_windows(data: MotionData, starts: np.ndarray, steps: int, dt: float) -> Windows:
    """Windows starting at ground-truth times ``starts``: vectorised over windows (nearest IMU sample on each
    window's grid; positions and velocities interpolated linearly, the start rotation by SLERP)."""
    period = imu_period(data.imu)
    n = int(round(dt / period))
    if n < 1 or abs(n * period - dt) > 0.01 * dt:
        raise InputError(f"the step dt={dt} s is not a whole number of IMU periods ({period:.5f} s)",
                         f"use --step {max(n, 1) * period:.4f}")
    grid = np.arange(steps)[:, None] * dt + np.arange(n + 1)[None, :] * (dt / n)  # (K, n+1) relative times
    query = starts[:, None, None] + grid[None] + 0.5 * period  # nearest sample: the last one before +h/2
    index = np.clip(np.searchsorted(data.imu.t, query, side="right") - 1, 0, len(data.imu) - 1)
    u = np.concatenate([data.imu.gyro[index], data.imu.accel[index]], -1)
    ends = starts[:, None] + (np.arange(steps) + 1)[None, :] * dt  # (B, K)
    interp = lambda x: np.stack([np.interp(ends, data.t, x[:, k]) for k in range(3)], -1)
    poses = np.repeat(np.eye(4)[None], len(starts), 0)
    poses[:, :3, :3] = Slerp(data.t, Rotation.from_matrix(data.poses[:, :3, :3]))(starts).as_matrix()
    poses[:, :3, 3] = np.stack([np.interp(starts, data.t, data.poses[:, k, 3]) for k in range(3)], -1)
    v_lin = np.stack([np.interp(starts, data.t, data.velocities[:, k]) for k in range(3)], -1)
    f64 = dict(dtype=torch.float64)
    return Windows(starts, torch.as_tensor(poses, **f64),
                   torch.as_tensor(np.concatenate([v_lin, u[:, 0, 0, :3]], -1), **f64), torch.as_tensor(u, **f64),
                   torch.as_tensor(interp(data.poses[:, :3, 3]), **f64),
                   torch.as_tensor(interp(data.velocities), **f64), dt)


# ----------------------------------------------------------------------------- window predictions and loss
@dataclass
class WindowPrediction:
    """Predicted positions and velocities at the end of every step (B, K, 3) and their learned covariances
    (B, K, 3, 3) (zero for the engineered model), before the ground-truth floor."""

    positions: torch.Tensor
    velocities: torch.Tensor
    cov_position: torch.Tensor
    cov_velocity: torch.Tensor


def step_window(windows: Windows) -> InputWindow:
    """The one input window every step of every rollout uses: relative times [0, dt] on the window grid."""
    n = windows.u.shape[2] - 1
    times = torch.linspace(0.0, windows.dt, n + 1, dtype=torch.float64)
    return InputWindow(0.0, windows.dt, times, windows.u[0, 0], torch.zeros(0, dtype=torch.float64))


def predict_windows(model: TransitionModel, windows: Windows) -> WindowPrediction:
    """Roll all windows forward ``K`` steps through the model (a loop over steps only)."""
    window, dt = step_window(windows), windows.dt
    bias_gyro = torch.as_tensor(getattr(model, "bias_gyro", (0.0, 0.0, 0.0)), dtype=windows.v0.dtype)
    T, v = windows.T0, torch.cat([windows.v0[:, :3], windows.v0[:, 3:] - bias_gyro], -1)
    S_pp = S_pv = S_vv = T.new_zeros(len(windows), 3, 3)
    out: dict[str, list[torch.Tensor]] = {"p": [], "v": [], "pp": [], "vv": []}
    for k in range(windows.steps):
        R = T[:, :3, :3]
        T, v, std = model.propagate_with_std(T, v, windows.u[:, k], window)
        S_pp = S_pp + dt * (S_pv + S_pv.transpose(-1, -2)) + dt**2 * S_vv
        S_pv = S_pv + dt * S_vv
        if std is not None:
            S_vv = S_vv + (R * std[:, None, :3] ** 2) @ R.transpose(-1, -2)
        out["p"].append(T[:, :3, 3])
        out["v"].append(v[:, :3])
        out["pp"].append(S_pp)
        out["vv"].append(S_vv)
    stacked = {key: torch.stack(value, 1) for key, value in out.items()}
    return WindowPrediction(stacked["p"], stacked["v"], stacked["pp"], stacked["vv"])


def gaussian_nll(error: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (...,) of errors (..., d) under N(0, covariance (..., d, d))."""
    L = torch.linalg.cholesky(covariance)
    z = torch.linalg.solve_triangular(L, error[..., None], upper=False)[..., 0]
    d = error.shape[-1]
    return 0.5 * (z**2).sum(-1) + L.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * d * math.log(2 * math.pi)


def floored(covariance: torch.Tensor, floor: float) -> torch.Tensor:
    return covariance + floor**2 * torch.eye(3, dtype=covariance.dtype)


def rollout_nll(prediction: WindowPrediction, windows: Windows, position_floor: float,
                velocity_floor: float) -> torch.Tensor:
    """Mean over windows and steps of the position NLL plus the velocity NLL (nats)."""
    position = gaussian_nll(prediction.positions - windows.positions, floored(prediction.cov_position, position_floor))
    velocity = gaussian_nll(prediction.velocities - windows.velocities,
                            floored(prediction.cov_velocity, velocity_floor))
    return (position + velocity).mean()


# ----------------------------------------------------------------------------- training
@dataclass
class TrainingConfig:
    """Windows, split, optimiser and the likelihood's ground-truth floor."""

    step: float = 0.05  # s, one transition (a whole number of IMU periods)
    horizon: float = 1.0  # s, rollout length (K = horizon / step)
    stride: float = 0.05  # s between training window starts
    eval_stride: float = 0.1  # s between evaluation window starts
    held_out: float = 0.25  # last fraction of the sequence, never trained on
    calibration: float = 0.15  # fraction just before the held-out part that only calibrates the std (0: none)
    steps: int = 300  # Adam steps
    batch: int = 256  # windows per Adam step
    learning_rate: float = 3e-3
    initial_std: float = 0.02  # m/s per step: where training starts the linear std head
    position_floor: float = 0.003  # m, ground-truth position noise
    velocity_floor: float = 0.03  # m/s, ground-truth velocity noise (finite differences of TUM poses)
    seed: int = 0

    @property
    def rollout_steps(self) -> int:
        return max(1, int(round(self.horizon / self.step)))


@dataclass
class TrainingResult:
    """The trained residual, the loss curve and the held-out loss before (at the initial std) and after."""

    residual: ResidualMLP
    losses: list[float]
    held_out_before: float
    held_out_after: float
    split_time: float  # absolute time (s) where the held-out part starts
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def split_time(data: MotionData, held_out: float) -> float:
    lo, hi = data.span()
    return lo + (1.0 - held_out) * (hi - lo)


def train_windows(data: MotionData, config: TrainingConfig) -> tuple[Windows, Windows | None, Windows, float]:
    """Training windows (ending before the calibration part), calibration windows (inside it; None without
    one) and held-out windows (starting after the split), in time order, never overlapping."""
    split = split_time(data, config.held_out)
    calibrate_from = split_time(data, config.held_out + config.calibration)
    horizon = config.rollout_steps * config.step
    train = window_starts(data, horizon, config.stride, end=calibrate_from)
    calibration = window_starts(data, horizon, config.eval_stride, start=calibrate_from, end=split)
    test = window_starts(data, horizon, config.eval_stride, start=split)
    if len(train) < 2 or len(test) < 1 or (config.calibration > 0 and len(calibration) < 10):
        raise InputError(f"too short for {horizon:g} s windows in every part of the split ({len(train)} training, "
                         f"{len(calibration)} calibration, {len(test)} held-out windows)",
                         "give a longer sequence (or --calibration 0)")
    windows = lambda starts: make_windows(data, starts, config.rollout_steps, config.step)
    return windows(train), windows(calibration) if config.calibration > 0 else None, windows(test), split


def prepare_residual(model: TransitionModel, windows: Windows, config: TrainingConfig) -> None:
    """Input whitening from the training windows' start features, and the linear std head's starting value."""
    residual = model.residual
    with torch.no_grad():
        features = residual_features(windows.T0, windows.v0, windows.u[:, 0], windows.dt)
        residual.feature_offset.copy_(features.mean(0))
        residual.feature_scale.copy_(1.0 / features.std(0).clamp_min(1e-3))
        residual.trained_step.fill_(windows.dt)
        residual.log_std.bias[:3] = math.log(config.initial_std)


def linear_rows_only(residual: ResidualMLP) -> list:
    """Gradient hooks that zero the angular rows (3:) of both heads; returns the handles to remove."""
    mask = torch.tensor([1.0] * 3 + [0.0] * 3, dtype=residual.output.bias.dtype)
    return [p.register_hook(lambda g, m=(mask[:, None] if p.dim() == 2 else mask): g * m)
            for head in (residual.output, residual.log_std) for p in head.parameters()]


TRAINABLE = {"imu": ImuEuler, "control": ControlEuler}


def euler_model(dynamics: DynamicsConfig, residual: ResidualMLP | None = None) -> TransitionModel:
    """The engineered model a residual is trained on: ImuEuler (IMU samples) or ControlEuler (commands)."""
    if dynamics.model not in TRAINABLE:
        raise InputError(f"a residual is trained on the imu or control model, not {dynamics.model!r}",
                         "use --model imu (IMU samples) or --model control (a command stream)")
    return TRAINABLE[dynamics.model](dynamics, residual)


def train_residual(data: MotionData, dynamics: DynamicsConfig, config: TrainingConfig,
                   progress: Callable[[int, float], None] | None = None) -> TrainingResult:
    """Fit a :class:`ResidualMLP` on top of the Euler model ``dynamics.model`` names (:func:`euler_model`: IMU
    samples, or commands, which ``data.imu`` then holds as ``gyro`` = rates, ``accel`` = body acceleration; with
    ``dynamics``' biases) by the multi-step NLL of the training windows; ``progress(step, loss)`` after each
    Adam step."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    train, calibration, test, split = train_windows(data, config)
    residual = ResidualMLP(dynamics.residual_hidden, dynamics.residual_layers)
    model = euler_model(dynamics, residual)
    prepare_residual(model, train, config)
    floors = (config.position_floor, config.velocity_floor)
    with torch.no_grad():
        before = float(rollout_nll(predict_windows(model, test), test, *floors))
    optimiser = torch.optim.Adam(residual.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(config.steps, 1))
    generator = torch.Generator().manual_seed(config.seed)
    handles, losses = linear_rows_only(residual), []
    for step in range(config.steps):
        batch = train.subset(torch.randperm(len(train), generator=generator)[:config.batch])
        loss = rollout_nll(predict_windows(model, batch), batch, *floors)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    for handle in handles:
        handle.remove()
    shift = calibrate_std(model, calibration, config) if calibration is not None else 0.0
    with torch.no_grad():
        after = float(rollout_nll(predict_windows(model, test), test, *floors))
    return TrainingResult(residual, losses, before, after, float(split), time.perf_counter() - started,
                          {"train_windows": len(train), "calibration_windows": len(calibration or ()),
                           "held_out_windows": len(test), "std_scale": math.exp(shift)})


def calibrate_std(model: TransitionModel, windows: Windows, config: TrainingConfig, target: float = 0.95) -> float:
    """Scale the learned velocity noise so that ``target`` of the calibration windows' true positions lie in
    their predicted 95 % ellipsoids (mean coverage over :data:`HORIZONS`): the NLL fit is over-confident on
    data it was not trained on. The rollout covariance is the residual's alone, so scaling the std by s
    scales it by s^2: one rollout, then bisection on log s (coverage grows with s). Only inflates (s >= 1):
    where the ground-truth floor alone covers the errors, shrinking the std would say nothing. Shifts the
    linear log-std bias by log s and returns it."""
    with torch.no_grad():
        prediction = predict_windows(model, windows)
    steps = [int(round(h / windows.dt)) - 1 for h in HORIZONS if 0 <= int(round(h / windows.dt)) - 1 < windows.steps]
    error = prediction.positions[:, steps] - windows.positions[:, steps]

    def coverage(shift: float) -> float:
        covariance = floored(math.exp(2 * shift) * prediction.cov_position[:, steps], config.position_floor)
        mahalanobis = (error[..., None, :] @ torch.linalg.solve(covariance, error[..., None]))[..., 0, 0]
        return float((mahalanobis <= CHI2_95_3D).double().mean())

    if coverage(0.0) >= target:
        return 0.0
    low, high = 0.0, 4.0  # std x 1 .. x 55
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if coverage(middle) < target else (low, middle)
    with torch.no_grad():
        model.residual.log_std.bias[:3] += high
    return high


# ----------------------------------------------------------------------------- evaluation
HORIZONS = (0.5, 1.0)


def evaluate_model(model: TransitionModel, windows: Windows, config: TrainingConfig,
                   horizons=HORIZONS) -> dict[str, float]:
    """Position error (median, mean; m) at each horizon, and the fraction of windows whose true position lies
    in the predicted 95 % ellipsoid (chi-square, 3 dof, learned covariance plus the position floor)."""
    with torch.no_grad():
        prediction = predict_windows(model, windows)
    result: dict[str, float] = {"windows": float(len(windows))}
    for horizon in horizons:
        k = int(round(horizon / windows.dt)) - 1
        if not 0 <= k < windows.steps:
            continue
        error = prediction.positions[:, k] - windows.positions[:, k]
        norm = error.norm(dim=-1)
        covariance = floored(prediction.cov_position[:, k], config.position_floor)
        mahalanobis = (error[:, None, :] @ torch.linalg.solve(covariance, error[:, :, None]))[:, 0, 0]
        result[f"median_{horizon:g}"] = float(norm.median())
        result[f"mean_{horizon:g}"] = float(norm.mean())
        result[f"coverage_{horizon:g}"] = float((mahalanobis <= CHI2_95_3D).double().mean())
    return result


def compare(data: MotionData, residual: ResidualMLP, dynamics: DynamicsConfig, config: TrainingConfig,
            start: float | None = None) -> dict[str, dict[str, float]]:
    """Engineered Euler vs learned on the windows starting at or after ``start`` (absolute s; all if None)."""
    horizon = config.rollout_steps * config.step
    starts = window_starts(data, horizon, config.eval_stride, start=start)
    if len(starts) == 0:
        raise InputError(f"no {horizon:g} s window with IMU and ground truth to evaluate", "give a longer sequence")
    windows = make_windows(data, starts, config.rollout_steps, config.step)
    return {"engineered": evaluate_model(euler_model(dynamics), windows, config),
            "learned": evaluate_model(euler_model(dynamics, residual), windows, config)}


def format_table(results: dict[str, dict[str, float]], horizons=HORIZONS) -> str:
    """Rows: engineered / learned; columns: median and mean position error (cm) per horizon, coverage."""
    horizons = [h for h in horizons if f"median_{h:g}" in next(iter(results.values()))]
    header = "model        " + "".join(f"  median {h:g}s  mean {h:g}s" for h in horizons) + \
        "".join(f"  95% cover {h:g}s" for h in horizons)
    lines = [header]
    for name, row in results.items():
        cells = "".join(f"  {100 * row[f'median_{h:g}']:8.2f}cm  {100 * row[f'mean_{h:g}']:7.2f}cm" for h in horizons)
        cover = "".join(f"  {100 * row[f'coverage_{h:g}']:13.0f}%" if name != "engineered" else f"  {'-':>14}"
                        for h in horizons)
        lines.append(f"{name:<13}{cells}{cover}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files
def save_residual(path: Path, residual: ResidualMLP, dynamics: DynamicsConfig, config: TrainingConfig,
                  extra: dict | None = None) -> None:
    """One torch file: the state dict, the dynamics and training configs (dicts) and ``extra`` metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FILE_FORMAT, "version": 1, "state_dict": residual.state_dict(),
                "dynamics": plain(asdict(dynamics)), "training": plain(asdict(config)), "extra": plain(extra or {})},
               path)


def plain(value):
    """Numbers, strings, lists and dicts as Python builtins (numpy scalars and arrays converted): the
    ``weights_only`` loader rejects anything else."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def load_residual(path: Path) -> tuple[ResidualMLP, DynamicsConfig, TrainingConfig, dict]:
    """The residual, dynamics config, training config and metadata of a :func:`save_residual` file."""
    path = Path(path)
    fix = "train one with `prism-ros dynamics train --dataset PATH --out MODEL.pt`"
    if not path.is_file():
        raise InputError("no such model file", fix, path)
    blob = read_torch_file(path, "unreadable model file", fix)
    if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
        raise InputError("not a prism_ros dynamics residual file", fix, path)
    try:
        dynamics = DynamicsConfig(**{f.name: blob["dynamics"][f.name] for f in fields(DynamicsConfig)
                                     if f.name in blob["dynamics"]})
        config = TrainingConfig(**{f.name: blob["training"][f.name] for f in fields(TrainingConfig)
                                   if f.name in blob["training"]})
        residual = ResidualMLP(dynamics.residual_hidden, dynamics.residual_layers)
        state = dict(blob["state_dict"])
        state.setdefault("trained_step", torch.tensor(config.step, dtype=torch.float64))  # files before it
        residual.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise InputError(f"incomplete model file ({type(error).__name__}: {str(error)[:120]})", fix, path) from None
    return residual, dynamics, config, blob.get("extra", {})
