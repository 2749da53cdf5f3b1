"""prism_node over real DDS: the node, the bag player and the test's probe are separate participants
(loopback profile, a fresh domain per test); nothing is mocked.

- end to end: a synthetic bag (30 frames, 160x120, exact ground truth) played into the node (with
  use_sim_time); pose, odometry, path, diagnostics, mesh and cloud arrive with the right types and frames;
  the ATE of the received poses is within 1 mm of the offline runner's on the same bag with the same
  configuration (run in the test: the bound is measured, not fixed); the services work;
- faults: one node serves a sequence of crafted bad inputs from the probe (each: node alive, the cause
  logged once, counted in diagnostics, the map unchanged), then the time jump and the pose inputs;
- the other input paths: CompressedImage colour, intrinsics from parameters, TwistStamped commands;
- invalid parameters at start-up (exit code 2, one line) and the parameter/preset files.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_helpers.ros_args import ros_args

from prism_ros.nodes.conversions import base_twist, left_covariance_to_ros
from prism_ros.nodes.prism_parameters import PARAMETERS, build_filter_config, convert_parameter, parameters_yaml

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[1]
FRAMES = 30
WIDTH, HEIGHT = 160, 120
NODE_MODULE = ["-m", "prism_ros.nodes.prism_node"]


@pytest.fixture(scope="module")
def synthetic(synthetic_sequence) -> Path:
    """The session's 30-frame 160x120 synthetic sequence (conftest): TUM-style folder + mcap bag."""
    return synthetic_sequence


def _start_node(spawn_python, log: Path, *extra: str, env: dict | None = None, **params) -> subprocess.Popen:
    sink = log.open("w")
    return spawn_python(NODE_MODULE, "--ros-args", *extra, *ros_args(**params), stdout=sink,
                        stderr=subprocess.STDOUT, env=env)


def rviz_displays(prefix: str) -> dict[str, str]:
    """Topic -> display class of rviz/prism.rviz's displays whose topic starts with ``prefix``."""
    manager = yaml.safe_load((REPO / "rviz/prism.rviz").read_text())["Visualization Manager"]
    return {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"]
            if d.get("Topic", {}).get("Value", "").startswith(prefix)}


def _stop(process: subprocess.Popen, sig=signal.SIGINT, timeout: float = 15.0) -> int:
    process.send_signal(sig)
    return process.wait(timeout)


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------


def test_end_to_end_bag_to_pose_odometry_path_diagnostics_map_and_services(
        synthetic, spawn_python, ros_node, tmp_path):
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from ros_helpers.prism_probe import PrismProbe
    from visualization_msgs.msg import Marker

    from prism_ros.datasets import open_dataset
    from prism_ros.evaluation.metrics import evaluate
    from prism_ros.evaluation.trajectory_io import read_tum
    from prism_ros.nodes.conversions import pose_to_matrix, stamp_to_sec
    from prism_ros.prism.pipeline import run_sequence

    # the offline bound: the node's own filter configuration (from the same preset file) over the same bag,
    # in this process; the node gets the same frames, IMU windows and commands
    preset = REPO / "config/sensors/synthetic.yaml"
    values = {name: spec.default for name, spec in PARAMETERS.items()}
    values.update(yaml.safe_load(preset.read_text())["/**"]["ros__parameters"])
    offline = run_sequence(open_dataset(synthetic / "bag"), build_filter_config(values), tmp_path / "offline",
                           progress=False, mesh=False)
    bound = offline["ate_rmse_m"] + 0.001  # measured: equal to 0.1 um

    probe = PrismProbe(ros_node)
    map_path = tmp_path / "maps" / "room.pt"
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, "--params-file", str(preset), frame_queue=FRAMES, queue_size=FRAMES,
                       rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable", imu_qos="reliable",
                       use_sim_time=True, diagnostics_period=0.2, map_publish_period=0.5, map_path=str(map_path),
                       level_map=False)  # one map frame, as offline (test_tf checks the levelling)
    probe.wait_ready()
    player = spawn_python(["-m", "prism_ros.nodes.player"], synthetic / "bag", "--qos", "reliable",
                          "--wait-for-subscribers", "1", "--rate", "1", "--quiet")
    assert player.wait(60) == 0, player.communicate()[1]
    done = probe.wait_diag(lambda d: int(d["frames_processed"]) + int(d["frames_dropped"]) >= FRAMES, 60)
    # this process converts the large latched mesh messages too, so it can lag the node's poses by seconds
    probe.spin_until(lambda: min(len(probe.got[k]) for k in ("pose", "odometry", "path")) >= FRAMES, 30)
    assert node.poll() is None, log.read_text()[-3000:]

    # what arrived: types, frames, one pose/odometry/path per frame (the queues hold the whole bag)
    processed = int(done["frames_processed"])
    assert int(done["frames_received"]) == FRAMES and processed == FRAMES, done
    assert done["bad_input_total"] == "0" and done["frames_lost"] == "0", done
    assert done["device"] == "cpu" and done["transition_model"] == "imu" and int(done["map_blocks"]) > 0
    poses, odometry, paths = probe.got["pose"], probe.got["odometry"], probe.got["path"]
    assert len(poses) == len(odometry) == len(paths) == processed, (  # which stamps arrived, if any went missing
        [stamp_to_sec(p.header.stamp) for p in poses], len(odometry), len(paths))
    assert all(p.header.frame_id == "map" for p in poses)
    assert all(isinstance(o, Odometry) and o.header.frame_id == "odom" and o.child_frame_id == "imu_link"
               for o in odometry)
    assert isinstance(paths[-1], PathMsg) and paths[-1].header.frame_id == "map"
    assert len(paths[-1].poses) == processed

    # RViz's displays of prism_node topics name topics (and types) the running node publishes; the rollout and
    # costmap topics exist when rollout_samples / costmap_period enable them
    offered = dict(ros_node.get_publisher_names_and_types_by_node("prism_node", "/"))
    enabled_later = {"/prism_node/rollouts", "/prism_node/predicted_path", "/prism_node/costmap"}
    for topic, display in rviz_displays("/prism_node/").items():
        if topic not in enabled_later:
            assert topic in offered, (topic, sorted(offered))
            assert display.split("/")[-1] in offered[topic][0].split("/")[-1], (topic, display, offered[topic])
    covariance = np.asarray(poses[-1].pose.covariance).reshape(6, 6)
    assert np.allclose(covariance, covariance.T) and np.all(np.linalg.eigvalsh(covariance) > 0)
    twist_covariance = np.asarray(odometry[-1].twist.covariance).reshape(6, 6)
    assert np.all(np.linalg.eigvalsh(twist_covariance) > 0)
    speed = np.linalg.norm([odometry[-1].twist.twist.linear.x, odometry[-1].twist.twist.linear.y,
                            odometry[-1].twist.twist.linear.z])
    assert 0.0 < speed < 3.0  # a handheld camera

    # accuracy: camera poses (base = IMU frame, placed by T_base_camera) against the exact ground truth
    T_base_camera = np.asarray(values["T_base_camera"]).reshape(4, 4)
    stamps = np.array([stamp_to_sec(p.header.stamp) for p in poses])
    cameras = np.stack([pose_to_matrix(p.pose.pose) @ T_base_camera for p in poses])
    result = evaluate((stamps, cameras), read_tum(synthetic / "groundtruth.txt"), align="se3")
    assert result.matched == processed
    assert result.ate_rmse <= bound, (f"node ATE {result.ate_rmse:.4f} m > bound {bound:.4f} m (offline "
                                      f"{offline['ate_rmse_m']:.4f} m, {processed}/{FRAMES} frames processed)")

    # map visualisation (MapPublisher): incremental mesh markers and the surface cloud with sdf_std
    assert probe.spin_until(lambda: probe.got["mesh"] and probe.got["map_cloud"], 10), "no mesh or cloud"
    markers = [m for msg in probe.got["mesh"] for m in msg.markers if m.action == Marker.ADD]
    assert markers and all(m.type == Marker.TRIANGLE_LIST and m.header.frame_id == "map" for m in markers)
    cloud = probe.got["map_cloud"][-1]
    assert cloud.header.frame_id == "map" and cloud.width > 100
    assert "sdf_std" in [f.name for f in cloud.fields]

    # services: save (map + mesh), reset, load, pause/resume
    saved = probe.call("save_map")
    assert saved.success, saved.message
    assert map_path.is_file() and map_path.with_suffix(".ply").stat().st_size > 1000, saved.message
    blocks = int(done["map_blocks"])
    reset = probe.call("reset")
    assert reset.success, reset.message
    probe.wait_diag(lambda d: d["map_blocks"] == "0" and int(d["resets"]) == 1)
    loaded = probe.call("load_map")
    assert loaded.success and str(blocks) in loaded.message, loaded.message
    probe.wait_diag(lambda d: d["map_blocks"] == str(blocks))
    assert probe.call("pause").success
    probe.wait_diag(lambda d: d["state"] == "paused")
    resumed = probe.call("resume")
    assert resumed.success and resumed.message == "resumed"

    assert node.poll() is None
    assert _stop(node, signal.SIGTERM) == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    from prism_ros.nodes.compat import has_ros_piece

    assert text.count("tf2_msgs is not installed") == (0 if has_ros_piece("tf2_msgs") else 1)  # said once
    print(json.dumps({"ate_node_m": result.ate_rmse, "ate_offline_m": offline["ate_rmse_m"], "bound_m": bound,
                      "processed": processed, "dropped": int(done["frames_dropped"]),
                      "latency_ms": done["latency_ms"], "step_ms": done["step_ms"]}))


# ---------------------------------------------------------------------------------------------
# faults, one node for all of them
# ---------------------------------------------------------------------------------------------


def test_faults_are_logged_once_counted_and_never_fused(synthetic, spawn_python, ros_node, tmp_path):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from ros_helpers.prism_probe import PrismProbe
    from sensor_msgs.msg import Imu
    from std_msgs.msg import Bool

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import intrinsics_to_camera_info, matrix_to_pose, ns_to_stamp, pose_to_matrix

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(8)]
    intrinsics = frames[0].intrinsics
    probe = PrismProbe(ros_node)
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", imu_topic="/probe/imu",
                       rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable", imu_qos="reliable",
                       filter_config="prism_synthetic.yaml", transition_model="constant_velocity",
                       diagnostics_period=0.1, input_timeout=0.4, time_jump_threshold=1.0, sync_slop=0.01)
    probe.wait_ready()
    t0 = int(round(frames[0].timestamp * 1e9))
    period = 33_333_333

    def send(i, stamp_ns, **kwargs):
        frame = frames[i]
        probe.publish_frame(kwargs.pop("rgb", frame.rgb), kwargs.pop("depth", frame.depth), intrinsics, stamp_ns,
                            **kwargs)

    # good frames: the first, then a burst faster than processing (the mailbox keeps the newest); the burst
    # shows a still camera, so whichever frames are dropped tracking holds (drops alone lose a
    # constant-velocity filter on this fast start)
    send(0, t0)
    probe.wait_diag(lambda d: d["frames_processed"] == "1")
    for i in range(1, 5):
        send(1, t0 + i * period)
    good = probe.wait_diag(lambda d: int(d["frames_processed"]) + int(d["frames_dropped"]) == 5
                           and d["state"] == "tracking")
    assert int(good["frames_dropped"]) >= 1, good

    # a publisher that stalls for longer than input_timeout, then sends a set one message at a time: its colour
    # image waits less than input_timeout for the rest, so no stream is reported missing
    probe.spin(0.6)
    send(1, t0 + 6 * period, gap_s=0.3)
    good = probe.wait_diag(lambda d: int(d["frames_processed"]) == int(good["frames_processed"]) + 1)
    assert good["bad_input_total"] == "0", good
    blocks, processed = good["map_blocks"], good["frames_processed"]
    stamp = t0 + 10 * period

    def expect(cause, **kwargs):
        """Publish one bad set; its cause is counted once and nothing else moves."""
        nonlocal stamp
        stamp += period
        before = probe.value(f"bad_input.{cause}")
        send(5, stamp, **kwargs)
        probe.wait_diag(lambda d: int(d[f"bad_input.{cause}"]) == before + 1)

    rgb, depth = frames[5].rgb, frames[5].depth
    expect("bad_encoding", rgb=rgb[..., 0].astype(np.float32), rgb_encoding="32FC1")
    expect("bad_encoding", depth=rgb, depth_encoding="rgb8")
    expect("size_mismatch", depth=depth[::2, ::2].copy())
    expect("bad_depth", depth=np.full_like(depth, np.nan))
    expect("bad_depth", depth=np.zeros_like(depth))
    garbage = np.random.default_rng(0).integers(20_000, 65_535, depth.shape).astype(np.uint16)  # 20-65 m at 1 mm
    expect("bad_depth", depth=garbage, depth_encoding="16UC1")
    expect("bad_depth", depth=np.random.default_rng(1).uniform(0.3, 3.5, depth.shape).astype(np.float32))
    assert probe.set_parameter("max_image_pixels", 160 * 120 - 1)[0]  # the limit, one pixel below these frames
    expect("bad_image")
    assert probe.set_parameter("max_image_pixels", 2_100_000)[0]
    bad_info = intrinsics_to_camera_info(intrinsics)
    bad_info.k = [0.0] * 9
    expect("bad_camera_info", camera_info=bad_info)
    wrong_size = intrinsics_to_camera_info(intrinsics)
    wrong_size.width, wrong_size.height = 320, 240
    expect("size_mismatch", camera_info=wrong_size)

    # out of order: older than the last accepted stamp by less than time_jump_threshold
    before = probe.value("bad_input.out_of_order")
    send(5, stamp - 3 * period)
    probe.wait_diag(lambda d: int(d["bad_input.out_of_order"]) == before + 1)

    # unsynchronised streams: colour 0.3 s after depth and CameraInfo, never within sync_slop
    for k in range(1, 9):
        send(5, stamp + k * period, rgb_stamp_ns=stamp + k * period + 300_000_000)
        probe.spin(0.1)
    probe.wait_diag(lambda d: int(d["bad_input.unsynchronised"]) >= 1)
    probe.spin(0.6)  # the streams go quiet
    stamp += 10 * period

    # missing CameraInfo: colour and depth only
    for k in range(1, 9):
        send(5, stamp + k * period, info=False)
        probe.spin(0.1)
    probe.wait_diag(lambda d: int(d["bad_input.missing_camera_info"]) >= 1)
    stamp += 10 * period

    # a non-finite IMU sample
    imu = Imu()
    imu.header.stamp = ns_to_stamp(stamp)
    imu.angular_velocity.x = float("nan")
    probe.imu_pub.publish(imu)
    probe.wait_diag(lambda d: d["bad_input.bad_imu"] == "1")

    # paused: frames are skipped, not processed
    assert probe.call("pause").success
    stamp += period
    send(5, stamp)
    probe.wait_diag(lambda d: d["frames_skipped_paused"] == "1")
    assert probe.call("resume").success

    # runtime parameters: invalid values and read-only ones are rejected with the reason
    ok, reason = probe.set_parameter("sync_slop", -1.0)
    assert not ok and "sync_slop" in reason and "must be >= 0" in reason, reason
    ok, reason = probe.set_parameter("transition_model", "imu")
    assert not ok and "read-only" in reason and "restart" in reason, reason
    ok, reason = probe.set_parameter("depth_scale", "a lot")
    assert not ok and "depth_scale" in reason, reason
    assert probe.set_parameter("path_max_length", 50) == (True, "")

    # save to an unwritable path, load a corrupt file: success=false with the problem and the fix
    assert probe.set_parameter("map_path", "/proc/prism_cannot_write/map.pt")[0]
    saved = probe.call("save_map")
    assert not saved.success and "/proc/prism_cannot_write/map.pt" in saved.message and "writable" in saved.message
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a map")
    assert probe.set_parameter("map_path", str(corrupt))[0]
    loaded = probe.call("load_map")
    assert not loaded.success and "not a readable map file" in loaded.message, loaded.message
    # readable maps this node cannot use: empty, another voxel size, NaN values
    import torch

    from prism_ros.prism.map import GaussianSdfMap

    GaussianSdfMap().save(tmp_path / "empty.pt")
    data = torch.load(tmp_path / "empty.pt", weights_only=True)
    b = data["config"]["block_size"]
    one_block = {**data, "block_coords": torch.zeros((1, 3), dtype=torch.int64),
                 **{name: torch.zeros((1, b, b, b), dtype=torch.float32) for name in ("mean", "precision",
                                                                                    "colour_precision")},
                 "colour": torch.zeros((1, b, b, b, 3)), "count": torch.zeros((1, b, b, b), dtype=torch.int32)}
    torch.save({**one_block, "config": {**data["config"], "voxel_size": 10 * data["config"]["voxel_size"]}},
               tmp_path / "coarse.pt")
    torch.save({**one_block, "mean": torch.full((1, b, b, b), float("nan"))}, tmp_path / "nan.pt")
    for name, reason in (("empty", "is empty"), ("coarse", "m voxels, this node's filter"), ("nan", "non-finite")):
        assert probe.set_parameter("map_path", str(tmp_path / f"{name}.pt"))[0]
        refused = probe.call("load_map")
        assert not refused.success and reason in refused.message, refused.message

    # none of it reached the map or the filter
    after = probe.wait_diag(lambda d: d["failures.load_map"] == "4")
    assert after["map_blocks"] == blocks and after["frames_processed"] == processed, after
    assert after["frames_lost"] == "0" and after["state"] == "tracking"
    assert int(after["failures.rejected_parameter"]) == 3 and after["failures.save_map"] == "1"
    assert node.poll() is None, log.read_text()[-3000:]

    # ~/reset_at_pose restarts at the given base pose with its covariance; the next frame is published there. Its
    # stamp lies ahead of every frame received (another clock): it applies to the next frame, not skipped
    T = np.eye(4)
    T[:3, 3] = [1.0, -2.0, 0.5]
    T[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    initial = PoseWithCovarianceStamped()
    initial.header.frame_id = "map"
    initial.pose.pose = matrix_to_pose(T)
    given = np.diag([0.04, 0.09, 0.01, 0.001, 0.002, 0.003])  # RViz order: x y z, then rotations about x y z
    initial.pose.covariance = given.ravel().tolist()
    initial.header.stamp = ns_to_stamp(t0 + 40 * period)
    probe.reset_pose_pub.publish(initial)
    probe.wait_diag(lambda d: d["resets"] == "1")
    count = len(probe.got["pose"])
    send(1, t0 + 20 * period)
    assert probe.spin_until(lambda: len(probe.got["pose"]) > count, 15)
    assert np.allclose(pose_to_matrix(probe.got["pose"][-1].pose.pose), T, atol=1e-6)
    published = np.asarray(probe.got["pose"][-1].pose.covariance).reshape(6, 6)
    assert np.allclose(published, given, rtol=0.02, atol=1e-6), np.diag(published)

    # ~/set_pose (a relocalizer's answer) moves the filter and keeps the map; one in a frame TF does not connect to
    # the map is refused
    set_pose = ros_node.create_publisher(PoseWithCovarianceStamped, "/prism_node/set_pose", reliable_qos(10))
    tracking = []
    ros_node.create_subscription(Bool, "/prism_node/tracking_ok", lambda m: tracking.append(m.data), reliable_qos(10))
    kept = probe.wait_diag(lambda d: int(d["map_blocks"]) > 0)
    wrong = PoseWithCovarianceStamped()
    wrong.header.frame_id = "nowhere"
    wrong.pose.pose = matrix_to_pose(T)
    relocalized = PoseWithCovarianceStamped()
    relocalized.header.frame_id = "map"
    relocalized.header.stamp = ns_to_stamp(t0 + 20 * period + period // 2)
    relocalized.pose.pose = matrix_to_pose(T)
    relocalized.pose.covariance = list(np.diag([1e-4] * 3 + [3e-4] * 3).ravel())
    assert probe.spin_until(lambda: set_pose.get_subscription_count() > 0, 10)
    overflowing = PoseWithCovarianceStamped()  # a covariance too large to use: the filter's initial one instead
    overflowing.header.frame_id = "map"
    overflowing.header.stamp = relocalized.header.stamp
    overflowing.pose.pose = matrix_to_pose(T)
    overflowing.pose.covariance = [1.7e308] * 36
    set_pose.publish(overflowing)
    probe.wait_diag(lambda d: d["relocalizations"] == "1")
    set_pose.publish(wrong)
    set_pose.publish(relocalized)
    moved = probe.wait_diag(lambda d: d["relocalizations"] == "2" and int(d["bad_input.bad_initial_pose"]) >= 1)
    assert moved["map_blocks"] == kept["map_blocks"] and moved["resets"] == "1", moved
    count = len(probe.got["pose"])
    send(2, t0 + 21 * period)
    assert probe.spin_until(lambda: len(probe.got["pose"]) > count and tracking, 15)
    assert np.linalg.norm(pose_to_matrix(probe.got["pose"][-1].pose.pose)[:3, 3] - T[:3, 3]) < 0.05
    assert tracking[-1] is True

    # /initialpose (RViz's 2D Pose Estimate) also keeps the map
    fused = probe.wait_diag(lambda d: int(d["frames_processed"]) == int(moved["frames_processed"]) + 1)
    probe.initial_pose_pub.publish(relocalized)
    hinted = probe.wait_diag(lambda d: d["relocalizations"] == "3")
    assert hinted["map_blocks"] == fused["map_blocks"] and hinted["resets"] == "1", hinted

    # a pose stamped an hour ahead of the input (another clock) is the next frame's pose, not a stall
    ahead = PoseWithCovarianceStamped()
    ahead.header.frame_id, ahead.header.stamp = "map", ns_to_stamp(t0 + 3600 * 10**9)
    ahead.pose.pose = matrix_to_pose(T)
    set_pose.publish(ahead)
    before = probe.wait_diag(lambda d: d["relocalizations"] == "4")
    send(2, t0 + 21 * period + period // 2)
    after = probe.wait_diag(lambda d: int(d["frames_processed"]) == int(before["frames_processed"]) + 1)
    assert after["frames_superseded"] == before["frames_superseded"], after

    # ~/reset_at_pose for an image already tracked (ace_node's initial localization while PRISM runs ahead): the
    # next frame starts the new map, placed by PRISM's own tracking since that image (here: a still camera)
    count = len(probe.got["pose"])
    initial.header.stamp = ns_to_stamp(t0 + 21 * period)
    probe.reset_pose_pub.publish(initial)
    probe.spin(0.5)
    send(2, t0 + 22 * period)
    probe.wait_diag(lambda d: d["resets"] == "2")
    assert probe.spin_until(lambda: len(probe.got["pose"]) > count, 15)
    assert np.linalg.norm(pose_to_matrix(probe.got["pose"][-1].pose.pose)[:3, 3] - T[:3, 3]) < 0.05
    # unstamped: the next frame starts the new map exactly there
    initial.header.stamp = ns_to_stamp(0)
    probe.reset_pose_pub.publish(initial)
    probe.wait_diag(lambda d: d["resets"] == "3")
    count = len(probe.got["pose"])
    send(1, t0 + 23 * period)
    assert probe.spin_until(lambda: len(probe.got["pose"]) > count, 15)
    assert np.allclose(pose_to_matrix(probe.got["pose"][-1].pose.pose), T, atol=1e-6)

    # stamps: a frame far from the previous one is held back. A single outlier (another year, or unstamped) is
    # dropped and the map kept; a time jump back that the next frame confirms (a looped bag) resets
    current = probe.wait_diag(lambda d: int(d["frames_processed"]) + int(d["frames_dropped"]) >= int(
        hinted["frames_processed"]) + 3)  # the frames sent since are all counted
    for outlier in (t0 + 10 * 365 * 24 * 3600 * 10**9, 0):
        before = probe.diag()
        send(1, outlier)
        probe.wait_diag(lambda d, b=before: int(d["bad_input.bad_stamp"]) == int(b["bad_input.bad_stamp"]) + 1)
    send(1, t0 + 24 * period)
    after = probe.wait_diag(lambda d: int(d["frames_processed"]) > int(current["frames_processed"]))
    assert after["resets"] == current["resets"] and after["time_jumps"] == "0" and int(after["map_blocks"]) > 0, after
    send(0, t0 - 5_000_000_000)
    probe.wait_diag(lambda d: int(d["bad_input.bad_stamp"]) == 3)
    send(1, t0 - 5_000_000_000 + period)
    jumped = probe.wait_diag(lambda d: d["time_jumps"] == "1"
                             and int(d["frames_processed"]) == int(after["frames_processed"]) + 1)
    assert int(jumped["resets"]) == int(after["resets"]) + 1 and int(jumped["map_blocks"]) > 0, jumped

    assert node.poll() is None
    assert _stop(node) == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    for cause in ("bad_encoding", "size_mismatch", "bad_depth", "bad_camera_info", "out_of_order",
                  "unsynchronised", "missing_camera_info", "bad_imu"):
        assert text.count(f"bad input ({cause})") == 1, (cause, text[-4000:])
    assert text.count("processing falls behind") == 1
    assert text.count("time jumped back") == 1
    assert text.count("rejected parameter change") == 3
    assert "cannot save the map" in text and "cannot load the map" in text
    final = probe.diag()
    print(json.dumps({k: v for k, v in final.items() if k.startswith(("bad_input.", "frames_", "failures."))}))


def test_a_frame_waits_for_imu_that_arrives_after_its_images(synthetic, spawn_python, ros_node, tmp_path):
    """IMU messages can reach the node after the images they precede: the frame waits up to imu_wait for the
    sample that closes its window; without the wait (imu_wait 0) the same delay leaves the frame no IMU."""
    from ros_helpers.prism_probe import PrismProbe
    from sensor_msgs.msg import Imu

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.conversions import ns_to_stamp

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(3)]
    stamps = [int(round(f.timestamp * 1e9)) for f in frames]
    probe = PrismProbe(ros_node)
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, "--params-file", str(REPO / "config/sensors/synthetic.yaml"),
                       rgb_topic="/probe/rgb", depth_topic="/probe/depth", camera_info_topic="/probe/camera_info",
                       imu_topic="/probe/imu", rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable",
                       imu_qos="reliable", diagnostics_period=0.1, imu_wait=5.0)
    probe.wait_ready()

    def publish_imu(k: int) -> None:
        """Frame k's window (previous frame, frame k], closed by a sample stamped exactly at frame k."""
        imu = frames[max(k, 1)].imu
        times = [*imu.t[imu.t < frames[k].timestamp], frames[k].timestamp] if k else [frames[0].timestamp]
        for j, t in enumerate(times):
            msg = Imu()
            msg.header.stamp = ns_to_stamp(int(round(t * 1e9)))
            gyro, accel = imu.gyro[min(j, len(imu) - 1)], imu.accel[min(j, len(imu) - 1)]
            msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = map(float, gyro)
            msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = map(float, accel)
            probe.imu_pub.publish(msg)

    def publish_frame(k: int) -> None:
        probe.publish_frame(frames[k].rgb, frames[k].depth, frames[k].intrinsics, stamps[k])

    publish_frame(0)
    publish_imu(0)
    probe.wait_diag(lambda d: d["frames_processed"] == "1")
    publish_imu(0)  # the stream is live when the next frame arrives
    publish_frame(1)
    probe.spin(0.5)
    assert probe.diag()["frames_processed"] == "1", "the frame must wait for its IMU window"
    publish_imu(1)
    waited = probe.wait_diag(lambda d: d["frames_processed"] == "2")
    assert waited["bad_input.missing_imu"] == "0", waited

    assert probe.set_parameter("imu_wait", 0.0) == (True, "")
    publish_frame(2)
    probe.spin(0.5)
    publish_imu(2)
    late = probe.wait_diag(lambda d: d["bad_input.missing_imu"] == "1")
    assert late["frames_processed"] == "2", late
    assert node.poll() is None, log.read_text()[-3000:]


def test_save_map_without_scikit_image_saves_the_map_and_names_the_missing_package(synthetic, spawn_python,
                                                                                   ros_node, tmp_path):
    """A workspace without scikit-image (marching cubes): ~/save_map writes the map file, says the mesh was not
    written and which package gives it, and the node keeps running."""
    import os

    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset

    blocked = tmp_path / "blocked"
    (blocked / "skimage").mkdir(parents=True)
    (blocked / "skimage" / "__init__.py").write_text("raise ImportError(\"No module named 'skimage'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]))
    frame = open_dataset(synthetic, fmt="tum")[0]
    probe = PrismProbe(ros_node)
    log = tmp_path / "node.log"
    map_path = tmp_path / "map.pt"
    node = _start_node(spawn_python, log, env=env, rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", rgb_qos="reliable", depth_qos="reliable",
                       camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
                       transition_model="constant_velocity", diagnostics_period=0.1, map_path=str(map_path))
    probe.wait_ready()
    probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, int(round(frame.timestamp * 1e9)))
    probe.wait_diag(lambda d: d["frames_processed"] == "1")
    saved = probe.call("save_map")
    assert saved.success and "mesh not written" in saved.message and "python3-skimage" in saved.message, saved
    assert map_path.is_file() and not map_path.with_suffix(".ply").exists()
    assert node.poll() is None, log.read_text()[-3000:]


def test_diagnostics_reach_error_after_a_long_loss_and_recover(synthetic, spawn_python, ros_node, tmp_path):
    """Lost frames make /diagnostics WARN, ERROR once they span lost_error_after seconds of frame stamps, and OK
    again when tracking resumes (here: frames turned upside down cannot be tracked against the map); the stamped
    ~/tracking_status gives each frame's verdict at its own stamp; a camera that stops makes it WARN, then
    ERROR."""
    from dataclasses import replace

    from diagnostic_msgs.msg import DiagnosticArray
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import header_ns

    frame = open_dataset(synthetic, fmt="tum")[0]
    flipped = replace(frame, rgb=np.ascontiguousarray(frame.rgb[::-1, ::-1]),
                      depth=np.ascontiguousarray(frame.depth[::-1, ::-1]))
    probe = PrismProbe(ros_node)
    statuses = []
    status_sub = ros_node.create_subscription(DiagnosticArray, "/prism_node/tracking_status", statuses.append,
                                              reliable_qos(100))
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", rgb_qos="reliable", depth_qos="reliable",
                       camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
                       transition_model="constant_velocity", diagnostics_period=0.1, lost_error_after=0.15,
                       frame_queue=10)
    probe.wait_ready()
    assert probe.spin_until(lambda: status_sub.get_publisher_count() > 0, 10)
    t0 = int(round(frame.timestamp * 1e9))

    def send(f, k):
        probe.publish_frame(f.rgb, f.depth, f.intrinsics, t0 + k * 100_000_000)
        return probe.wait_diag(lambda d: d["frames_processed"] == str(k + 1))

    assert send(frame, 0)["_level"] == "0"
    warned = send(flipped, 1)
    assert warned["state"] == "lost" and warned["_level"] == "1" and warned["lost_for_s"] == "0.000", warned
    assert send(flipped, 2)["_level"] == "1"  # lost for 0.1 s
    error = send(flipped, 3)  # lost for 0.2 s >= 0.15 s
    assert error["_level"] == "2" and "lost for 0.2 s" in error["_message"], error
    recovered = send(frame, 4)
    assert recovered["state"] == "tracking" and recovered["_level"] == "0" and recovered["lost_for_s"] == "0.000"
    assert probe.spin_until(lambda: len(statuses) == 5, 10), len(statuses)
    assert [header_ns(m) for m in statuses] == [t0 + k * 100_000_000 for k in range(5)]
    levels = [int.from_bytes(m.status[0].level, "little") if isinstance(m.status[0].level, bytes)
              else m.status[0].level for m in statuses]
    assert levels == [0, 1, 1, 2, 0], levels
    lost = {kv.key: kv.value for kv in statuses[1].status[0].values}
    assert lost["tracking_ok"] == "false" and "inlier ratio" in lost["reasons"], lost
    # the camera stops: WARN once no set came for input_timeout (1 s), ERROR lost_error_after later
    assert probe.set_parameter("lost_error_after", 1.0)[0]
    silent = probe.wait_diag(lambda d: d["input"] == "stopped", 10)
    assert silent["_level"] == "1" and "no synchronised set for" in silent["_message"], silent
    dead = probe.wait_diag(lambda d: d["_level"] == "2", 10)
    assert dead["input"] == "stopped" and float(dead["no_input_s"]) >= 2.0, dead
    assert dead["state"] == "tracking", dead  # the last frame's verdict stays
    assert node.poll() is None, log.read_text()[-3000:]


def test_an_exception_in_any_callback_leaves_the_node_running(synthetic, spawn_python, ros_node, tmp_path):
    """Every subscription, service and parameter callback raises once (fail points): each exception is counted
    as callback_errors.<name> and logged once, services and parameter changes answer as failed, and the node
    goes on: the next call of each works and frames are tracked."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from ros_helpers.prism_probe import PrismProbe
    from sensor_msgs.msg import Imu

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import has_ros_piece, reliable_qos
    from prism_ros.nodes.conversions import matrix_to_pose, ns_to_stamp
    from prism_ros.nodes.health import FAILPOINTS_VARIABLE

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(6)]
    probe = PrismProbe(ros_node)
    set_pose = ros_node.create_publisher(PoseWithCovarianceStamped, "/prism_node/set_pose", reliable_qos(10))
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, env={**os.environ, FAILPOINTS_VARIABLE: "all"}, rgb_topic="/probe/rgb",
                       depth_topic="/probe/depth", camera_info_topic="/probe/camera_info", imu_topic="/probe/imu",
                       rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable", imu_qos="reliable",
                       filter_config="prism_synthetic.yaml", transition_model="constant_velocity",
                       diagnostics_period=0.1, frame_queue=10)
    probe.wait_ready()
    t0 = int(round(frames[0].timestamp * 1e9))
    for k in range(3):  # the first message is lost to the "input" fail point, the first set to "frames"
        probe.publish_frame(frames[k].rgb, frames[k].depth, frames[k].intrinsics, t0 + k * 33_333_333)
        probe.spin(0.2)
    probe.wait_diag(lambda d: d["callback_errors.frames"] == "1" and int(d["frames_processed"]) >= 1, 30)

    imu = Imu()
    imu.header.stamp = ns_to_stamp(t0)
    imu.linear_acceleration.z = 9.81
    probe.imu_pub.publish(imu)
    pose = PoseWithCovarianceStamped()
    pose.header.frame_id = "map"
    pose.pose.pose = matrix_to_pose(np.eye(4))
    for publisher in (probe.initial_pose_pub, set_pose, probe.reset_pose_pub):
        assert probe.spin_until(lambda p=publisher: p.get_subscription_count() > 0, 10)
        publisher.publish(pose)
    for service in ("reset", "pause", "resume", "save_map", "load_map"):
        failed = probe.call(service)
        assert not failed.success and "internal error" in failed.message and "Failpoint" in failed.message, failed
    ok, reason = probe.set_parameter("path_max_length", 50)
    assert not ok and "internal error" in reason, reason
    assert probe.set_parameter("path_max_length", 50) == (True, "")  # fired once: the next change works
    assert probe.call("pause").success and probe.call("resume").success

    names = ["frames", "input", "imu", "initialpose", "set_pose", "reset_at_pose", "reset", "pause", "resume",
             "save_map", "load_map", "parameters"] + (["tf", "tf_static"] if has_ros_piece("tf2_msgs") else [])
    every = probe.wait_diag(lambda d: all(d.get(f"callback_errors.{n}") == "1" for n in names), 20)
    assert every["callback_errors_total"] == str(len(names)), every
    for k in range(3, 6):  # frames are tracked again
        probe.publish_frame(frames[k].rgb, frames[k].depth, frames[k].intrinsics, t0 + k * 33_333_333)
        probe.spin(0.2)
    tracked = probe.wait_diag(lambda d: d["state"] == "tracking" and int(d["frames_processed"]) >= 3, 30)
    assert node.poll() is None, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("frames callback failed: Failpoint") == 1 and "callback_errors.frames" in text, text[-3000:]
    assert tracked["bad_input_total"] == "0", tracked


def test_depth_that_is_noise_never_seeds_or_changes_the_map(synthetic, spawn_python, ros_node, tmp_path):
    """Depth that is mostly noise is bad_depth mid-stream, and the first frame of a map must be clearly surfaces:
    a frame with a fifth of its pixels noise does not seed the map, the next good one does."""
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(3)]
    rng = np.random.default_rng(0)
    speckled = frames[0].depth.copy()
    mask = rng.random(speckled.shape) < 0.2
    speckled[mask] = rng.uniform(0.3, 3.5, mask.sum())
    noise = rng.uniform(0.3, 3.5, speckled.shape).astype(np.float32)
    probe = PrismProbe(ros_node)
    node = _start_node(spawn_python, tmp_path / "node.log", rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", rgb_qos="reliable", depth_qos="reliable",
                       camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
                       transition_model="constant_velocity", diagnostics_period=0.1, frame_queue=5)
    probe.wait_ready()

    def send(i, depth):
        probe.publish_frame(frames[i].rgb, depth, frames[i].intrinsics, int(round(frames[i].timestamp * 1e9)))

    send(0, speckled)  # 64% of neighbouring pairs agree: a frame, but not one to start a map from
    first = probe.wait_diag(lambda d: d["bad_input.bad_depth"] == "1")
    assert first["map_blocks"] == "0" and first["frames_processed"] == "0", first
    send(1, frames[1].depth)
    started = probe.wait_diag(lambda d: d["frames_processed"] == "1" and int(d["map_blocks"]) > 0)
    send(2, noise)  # uniform noise: rejected before the filter
    rejected = probe.wait_diag(lambda d: d["bad_input.bad_depth"] == "2")
    assert rejected["map_blocks"] == started["map_blocks"] and rejected["frames_processed"] == "1", rejected
    assert node.poll() is None
    text = (tmp_path / "node.log").read_text()
    assert "the first frame of a map needs depth on surfaces" in text, text[-3000:]
    assert text.count("bad input (bad_depth)") == 1, text[-3000:]  # logged once, counted twice


def test_lifecycle_transitions_without_autostart(synthetic, spawn_python, ros_node, tmp_path):
    """autostart false: the node waits unconfigured; configure builds it (inactive: frames skipped), activate
    processes frames, deactivate skips them again, cleanup releases the interfaces; a configure with an invalid
    parameter fails with the reason and leaves it unconfigured, and a corrected one brings it back."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(4)]
    probe = PrismProbe(ros_node)
    get_state = ros_node.create_client(GetState, "/prism_node/get_state")
    change_state = ros_node.create_client(ChangeState, "/prism_node/change_state")

    def call(client, request):
        assert probe.spin_until(client.service_is_ready, 30), client.srv_name
        future = client.call_async(request)
        assert probe.spin_until(future.done, 60), client.srv_name
        return future.result()

    def state() -> str:
        return call(get_state, GetState.Request()).current_state.label

    def transition(transition_id: int) -> bool:
        return call(change_state, ChangeState.Request(transition=Transition(id=transition_id))).success

    def send(i):
        frame = frames[i]
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, int(round(frame.timestamp * 1e9)))

    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, autostart=False, rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", rgb_qos="reliable", depth_qos="reliable",
                       camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
                       transition_model="constant_velocity", diagnostics_period=0.1)
    assert state() == "unconfigured"
    assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
    assert probe.spin_until(lambda: probe.subscriptions["pose"].get_publisher_count() == 1, 10)
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
    probe.wait_ready()
    for i in range(2):
        send(i)
        probe.spin(0.1)
    probe.wait_diag(lambda d: d["frames_processed"] == "2")
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
    probe.wait_diag(lambda d: d["state"] == "inactive")
    send(2)
    skipped = probe.wait_diag(lambda d: d["frames_skipped_paused"] == "1")
    assert skipped["frames_processed"] == "2"
    assert transition(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
    assert probe.spin_until(lambda: probe.subscriptions["pose"].get_publisher_count() == 0, 10)  # released

    assert probe.set_parameter("rgb_qos", "fast")[0]  # unconfigured: taken now, checked by configure
    assert not transition(Transition.TRANSITION_CONFIGURE) and state() == "unconfigured"
    assert probe.set_parameter("rgb_qos", "reliable")[0]
    assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
    probe.wait_ready()
    count = len(probe.got["pose"])
    send(3)
    assert probe.spin_until(lambda: len(probe.got["pose"]) > count, 30)  # a new filter: its first frame
    assert node.poll() is None
    assert _stop(node) == 0
    text = log.read_text()
    assert "Traceback" not in text and "configure failed, invalid parameters: parameter rgb_qos='fast'" in text, \
        text[-3000:]


def test_two_namespaced_nodes_side_by_side(synthetic, ros_node, spawn_python, tmp_path):
    """Two prism_nodes in namespaces /robot1 and /robot2 with the default relative topics: each takes its own
    camera (<ns>/rgb/image, <ns>/depth/image, <ns>/rgb/camera_info) and publishes under <ns>/prism_node."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import intrinsics_to_camera_info, numpy_to_image

    frame = open_dataset(synthetic, fmt="tum")[0]
    executor = SingleThreadedExecutor(context=ros_node.context)
    executor.add_node(ros_node)
    poses, inputs, nodes = {}, {}, []
    for ns in ("robot1", "robot2"):
        nodes.append(_start_node(spawn_python, tmp_path / f"{ns}.log", "-r", f"__ns:=/{ns}", rgb_qos="reliable",
                                 depth_qos="reliable", camera_info_qos="reliable",
                                 filter_config="prism_synthetic.yaml", transition_model="constant_velocity"))
        poses[ns] = []
        ros_node.create_subscription(PoseWithCovarianceStamped, f"/{ns}/prism_node/pose", poses[ns].append,
                                     reliable_qos(10))
        inputs[ns] = [ros_node.create_publisher(cls, f"/{ns}/{topic}", reliable_qos(10))
                      for cls, topic in ((Image, "rgb/image"), (Image, "depth/image"), (CameraInfo, "rgb/camera_info"))]

    def spin_until(condition, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not condition():
            executor.spin_once(timeout_sec=0.05)
        return condition()

    assert spin_until(lambda: all(p.get_subscription_count() >= 1 for pubs in inputs.values() for p in pubs), 60)

    def send(ns, k):
        stamp = frame.timestamp + k / 30
        rgb, depth, info = inputs[ns]
        rgb.publish(numpy_to_image(frame.rgb, "rgb8", stamp=stamp))
        depth.publish(numpy_to_image(frame.depth, "32FC1", stamp=stamp))
        info.publish(intrinsics_to_camera_info(frame.intrinsics, stamp=stamp))

    for k in range(2):
        send("robot1", k)
        assert spin_until(lambda k=k: len(poses["robot1"]) == k + 1, 30), [len(p) for p in poses.values()]
    send("robot2", 0)
    assert spin_until(lambda: len(poses["robot2"]) == 1, 30)
    spin_until(lambda: False, 0.5)
    assert [len(poses["robot1"]), len(poses["robot2"])] == [2, 1]
    assert all(node.poll() is None for node in nodes)
    executor.remove_node(ros_node)


def test_localization_mode_tracks_a_saved_map_without_changing_it(synthetic, spawn_python, ros_node, tmp_path):
    """mode localization: the map saved by a SLAM run is loaded at start and frozen; the node tracks the same
    frames against it (close to the SLAM run's poses), its map never grows, the file stays byte-identical and
    ~/save_map is refused."""
    import hashlib

    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.conversions import pose_to_matrix
    from prism_ros.prism.filter import PrismFilter

    frames = [open_dataset(synthetic, fmt="tum")[i] for i in range(8)]
    values = {name: spec.default for name, spec in PARAMETERS.items()}
    values.update(filter_config="prism_synthetic.yaml", transition_model="constant_velocity")
    slam = PrismFilter(build_filter_config(values))
    mapped = [slam.step(frame) for frame in frames]
    map_path = tmp_path / "room.pt"
    slam.map.save(map_path)
    digest = hashlib.sha256(map_path.read_bytes()).hexdigest()

    probe = PrismProbe(ros_node)
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, rgb_topic="/probe/rgb", depth_topic="/probe/depth",
                       camera_info_topic="/probe/camera_info", rgb_qos="reliable", depth_qos="reliable",
                       camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
                       transition_model="constant_velocity", diagnostics_period=0.1, mode="localization",
                       map_path=str(map_path), frame_queue=len(frames))
    probe.wait_ready()
    blocks = probe.diag()["map_blocks"]
    assert blocks == str(slam.map.num_blocks) and probe.diag()["mode"] == "localization"
    for frame in frames:
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, int(round(frame.timestamp * 1e9)))
    done = probe.wait_diag(lambda d: d["frames_processed"] == str(len(frames)), 60)
    assert done["frames_lost"] == "0" and done["map_blocks"] == blocks, done
    assert probe.spin_until(lambda: len(probe.got["pose"]) == len(frames), 10)
    last = pose_to_matrix(probe.got["pose"][-1].pose.pose)
    assert np.linalg.norm(last[:3, 3] - mapped[-1].T_world_camera[:3, 3]) < 0.01
    saved = probe.call("save_map")
    assert not saved.success and "localization mode" in saved.message, saved.message
    assert hashlib.sha256(map_path.read_bytes()).hexdigest() == digest
    assert node.poll() is None, log.read_text()[-3000:]


def test_compressed_colour_intrinsics_from_parameters_and_twist_commands(synthetic, spawn_python, ros_node,
                                                                          tmp_path):
    """The other input paths: CompressedImage colour, intrinsics from parameters (no CameraInfo), and the
    control transition model fed with TwistStamped commands (a still camera, zero commands)."""
    from geometry_msgs.msg import TwistStamped
    from ros_helpers.prism_probe import PrismProbe
    from sensor_msgs.msg import CompressedImage

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import ns_to_stamp, numpy_to_compressed, numpy_to_image

    frame = open_dataset(synthetic, fmt="tum")[0]
    k = frame.intrinsics
    probe = PrismProbe(ros_node)
    rgb_pub = ros_node.create_publisher(CompressedImage, "/probe/rgb/compressed", reliable_qos(10))
    twist_pub = ros_node.create_publisher(TwistStamped, "/probe/cmd_vel", reliable_qos(10))
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, rgb_topic="/probe/rgb/compressed", rgb_compressed=True,
                       depth_topic="/probe/depth", intrinsics_source="parameters",
                       intrinsics=[k.fx, k.fy, k.cx, k.cy], control_topic="/probe/cmd_vel", control_type="twist",
                       transition_model="control", rgb_qos="reliable", depth_qos="reliable",
                       filter_config="prism_synthetic.yaml", diagnostics_period=0.1)
    probe.wait_ready()
    assert probe.spin_until(lambda: rgb_pub.get_subscription_count() and twist_pub.get_subscription_count(), 10)
    t0 = int(round(frame.timestamp * 1e9))
    period = 33_333_333
    for i in range(-2, 4):
        command = TwistStamped()
        command.header.stamp = ns_to_stamp(t0 + i * period)
        twist_pub.publish(command)
        if i < 0:
            continue
        probe.spin(0.05)
        rgb = numpy_to_compressed(frame.rgb, "rgb8", "png")
        rgb.header.stamp = ns_to_stamp(t0 + i * period)
        depth = numpy_to_image(frame.depth, "32FC1")
        depth.header.stamp = rgb.header.stamp
        rgb_pub.publish(rgb)
        probe.depth_pub.publish(depth)
        probe.wait_diag(lambda d, n=i + 1: int(d["frames_processed"]) == n, 20)
    done = probe.diag()
    assert done["frames_lost"] == "0" and done["bad_input_total"] == "0", done
    assert done["transition_model"] == "control" and int(done["map_blocks"]) > 0
    positions = [np.array([p.pose.pose.position.x, p.pose.pose.position.y, p.pose.pose.position.z])
                 for p in probe.got["pose"]]
    assert len(positions) == 4 and max(np.linalg.norm(p) for p in positions) < 0.01  # still camera at the origin
    assert _stop(node) == 0
    assert "Traceback" not in log.read_text()


# ---------------------------------------------------------------------------------------------
# start-up parameters, parameter files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, needles", [
    ({"sync_slop": -1.0, "T_base_camera": [1.0, 2.0], "rgb_qos": "fast"},
     ["sync_slop=-1.0 must be >= 0", "T_base_camera", "needs 16 finite numbers", "rgb_qos", "sensor_data"]),
    ({"transition_model": "imu"}, ["imu_topic is empty", "set imu_topic"]),
    ({"filter_config": "/nonexistent/prism.yaml"}, ["filter_config '/nonexistent/prism.yaml' not found"]),
    ({"backend": "gpu"}, ["backend", "must be one of auto, torch, fused"]),
    ({"mode": "localization", "map_path": "/nonexistent/room.pt"},
     ["mode is localization but map_path /nonexistent/room.pt is not a file", "save a map"]),
    ({"mode": "mapping"}, ["mode", "slam, localization"]),
])
def test_invalid_parameters_at_startup_exit_2_with_the_reason(params, needles, spawn_python):
    process = spawn_python(NODE_MODULE, "--ros-args", *ros_args(**params))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_parameter_file_documents_every_parameter_with_its_default():
    text = (REPO / "config/prism.yaml").read_text()
    assert text == parameters_yaml(), "config/prism.yaml is stale: regenerate with prism_parameters.parameters_yaml()"
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert values == {name: spec.default for name, spec in PARAMETERS.items()}


@pytest.mark.parametrize("sensor", ["tum", "euroc", "blackbird", "7scenes", "realsense", "synthetic"])
def test_sensor_presets_hold_valid_parameters(sensor):
    values = yaml.safe_load((REPO / f"config/sensors/{sensor}.yaml").read_text())["/**"]["ros__parameters"]
    unknown = set(values) - set(PARAMETERS) - {"use_sim_time"}
    assert not unknown, unknown
    for name, value in values.items():
        if name != "use_sim_time":
            convert_parameter(name, value)  # raises on an invalid value
    assert values["intrinsics_source"] in ("camera_info", "parameters")
    model = values["transition_model"]
    assert model != "imu" or (values["imu_topic"] and values.get("T_body_camera"))
    if values.get("filter_config"):
        assert (REPO / "config" / values["filter_config"]).is_file()


@pytest.mark.parametrize("sensor", ["tum", "euroc"])
def test_node_starts_with_the_parameter_file_and_a_sensor_preset_as_the_launch_files_pass_them(
        sensor, spawn_python, ros_node, tmp_path):
    """config/prism.yaml then config/sensors/<sensor>.yaml (prism.launch.py's order): the empty lists of the
    defaults (which rcl leaves unset) must not stop the node."""
    log = tmp_path / "node.log"
    node = _start_node(spawn_python, log, "--params-file", str(REPO / "config/prism.yaml"), "--params-file",
                       str(REPO / f"config/sensors/{sensor}.yaml"), device="cpu")
    deadline = time.monotonic() + 60.0
    while ros_node.count_publishers("/prism_node/pose") == 0 and node.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.poll() is None and ros_node.count_publishers("/prism_node/pose") == 1, log.read_text()[-2000:]
    assert _stop(node) == 0


def test_covariance_and_twist_conversions_match_finite_differences():
    import torch

    from prism_ros.geometry import se3_exp

    rng = np.random.default_rng(1)
    A = rng.normal(size=(6, 6))
    covariance = A @ A.T * 1e-4
    T = np.eye(4)
    T[:3, 3] = [2.0, -1.0, 0.5]
    # left perturbations sampled and pushed through: position error and world rotation error
    xi = rng.multivariate_normal(np.zeros(6), covariance, 20000)
    perturbed = se3_exp(torch.as_tensor(xi)).numpy() @ T
    dp = perturbed[:, :3, 3] - T[:3, 3]
    ros = left_covariance_to_ros(covariance, T[:3, 3])
    assert np.allclose(np.cov(dp.T), ros[:3, :3], rtol=0.1, atol=1e-6)
    # twist: a pure rotation about the body origin moves a base 1 m ahead along y of the world
    T_world_body, T_world_base = np.eye(4), np.eye(4)
    T_world_base[:3, 3] = [1.0, 0.0, 0.0]
    twist, twist_cov = base_twist(np.array([0, 0, 0, 0, 0, 0.5]), np.eye(6), T_world_body, T_world_base)
    assert np.allclose(twist, [0.0, 0.5, 0.0, 0.0, 0.0, 0.5])
    assert np.allclose(twist_cov, twist_cov.T) and np.all(np.linalg.eigvalsh(twist_cov) > 0)
