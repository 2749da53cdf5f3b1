"""Predictive rollouts: N sampled future trajectories of the state under a control sequence, their mean and
spread, and the depth the map predicts at the mean future poses.

A rollout is Monte Carlo through the very transition model the filter predicts with
(:meth:`prism_ros.dynamics.model.TransitionModel.propagate_with_std`), so the samples follow its dynamics, residual
MLP included, and their spread is the filter's linearised covariance
(:meth:`~prism_ros.dynamics.model.TransitionModel.predict`) without the linearisation:
- the N initial states are drawn from the state's Gaussian: ``(exp(d[:6]^) T, v + d[6:])``, ``d ~ N(0, P)``;
- each of the K steps draws the noise ``predict`` adds: white noise on every input entry with the window's
  variance (``ControlEuler``'s command sigmas; ``ImuEuler``'s density and bias variance, a fresh draw per
  step as in the filter), the residual std head's velocity noise (linear part rotated to the world at the
  step's start), and ``ConstantVelocity``'s white-noise acceleration (its exact (position, velocity) pair:
  a world position and a body rotation offset at the predicted pose, world velocity and body rate);
- all samples move together, one batched ``propagate`` per step (a loop over steps, none over samples).
Row 0 of every step is the noiseless rollout of the mean (``nominal``), computed in the same batch.

Inputs (``controls``): for ``control``, a (K, 6) sequence of commands ``[ax, ay, az, wx, wy, wz]`` (one per
step), one (6,) command held over the horizon, or a command stream (:class:`ImuSamples`); for ``imu``, the
IMU samples (:class:`ImuSamples`; samples end before the horizon -> the last one is held, so one sample is
"constant current IMU"); for ``constant_velocity``, nothing. The model's held-sample memory (``previous``)
is restored afterwards, so a filter's own model can be rolled out between frames.

No ROS import: a node calls :func:`sample_rollouts` (and :func:`predicted_depth`) and converts the result.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prism_ros.dynamics.model import ConstantVelocity, ControlEuler, ImuEuler, TransitionModel, symmetrise
from prism_ros.errors import InputError
from prism_ros.frame import ImuSamples
from prism_ros.geometry.lie import se3_exp, se3_from_rt, skew, so3_exp
from prism_ros.prism.state import GaussianState


@dataclass
class Rollouts:
    """``samples`` sampled trajectories at ``times`` (K+1,) s (the state's time first).

    poses (N, K+1, 4, 4) ``T_world_body`` and velocities (N, K+1, 6) ``[v_world, omega_body]`` of the samples;
    nominal_poses / nominal_velocities (K+1, ...): the noiseless rollout of the mean state; mean_poses
    (K+1, 4, 4): the sample mean, positions averaged and the rotation the chordal L2 mean (the SVD projection
    of the averaged rotation matrices onto SO(3)); the nominal rollout when there are no samples;
    position_covariance (K+1, 3, 3): the samples' covariance of the world position (zero for N < 2).
    """

    times: torch.Tensor
    poses: torch.Tensor
    velocities: torch.Tensor
    nominal_poses: torch.Tensor
    nominal_velocities: torch.Tensor
    mean_poses: torch.Tensor
    position_covariance: torch.Tensor

    @property
    def samples(self) -> int:
        return self.poses.shape[0]

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def positions(self) -> torch.Tensor:
        """(N, K+1, 3) sample positions."""
        return self.poses[..., :3, 3]

    def camera_poses(self, T_body_camera: torch.Tensor) -> torch.Tensor:
        """(K+1, 4, 4) mean ``T_world_camera``: what to render from."""
        return self.mean_poses @ torch.as_tensor(T_body_camera, dtype=self.mean_poses.dtype)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (the contents of ``rollouts.npz``)."""
        names = ("times", "poses", "velocities", "nominal_poses", "nominal_velocities", "mean_poses",
                 "position_covariance")
        return {name: getattr(self, name).detach().cpu().numpy() for name in names}

    def summary_line(self) -> str:
        p = self.mean_poses[-1, :3, 3].tolist()
        std = self.position_covariance[-1].diagonal().clamp_min(0).sqrt().tolist()
        horizon = float(self.times[-1] - self.times[0])
        return (f"{self.samples} samples x {self.steps} steps ({horizon:g} s): final mean position "
                f"({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m, std ({std[0]:.3f}, {std[1]:.3f}, {std[2]:.3f}) m")


# ----------------------------------------------------------------------------- inputs
def step_controls(model: TransitionModel, controls, steps: int) -> list[dict]:
    """The ``imu``/``control`` keyword arguments of :meth:`TransitionModel.inputs` for each of the ``steps``
    steps, after checking ``controls`` fits the model (InputError naming the problem and the fix)."""
    name = type(model).__name__
    if isinstance(model, ConstantVelocity):
        if controls is not None:
            raise InputError("the constant_velocity model takes no controls",
                             "pass controls=None (give it the velocity in the state), or use the control model")
        return [{}] * steps
    if isinstance(controls, ImuSamples):
        if len(controls) == 0:
            raise InputError(f"{name}: the IMU/command stream is empty", "give at least one sample (it is held)")
        if np.shape(controls.gyro) != (len(controls), 3) or np.shape(controls.accel) != (len(controls), 3):
            raise InputError(f"{name}: ImuSamples gyro/accel must be ({len(controls)}, 3), got "
                             f"{np.shape(controls.gyro)} / {np.shape(controls.accel)}", "one row per sample time")
        key = "imu" if isinstance(model, ImuEuler) else "control"
        return [{key: controls}] * steps
    if isinstance(model, ImuEuler):
        raise InputError(f"the imu model needs IMU samples (ImuSamples), got {type(controls).__name__}",
                         "pass the stream, or ImuSamples with one sample to hold the current one")
    if not isinstance(model, ControlEuler):
        raise InputError(f"no rollout inputs for {name}", "use constant_velocity, imu or control")
    if controls is None:
        raise InputError("the control model needs commands", "pass a (6,) command [ax, ay, az, wx, wy, wz] to "
                         "hold, a (K, 6) sequence or ImuSamples")
    commands = torch.as_tensor(controls, dtype=torch.float64).detach().cpu()
    if commands.shape == (6,):
        return [{"control": commands.numpy()}] * steps
    if commands.dim() != 2 or commands.shape[1] != 6 or commands.shape[0] != steps:
        raise InputError(f"controls of shape {tuple(commands.shape)} do not fit {steps} steps",
                         f"give one (6,) command to hold or a ({steps}, 6) sequence [ax, ay, az, wx, wy, wz]")
    if not torch.isfinite(commands).all():
        raise InputError("the controls hold NaN or inf", "give finite commands")
    return [{"control": row.numpy()} for row in commands]


def horizon_steps(horizon_s: float, step_s: float) -> int:
    """``K = round(horizon_s / step_s)`` (InputError for a non-finite or non-positive step, or horizon < step)."""
    if not (np.isfinite(horizon_s) and np.isfinite(step_s) and step_s > 0 and horizon_s >= step_s):
        raise InputError(f"bad horizon {horizon_s} s / step {step_s} s", "use step > 0 and horizon >= step")
    return int(round(horizon_s / step_s))


@contextmanager
def held_sample_kept(model: TransitionModel):
    """Restore the model's held input sample (``EulerModel.previous``) afterwards: a rollout of the filter's own
    model must not change what its next real prediction holds."""
    previous = getattr(model, "previous", None)
    try:
        yield
    finally:
        if hasattr(model, "previous"):
            model.previous = previous


def psd_sqrt(P: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` with ``L L^T = P`` of a symmetric positive semi-definite matrix (zero-safe)."""
    values, vectors = torch.linalg.eigh(symmetrise(P))
    return vectors * values.clamp_min(0).sqrt()


def chordal_mean(R: torch.Tensor) -> torch.Tensor:
    """(N, ..., 3, 3) rotations -> (..., 3, 3) chordal L2 mean: the SVD projection of their average."""
    U, _, Vh = torch.linalg.svd(R.mean(0))
    D = torch.ones_like(U[..., 0, :])
    D[..., -1] = torch.linalg.det(U @ Vh).sign()
    return (U * D[..., None, :]) @ Vh


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_rollouts(model: TransitionModel, state: GaussianState, controls, horizon_s: float, step_s: float,
                    samples: int, generator: torch.Generator | None = None, noise: bool = True) -> Rollouts:
    """``samples`` trajectories of ``K = round(horizon_s / step_s)`` steps from ``state`` (see the module).

    ``noise=False`` skips the per-step noise (the samples then differ only by their initial state).
    ``generator`` makes the draws reproducible (``torch.Generator().manual_seed(seed)``).
    """
    steps = horizon_steps(horizon_s, step_s)
    if samples < 0:
        raise InputError(f"samples must be >= 0, got {samples}", "give 0 (nominal only) or more")
    per_step = step_controls(model, controls, steps)
    T0, v0, P = state.T.detach(), state.velocity.detach(), state.covariance.detach()
    options = dict(dtype=T0.dtype, device=T0.device)
    times = state.t + step_s * torch.arange(steps + 1, dtype=torch.float64)
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=T0.dtype).to(T0.device)
    keep = torch.ones(samples + 1, 1, **options)
    keep[0] = 0.0  # row 0: the nominal rollout, no noise

    d = (randn(samples + 1, 12) @ psd_sqrt(P).T) * keep
    T, v = se3_exp(d[:, :6]) @ T0, v0 + d[:, 6:]
    poses, velocities = [T], [v]
    with held_sample_kept(model):
        for k in range(steps):
            t0, t1 = float(times[k]), float(times[k + 1])
            window = model.inputs(GaussianState(t0, T[0], v[0], P), t1, **per_step[k])
            u = window.values.expand(samples + 1, *window.values.shape)
            if noise and u.shape[-2]:
                sigma = window.variance.clamp_min(0).sqrt().reshape(window.values.shape)
                u = u + randn(*u.shape) * sigma * keep[:, :, None]
            R_start = T[:, :3, :3]
            T, v, std = model.propagate_with_std(T, v, u, window)
            if noise and std is not None:
                w = randn(samples + 1, 6) * std * keep
                v = v + torch.cat([(R_start @ w[:, :3, None])[..., 0], w[:, 3:]], -1)
            Q = model.process_noise(torch.eye(4, **options), window.dt)  # body-frame form (G = I at identity)
            if noise and bool(Q.abs().sum() > 0):
                e = (randn(samples + 1, 12) @ psd_sqrt(Q).T) * keep
                T = se3_from_rt(T[:, :3, :3] @ so3_exp(e[:, 3:6]), T[:, :3, 3] + e[:, :3])
                v = v + e[:, 6:]
            poses.append(T)
            velocities.append(v)
    poses, velocities = torch.stack(poses, 1), torch.stack(velocities, 1)  # (N+1, K+1, ...)
    nominal, sampled = poses[0], poses[1:]
    if samples:
        positions = sampled[..., :3, 3]
        mean = se3_from_rt(chordal_mean(sampled[..., :3, :3]), positions.mean(0))
        centred = positions - positions.mean(0)
        covariance = torch.einsum("nki,nkj->kij", centred, centred) / max(samples - 1, 1)
    else:
        mean, covariance = nominal.clone(), T0.new_zeros(steps + 1, 3, 3)
    if samples < 2:
        covariance = torch.zeros_like(covariance)
    return Rollouts(times, sampled, velocities[1:], nominal, velocities[0], mean, covariance)


def linearised_rollout(model: TransitionModel, state: GaussianState, controls, horizon_s: float,
                       step_s: float) -> list[GaussianState]:
    """The filter's Gaussian prediction chained over the same K steps (K+1 states, ``state`` first): the
    closed-form counterpart of :func:`sample_rollouts` (cheap ellipses; what the samples are tested against)."""
    steps = horizon_steps(horizon_s, step_s)
    per_step = step_controls(model, controls, steps)
    states = [state]
    with held_sample_kept(model):
        for k in range(steps):
            # TransitionModel.predict: an ImuEuler still aligning gravity is not fed (sampling uses its gravity)
            states.append(TransitionModel.predict(model, states[-1], state.t + step_s * (k + 1), **per_step[k]))
    return states


def world_position_covariance(state: GaussianState) -> torch.Tensor:
    """(3, 3) covariance of the world position under the state's left perturbation: ``exp(d^) T`` moves the
    position by ``rho + phi x p`` (first order), so it is ``A P_pose A^T`` with ``A = [I, -[p]x]``, not the
    ``rho`` block (that differs once the rotation is uncertain away from the origin)."""
    A = torch.cat([torch.eye(3, dtype=state.T.dtype, device=state.T.device), -skew(state.T[:3, 3])], -1)
    return A @ state.pose_covariance @ A.T


# ----------------------------------------------------------------------------- predicted depth
def predicted_depth(sdf_map, poses: torch.Tensor, T_body_camera, camera, config=None) -> torch.Tensor:
    """Depth (P, H, W) float32 (NaN where no surface) the map predicts at body poses (P, 4, 4) (e.g.
    ``Rollouts.mean_poses[[k1, k2]]``) for ``camera`` (:class:`PinholeCamera`): one
    :func:`prism_ros.prism.render.render` per pose at ``pose @ T_body_camera``, as the filter renders its prior."""
    from prism_ros.prism.render import render

    poses = torch.as_tensor(poses, dtype=torch.float64)
    if poses.dim() == 2:
        poses = poses[None]
    T_body_camera = torch.as_tensor(T_body_camera, dtype=torch.float64, device=poses.device)
    depths = [render(sdf_map, T @ T_body_camera, camera, config).depth for T in poses]
    return torch.stack(depths) if depths else torch.zeros(0, camera.height, camera.width)


# ----------------------------------------------------------------------------- files
CHI2_95_2D = 5.991464547107979  # chi-square quantile, 2 degrees of freedom, 0.95
PLANES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}


def save_rollouts(rollouts: Rollouts, folder: Path, depth: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> list[Path]:
    """``rollouts.npz`` (every field; with ``depth`` = (times (P,), depth (P,H,W)) also ``depth_times`` and
    ``depth``), one TUM file per sample in ``tum/sample_NNN.txt`` plus ``mean.txt`` and ``nominal.txt`` (a
    TUM file holds one trajectory), and ``depth_T.TTs.png`` per predicted depth image. Returns the paths."""
    from prism_ros.evaluation.trajectory_io import write_tum

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = rollouts.arrays()
    if depth is not None:
        arrays.update(depth_times=np.asarray(depth[0]), depth=np.asarray(depth[1], dtype=np.float32))
    paths = [folder / "rollouts.npz"]
    np.savez_compressed(paths[0], **arrays)
    t = arrays["times"]
    paths.append(write_tum(folder / "mean.txt", t, arrays["mean_poses"], "mean of the sampled rollouts"))
    paths.append(write_tum(folder / "nominal.txt", t, arrays["nominal_poses"], "noiseless rollout of the mean"))
    for i, poses in enumerate(arrays["poses"]):
        paths.append(write_tum(folder / "tum" / f"sample_{i:03d}.txt", t, poses, f"sampled rollout {i}"))
    if depth is not None:
        from matplotlib import colormaps
        from matplotlib.image import imsave

        finite = np.isfinite(depth[1])
        vmin, vmax = (float(depth[1][finite].min()), float(depth[1][finite].max())) if finite.any() else (0.0, 1.0)
        cmap = colormaps["turbo"].with_extremes(bad="black")
        for when, image in zip(depth[0], depth[1]):
            paths.append(folder / f"depth_{when - t[0]:.2f}s.png")
            imsave(paths[-1], np.ma.masked_invalid(image), cmap=cmap, vmin=vmin, vmax=vmax)
    return paths


def plot_axes(rollouts: Rollouts, plane: str = "auto") -> tuple[int, int]:
    """World axes of the plot: ``xy``/``xz``/``yz``, or ``auto``: the two with the largest extent of the mean
    path plus twice the final position std (the motion first, then the spread)."""
    if plane != "auto":
        return PLANES[plane]
    mean = rollouts.mean_poses[:, :3, 3]
    score = mean.max(0).values - mean.min(0).values + 2 * rollouts.position_covariance[-1].diagonal().sqrt()
    return tuple(sorted(np.argsort(score.numpy())[::-1][:2].tolist()))


def save_plot(rollouts: Rollouts, path: Path, plane: str = "auto", title: str = "", ellipses: int = 4) -> None:
    """Top view: the sample paths (thin), the mean path, the nominal one (dashed) and the 95 % position
    ellipses (the samples' 2-D marginal covariance) at ``ellipses`` evenly spaced times."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a, b = plot_axes(rollouts, plane)
    figure = Figure(figsize=(6.4, 5.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    positions = rollouts.positions.numpy()
    for path_i in positions[:200]:
        axes.plot(path_i[:, a], path_i[:, b], color="tab:blue", alpha=0.25, linewidth=0.7)
    mean = rollouts.mean_poses[:, :3, 3].numpy()
    nominal = rollouts.nominal_poses[:, :3, 3].numpy()
    axes.plot(mean[:, a], mean[:, b], color="black", linewidth=2.0, label="mean")
    axes.plot(nominal[:, a], nominal[:, b], color="tab:orange", linestyle="--", linewidth=1.2, label="nominal")
    angle = np.linspace(0, 2 * np.pi, 100)
    circle = np.stack([np.cos(angle), np.sin(angle)])
    index = np.unique(np.round(np.linspace(0, rollouts.steps, ellipses + 1)[1:]).astype(int))
    covariance = rollouts.position_covariance.numpy()
    for j, k in enumerate(index if rollouts.samples >= 2 else []):
        values, vectors = np.linalg.eigh(covariance[k][np.ix_([a, b], [a, b])])
        ring = vectors @ (np.sqrt(CHI2_95_2D * values.clip(0))[:, None] * circle) + mean[k, [a, b], None]
        axes.plot(ring[0], ring[1], color="tab:red", linewidth=1.2,
                  label="95 % ellipse" if j == 0 else None)
        axes.annotate(f"{float(rollouts.times[k] - rollouts.times[0]):.2g} s", mean[k, [a, b]], fontsize=8)
    axes.set_xlabel(f"{'xyz'[a]} (m)")
    axes.set_ylabel(f"{'xyz'[b]} (m)")
    axes.set_aspect("equal", adjustable="datalim")
    axes.legend(loc="best", fontsize=8)
    axes.set_title(title or f"{rollouts.samples} rollouts")
    figure.tight_layout()
    figure.savefig(path)
