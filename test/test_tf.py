"""TF per REP-105: map -> odom bookkeeping, and /tf + /tf_static over real DDS."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from prism_ros.geometry.lie import se3_exp_np, se3_inverse_np
from prism_ros.nodes.tf import MapOdom


def pose(*xi) -> np.ndarray:
    return se3_exp_np(np.asarray(xi, dtype=np.float64))


def test_owned_odom_is_continuous_through_a_relocalization():
    map_odom = MapOdom()
    assert not map_odom.known
    T1, T2 = pose(1, 0, 0, 0, 0, 0.1), pose(1.1, 0, 0, 0, 0, 0.12)
    np.testing.assert_allclose(map_odom.owned(T1), T1)  # before any jump map and odom coincide
    np.testing.assert_allclose(map_odom.owned(T2), T2)
    assert map_odom.known and np.allclose(map_odom.T_map_odom, np.eye(4))
    # relocalized 0.5 m and 0.2 rad away: odom carries on from its last pose, map -> odom takes the jump
    T3 = pose(0.2, 0.5, 0, 0, 0, 0.3) @ T2
    np.testing.assert_allclose(map_odom.owned(T3, generation=1), T2, atol=1e-12)
    np.testing.assert_allclose(map_odom.T_map_odom @ T2, T3, atol=1e-12)
    step = pose(0.05, 0, 0, 0, 0, 0.01)  # then odom moves as PRISM does
    np.testing.assert_allclose(map_odom.owned(T3 @ step, generation=1), T2 @ step, atol=1e-12)


def test_external_odometry_sets_map_to_odom():
    map_odom = MapOdom()
    T_map_base, T_odom_base = pose(2, 1, 0, 0, 0, 0.4), pose(1.9, 1.2, 0, 0, 0, 0.35)
    T_map_odom = map_odom.external(T_map_base, T_odom_base)
    np.testing.assert_allclose(T_map_odom @ T_odom_base, T_map_base, atol=1e-12)
    np.testing.assert_allclose(T_map_odom, T_map_base @ se3_inverse_np(T_odom_base), atol=1e-12)
    assert map_odom.known


# ---------------------------------------------------------------------------------------------
# over real DDS: prism_node in its own process, the test's node reads /tf and /tf_static
# ---------------------------------------------------------------------------------------------

PERIOD_NS = 33_333_333
CAMERA = "camera_rgb_optical_frame"  # the frame_id of the probe's images


def _needs_tf2_msgs():
    from prism_ros.nodes.compat import has_ros_piece

    if not has_ros_piece("tf2_msgs"):
        pytest.skip("tf2_msgs is not installed (make venv builds it; a ROS install has it)")


def _start(spawn_python, log, **params):
    from ros_helpers.ros_args import ros_args

    base = dict(rgb_topic="/probe/rgb", depth_topic="/probe/depth", camera_info_topic="/probe/camera_info",
                rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable", frame_queue=20, queue_size=20,
                filter_config="prism_synthetic.yaml", transition_model="constant_velocity", diagnostics_period=0.1)
    return spawn_python(["-m", "prism_ros.nodes.prism_node"], "--ros-args", *ros_args(**{**base, **params}),
                        stdout=log.open("w"), stderr=subprocess.STDOUT)


def _frames(synthetic_sequence, count):
    """The first frames of the synthetic room, restamped to now (the node stamps map -> odom by its clock)."""
    import time

    from prism_ros.datasets import open_dataset

    start = time.time_ns()
    dataset = open_dataset(synthetic_sequence, fmt="tum")
    return [(dataset[i], start + i * PERIOD_NS) for i in range(count)]


def map_base(tf, t: float) -> np.ndarray:
    """The base in the map at ``t`` as a consumer sees it after the frame: the newest map -> odom (stamped ahead
    of the clock, it holds until replaced) and odom -> base_link at ``t``."""
    return tf.lookup("map", "odom") @ tf.lookup("odom", "base_link", t)


T_BASE_CAMERA = pose(0.1, 0.0, 0.3, 0, 0, 0)
T_BASE_CAMERA[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical: z forward


@pytest.mark.timeout(150)
def test_tf_chain_when_prism_is_the_odometry_and_odom_stays_continuous(synthetic_sequence, spawn_python, ros_node,
                                                                       tmp_path):
    """map -> odom -> base_link -> camera from prism_node (T_base_camera latched on /tf_static); a relocalization
    on ~/set_pose moves map -> odom while odom -> base_link carries on without a jump."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import matrix_to_pose, ns_to_stamp, pose_to_matrix
    from prism_ros.nodes.tf import TfBridge

    _needs_tf2_msgs()
    probe, tf = PrismProbe(ros_node), TfBridge(ros_node)
    node = _start(spawn_python, tmp_path / "node.log", T_base_camera=list(T_BASE_CAMERA.ravel()))
    probe.wait_ready()
    assert probe.spin_until(lambda: tf.peers()[0] >= 2, 10), tf.peers()  # the node's /tf reaches us (and ours)
    frames = _frames(synthetic_sequence, 6)
    for frame, stamp in frames[:4]:
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, stamp)
        probe.spin(0.05)
    assert probe.spin_until(lambda: len(probe.got["pose"]) == 4, 60), probe.diag()
    t3 = frames[3][1] / 1e9
    assert probe.spin_until(lambda: tf.tree.can_transform("odom", CAMERA, t3) and "map" in tf.tree.frames(), 10), \
        tf.tree.frames()
    T_map_base3 = pose_to_matrix(probe.got["pose"][-1].pose.pose)
    np.testing.assert_allclose(map_base(tf, t3), T_map_base3, atol=1e-6)
    np.testing.assert_allclose(tf.lookup("base_link", CAMERA), T_BASE_CAMERA, atol=1e-9)
    np.testing.assert_allclose(tf.lookup("map", "odom"), np.eye(4), atol=1e-9)  # no jump yet
    odom3 = tf.lookup("odom", "base_link", t3)
    np.testing.assert_allclose(odom3, T_map_base3, atol=1e-6)

    set_pose = ros_node.create_publisher(PoseWithCovarianceStamped, "/prism_node/set_pose", reliable_qos(10))
    assert probe.spin_until(lambda: set_pose.get_subscription_count() > 0, 10)
    jumped = pose(0.3, -0.2, 0.0, 0.0, 0.0, 0.2) @ T_map_base3
    message = PoseWithCovarianceStamped()
    message.header.frame_id, message.header.stamp = "map", ns_to_stamp(frames[3][1])
    message.pose.pose = matrix_to_pose(jumped)
    message.pose.covariance = list(np.diag([1e-4] * 3 + [3e-4] * 3).ravel())
    set_pose.publish(message)
    probe.wait_diag(lambda d: d["relocalizations"] == "1")
    for frame, stamp in frames[4:]:
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, stamp)
        probe.spin(0.05)
    assert probe.spin_until(lambda: len(probe.got["pose"]) == 6, 60), probe.diag()
    t4, t5 = frames[4][1] / 1e9, frames[5][1] / 1e9
    assert probe.spin_until(lambda: tf.tree.can_transform("odom", "base_link", t5), 10)
    poses = [pose_to_matrix(p.pose.pose) for p in probe.got["pose"][-2:]]
    # odom -> base_link does not jump: at the relocalized frame it stays where it was, then moves as PRISM does
    np.testing.assert_allclose(tf.lookup("odom", "base_link", t4), odom3, atol=1e-6)
    np.testing.assert_allclose(tf.lookup("odom", "base_link", t5), odom3 @ np.linalg.inv(poses[0]) @ poses[1],
                               atol=1e-6)
    # map -> odom took the jump: map -> base_link is PRISM's pose
    for t, T_map_base in zip((t4, t5), poses):
        np.testing.assert_allclose(map_base(tf, t), T_map_base, atol=1e-5)
    assert all(o.header.frame_id == "odom" for o in probe.got["odometry"])
    assert node.poll() is None


@pytest.mark.timeout(150)
def test_external_odometry_and_extrinsics_from_tf_static(synthetic_sequence, spawn_python, ros_node, tmp_path):
    """Another node owns odom -> base_link and a URDF latches base_link -> camera: prism_node takes the camera's
    place from /tf_static and publishes only map -> odom, computed from that odometry at each frame's stamp; a
    frame without odometry counts as missing_tf and the node goes on."""
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.nodes.conversions import matrix_to_transform_stamped, pose_to_matrix
    from prism_ros.nodes.tf import TfBridge

    _needs_tf2_msgs()
    probe, tf = PrismProbe(ros_node), TfBridge(ros_node)
    tf.send_static([matrix_to_transform_stamped(T_BASE_CAMERA, 0.0, "base_link", CAMERA)])
    node = _start(spawn_python, tmp_path / "node.log", publish_odom_tf=False, extrinsics_source="tf")
    probe.wait_ready()
    assert probe.spin_until(lambda: min(tf.peers()) >= 2, 10), tf.peers()  # /tf both ways (and to ourselves)
    assert probe.spin_until(lambda: ros_node.count_subscribers("/tf_static") >= 2, 10)  # ours and the node's
    zero, nan = (matrix_to_transform_stamped(np.eye(4), 1.0, "odom", child) for child in ("wheel", "gps"))
    zero.transform.rotation.w = 0.0  # not a rotation
    nan.transform.translation.x = float("nan")
    tf.send([zero, nan])  # another node's malformed transforms: skipped, not fatal
    drift = pose(0.5, -1.0, 0.0, 0.0, 0.0, 0.7)  # the external odometry's frame: anywhere
    frames = _frames(synthetic_sequence, 5)
    for frame, stamp in frames[:4]:
        T_odom_base = drift @ frame.pose @ np.linalg.inv(T_BASE_CAMERA)
        tf.send([matrix_to_transform_stamped(T_odom_base, stamp / 1e9, "odom", "base_link")])
        probe.spin(0.02)
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, stamp)
        probe.spin(0.05)
    assert probe.spin_until(lambda: len(probe.got["pose"]) == 4, 60), probe.diag()
    # the map is the first base pose; the base moves as the camera does through the extrinsic from /tf_static
    first = pose_to_matrix(probe.got["pose"][0].pose.pose)
    np.testing.assert_allclose(first, np.eye(4), atol=1e-9)
    moved = (np.linalg.inv(T_BASE_CAMERA) @ pose_to_matrix(probe.got["pose"][3].pose.pose) @ T_BASE_CAMERA)[:3, 3]
    true = (np.linalg.inv(frames[0][0].pose) @ frames[3][0].pose)[:3, 3]  # the camera's motion, 1.3 cm
    assert np.linalg.norm(moved - true) < 5e-3 and moved @ true > 0.9 * np.linalg.norm(moved) * np.linalg.norm(true), \
        (moved, true)
    t3 = frames[3][1] / 1e9
    T_map_base3 = pose_to_matrix(probe.got["pose"][-1].pose.pose)
    assert probe.spin_until(lambda: "map" in tf.tree.frames(), 10), tf.tree.frames()
    assert probe.spin_until(lambda: np.allclose(map_base(tf, t3), T_map_base3, atol=1e-5), 5), map_base(tf, t3)
    assert all(o.header.frame_id == "map" for o in probe.got["odometry"])
    assert probe.diag()["bad_input.missing_tf"] == "0"
    frame = frames[4][0]  # no odometry within transform_tolerance of this one: counted, map -> odom kept
    probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, frames[3][1] + 500_000_000)
    probe.wait_diag(lambda d: d["bad_input.missing_tf"] == "1", 30)
    assert node.poll() is None
    log = (tmp_path / "node.log").read_text()
    assert "camera extrinsics from TF" in log and log.count("bad input (missing_tf)") == 1, log[-3000:]


@pytest.mark.timeout(200)
def test_the_map_is_levelled_once_gravity_is_estimated(synthetic_sequence, spawn_python, ros_node, tmp_path):
    """The synthetic bag (200 Hz IMU, the imu transition model): the map starts as the first base pose (the IMU
    frame, tilted), the filter estimates gravity from its first poses and the IMU, and the map restarts level:
    every later pose has the true world's up axis as its z axis, within a degree."""
    import re
    from pathlib import Path

    import yaml
    from ros_helpers.prism_probe import PrismProbe
    from ros_helpers.ros_args import ros_args

    from prism_ros.launch_graph.replay import PRESETS, bag_ground_truth
    from prism_ros.nodes.conversions import pose_to_matrix, stamp_to_sec

    preset = Path(__file__).resolve().parents[1] / "config/sensors/synthetic.yaml"
    T_base_camera = np.reshape(yaml.safe_load(preset.read_text())["/**"]["ros__parameters"]["T_base_camera"], (4, 4))
    probe = PrismProbe(ros_node)
    log = tmp_path / "node.log"
    spawn_python(["-m", "prism_ros.nodes.prism_node"], "--ros-args", "--params-file", str(preset), *ros_args(
        frame_queue=30, queue_size=30, rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable",
        imu_qos="reliable", use_sim_time=True, diagnostics_period=0.2, map_publish_period=30.0),
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    probe.wait_ready()
    player = spawn_python(["-m", "prism_ros.nodes.player"], synthetic_sequence / "bag", "--qos", "reliable",
                          "--wait-for-subscribers", "1", "--rate", "0.5", "--quiet")
    assert player.wait(60) == 0, player.communicate()[1]
    probe.wait_diag(lambda d: int(d["frames_processed"]) + int(d["frames_dropped"]) >= 30, 60)
    levelled = probe.wait_diag(lambda d: d["map_level"].startswith("levelled"), 10)["map_level"]
    assert probe.spin_until(lambda: len(probe.got["pose"]) >= 30, 10)
    text = log.read_text()
    found = re.search(r"the start frame was ([0-9.]+) deg from level; the map restarts level \(z up\) at the "
                      r"frame of ([0-9.]+) s", text)
    assert found and float(found.group(1)) > 1.0, (levelled, text[-3000:])  # the IMU frame starts tilted
    times = np.array([stamp_to_sec(p.header.stamp) for p in probe.got["pose"]])
    cameras = np.stack([pose_to_matrix(p.pose.pose) @ T_base_camera for p in probe.got["pose"]])
    truth_times, truth = bag_ground_truth(synthetic_sequence / "bag", PRESETS["synthetic"])
    truth = truth[np.searchsorted(truth_times, times - 1e-6)]
    up = (cameras[:, :3, :3] @ truth[:, :3, :3].transpose(0, 2, 1))[:, 2, 2]  # the true up axis in the map, z
    tilt = np.degrees(np.arccos(np.clip(up, -1.0, 1.0)))
    after = times >= float(found.group(2)) - 1e-6
    assert after.sum() >= 5 and tilt[after].max() < 1.0, (times, tilt)
    assert tilt[~after].min() > 1.0, tilt  # it was not level before
    print(f"map tilt before levelling {tilt[~after].mean():.2f} deg, after {tilt[after].mean():.3f} deg "
          f"(max {tilt[after].max():.3f})")
