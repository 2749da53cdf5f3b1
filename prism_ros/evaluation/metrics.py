"""Trajectory accuracy against ground truth: ATE (after se3/sim3/no alignment) and RPE, with evo.

evo does the association (nearest timestamp within ``max_time_diff``), Umeyama alignment and the APE/RPE
metrics, so numbers match ``evo_ape`` / ``evo_rpe`` (``-a`` / ``-as``). This module adds input checks that
say what to fix, a one-line summary and a plot (matplotlib's Agg canvas directly: evo's plot module pulls
in its user settings).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from evo.core.filters import FilterException
from evo.core.geometry import GeometryException
from evo.core.metrics import APE, RPE, PoseRelation, StatisticsType, Unit
from evo.core.sync import SyncException, associate_trajectories
from evo.core.trajectory import PoseTrajectory3D

from prism_ros.errors import InputError
from prism_ros.evaluation.trajectory_io import check_trajectory, orthonormalize_poses, read_tum

ALIGNMENTS = ("se3", "sim3", "none")
RPE_UNITS = {"frames": Unit.frames, "meters": Unit.meters, "m": Unit.meters, "degrees": Unit.degrees,
             "deg": Unit.degrees, "radians": Unit.radians, "rad": Unit.radians}

TrajectoryLike = Union[str, Path, tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalResult:
    """ATE statistics in metres (translation), RPE rmse in metres and degrees, and how they were obtained."""

    ate_rmse: float
    ate_mean: float
    ate_median: float
    ate_max: float
    rpe_trans_rmse: float
    rpe_rot_rmse_deg: float
    matched: int  # associated pose pairs
    scale: float  # applied to the estimate (1 unless sim3)
    alignment: str  # "se3" | "sim3" | "none"
    rpe_delta: float = 1.0
    rpe_unit: str = "frames"
    T_align: np.ndarray = field(default_factory=lambda: np.eye(4))  # estimate -> ground-truth frame, sim(3)
    plot_path: str | None = None

    def summary_line(self) -> str:
        """e.g. ``ATE rmse 0.012 m (se3, 398 poses) | RPE 0.004 m / 0.21 deg per 1 frames``."""
        how = f"sim3 s={self.scale:.4f}" if self.alignment == "sim3" else self.alignment
        return (f"ATE rmse {self.ate_rmse:.3f} m ({how}, {self.matched} poses) | "
                f"RPE {self.rpe_trans_rmse:.3f} m / {self.rpe_rot_rmse_deg:.2f} deg per {self.rpe_delta:g} "
                f"{self.rpe_unit}")

    def to_dict(self) -> dict:
        """JSON-ready dict (numbers as Python floats, T_align as nested lists)."""
        out = asdict(self)
        out["T_align"] = np.asarray(self.T_align).tolist()
        return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in out.items()}


def evaluate(estimate: TrajectoryLike, ground_truth: TrajectoryLike, align: str = "se3",
             max_time_diff: float = 0.02, rpe_delta: float = 1.0, rpe_unit: str = "frames",
             plot_path: str | Path | None = None, time_offset: float = 0.0) -> EvalResult:
    """Compare an estimate with ground truth; each is a TUM file path or (timestamps (N,), poses (N,4,4)).

    Poses are associated by nearest timestamp within ``max_time_diff`` seconds (``time_offset`` is added to
    the estimate's timestamps first), the estimate is aligned to the ground truth (``align``), then ATE
    (translation) and RPE over ``rpe_delta`` ``rpe_unit`` are computed. ``plot_path`` writes a PNG.
    """
    if align not in ALIGNMENTS:
        raise InputError(f"unknown alignment {align!r}", f"use one of {', '.join(ALIGNMENTS)}")
    if rpe_unit not in RPE_UNITS:
        raise InputError(f"unknown RPE unit {rpe_unit!r}", f"use one of {', '.join(RPE_UNITS)}")
    est = _load(estimate, "estimate", drop_duplicates=False)
    gt = _load(ground_truth, "ground truth", drop_duplicates=True)  # the official TUM fr2/desk has a duplicate
    gt, est = _associate(gt, est, max_time_diff, time_offset)
    T_align, scale = _align(est, gt, align)
    ape = APE(PoseRelation.translation_part)
    ape.process_data((gt, est))
    rpe_t, rpe_r = _rpe(gt, est, rpe_delta, RPE_UNITS[rpe_unit])
    ate = [float(ape.get_statistic(s)) for s in (StatisticsType.rmse, StatisticsType.mean, StatisticsType.median,
                                                   StatisticsType.max)]
    result = EvalResult(*ate, rpe_t, rpe_r, est.num_poses, scale, align, rpe_delta, rpe_unit, T_align)
    if plot_path is not None:
        result.plot_path = str(plot_trajectories(est, gt, ape.error, plot_path, result.summary_line()))
    return result


def _load(source: TrajectoryLike, role: str, drop_duplicates: bool) -> PoseTrajectory3D:
    """TUM path or (timestamps, poses) -> evo trajectory named after its source (for messages)."""
    if isinstance(source, (str, Path)):
        t, poses = read_tum(source, drop_duplicates=drop_duplicates)
        name = str(source)
    else:
        try:
            t, poses = source
        except (TypeError, ValueError):
            raise InputError(f"{role} must be a TUM file path or a (timestamps, poses) pair",
                             "pass a path or (np.ndarray (N,), np.ndarray (N,4,4))") from None
        name = role
        t, poses = check_trajectory(t, orthonormalize_poses(poses), name)
    return PoseTrajectory3D(timestamps=t, poses_se3=list(poses), name=name)


def _associate(gt: PoseTrajectory3D, est: PoseTrajectory3D, max_time_diff: float, time_offset: float
               ) -> tuple[PoseTrajectory3D, PoseTrajectory3D]:
    """Nearest-timestamp pairs; InputError explaining the time ranges when none match."""
    try:
        return associate_trajectories(gt, est, max_diff=max_time_diff, offset_2=time_offset)
    except SyncException:
        e0, e1 = est.timestamps[[0, -1]] + time_offset
        g0, g1 = gt.timestamps[[0, -1]]
        raise InputError(
            f"no estimate timestamp is within {max_time_diff} s of one in {gt.name}: the estimate spans "
            f"[{e0:.3f}, {e1:.3f}] s, the ground truth [{g0:.3f}, {g1:.3f}] s "
            f"(ground truth minus estimate: start {g0 - e0:+.3f} s, end {g1 - e1:+.3f} s)",
            "check both use the same clock; raise --max-time-diff or shift the estimate with --time-offset",
            est.name) from None


def _align(est: PoseTrajectory3D, gt: PoseTrajectory3D, align: str) -> tuple[np.ndarray, float]:
    """Align ``est`` in place (Umeyama on positions) -> (4x4 sim(3) estimate -> ground truth, scale)."""
    if align == "none":
        return np.eye(4), 1.0
    if est.num_poses < 3:
        raise InputError(f"only {est.num_poses} poses matched; {align} alignment needs at least 3",
                         "use longer trajectories, raise --max-time-diff or evaluate with --align none", est.name)
    try:
        R, t, s = est.align(gt, correct_scale=align == "sim3")
    except GeometryException:
        raise InputError(f"{align} alignment is degenerate: the matched positions are (nearly) collinear",
                         "use a trajectory that moves in more than one direction, or --align none",
                         est.name) from None
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = s * R, t
    return T, float(s)


def _rpe(gt: PoseTrajectory3D, est: PoseTrajectory3D, delta: float, unit: Unit) -> tuple[float, float]:
    """RPE rmse (translation m, rotation deg) over consecutive pairs ``delta`` apart."""
    out = []
    for relation in (PoseRelation.translation_part, PoseRelation.rotation_angle_deg):
        rpe = RPE(relation, delta=delta, delta_unit=unit, all_pairs=False)
        try:
            rpe.process_data((gt, est))
        except FilterException:
            raise InputError(f"no pose pairs {delta:g} {unit.value} apart among {est.num_poses} matched poses",
                             "lower --rpe-delta", est.name) from None
        out.append(float(rpe.get_statistic(StatisticsType.rmse)))
    return out[0], out[1]


def plot_trajectories(est: PoseTrajectory3D, gt: PoseTrajectory3D, ate: np.ndarray, path: str | Path,
                      title: str = "") -> Path:
    """PNG: top view (x-y) of ground truth and aligned estimate, and the ATE over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(fig)
    top, err = fig.subplots(1, 2, width_ratios=(1, 1.3))
    top.plot(*gt.positions_xyz[:, :2].T, "k--", lw=1, label="ground truth")
    top.plot(*est.positions_xyz[:, :2].T, "C0", lw=1, label="estimate (aligned)")
    top.set(xlabel="x [m]", ylabel="y [m]", title="top view", aspect="equal")
    top.legend(loc="best")
    err.plot(gt.timestamps - gt.timestamps[0], ate, "C3", lw=1)
    err.set(xlabel="time [s]", ylabel="ATE [m]", title="absolute trajectory error", ylim=(0, None))
    err.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- map accuracy
@dataclass
class MapError:
    """SDF error of the map's observed voxels near the true surface, and how well the map's std ranks it."""

    voxels: int  # observed voxels within ``band`` of the true surface
    band_m: float
    mean_abs_m: float
    median_abs_m: float
    p95_abs_m: float
    std_error_spearman: float  # rank correlation of the posterior std with |error| (> 0: std flags error)
    coverage_95: float | None = None  # share of voxels whose error lies within +-1.96 posterior std

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        return (f"map SDF error within {self.band_m * 100:.0f} cm of surfaces: mean {self.mean_abs_m * 1e3:.1f} mm, "
                f"p95 {self.p95_abs_m * 1e3:.1f} mm over {self.voxels} voxels; "
                f"Spearman(std, |error|) {self.std_error_spearman:.2f}"
                + (f", {self.coverage_95:.0%} within their 95 % interval" if self.coverage_95 is not None else ""))


def map_error(centres, mean, std, true_sdf, band: float, max_voxels: int = 200_000) -> MapError:
    """Compare posterior SDF means (V,) at voxel centres (V,3) with an exact ``true_sdf(points) -> (V,)``.

    Only voxels within ``band`` of the true surface count: far from it the truncated SDF is clipped by
    design. At most ``max_voxels`` evenly spaced voxels are scored (an unbiased subsample that keeps the
    exact SDF evaluation short on large maps).
    """
    import torch
    from scipy.stats import spearmanr

    step = max(1, len(centres) // max_voxels)
    centres, mean, std = centres[::step], mean[::step].double(), std[::step].double()
    truth = torch.as_tensor(true_sdf(centres.double())).to(mean)
    near = truth.abs() < band
    if int(near.sum()) < 2:
        raise InputError(f"only {int(near.sum())} observed voxels lie within {band} m of the true surface",
                         "check that the map and the ground-truth scene share a world frame")
    error = (mean - truth).abs()[near].cpu().numpy()
    sigma = std[near].cpu().numpy()
    rho = spearmanr(sigma, error).statistic
    return MapError(int(near.sum()), float(band), float(error.mean()), float(np.median(error)),
                    float(np.quantile(error, 0.95)), float(rho), float(np.mean(error <= 1.96 * sigma)))
