"""Pose NEES and coverage (prism_ros.evaluation.calibration): hand cases and an exactly calibrated Gaussian."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prism_ros.evaluation.calibration import LEVELS, coverage, in_band, pose_nees, relative_pose_nees, summary
from prism_ros.geometry.lie import se3_exp


def exp(xi) -> np.ndarray:
    return se3_exp(torch.as_tensor(np.asarray(xi, dtype=np.float64))).numpy()


def poses(n: int, rng) -> np.ndarray:
    """A wandering camera: n poses a few cm and degrees apart."""
    out = [exp(rng.normal(0, 0.5, 6))]
    for _ in range(n - 1):
        out.append(exp(rng.normal(0, 0.05, 6)) @ out[-1])
    return np.stack(out)


def test_relative_nees_of_a_hand_case():
    """Frame k-1 exact, frame k off by a small left twist v: the motion's error is Ad(T_k^-1) v, so its NEES
    is v^T (S_k + S_{k-1})^-1 v whatever the poses, and a constant world offset of the truth changes nothing."""
    rng = np.random.default_rng(0)
    gt = poses(2, rng)
    v = np.array([2e-4, -1e-4, 3e-4, 1e-4, 2e-4, -2e-4])
    est = np.stack([gt[0], np.linalg.inv(exp(v)) @ gt[1]])  # gt_k = exp(v) est_k
    S = np.stack([np.diag([1e-8, 2e-8, 4e-8, 1e-8, 1e-8, 3e-8]), np.diag([3e-8, 1e-8, 1e-8, 2e-8, 4e-8, 1e-8])])
    expected = v @ np.linalg.solve(S[0] + S[1], v)
    assert relative_pose_nees(est, gt, S)[0] == pytest.approx(expected, rel=1e-3)
    offset = exp([1.0, -2.0, 0.5, 0.3, 0.2, -0.1])
    assert relative_pose_nees(est, offset @ gt, S)[0] == pytest.approx(expected, rel=1e-3)


def test_a_drift_common_to_both_frames_cancels_in_the_motion():
    """A map drift that grows frame by frame moves both frames of a pair the same way up to the step between
    them: the absolute NEES sees the drift, the frame-to-frame NEES only the step's share of it."""
    rng = np.random.default_rng(1)
    gt = poses(5, rng)
    step = np.array([0.01, 0.005, -0.005, 0.005, 0.0, 0.01])
    est = np.stack([exp(k * step) @ T for k, T in enumerate(gt)])  # drift k * step at frame k
    S = np.tile(np.eye(6) * 1e-6, (5, 1, 1))
    absolute, relative = pose_nees(est, gt, S), relative_pose_nees(est, gt, S)
    assert absolute[0] == pytest.approx(0.0, abs=1e-9)  # tied at the first frame
    assert np.all(np.diff(absolute) > 0)  # the drift grows
    expected = step @ np.linalg.solve(2 * S[0], step)  # the step between frames, against S_k + S_{k-1}
    assert np.allclose(relative, expected, rtol=0.05)
    same = np.stack([exp(step) @ T for T in gt])  # the same offset for every frame: the motion is exact
    assert np.allclose(relative_pose_nees(same, gt, S), 0.0, atol=1e-9)


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_an_exactly_calibrated_gaussian_lies_on_the_diagonal(kind):
    """Errors drawn from the covariances the NEES uses: coverage within 2.5 points of every level, the 95 %
    band holds ~95 %, the median is chi-square's (5.35)."""
    rng = np.random.default_rng(2)
    n = 4000
    gt = poses(n, rng)
    A = rng.normal(0, 1, (n, 6, 6))
    S = 1e-6 * (A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(6))  # random well-conditioned covariances
    xi = np.einsum("nij,nj->ni", np.linalg.cholesky(S), rng.normal(size=(n, 6)))
    if kind == "absolute":
        xi[0] = 0.0  # the frames are tied at the first
        est = np.stack([np.linalg.inv(exp(x)) @ T for x, T in zip(xi, gt)])
        nees = pose_nees(est, gt, S)[1:]
    else:  # independent per-frame errors, as the relative NEES assumes
        est = np.stack([np.linalg.inv(exp(x)) @ T for x, T in zip(xi, gt)])
        nees = relative_pose_nees(est, gt, S)
    observed = coverage(nees)
    assert list(observed) == [f"{p:g}" for p in LEVELS]
    for level, share in observed.items():
        assert abs(share - float(level)) < 0.025, (level, share)
    assert abs(in_band(nees) - 0.95) < 0.02
    assert np.median(nees) == pytest.approx(5.35, rel=0.06)


def test_overconfidence_shows_below_the_diagonal_and_empty_input_is_none():
    rng = np.random.default_rng(3)
    nees = 20.0 * rng.chisquare(6, 2000)  # errors sqrt(20) times larger than said
    assert all(share < 0.5 * float(level) for level, share in coverage(nees).items())
    assert summary(np.zeros(0), "nees") == {"nees_median": None, "nees_fraction_in_95_band": None,
                                            "nees_coverage": {}}
