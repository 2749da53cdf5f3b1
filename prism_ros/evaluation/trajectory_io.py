"""TUM trajectory files (``t tx ty tz qx qy qz qw`` per line, '#' comments) <-> (timestamps (N,), poses (N,4,4)).

Written here rather than with evo's ``file_interface``: evo reports bad files as a generic numpy error,
while users need the line that is wrong and what to do about it (:class:`InputError`). Quaternion <->
matrix conversion uses scipy (batched, float64, handles the sign and near-pi cases).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from prism_ros.errors import InputError

log = logging.getLogger(__name__)
TUM_COLUMNS = "timestamp tx ty tz qx qy qz qw"


def read_tum(path: str | Path, quat_tol: float = 1e-3, drop_duplicates: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file -> (timestamps (N,) float64 s, poses (N,4,4) float64).

    Quaternions must be unit within ``quat_tol`` (then they are renormalised); timestamps strictly increasing.
    ``drop_duplicates`` keeps the first of poses with equal timestamps instead of failing: the official TUM
    fr2/desk ground truth has one such pair.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("trajectory file not found", "check the path (TUM format: one pose per line)", path)
    rows, line_numbers = _parse_rows(path)
    if not rows:
        raise InputError("no poses in the file", f"expected lines '{TUM_COLUMNS}'", path)
    data = np.array(rows, dtype=np.float64)
    line_numbers = np.array(line_numbers)
    if drop_duplicates:
        keep = np.r_[True, np.diff(data[:, 0]) != 0]
        if not keep.all():
            log.warning("%s: dropped %d poses with a duplicate timestamp (first at line %d)", path,
                        (~keep).sum(), line_numbers[~keep][0])
        data, line_numbers = data[keep], line_numbers[keep]
    _check_timestamps(data[:, 0], path, line_numbers)
    poses = _poses_from_tum_rows(data, path, line_numbers, quat_tol)
    return data[:, 0], poses


def _parse_rows(path: Path) -> tuple[list[list[float]], list[int]]:
    """Numeric rows and their 1-based line numbers; comments and blank lines skipped."""
    rows, line_numbers = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 8:
                hint = " (comma-separated? TUM uses spaces)" if "," in line else ""
                raise InputError(f"line {number} has {len(fields)} columns, expected 8 ({TUM_COLUMNS}){hint}",
                                 "convert the file to TUM format", path)
            try:
                rows.append([float(x) for x in fields])
            except ValueError:
                raise InputError(f"line {number} is not numeric: {line.strip()[:80]!r}",
                                 f"each line must be 8 numbers: {TUM_COLUMNS}", path) from None
            line_numbers.append(number)
    return rows, line_numbers


def _check_timestamps(t: np.ndarray, path: object, line_numbers: np.ndarray | None = None) -> None:
    """Finite and strictly increasing, else InputError naming the first offending line (or pose index)."""
    where = (lambda i: f"line {line_numbers[i]}") if line_numbers is not None else (lambda i: f"pose {i}")
    bad = np.flatnonzero(~np.isfinite(t))
    if len(bad):
        raise InputError(f"timestamp at {where(bad[0])} is not finite", "fix or drop that pose", path)
    step = np.diff(t)
    if np.any(step <= 0):
        i = int(np.flatnonzero(step <= 0)[0]) + 1
        kind = "duplicate" if step[i - 1] == 0 else "earlier than the previous one"
        raise InputError(f"timestamp {t[i]:.6f} at {where(i)} is {kind} ({where(i - 1)}: {t[i - 1]:.6f})",
                         "sort the poses by time and drop duplicates", path)


def _poses_from_tum_rows(data: np.ndarray, path: object, line_numbers: np.ndarray, quat_tol: float) -> np.ndarray:
    xyz, q = data[:, 1:4], data[:, 4:8]
    norm = np.linalg.norm(q, axis=1)
    bad = np.flatnonzero(~(np.abs(norm - 1) <= quat_tol) | ~np.isfinite(xyz).all(1))
    if len(bad):
        i = bad[0]
        raise InputError(f"line {line_numbers[i]}: quaternion (qx qy qz qw) has norm {norm[i]:.6g}, not 1 "
                         f"(tolerance {quat_tol:g}), or the position is not finite",
                         "write unit quaternions in the order qx qy qz qw", path)
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(q / norm[:, None]).as_matrix()
    poses[:, :3, 3] = xyz
    return poses


def check_trajectory(timestamps: np.ndarray, poses: np.ndarray, name: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate an in-memory trajectory -> (float64 (N,), float64 (N,4,4)); InputError naming ``name`` if bad."""
    t = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    T = np.asarray(poses, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4) or len(T) != len(t):
        raise InputError(f"expected timestamps (N,) and poses (N,4,4), got {t.shape} and {T.shape}",
                         "pass one 4x4 pose per timestamp", name)
    if len(t) == 0:
        raise InputError("trajectory is empty", "pass at least one pose", name)
    _check_timestamps(t, name)
    if not np.isfinite(T).all():
        raise InputError(f"pose {int(np.flatnonzero(~np.isfinite(T).all((1, 2)))[0])} is not finite",
                         "drop or fix that pose", name)
    return t, T


def write_tum(path: str | Path, timestamps: np.ndarray, poses: np.ndarray, header: str | None = None) -> Path:
    """Write (timestamps (N,), poses (N,4,4)) as a TUM file (parent folders created); returns the path."""
    t, T = check_trajectory(timestamps, poses, path)
    q = Rotation.from_matrix(T[:, :3, :3]).as_quat(canonical=True)  # qx qy qz qw, qw >= 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in (header or "").splitlines()] + [f"# {TUM_COLUMNS}"]
    # shortest repr of the float64 timestamp round-trips exactly and prints 0.1 as 0.1
    lines += [f"{ti!r} {p[0]:.9f} {p[1]:.9f} {p[2]:.9f} {qi[0]:.12f} {qi[1]:.12f} {qi[2]:.12f} {qi[3]:.12f}"
              for ti, p, qi in zip(t.tolist(), T[:, :3, 3], q)]
    path.write_text("\n".join(lines) + "\n")
    return path


def orthonormalize_poses(poses: np.ndarray) -> np.ndarray:
    """Project each pose's rotation onto SO(3) (nearest in Frobenius norm, via SVD).

    Poses stored as printed 4x4 matrices (7-Scenes, SUN3D) or accumulated by other systems deviate
    from orthonormal by ~1e-4, which evo (and any log map) rejects; the projection moves them by
    that much and no more.
    """
    poses = np.array(poses, dtype=np.float64, copy=True)
    U, _, Vt = np.linalg.svd(poses[..., :3, :3])
    D = np.ones(poses.shape[:-2] + (3,))
    D[..., 2] = np.sign(np.linalg.det(U @ Vt))
    poses[..., :3, :3] = (U * D[..., None, :]) @ Vt
    return poses
