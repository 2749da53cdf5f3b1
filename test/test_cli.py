"""The `prism-ros` console script: each command on real files, bad input as one line with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import sample

from prism_ros.evaluation.trajectory_io import read_tum, write_tum
from prism_ros.loopback import loopback_env

CLI = Path(sys.executable).parent / "prism-ros"


def prism_ros(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script (loopback DDS settings, as every spawned process)."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=loopback_env())


def bad_input_lines(folder: Path) -> list[str]:
    """The node log's bad-input reports (each logged once), to show why a replay counted any."""
    log = folder / "prism_node.log"
    return [line for line in log.read_text().splitlines() if "bad_input." in line] if log.is_file() else []


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
    for text in expected:
        assert text in result.stderr.replace("\n", " "), result.stderr


@pytest.fixture(scope="module")
def small_sequence(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "seq"
    result = prism_ros("synth", "--out", out, "--frames", 6, "--width", 64, "--height", 48, "--bag", "none")
    assert result.returncode == 0, result.stderr
    return out


def test_synth_then_info(small_sequence):
    result = prism_ros("info", small_sequence)
    assert result.returncode == 0, result.stderr
    lines = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["format"] == "tum" and lines["frames"] == "6" and lines["ground truth"] == "6 poses"
    assert "64x48" in lines["intrinsics"]


def test_info_with_frame_slice_on_real_data():
    data = sample("7scenes_redkitchen_seq_0000_0399")
    result = prism_ros("info", data, "--frames", "100:150")
    assert result.returncode == 0, result.stderr
    assert "frames: 50" in result.stdout


def test_eval_prints_the_known_ate_and_writes_a_plot(small_sequence, tmp_path):
    t, poses = read_tum(small_sequence / "groundtruth.txt")
    shifted = poses.copy()
    shifted[:, :3, 3] += [0.03, 0.0, -0.04]  # 5 cm constant offset
    write_tum(tmp_path / "est.txt", t, shifted)
    result = prism_ros("eval", tmp_path / "est.txt", small_sequence / "groundtruth.txt", "--align", "none",
                       "--plot", tmp_path / "plot.png")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert "ATE rmse 0.050 m" in result.stdout
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    # outputs the file system refuses: one line, exit 2
    assert_one_line_error(prism_ros("eval", tmp_path / "est.txt", small_sequence / "groundtruth.txt", "--plot",
                                    "/proc/prism_no_such_dir/a.png"), "/proc/prism_no_such_dir")
    assert_one_line_error(prism_ros("run", "--dataset", small_sequence, "--out", "/proc/prism_no_such_dir/out",
                                    "--quiet"), "/proc/prism_no_such_dir")


def test_bad_input_is_one_line_naming_the_problem(tmp_path):
    assert_one_line_error(prism_ros("info", tmp_path / "missing"), "missing", "path not found")
    assert_one_line_error(prism_ros("synth", "--out", tmp_path / "x", "--motion", "walk"), "walk", "--motion")
    assert_one_line_error(prism_ros("play", tmp_path / "no_such_bag"), "no_such_bag")
    broken = tmp_path / "broken.txt"
    broken.write_text("1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 1\n")
    assert_one_line_error(prism_ros("eval", broken, broken), "broken.txt", "line 2")


@pytest.mark.timeout(240)
def test_demo_replays_over_ros2_and_evaluates(tmp_path):
    """The main job end to end: synthetic bag -> player, prism_node, IMU baseline, recorder processes -> evo."""
    result = prism_ros("demo", "--out", tmp_path / "demo", "--frames", 30, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["ground_truth_received"] == summary["ground_truth_sent"] == 30
    assert summary["transport_max_error_m"] < 1e-6
    baseline = summary["imu_odometry"]
    assert baseline["matched"] >= 20 and np.isfinite(baseline["ate_rmse"])
    assert (tmp_path / "demo" / "imu_odometry.png").is_file()
    prism = summary["prism"]
    assert prism["node_exit_codes"] == [0, 0, 0, 0]  # player, prism_node, recorder, IMU baseline: clean exits
    assert prism["frames"] == prism["frames_in_bag"] == 30
    assert prism["bad_input_total"] == 0, (prism["bad_inputs"], bad_input_lines(tmp_path / "demo" / "prism"))
    assert prism["lost_frames"] == 0 and prism["ate_rmse_m"] < 0.01
    assert (tmp_path / "demo" / "prism" / "mesh.ply").is_file() and (tmp_path / "demo" / "prism" / "map.pt").is_file()
    assert prism["map_error"]["mean_abs_m"] < 0.02 and prism["nees_fraction_in_95_band"] is not None
    assert (tmp_path / "demo" / "prism" / "mesh_uncertainty.png").is_file()


def test_run_writes_every_output(tmp_path):
    data = tmp_path / "seq"
    synth = prism_ros("synth", "--out", data, "--frames", 8, "--width", 128, "--height", 96, "--bag", "none")
    assert synth.returncode == 0
    settings = tmp_path / "small.yaml"
    settings.write_text("levels: 2\nrender_level: 0\n")
    out = tmp_path / "run"
    result = prism_ros("run", "--dataset", data, "--out", out, "--config", settings, "--init-gt", "--quiet",
                       "--device", "cpu", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 frames" in result.stdout and "ATE" in result.stdout
    for name in ("trajectory.tum", "covariance.npz", "map.pt", "mesh.ply", "timing.csv", "summary.json",
                 "trajectory.png", "reliability.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["ate_rmse_m"] < 0.05
    assert "map SDF error" in result.stdout and summary["map_error"]["voxels"] > 0  # the scene is known exactly
    covariance = np.load(out / "covariance.npz")
    assert covariance["pose_covariance"].shape == (8, 6, 6)
    cross = covariance["map_cross_covariance"]  # with the previous frame: none before the first
    assert cross.shape == (8, 6, 6) and not cross[0].any() and np.abs(cross[1:]).max() > 0
    stamps, poses = read_tum(out / "trajectory.tum")
    assert len(stamps) == 8

    # the same checks from the files alone: prism-ros eval --covariance
    checks = prism_ros("eval", out / "trajectory.tum", data / "groundtruth.txt", "--covariance",
                       out / "covariance.npz", "--reliability", tmp_path / "reliability.png")
    assert checks.returncode == 0, checks.stderr[-3000:]
    for key, line in (("nees_median", "pose NEES median"), ("relative_nees_median", "frame-to-frame NEES median")):
        assert f"{line} {summary[key]:.1f} " in checks.stdout, (key, summary[key], checks.stdout)
    assert (tmp_path / "reliability.png").stat().st_size > 10_000
    assert_one_line_error(prism_ros("eval", out / "trajectory.tum", data / "groundtruth.txt", "--covariance",
                                    out / "timing.csv"), "timing.csv", "covariance.npz")

    # the saved map is a planner's input: a costmap at the camera's height (--init-gt: the room's z-up frame)
    costmap = prism_ros("costmap", "--map", out / "map.pt", "--height", f"{poses[0][2, 3]:.3f}", "--up", "z",
                        "--out", tmp_path / "costmap")
    assert costmap.returncode == 0, costmap.stderr[-3000:]
    assert "lethal" in costmap.stdout and (tmp_path / "costmap" / "costmap.png").is_file()


def test_run_rejects_unknown_config_keys(tmp_path, small_sequence):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trackin:\n  icp_weight: 1\n")
    assert_one_line_error(prism_ros("run", "--dataset", small_sequence, "--out", tmp_path / "o", "--config", bad),
                          "trackin", "bad.yaml")
