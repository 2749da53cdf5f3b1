"""Is the reported pose uncertainty right? Pose NEES against ground truth and the coverage of credible regions.

Covariances are left ones, of the twist [rho, phi] (:func:`prism_ros.geometry.lie.se3_log` order): the true
pose is ``exp(xi) T_est`` with ``xi ~ N(0, covariance)``, in the estimate's world frame.

- **absolute**: ``log(T_gt T_est^-1)`` with the world frames tied at the first frame, against the reported
  covariance (the map-relative Laplace covariance plus the map-drift term);
- **relative** (frame to frame): the motion ``T_{k-1}^-1 T_k`` against the ground truth's. Its right error is
  ``Ad(T_k^-1) (xi_k - xi_{k-1})``: the map's drift, common to both frames, cancels, so its covariance is
  ``Ad(T_k^-1) (S_k + S_{k-1} - C_k - C_k^T) Ad(T_k^-1)^T`` with ``S`` the map-relative covariances and
  ``C_k = cov(xi_k, xi_{k-1})`` the filter's cross-covariance (zero when not given: independent frames).
  Needs no alignment of the world frames.
- **coverage**: for each level p, the share of errors inside the p credible ellipsoid (NEES under the chi-square
  p quantile, 6 degrees of freedom); a calibrated filter lies on the diagonal (observed = p).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

from prism_ros.geometry.lie import se3_adjoint, se3_log

LEVELS = (0.5, 0.68, 0.9, 0.95, 0.99)
CHI2_6DOF_95 = (float(chi2.ppf(0.025, 6)), float(chi2.ppf(0.975, 6)))  # two-sided 95 % band, 6 DoF


def _nees(error: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    solved = np.linalg.solve(covariance + 1e-18 * np.eye(6), error[..., None])[..., 0]
    return np.einsum("ni,ni->n", error, solved)


def pose_nees(est: np.ndarray, gt: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """(N,) absolute NEES of poses (N,4,4) with left covariances (N,6,6), world frames tied at the first frame."""
    align = gt[0] @ np.linalg.inv(est[0])
    error = se3_log(torch.as_tensor(gt @ np.linalg.inv(align @ est))).numpy()
    Ad = se3_adjoint(torch.as_tensor(align)).numpy()  # the covariance into the aligned frame
    return _nees(error, Ad @ covariances @ Ad.T)


def relative_pose_nees(est: np.ndarray, gt: np.ndarray, map_covariances: np.ndarray,
                       cross_covariances: np.ndarray | None = None) -> np.ndarray:
    """(N-1,) NEES of the motion between consecutive frames (see the module docstring); ``cross_covariances``
    (N,6,6): ``C_k`` of each frame with its predecessor (the first is unused)."""
    return _nees(*relative_errors(est, gt, map_covariances, cross_covariances))


def relative_errors(est: np.ndarray, gt: np.ndarray, map_covariances: np.ndarray,
                    cross_covariances: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N-1,6) right errors of the frame-to-frame motions and their (N-1,6,6) covariances."""
    est_t, gt_t = torch.as_tensor(est), torch.as_tensor(gt)
    motion = torch.linalg.inv(est_t[:-1]) @ est_t[1:]
    true_motion = torch.linalg.inv(gt_t[:-1]) @ gt_t[1:]
    error = se3_log(torch.linalg.inv(motion) @ true_motion).numpy()
    Ad = se3_adjoint(torch.linalg.inv(est_t[1:])).numpy()
    joint = map_covariances[1:] + map_covariances[:-1]
    if cross_covariances is not None:
        joint = joint - cross_covariances[1:] - np.swapaxes(cross_covariances[1:], -1, -2)
    return error, Ad @ joint @ np.swapaxes(Ad, -1, -2)


def coverage(nees: np.ndarray, dof: int = 6, levels=LEVELS) -> dict[str, float]:
    """{level: observed share of NEES values under the level's chi-square quantile}; {} without values."""
    nees = np.asarray(nees, dtype=np.float64)
    if not len(nees):
        return {}
    return {f"{p:g}": float((nees <= chi2.ppf(p, dof)).mean()) for p in levels}


def in_band(nees: np.ndarray) -> float | None:
    """Share of NEES values inside the two-sided 95 % band of a 6-DoF chi-square; None without values."""
    nees = np.asarray(nees, dtype=np.float64)
    return float(((nees > CHI2_6DOF_95[0]) & (nees < CHI2_6DOF_95[1])).mean()) if len(nees) else None


def summary(nees: np.ndarray, name: str) -> dict:
    """``{name}_median``, ``{name}_fraction_in_95_band`` and ``{name}_coverage`` (None / {} without values)."""
    nees = np.asarray(nees, dtype=np.float64)
    return {f"{name}_median": float(np.median(nees)) if len(nees) else None,
            f"{name}_fraction_in_95_band": in_band(nees), f"{name}_coverage": coverage(nees)}


def plot_reliability(checks: dict, path) -> None:
    """Reliability plot of the checks in ``checks`` (the keys of :func:`summary`: ``nees_coverage`` and, when
    there, ``relative_nees_coverage``): observed against expected coverage, with the diagonal a calibrated filter
    lies on and a band of +-5 points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="calibrated")
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="grey", alpha=0.15, lw=0)
    for name, key in (("absolute", "nees_coverage"), ("frame to frame", "relative_nees_coverage")):
        curve = checks.get(key)
        if curve:
            ax.plot([float(p) for p in curve], list(curve.values()), marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="expected coverage", ylabel="observed coverage",
           title="pose covariance reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def checks_from_files(estimate, ground_truth, covariance, max_time_diff: float = 0.02) -> dict:
    """The absolute and frame-to-frame checks (:func:`summary`, keys ``nees_*`` and ``relative_nees_*``) of a
    TUM trajectory against TUM ground truth, with the covariances of ``covariance.npz`` as ``prism-ros run`` and
    ``replay`` write it (one per trajectory pose; the frame-to-frame check needs ``map_pose_covariance``). Poses and
    ground truth are paired within ``max_time_diff``, closest first (TUM's rule); poses without a partner, or not
    tracked, are left out (and so are the pairs they belong to)."""
    from pathlib import Path

    from prism_ros.datasets.common import associate
    from prism_ros.errors import InputError
    from prism_ros.evaluation.trajectory_io import read_tum

    stamps, est = read_tum(estimate)
    gt_stamps, gt = read_tum(ground_truth, drop_duplicates=True)
    path = Path(covariance)
    if not path.is_file():
        raise InputError("covariance file not found", "give the covariance.npz that prism-ros run wrote", path)
    try:
        data = dict(np.load(path))
    except (OSError, ValueError) as error:
        raise InputError(f"not a readable .npz ({error})", "give the covariance.npz that prism-ros run wrote",
                         path) from None
    if "pose_covariance" not in data or data["pose_covariance"].shape != (len(stamps), 6, 6):
        raise InputError(f"needs pose_covariance of shape ({len(stamps)}, 6, 6), one per pose of {estimate}",
                         "give the covariance.npz written with that trajectory", path)
    nearest = np.zeros(len(stamps), dtype=np.int64)
    keep = np.zeros(len(stamps), dtype=bool)
    for i, j in associate(stamps, gt_stamps, max_time_diff):
        nearest[i], keep[i] = j, True
    keep &= data.get("tracking_ok", np.ones(len(stamps), bool))
    if keep.sum() < 2:
        raise InputError(f"only {int(keep.sum())} poses have ground truth within {max_time_diff} s",
                         "check that the files cover the same time, or raise --max-time-diff", estimate)
    matched = gt[nearest]
    first = int(np.argmax(keep))
    absolute = pose_nees(est[first:], matched[first:], data["pose_covariance"][first:])
    checks = summary(absolute[1:][keep[first + 1:]], "nees")
    if "map_pose_covariance" in data:
        cross = data.get("map_cross_covariance")
        relative = relative_pose_nees(est, matched, data["map_pose_covariance"], cross)
        checks.update(summary(relative[keep[1:] & keep[:-1]], "relative_nees"))
    return checks
