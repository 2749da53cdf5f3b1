"""Relocalization: per-pixel scene coordinates -> camera pose by RANSAC + PnP, as in ACE / DSAC*.

1. The encoder and head predict a world coordinate for every feature cell of the query (working height).
2. Hypotheses (default ``solver="p3p"``, ACE's): ``hypotheses`` minimal sets of 4 correspondences are
   solved with OpenCV's P3P (the 4th point picks among the P3P roots); sets whose own points reproject
   further than the threshold are redrawn. All hypotheses are scored at once (batched numpy) with DSAC*'s
   soft inlier count sum sigmoid(beta (tau - e)), beta = 5 / tau, and the best is kept.
   ``solver="usac"`` instead asks OpenCV's USAC (MAGSAC++) for the initial pose.
3. Refinement: Levenberg-Marquardt PnP (``cv2.solvePnP`` ITERATIVE from the current pose) on the inliers
   (e < tau), repeated until the inlier set stops changing (at most ``refine_iterations``).
4. Covariance from the Jacobian of the final refinement: sigma^2 (J^T J)^-1 over the inliers, J the
   derivative of the reprojections w.r.t. a right perturbation T_world_camera exp(xi), xi = [rho, phi]
   (camera frame, the ordering of :mod:`prism_ros.geometry.lie`), sigma^2 the residual variance.
   It ignores outliers that pass as inliers and correlations between neighbouring predictions, so it is
   optimistic; it ranks poses and feeds filters that inflate it.
Poses with fewer than ``min_inliers`` inliers are rejected (``pose`` None, ``candidate`` kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from prism_ros.ace.buffer import query_grey
from prism_ros.ace.encoder import Encoder, feature_pixels, normalise
from prism_ros.ace.ensemble import best_of
from prism_ros.ace.head import Head
from prism_ros.frame import Intrinsics
from prism_ros.geometry.lie import skew_np

if TYPE_CHECKING:  # annotations only: mapfile imports verify, which imports pose_errors from here
    from prism_ros.ace.mapfile import AceMap

REFERENCE_THRESHOLD_PX = 10.0  # ACE's inlier threshold at 480 rows
DEFAULT_MIN_INLIERS = 50


@dataclass
class Relocalization:
    """``pose`` T_world_camera (4,4) or None when rejected; ``inliers``; ``covariance`` (6,6) of
    [rho, phi] (right perturbation) or None; ``candidate`` the best pose found even when rejected."""

    pose: np.ndarray | None
    inliers: int
    covariance: np.ndarray | None
    candidate: np.ndarray | None = None
    head: int = 0
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.pose is not None


def _project(points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray):
    """Reprojection of points (N,3) under (H,3,3),(H,3) or (3,3),(3,) -> (pixels (...,N,2), depth (...,N))."""
    cam = points @ np.swapaxes(R, -1, -2) + t[..., None, :]
    z = cam[..., 2]
    zc = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = np.stack([K[0, 0] * cam[..., 0] / zc + K[0, 2], K[1, 1] * cam[..., 1] / zc + K[1, 2]], -1)
    return uv, z


def _errors(points, pixels, rvec, tvec, K):
    R, _ = cv2.Rodrigues(rvec)
    uv, z = _project(points, R, tvec.reshape(3), K)
    return np.linalg.norm(uv - pixels, axis=-1), z


def _pose(rvec, tvec) -> np.ndarray:
    """T_world_camera from OpenCV's world-to-camera (rvec, tvec)."""
    R, _ = cv2.Rodrigues(rvec)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R.T, -R.T @ tvec.reshape(3)
    return T


def p3p_hypotheses(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, count: int, threshold: float,
                   rng: np.random.Generator, max_tries: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``count`` poses (rvec, tvec) from random 4-point sets (OpenCV P3P), each consistent with its set."""
    hypotheses = []
    max_tries = max_tries or 20 * count
    sets = rng.integers(0, len(points), size=(max_tries, 4))
    for idx in sets:
        if len(hypotheses) >= count:
            break
        if len(set(idx.tolist())) < 4:
            continue
        try:
            ok, rvec, tvec = cv2.solvePnP(points[idx], pixels[idx], K, None, flags=cv2.SOLVEPNP_P3P)
        except cv2.error:
            continue
        if not ok or not np.all(np.isfinite(tvec)):
            continue
        err, z = _errors(points[idx], pixels[idx], rvec, tvec, K)
        if np.all(z > 0.1) and np.all(err < threshold):
            hypotheses.append((rvec, tvec))
    return hypotheses


def soft_inlier_scores(points, pixels, K, hypotheses, threshold: float) -> np.ndarray:
    """DSAC*'s soft inlier count of every hypothesis (H,), batched."""
    R = np.stack([cv2.Rodrigues(r)[0] for r, _ in hypotheses])
    t = np.stack([t.reshape(3) for _, t in hypotheses])
    uv, z = _project(points, R, t, K)
    err = np.linalg.norm(uv - pixels, axis=-1)
    beta = 5.0 / threshold
    score = 1.0 / (1.0 + np.exp(np.clip(-beta * (threshold - err), -50, 50)))
    return (score * (z > 0.1)).sum(-1)


def pose_covariance(T_world_camera: np.ndarray, points: np.ndarray, pixels: np.ndarray, K: np.ndarray) -> np.ndarray:
    """sigma^2 (J^T J)^-1 (6,6) of xi = [rho, phi] in T_world_camera exp(xi), from inlier correspondences."""
    T_cw = np.linalg.inv(T_world_camera)
    cam = points @ T_cw[:3, :3].T + T_cw[:3, 3]
    x, y, z = cam.T
    fx, fy = K[0, 0], K[1, 1]
    zeros = np.zeros_like(z)
    d_proj = np.stack([np.stack([fx / z, zeros, -fx * x / z**2], -1),
                       np.stack([zeros, fy / z, -fy * y / z**2], -1)], 1)  # (N,2,3)
    skew = skew_np(cam)  # [X_c]x (N,3,3)
    d_cam = np.concatenate([-np.broadcast_to(np.eye(3), skew.shape), skew], -1)  # dX_c/dxi = [-I, [X_c]x]
    J = (d_proj @ d_cam).reshape(-1, 6)
    uv = np.stack([fx * x / z + K[0, 2], fy * y / z + K[1, 2]], -1)
    dof = max(J.shape[0] - 6, 1)
    sigma2 = float(((uv - pixels) ** 2).sum() / dof)
    cov = sigma2 * np.linalg.inv(J.T @ J)
    return 0.5 * (cov + cov.T)


def ransac_pnp(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, threshold: float = 10.0,
               hypotheses: int = 64, min_inliers: int = DEFAULT_MIN_INLIERS, refine_iterations: int = 100,
               solver: str = "p3p", seed: int = 0) -> Relocalization:
    """Robust pose from 2D-3D correspondences (points (N,3) world, pixels (N,2)) and K (3,3); see module doc."""
    points = np.ascontiguousarray(points, dtype=np.float64)
    pixels = np.ascontiguousarray(pixels, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    finite = np.all(np.isfinite(points), 1)
    points, pixels = points[finite], pixels[finite]
    if len(points) < 6:
        return Relocalization(None, 0, None, reason=f"only {len(points)} correspondences")
    if solver == "p3p":
        rng = np.random.default_rng(seed)
        candidates = p3p_hypotheses(points, pixels, K, hypotheses, threshold, rng)
        if not candidates:
            return Relocalization(None, 0, None, reason="no consistent hypothesis")
        rvec, tvec = candidates[int(np.argmax(soft_inlier_scores(points, pixels, K, candidates, threshold)))]
    elif solver == "usac":
        try:
            ok, rvec, tvec, _ = cv2.solvePnPRansac(points, pixels, K, None, iterationsCount=10 * hypotheses,
                                                   reprojectionError=threshold, confidence=0.999,
                                                   flags=cv2.USAC_MAGSAC)
        except cv2.error:
            ok = False
        if not ok:
            return Relocalization(None, 0, None, reason="USAC found no pose")
    else:
        raise ValueError(f"unknown solver {solver!r} (use 'p3p' or 'usac')")
    previous = None
    for _ in range(refine_iterations):
        err, z = _errors(points, pixels, rvec, tvec, K)
        inliers = (err < threshold) & (z > 0.1)
        if inliers.sum() < 6 or (previous is not None and np.array_equal(inliers, previous)):
            break
        previous = inliers
        _, rvec, tvec = cv2.solvePnP(points[inliers], pixels[inliers], K, None, rvec.copy(), tvec.copy(),
                                     useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    err, z = _errors(points, pixels, rvec, tvec, K)
    inliers = (err < threshold) & (z > 0.1)
    pose, count = _pose(rvec, tvec), int(inliers.sum())
    if count < max(min_inliers, 6):
        return Relocalization(None, count, None, pose, reason=f"{count} inliers < {min_inliers}")
    return Relocalization(pose, count, pose_covariance(pose, points[inliers], pixels[inliers], K), pose)


@torch.no_grad()
def scene_coordinates(encoder: Encoder, heads: list[Head], grey: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feature-centre pixels (N,2) of a working-resolution grey image and each head's world coordinates (N,3)."""
    device = next(encoder.parameters()).device
    fmap = encoder(normalise(torch.from_numpy(grey).to(device))[None, None])[0]
    rows, cols = fmap.shape[1:]
    features = fmap.flatten(1).T
    pixels = feature_pixels(rows, cols).reshape(-1, 2).numpy()
    return pixels, [head(features).double().cpu().numpy() for head in heads]


def relocalize(ace_map: AceMap, encoder: Encoder, rgb: np.ndarray, intrinsics: Intrinsics,
               threshold_px: float | None = None, hypotheses: int = 64, min_inliers: int = DEFAULT_MIN_INLIERS,
               solver: str = "p3p", seed: int = 0) -> Relocalization:
    """Pose of one query image (HxWx3 uint8) with its intrinsics; with an ensemble, the head of most inliers.
    ``threshold_px`` is in working-resolution pixels (default: ACE's 10 px at 480 rows, scaled)."""
    grey, work = query_grey(rgb, intrinsics, ace_map.image_height)
    threshold = threshold_px or REFERENCE_THRESHOLD_PX * ace_map.image_height / 480
    pixels, coords = scene_coordinates(encoder, ace_map.heads, grey)
    results = [ransac_pnp(c, pixels, work.K, threshold, hypotheses, min_inliers, solver=solver, seed=seed)
               for c in coords]
    index, best = best_of(results)
    best.head = index
    return best


def pose_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors between poses (N,4,4) and (N,4,4)."""
    estimate, truth = np.asarray(estimate).reshape(-1, 4, 4), np.asarray(truth).reshape(-1, 4, 4)
    dt = np.linalg.norm(estimate[:, :3, 3] - truth[:, :3, 3], axis=-1)
    R = np.swapaxes(truth[:, :3, :3], -1, -2) @ estimate[:, :3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    return dt, angle


def accuracy_summary(results, truths) -> dict[str, float]:
    """Fractions within 5 cm / 5 deg and 10 cm / 10 deg (rejected = failure) and median errors."""
    n = len(results)
    dt = np.full(n, np.inf)
    dr = np.full(n, np.inf)
    for i, (r, T) in enumerate(zip(results, truths)):
        if r.accepted and T is not None:
            dt[i], dr[i] = (x[0] for x in pose_errors(r.pose, T))
    return {"queries": n, "accepted": float(np.mean([r.accepted for r in results])) if n else 0.0,
            "within_5cm_5deg": float(np.mean((dt < 0.05) & (dr < 5))) if n else 0.0,
            "within_10cm_10deg": float(np.mean((dt < 0.10) & (dr < 10))) if n else 0.0,
            "median_translation_m": float(np.median(dt)) if n else float("nan"),
            "median_rotation_deg": float(np.median(dr)) if n else float("nan")}
