"""Fit the few noise parameters that set PRISM's covariance on a calibration split with ground truth.

Each parameter has a physical meaning and is fitted from the evidence that speaks about it, in the order in
which their effects nest (``prism-ros calibrate`` runs all three and writes a preset):

1. **Motion noise** (constant-velocity model): the white-noise acceleration densities, i.e. how the rig
   moves, and how heavy the tails of its jerks are (``tracking.prior_dof``, the Student-t prior's degrees of
   freedom, :mod:`prism_ros.prism.tracking`). Maximum likelihood of the ground-truth poses under the filter's
   own transition model: a pose-only Kalman filter observes the ground truth with ``gt_sigma`` noise, its
   prior scaled as the tracking scales it, and the innovations' Student-t likelihood is maximised
   (Nelder-Mead on the logarithms). No images are involved. A path whose tails come out heavier than one
   degree of freedom is not a motion record (ground truth interpolated between keyframes): it is fitted
   Gaussian, with a note. The IMU and control models keep their sensor densities (datasheet values), so this
   step applies to the constant-velocity model only.
2. **Residual correlation length** ``tracking.correlation_pixels``: how much independent information a
   frame's dense residuals hold. The Laplace covariance scales with its square where the data outweigh the
   prior, so the frame-to-frame NEES median is matched to the chi-square median by
   ``c <- c sqrt(median / 5.35)``, re-running the filter until the ratio settles (within ``tolerance``).
   The tempering factor saturates at one (residuals one sample apart are not more than independent), so a
   sensor that is better than its noise model cannot be fitted below that: the result says so.
3. **Map-drift scale** ``map_drift`` (:mod:`prism_ros.prism.drift`): how fast the map frame wanders from the
   world. It only adds to the reported covariance, so one run gives the absolute NEES of every scale and a
   bisection matches its median to the chi-square median.

Medians rather than means are matched: real errors are heavy-tailed, and a mean would be set by a few
frames. The depth noise a/b are not fitted: against pose errors they act as one scale with the correlation
length. Lost frames are left out of every check, as in ``prism-ros run``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import chi2

from prism_ros.dynamics.model import DynamicsConfig, make_transition
from prism_ros.evaluation import calibration
from prism_ros.geometry.lie import se3_exp, se3_log
from prism_ros.prism.state import GaussianState, PoseEstimate
from prism_ros.prism.tracking import student_weight
from prism_ros.prism.velocity import condition_on_pose

CHI2_6DOF_MEDIAN = float(chi2.median(6))


def student_nll(distance: float, S: torch.Tensor, dof: float) -> float:
    """-log density of a d-variate Student-t with scale ``S`` and ``dof`` degrees of freedom (Gaussian for 0) at
    squared Mahalanobis ``distance`` from its mean."""
    d = S.shape[-1]
    log_det = float(torch.logdet(S))
    if dof <= 0:
        return 0.5 * (distance + log_det + d * math.log(2 * math.pi))
    return (math.lgamma(0.5 * dof) - math.lgamma(0.5 * (dof + d)) + 0.5 * d * math.log(dof * math.pi)
            + 0.5 * log_det + 0.5 * (dof + d) * math.log1p(distance / dof))


def motion_nll(stamps: np.ndarray, poses: np.ndarray, config: DynamicsConfig,
               gt_sigma: tuple[float, float] = (1e-3, 2e-3), skip: int = 2, dof: float = 0.0) -> float:
    """Mean negative log-likelihood per frame of ground-truth camera poses (N,4,4) at ``stamps`` (N,) under the
    transition model of ``config`` observed with ``gt_sigma`` (m, rad) noise, with Student-t innovations of
    ``dof`` degrees of freedom (0: Gaussian); the first ``skip`` frames, which settle the unknown velocity, are
    not scored."""
    model = make_transition(config)
    options = dict(dtype=torch.float64)
    T = torch.as_tensor(poses, **options)
    R = torch.diag(torch.tensor([gt_sigma[0]] * 3 + [gt_sigma[1]] * 3, **options) ** 2)
    state = GaussianState.initial(T[0], t=float(stamps[0]), pose_std=[gt_sigma[0]] * 3 + [gt_sigma[1]] * 3)
    total, scored = 0.0, 0
    for k in range(1, len(T)):
        prior = model.predict(state, float(stamps[k]))
        innovation = se3_log(T[k] @ torch.linalg.inv(prior.T))
        S = prior.pose_covariance + R
        distance = float(innovation @ torch.linalg.solve(S, innovation))
        if k >= skip:
            total += student_nll(distance, S, dof)
            scored += 1
        scale = 1.0 / student_weight(distance, dof)
        P = scale * prior.pose_covariance  # the prior as the tracking weights it
        gain = torch.linalg.solve(P + R, P).T  # P (P + R)^-1
        posterior = PoseEstimate(se3_exp(gain @ innovation) @ prior.T, P - gain @ P, True, prior_scale=scale)
        state = condition_on_pose(prior, posterior)
    return total / max(scored, 1)


def fit_motion_noise(stamps: np.ndarray, poses: np.ndarray, config: DynamicsConfig,
                     gt_sigma: tuple[float, float] = (1e-3, 2e-3), dof: float | None = 8.0,
                     dof_range: tuple[float, float] = (1.0, 1e3)) -> tuple[DynamicsConfig, float]:
    """(``config`` with the linear and angular acceleration densities, the Student-t degrees of freedom) of
    maximum likelihood (step 1); ``dof`` starts the search (None: Gaussian, not fitted, returned as 0). At the top
    of ``dof_range`` the tails are Gaussian's and 0 is returned; at the bottom the path is not a motion record
    (e.g. poses interpolated between keyframes: constant velocity, then a jump) and a :class:`ValueError` says so.
    """
    def unpack(x: np.ndarray) -> tuple[DynamicsConfig, float]:
        lin, ang = np.exp(x[:2])
        trial = dataclasses.replace(config, linear_acceleration_noise=float(lin), angular_acceleration_noise=float(ang))
        return trial, float(np.clip(np.exp(x[2]), *dof_range)) if dof is not None else 0.0

    def nll(x: np.ndarray) -> float:
        trial, trial_dof = unpack(x)
        return motion_nll(stamps, poses, trial, gt_sigma, dof=trial_dof)

    start = np.log([config.linear_acceleration_noise, config.angular_acceleration_noise, *([dof] if dof else [])])
    simplex = [start, *(start + np.eye(len(start))[i] for i in range(len(start)))]
    best = minimize(nll, start, method="Nelder-Mead",
                    options={"xatol": 0.01, "fatol": 1e-4, "initial_simplex": simplex})
    fitted, fitted_dof = unpack(best.x)
    if dof is not None and fitted_dof <= dof_range[0]:
        raise ValueError(f"the ground-truth path's accelerations are heavier-tailed than a Student-t with "
                         f"{dof_range[0]:g} degree of freedom: it does not look like a motion record (poses "
                         f"interpolated between keyframes?)")
    return fitted, 0.0 if fitted_dof >= dof_range[1] else fitted_dof


def covariance_scale(nees: np.ndarray) -> float:
    """The factor on the covariances that puts the median of these NEES values at the chi-square median."""
    return float(np.median(nees)) / CHI2_6DOF_MEDIAN


def fit_drift_scale(est: np.ndarray, gt: np.ndarray, map_covariances: np.ndarray, unit_drift: np.ndarray,
                    tracked: np.ndarray, bounds: tuple[float, float] = (1e-3, 1e6)) -> float:
    """The map-drift scale whose absolute NEES median over the tracked frames (the first excluded: tied) is the
    chi-square median (step 3); ``unit_drift`` (N,6,6): the drift covariance at scale one. The NEES falls as the
    scale grows, so a bisection on its logarithm finds it; a bound is returned when the target lies beyond."""
    def median(scale: float) -> float:
        nees = calibration.pose_nees(est, gt, map_covariances + scale * unit_drift)
        return float(np.median(nees[1:][tracked[1:]]))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    if median(math.exp(low)) <= CHI2_6DOF_MEDIAN:
        return bounds[0]
    if median(math.exp(high)) >= CHI2_6DOF_MEDIAN:
        return bounds[1]
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if median(math.exp(middle)) > CHI2_6DOF_MEDIAN else (low, middle)
    return math.exp(0.5 * (low + high))


@dataclass
class Checks:
    """The calibration checks of one run: NEES medians and the shares in the 95 % band."""

    relative_median: float
    relative_in_band: float
    absolute_median: float
    absolute_in_band: float
    relative_coverage: dict = field(default_factory=dict)
    absolute_coverage: dict = field(default_factory=dict)

    @staticmethod
    def of(relative: np.ndarray, absolute: np.ndarray) -> "Checks":
        return Checks(float(np.median(relative)), calibration.in_band(relative), float(np.median(absolute)),
                      calibration.in_band(absolute), calibration.coverage(relative), calibration.coverage(absolute))


@dataclass
class Calibration:
    """What ``calibrate`` fitted: the configuration, each run's settings and checks, and notes for the user."""

    config: object  # FilterConfig
    fitted: dict
    runs: list = field(default_factory=list)  # (correlation_pixels, Checks) per filter run
    final: Checks | None = None
    notes: list = field(default_factory=list)


def calibrate(dataset, config, init_gt: bool = True, gt_sigma: tuple[float, float] = (1e-3, 2e-3),
              max_runs: int = 4, tolerance: float = 0.1, progress: bool = True, log=print) -> Calibration:
    """Steps 1-3 of the module docstring on ``dataset`` (frames with ground truth) from ``config`` (FilterConfig);
    ``tolerance``: the relative change of the correlation length below which its iteration stops."""
    from prism_ros.errors import InputError
    from prism_ros.prism.pipeline import pose_checks, track_sequence

    config = dataclasses.replace(config)
    fitted, notes = {}, []
    truths = [dataset[i].pose for i in range(len(dataset))]
    if any(pose is None for pose in truths) or len(truths) < 10:
        raise InputError("calibration needs ground truth for every frame, 10 frames or more",
                         "give a dataset with ground truth (7-Scenes, TUM, EuRoC, prism-ros synth) and --frames A:B")
    stamps = np.asarray(dataset.timestamps, dtype=np.float64)
    if config.dynamics.model == "constant_velocity":
        try:
            config.dynamics, dof = fit_motion_noise(stamps, np.stack(truths), config.dynamics, gt_sigma)
        except ValueError as error:
            notes.append(f"{error}; the motion noise is fitted Gaussian")
            config.dynamics, dof = fit_motion_noise(stamps, np.stack(truths), config.dynamics, gt_sigma, dof=None)
        config.tracking = dataclasses.replace(config.tracking, prior_dof=dof)
        fitted["dynamics.linear_acceleration_noise"] = config.dynamics.linear_acceleration_noise
        fitted["dynamics.angular_acceleration_noise"] = config.dynamics.angular_acceleration_noise
        fitted["tracking.prior_dof"] = dof
        log(f"motion noise: linear {config.dynamics.linear_acceleration_noise:.3g} m/s^2/sqrt(Hz), "
            f"angular {config.dynamics.angular_acceleration_noise:.3g} rad/s^2/sqrt(Hz), Student-t with "
            f"{dof:.3g} degrees of freedom" + (" (0: Gaussian)" if dof == 0 else ""))
    else:
        notes.append(f"the {config.dynamics.model} model keeps its sensor noise densities")
    config.map_drift = 1.0  # the run's drift covariance is then the unit one
    result = Calibration(config, fitted, notes=notes)
    # the Laplace covariance comes from the finest level, whose tempering saturates at one below its spacing
    floor = float(config.tracking.strides[-1] * 2 ** max(config.tracking.levels[-1], 0))
    for run in range(max_runs):
        _, estimates, truths, _ = track_sequence(dataset, config, init_gt, progress)
        absolute, relative = pose_checks(estimates, truths)
        checks = Checks.of(relative, absolute)
        result.runs.append((config.tracking.correlation_pixels, checks))
        log(f"correlation_pixels {config.tracking.correlation_pixels:.3g}: frame-to-frame NEES median "
            f"{checks.relative_median:.2f}, {checks.relative_in_band:.0%} in band")
        current, scale = config.tracking.correlation_pixels, covariance_scale(relative)
        proposed = max(current * math.sqrt(scale), floor)
        if proposed == current == floor and scale < 1.0 - tolerance:  # tempering is one
            notes.append(f"the residuals carry more information than the noise model says (frame-to-frame NEES "
                         f"median {checks.relative_median:.2f} at correlation_pixels {current:g}, where the "
                         f"tempering is already one): lower the depth/intensity noise instead")
            break
        if abs(proposed / current - 1.0) < tolerance:
            break
        if run == max_runs - 1:
            notes.append(f"correlation_pixels had not settled after {max_runs} runs (next: {proposed:.3g})")
            break
        config.tracking = dataclasses.replace(config.tracking, correlation_pixels=proposed)
    fitted["tracking.correlation_pixels"] = config.tracking.correlation_pixels
    est = np.stack([e.T_world_camera for e in estimates])
    against_map = np.stack([e.map_pose_covariance for e in estimates])
    unit_drift = np.stack([e.pose_covariance for e in estimates]) - against_map
    tracked = np.array([e.tracking_ok for e in estimates])
    config.map_drift = fit_drift_scale(est, np.stack(truths), against_map, unit_drift, tracked)
    fitted["map_drift"] = config.map_drift
    absolute = calibration.pose_nees(est, np.stack(truths), against_map + config.map_drift * unit_drift)
    result.final = Checks.of(relative, absolute[1:][tracked[1:]])
    log(f"map_drift {config.map_drift:.3g}: absolute NEES median {result.final.absolute_median:.2f}, "
        f"{result.final.absolute_in_band:.0%} in band")
    return result


def preset_text(base: dict, result: Calibration, header: list[str]) -> str:
    """A filter preset (YAML): ``base`` settings with the fitted ones in, the ``header`` lines and the checks as
    comments."""
    import yaml

    from prism_ros.prism.config import deep_merge

    nested: dict = {}
    for dotted, value in result.fitted.items():
        *parents, key = dotted.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = float(f"{value:.4g}")
    final = result.final
    lines = [*header,
             f"frame-to-frame NEES median {final.relative_median:.2f}, {final.relative_in_band:.0%} of frame pairs in "
             f"the 95 % chi2 band; absolute NEES median {final.absolute_median:.2f}, {final.absolute_in_band:.0%} "
             f"of frames in band (on the calibration frames; ideal median 5.35, 95 %)", *result.notes]
    comments = "".join(f"# {line}\n" for line in lines)
    return comments + yaml.safe_dump(deep_merge(base, nested), sort_keys=False)
