"""`prism-ros replay`: the CLI plays a synthetic bag into prism_node (separate processes over real DDS on
the test's loopback domain) and writes the offline runner's files; the results equal the offline runner's
on the same bag with the node's configuration (measured in the test, not fixed). Bad arguments end with
exit code 2 and one line naming the problem. The message -> filter-convention conversions are checked
in-process against the node's own conversions.
"""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.timeout(240)

FRAMES = 30


def _replay(spawn_python, domain_id, bag, out, *extra, timeout=180) -> subprocess.CompletedProcess:
    process = spawn_python(["-m", "prism_ros.cli.main"], "replay", bag, "--out", out, "--quiet",
                           "--domain-id", domain_id, *extra)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # Ctrl-C: the CLI stops its nodes (a kill would leave them running)
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in sorted(Path(out).glob("*.log")))
        raise AssertionError(f"replay did not end within {timeout} s\n{stdout[-2000:]}\n{stderr[-2000:]}\n"
                             f"{logs}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_replay_writes_the_offline_outputs_with_the_offline_results(synthetic_sequence, spawn_python, domain_id,
                                                                   tmp_path):
    from prism_ros.datasets import open_dataset
    from prism_ros.evaluation.trajectory_io import read_tum
    from prism_ros.launch_graph.graph import share_dir
    from prism_ros.launch_graph.replay import node_parameter_values
    from prism_ros.nodes.prism_parameters import build_filter_config
    from prism_ros.prism.map import GaussianSdfMap
    from prism_ros.prism.pipeline import STAGES, run_sequence

    bag, out = synthetic_sequence / "bag", tmp_path / "replay"
    result = _replay(spawn_python, domain_id, bag, out, "--preset", "synthetic")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{FRAMES} of {FRAMES} frames processed, 0 lost, 0 bad inputs" in result.stdout, result.stdout

    # the offline runner with the node's configuration (same preset files) on the same bag
    share = share_dir()
    values = node_parameter_values([share / "config/prism.yaml", share / "config/sensors/synthetic.yaml"], {})
    offline = run_sequence(open_dataset(bag), build_filter_config(values), tmp_path / "offline", progress=False,
                           mesh=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == summary["frames_in_bag"] == FRAMES and summary["dropped_frames"] == 0
    assert summary["ate_rmse_m"] <= offline["ate_rmse_m"] + 0.001, (summary["ate_rmse_m"], offline["ate_rmse_m"])
    assert summary["nees_median"] is not None and "map_error" in summary  # scene found beside the bag

    # the same numbers, file by file: poses, left covariances, filter velocities
    t_replay, poses_replay = read_tum(out / "trajectory.tum")
    t_offline, poses_offline = read_tum(tmp_path / "offline/trajectory.tum")
    assert np.allclose(t_replay, t_offline, atol=1e-6)
    assert np.abs(poses_replay[:, :3, 3] - poses_offline[:, :3, 3]).max() < 1e-3
    replay_cov, offline_cov = np.load(out / "covariance.npz"), np.load(tmp_path / "offline/covariance.npz")
    scale = np.abs(offline_cov["pose_covariance"]).max(axis=(1, 2))[:, None, None]
    assert np.all(np.abs(replay_cov["pose_covariance"] - offline_cov["pose_covariance"]) <= 0.02 * scale)
    assert np.abs(replay_cov["velocity"] - offline_cov["velocity"]).max() < 0.02
    assert replay_cov["tracking_ok"].all()

    # timing per frame and stage, the mesh and the map file (loadable by ~/load_map and the core)
    header = (out / "timing.csv").read_text().splitlines()
    assert header[0].split(",") == ["t", *STAGES, "total"] and len(header) == FRAMES + 1
    assert float(header[-1].split(",")[-1]) > 0
    assert (out / "mesh.ply").stat().st_size > 1000 and (out / "trajectory.png").is_file()
    assert GaussianSdfMap.load(out / "map.pt").num_blocks == summary["map_blocks"] > 0
    assert "[INFO]" in (out / "prism_node.log").read_text()


@pytest.mark.parametrize("arguments, expected", [
    (["--preset", "euroc"], "no messages on /cam0/image_raw"),
    (["--preset", "kitti"], "unknown preset 'kitti'"),
    (["--preset", "synthetic", "--rate", "0"], "rate 0.0 is not positive"),
])
def test_replay_rejects_bad_arguments_with_one_line(arguments, expected, synthetic_sequence, spawn_python, domain_id,
                                                    tmp_path):
    result = _replay(spawn_python, domain_id, synthetic_sequence / "bag", tmp_path / "out", *arguments, timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr


def test_replay_reports_a_missing_bag_and_invalid_node_parameters(synthetic_sequence, spawn_python, domain_id,
                                                                  tmp_path):
    missing = _replay(spawn_python, domain_id, tmp_path / "nothing", tmp_path / "out", "--preset", "tum", timeout=60)
    assert missing.returncode == 2 and "bag not found" in missing.stderr, missing.stdout + missing.stderr
    config = tmp_path / "bad.yaml"
    # the preset file comes after --config, so pick a parameter the synthetic preset leaves alone
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"min_valid_depth_fraction": 2.0}}}))
    invalid = _replay(spawn_python, domain_id, synthetic_sequence / "bag", tmp_path / "out", "--preset", "synthetic",
                      "--config", config, timeout=120)
    text = " ".join((invalid.stdout + invalid.stderr).split())
    assert invalid.returncode == 2 and "invalid parameters" in text and "min_valid_depth_fraction" in text, text


def test_messages_convert_back_to_the_filter_conventions():
    """Pose and odometry built as prism_node builds them -> estimates_from_messages recovers pose, left covariance
    and velocity (lever arms of T_base_camera and T_body_camera included). The pose comes from ~/pose (map
    frame), not from the odometry, whose odom frame a relocalization moved away from the map."""
    import torch

    from prism_ros.geometry import se3_exp
    from prism_ros.nodes.conversions import (
        base_twist,
        left_covariance_to_ros,
        matrix_to_odometry,
        matrix_to_pose_with_covariance,
        sec_to_stamp,
    )
    from prism_ros.nodes.prism_parameters import PARAMETERS
    from prism_ros.nodes.replay_monitor import estimates_from_messages
    from prism_ros.prism.filter import Estimate

    rng = np.random.default_rng(3)
    pose = lambda xi: se3_exp(torch.as_tensor(xi, dtype=torch.float64)).numpy()
    T_base_camera, T_body_camera = pose(rng.normal(size=6) * 0.3), pose(rng.normal(size=6) * 0.3)
    values = {name: spec.default for name, spec in PARAMETERS.items()}
    values.update(T_base_camera=list(T_base_camera.ravel()), T_body_camera=list(T_body_camera.ravel()))
    truth, messages, poses = [], [], {}
    T_odom_map = pose(rng.normal(size=6))
    for k in range(3):
        A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
        estimate = Estimate(t=10.0 + k, T_world_camera=pose(rng.normal(size=6)), pose_covariance=A @ A.T * 1e-4,
                            velocity=rng.normal(size=6), velocity_covariance=B @ B.T * 1e-3, tracking_ok=True)
        T_map_base = estimate.T_world_camera @ np.linalg.inv(T_base_camera)
        T_world_body = estimate.T_world_camera @ np.linalg.inv(T_body_camera)
        twist, twist_cov = base_twist(estimate.velocity, estimate.velocity_covariance, T_world_body, T_map_base)
        covariance = left_covariance_to_ros(estimate.pose_covariance, T_map_base[:3, 3])
        messages.append(matrix_to_odometry(T_odom_map @ T_map_base, sec_to_stamp(estimate.t), "odom", "base_link",
                                           covariance, twist, twist_cov))
        poses[int(round(estimate.t * 1e9))] = matrix_to_pose_with_covariance(T_map_base, covariance,
                                                                             sec_to_stamp(estimate.t), "map")
        truth.append(estimate)
    recovered = estimates_from_messages(messages[::-1], {}, values, poses)  # sorted by stamp on the way
    assert len(recovered) == 3
    missing = estimates_from_messages(messages, {}, values, {k: v for k, v in list(poses.items())[1:]})
    assert [e.t for e in missing] == [e.t for e in truth[1:]]  # a stamp without its pose is left out
    for got, want in zip(recovered, truth):
        assert got.t == pytest.approx(want.t)
        assert np.allclose(got.T_world_camera, want.T_world_camera, atol=1e-9)
        assert np.allclose(got.pose_covariance, want.pose_covariance, atol=1e-12)
        assert np.allclose(got.velocity, want.velocity, atol=1e-9)
        assert np.allclose(got.velocity_covariance, want.velocity_covariance, atol=1e-10)


def test_the_replay_waits_for_every_frame_of_the_bag_when_the_node_lags_the_player():
    """On a loaded machine the node's executor can take frames from DDS after the player has exited: its
    frames_received then lags the bag, and the replay must wait for the rest, not stop at what arrived so far."""
    import time
    from types import SimpleNamespace

    from prism_ros.launch_graph.replay import _follow

    class Node:  # a process that stays up
        process = SimpleNamespace(poll=lambda: None)

    class Monitor:
        """The node's diagnostics as the replay sees them: 27 of 30 frames for 1.5 s after the player ended, then 30."""

        def __init__(self):
            self.start = time.monotonic()
            self.diagnostics_at = 0.0

        def spin(self, seconds):
            time.sleep(seconds)
            self.diagnostics_at = time.monotonic()

        def count(self, key):
            late = time.monotonic() - self.start > 1.5
            return {"frames_processed": 30 if late else 27, "frames_received": 30 if late else 27}.get(key, 0)

    monitor = Monitor()
    player = SimpleNamespace(nodes=[SimpleNamespace(process=SimpleNamespace(poll=lambda: 0))])  # already exited
    _follow(monitor, SimpleNamespace(nodes=[Node()]), player, frames_in_bag=30, progress=False)
    assert monitor.count("frames_processed") == 30
    assert time.monotonic() - monitor.start < 5.0  # returned when the last frame was done, not by the idle timeout
