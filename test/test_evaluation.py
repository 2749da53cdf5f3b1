"""TUM I/O round trip and error messages; ATE/RPE on ground truth perturbed by known amounts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from shared_data import DATA as SHARED_DATA

from prism_ros.errors import InputError
from prism_ros.evaluation.metrics import EvalResult, evaluate
from prism_ros.evaluation.trajectory_io import read_tum, write_tum

DATA = SHARED_DATA / "tum_groundtruth_only"
FR1_XYZ = DATA / "freiburg1_xyz-groundtruth.txt"
FR2_DESK = DATA / "fr2_desk_groundtruth.txt"


@pytest.fixture(scope="module")
def gt():
    """fr1/xyz ground truth, every 5th pose (600 poses over 30 s) to keep the tests fast."""
    if not FR1_XYZ.exists():
        pytest.skip(f"shared data not found: {FR1_XYZ}")
    t, poses = read_tum(FR1_XYZ)
    return t[::5], poses[::5]


def random_se3(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    T[:3, 3] = rng.normal(0, 2, 3)
    return T


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------- TUM I/O
def test_tum_round_trip(tmp_path, gt):
    t, poses = gt
    path = write_tum(tmp_path / "sub" / "traj.txt", t, poses, header="written by a test")
    text = path.read_text()
    assert text.startswith("# written by a test\n# timestamp tx ty tz qx qy qz qw\n")
    assert text.splitlines()[2].split()[0] == repr(float(t[0]))  # as in the source, no 1e-9 noise
    t2, poses2 = read_tum(path)
    assert np.array_equal(t2, t) and poses2.shape == (len(t), 4, 4) and poses2.dtype == np.float64
    assert np.abs(poses2 - poses).max() < 1e-9


def test_read_tum_skips_comments_blank_lines_and_renormalises(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# header\n\n1.0 0 0 0 0 0 0 1  # inline comment\n   \n2.0 1 2 3 0 0 0.70715 0.70710\n")
    t, poses = read_tum(path)
    assert t.tolist() == [1.0, 2.0] and poses[1, :3, 3].tolist() == [1, 2, 3]
    assert np.allclose(poses[1, :3, :3] @ poses[1, :3, :3].T, np.eye(3), atol=1e-12)
    assert np.allclose(poses[1, :3, :3], Rotation.from_euler("z", 90, degrees=True).as_matrix(), atol=1e-4)


BAD_FILES = {
    "columns": ("1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 1\n", r"line 2 has 7 columns"),
    "commas": ("1.0,0,0,0,0,0,0,1\n", r"line 1 has 1 columns.*comma"),
    "non_numeric": ("# c\n1.0 0 0 0 0 0 0 1\n2.0 0 x 0 0 0 0 1\n", r"line 3 is not numeric"),
    "unsorted": ("1.0 0 0 0 0 0 0 1\n3.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 0 1\n", r"line 3 is earlier.*line 2"),
    "duplicate": ("1.0 0 0 0 0 0 0 1\n1.0 0 0 0 0 0 0 1\n", r"line 2 is duplicate"),
    "quaternion": ("1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 0 1.1\n", r"line 2: quaternion .* norm 1\.1"),
    "empty": ("# nothing\n", r"no poses"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_read_tum_errors_name_the_file_and_line(tmp_path, case):
    content, pattern = BAD_FILES[case]
    path = tmp_path / f"{case}.txt"
    path.write_text(content)
    with pytest.raises(InputError, match=pattern) as info:
        read_tum(path)
    assert info.value.path == path and str(path) in str(info.value) and info.value.fix


def test_read_tum_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        read_tum(tmp_path / "nope.txt")
    assert "nope.txt" in str(info.value)


@pytest.mark.skipif(not FR2_DESK.exists(), reason="shared data not found")
def test_official_fr2_desk_duplicate_is_reported_or_dropped():
    with pytest.raises(InputError, match="line 10863 is duplicate"):
        read_tum(FR2_DESK)
    t, poses = read_tum(FR2_DESK, drop_duplicates=True)
    assert len(t) == 20956 and np.all(np.diff(t) > 0)


# ---------------------------------------------------------------- ATE / RPE
def test_rigid_motion_plus_constant_offset_vanishes_after_se3_alignment(gt):
    t, poses = gt
    rng = np.random.default_rng(0)
    offset = poses.copy()
    offset[:, :3, 3] += 0.05 * unit(rng.normal(size=3))  # 5 cm, constant, random direction
    moved = random_se3(rng) @ offset
    result = evaluate((t, moved), (t, poses), align="se3")
    assert result.ate_rmse < 1e-9 and result.ate_max < 1e-9 and result.matched == len(t)
    assert result.scale == 1.0 and result.alignment == "se3"
    assert result.rpe_trans_rmse < 1e-9 and result.rpe_rot_rmse_deg < 1e-6
    unaligned = evaluate((t, offset), (t, poses), align="none")
    for value in (unaligned.ate_rmse, unaligned.ate_mean, unaligned.ate_median, unaligned.ate_max):
        assert value == pytest.approx(0.05, abs=1e-12)


def test_ate_matches_noise_of_known_rms(gt):
    t, poses = gt
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(len(t), 3))
    noise -= noise.mean(0)  # zero mean, so the alignment has (almost) nothing to absorb
    noise = 0.01 * unit(noise)  # every pose exactly 1 cm off
    noisy = poses.copy()
    noisy[:, :3, 3] += noise
    result = evaluate((t, random_se3(rng) @ noisy), (t, poses), align="se3")
    assert result.ate_rmse == pytest.approx(0.01, rel=0.02)
    assert result.ate_median == pytest.approx(0.01, rel=0.05)
    assert result.ate_max < 0.012  # the alignment absorbs a little, unevenly


def test_sim3_recovers_a_known_scale(gt):
    t, poses = gt
    rng = np.random.default_rng(2)
    small = random_se3(rng) @ poses
    small[:, :3, 3] *= 0.5  # the estimate is at half scale
    result = evaluate((t, small), (t, poses), align="sim3")
    assert result.scale == pytest.approx(2.0, rel=1e-9) and result.ate_rmse < 1e-9
    assert np.allclose(np.linalg.det(result.T_align[:3, :3]), 8.0)  # s^3
    assert "sim3 s=2.0000" in result.summary_line()
    assert evaluate((t, small), (t, poses), align="se3").ate_rmse > 0.01


def test_rpe_of_a_constant_drift_per_frame(gt):
    t, poses = gt
    drift = np.eye(4)
    drift[:3, :3] = Rotation.from_rotvec([0.0, 0.0, np.deg2rad(0.2)]).as_matrix()
    drift[:3, 3] = [0.003, -0.004, 0.0]  # 5 mm and 0.2 deg extra per frame
    est = [poses[0]]
    for a, b in zip(poses[:-1], poses[1:]):
        est.append(est[-1] @ np.linalg.inv(a) @ b @ drift)
    result = evaluate((t, np.array(est)), (t, poses), align="se3")
    assert result.rpe_trans_rmse == pytest.approx(0.005, rel=1e-6)
    assert result.rpe_rot_rmse_deg == pytest.approx(0.2, rel=1e-6)
    assert result.ate_rmse > 0.05  # drift accumulates


def test_association_tolerates_jitter_and_reports_no_overlap(gt, tmp_path):
    t, poses = gt
    jitter = np.where(np.arange(len(t)) % 2, 0.002, -0.002)  # GT is at 100 Hz
    result = evaluate((t[::3] + jitter[::3], poses[::3]), FR1_XYZ, max_time_diff=0.02)
    assert result.matched == len(t[::3]) and result.ate_rmse < 1e-9
    est = write_tum(tmp_path / "late.txt", t + 100.0, poses)
    with pytest.raises(InputError, match=r"start -100\.000 s.*--time-offset") as info:
        evaluate(est, FR1_XYZ)
    assert info.value.path == str(est)
    assert evaluate(est, FR1_XYZ, time_offset=-100.0).matched == len(t)


def test_input_checks(gt):
    t, poses = gt
    with pytest.raises(InputError, match="at least 3"):
        evaluate((t[:2], poses[:2]), (t, poses))
    with pytest.raises(InputError, match="unknown alignment"):
        evaluate((t, poses), (t, poses), align="se2")
    with pytest.raises(InputError, match="pose 1 .*earlier"):
        evaluate((t[::-1], poses), (t, poses))
    with pytest.raises(InputError, match="lower --rpe-delta"):
        evaluate((t, poses), (t, poses), rpe_delta=1000.0, rpe_unit="meters")


def test_summary_dict_and_plot(gt, tmp_path):
    t, poses = gt
    noisy = poses.copy()
    noisy[:, :3, 3] += np.random.default_rng(3).normal(0, 0.005, (len(t), 3))
    result = evaluate((t, noisy), (t, poses), rpe_delta=2, plot_path=tmp_path / "plots" / "ate.png")
    assert isinstance(result, EvalResult)
    assert re.fullmatch(r"ATE rmse \d+\.\d{3} m \(se3, 600 poses\) \| RPE \d+\.\d{3} m / \d+\.\d{2} deg per 2 frames",
                        result.summary_line())
    d = json.loads(json.dumps(result.to_dict()))
    assert d["matched"] == 600 and d["ate_rmse"] == result.ate_rmse and len(d["T_align"]) == 4
    png = Path(result.plot_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_nearly_orthonormal_estimates_are_projected_not_rejected():
    """Accumulated or printed poses are orthonormal to ~1e-4; evo would reject them unprojected."""
    from prism_ros.evaluation.trajectory_io import orthonormalize_poses

    rng = np.random.default_rng(7)
    t = np.arange(20) * 0.1
    poses = np.tile(np.eye(4), (20, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(20, 3))
    sloppy = poses.copy()
    sloppy[:, :3, :3] += rng.normal(scale=1e-4, size=(20, 3, 3))
    fixed = orthonormalize_poses(sloppy)
    R = fixed[:, :3, :3]
    assert np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() < 1e-12
    assert np.abs(fixed - poses).max() < 1e-3
    assert evaluate((t, sloppy), (t, poses), align="none").ate_rmse < 1e-12
