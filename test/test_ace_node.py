"""ace_node over real DDS: prism_node, ace_node and the test's probe are separate participants (loopback
profile, a fresh domain per test); nothing is mocked.

- online mapping end to end: prism_node tracks a synthetic sequence, ace_node keeps keyframes with PRISM's
  poses, maps them in the background, checkpoints the map, and relocalizes the newest image in PRISM's frame;
- ~/relocalize, ~/query, save/load of the ACE map (and a corrupt file), bad images counted;
- invalid parameters and an unreadable map at start-up: exit code 2 and one line;
- the covariance and keyframe helpers in-process.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ros_helpers.ros_args import ros_args

pytestmark = pytest.mark.timeout(300)

ACE_DIAG = "ace_node"


@pytest.fixture(scope="module")
def ace_map_file(synthetic_sequence, tmp_path_factory) -> Path:
    """An ACE map of the synthetic sequence (shipped encoder, test recipe cut to 400 steps: ~20 s; coarse but
    plenty for the node tests, which check the plumbing; test_ace checks ACE's accuracy)."""
    from prism_ros.ace import load_encoder, map_scene, save_map
    from prism_ros.ace.mapping import get_recipe
    from prism_ros.datasets import open_dataset

    torch.manual_seed(0)
    ace_map = map_scene(open_dataset(synthetic_sequence, fmt="tum"), load_encoder(), get_recipe("test", steps=400),
                        progress=False)
    return save_map(ace_map, tmp_path_factory.mktemp("ace") / "room.ace")


class AceWatch:
    """ace_node's diagnostics and outputs, on the probe's node."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from std_msgs.msg import Int32

        from prism_ros.nodes.compat import reliable_qos

        self.diag: list[dict] = []
        self.poses, self.inliers = [], []
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable_qos(100))
        node.create_subscription(PoseWithCovarianceStamped, "/ace_node/pose", self.poses.append, reliable_qos(10))
        node.create_subscription(Int32, "/ace_node/inliers", lambda m: self.inliers.append(m.data), reliable_qos(10))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(ACE_DIAG):
                self.diag.append({kv.key: kv.value for kv in status.values})

    def last(self) -> dict:
        return self.diag[-1] if self.diag else {}


def test_online_mapping_from_prism_poses_then_relocalization(synthetic_sequence, spawn_python, ros_node, tmp_path):
    """ace_node keeps keyframes of the images PRISM tracked (with PRISM's poses), maps them in the background,
    checkpoints the map, and then relocalizes the newest image where PRISM says the camera is."""
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.conversions import pose_to_matrix

    frames = [f for f in open_dataset(synthetic_sequence, fmt="tum")]
    probe = PrismProbe(ros_node)
    ace = AceWatch(ros_node)
    client = NodeClient(ros_node, "/ace_node", probe.executor)
    map_path = tmp_path / "online.ace"
    spawn_python(["-m", "prism_ros.nodes.prism_node"], "--ros-args", *ros_args(
        rgb_topic="/probe/rgb", depth_topic="/probe/depth", camera_info_topic="/probe/camera_info",
        rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable", filter_config="prism_synthetic.yaml",
        transition_model="constant_velocity", diagnostics_period=0.1, sync_slop=0.01, frame_queue=40),
        stdout=(tmp_path / "prism.log").open("w"), stderr=subprocess.STDOUT)
    log = tmp_path / "ace.log"
    ace_node = spawn_python(["-m", "prism_ros.nodes.ace_node"], "--ros-args", *ros_args(
        rgb_topic="/probe/rgb", camera_info_topic="/probe/camera_info", depth_topic="/probe/depth",
        image_qos="reliable", map_path=map_path, online_mapping=True, mapping_recipe="test", mapping_steps=400,
        keyframe_distance=0.02, keyframe_angle_deg=3.0, remap_after_keyframes=12, recovery=False, min_inliers=20,
        diagnostics_period=0.1),
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    probe.wait_ready(timeout=90)
    assert client.spin_until(lambda: ace.last().get("map") == "none", 60), log.read_text()
    for frame in frames:
        probe.publish_frame(frame.rgb, frame.depth, frame.intrinsics, int(round(frame.timestamp * 1e9)))
        probe.spin(0.15)
    probe.wait_diag(lambda d: int(d["frames_processed"]) == len(frames), 60)
    assert client.spin_until(lambda: int(ace.last().get("mappings", 0)) >= 1, 180), \
        (ace.last(), log.read_text()[-2000:])
    assert int(ace.last()["keyframes"]) >= 12 and map_path.is_file()
    answer = client.call("relocalize")
    assert answer.success, answer.message
    assert client.spin_until(lambda: ace.poses, 5)
    ace_pose, prism_pose = pose_to_matrix(ace.poses[-1].pose.pose), pose_to_matrix(probe.got["pose"][-1].pose.pose)
    assert ace.poses[-1].header.stamp == probe.got["pose"][-1].header.stamp
    # the test recipe at 160x120 (15x20 feature cells) is coarse: about 10 cm here; a map in another frame
    # than PRISM's would be off by metres (the room is 4 m wide)
    assert np.linalg.norm(ace_pose[:3, 3] - prism_pose[:3, 3]) < 0.2, (ace_pose, prism_pose)
    # the image came with depth and the map with its surfaces: the pose was depth-checked (and refined)
    assert "depth-checked" in answer.message and "not depth-checked" not in answer.message, answer.message
    assert client.spin_until(lambda: int(ace.last().get("depth_checked", 0)) >= 1, 5), ace.last()
    last = ace.last()
    assert last["map_depth_check"] == "yes" and last["last_source"] in ("ace", "features")
    assert int(last["answered_ace"]) + int(last["answered_features"]) == int(last["accepted"])
    ace_node.send_signal(2)
    assert ace_node.wait(15) == 0


def test_parameter_file_documents_every_parameter_with_its_default():
    import yaml

    from prism_ros.nodes.ace_node import PARAMETERS, parameters_yaml

    text = (Path(__file__).resolve().parents[1] / "config/ace.yaml").read_text()
    assert text == parameters_yaml(), "config/ace.yaml is stale: regenerate with ace_node.parameters_yaml()"
    assert yaml.safe_load(text)["/**"]["ros__parameters"] == {n: p.default for n, p in PARAMETERS.items()}


class NodeClient:
    """Trigger services and parameter changes of one node, spinning the test's node on a private executor."""

    def __init__(self, node, target: str, executor=None):
        """``executor``: the one already spinning ``node`` (a node belongs to one executor), else a new one."""
        from rclpy.executors import SingleThreadedExecutor

        self.node, self.target, self.clients = node, target, {}
        if executor is None:
            executor = SingleThreadedExecutor(context=node.context)
            executor.add_node(node)
        self.executor = executor

    def spin_until(self, condition, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return bool(condition())

    def call(self, service: str, timeout: float = 60.0):
        from std_srvs.srv import Trigger

        client = self.clients.setdefault(service, self.node.create_client(Trigger, f"{self.target}/{service}"))
        assert self.spin_until(client.service_is_ready, 10), f"{service} not available"
        future = client.call_async(Trigger.Request())
        assert self.spin_until(future.done, timeout), f"{service} did not answer"
        return future.result()

    def set_parameter(self, name: str, value: str) -> tuple[bool, str]:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = self.clients.setdefault("set", self.node.create_client(SetParameters, f"{self.target}/set_parameters"))
        assert self.spin_until(client.service_is_ready, 10)
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=value)]))
        assert self.spin_until(future.done, 10)
        result = future.result().results[0]
        return result.successful, result.reason


def test_map_services_bad_images_and_start_up_errors(ace_map_file, spawn_python, ros_node, tmp_path):
    from sensor_msgs.msg import Image

    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import numpy_to_image

    map_path = ace_map_file
    ace = AceWatch(ros_node)
    client = NodeClient(ros_node, "/ace_node")
    log = tmp_path / "ace.log"
    node = spawn_python(["-m", "prism_ros.nodes.ace_node"], "--ros-args", *ros_args(
        rgb_topic="/probe/rgb", camera_info_topic="/probe/camera_info", image_qos="reliable",
        map_path=tmp_path / "none.ace", diagnostics_period=0.1), stdout=log.open("w"),
        stderr=subprocess.STDOUT)
    assert client.spin_until(lambda: ace.last().get("map") == "none", 60), log.read_text()
    assert not client.call("relocalize").success  # no image yet
    assert not client.call("save_map").success  # nothing to save

    # an image on ~/query without a map: counted, the node keeps running
    query = ros_node.create_publisher(Image, "/ace_node/query", reliable_qos(2))
    assert client.spin_until(lambda: query.get_subscription_count() > 0, 10)
    query.publish(numpy_to_image(np.zeros((8, 8, 3), np.uint8), "rgb8"))
    assert client.spin_until(lambda: ace.last().get("bad_input.no_map") == "1", 10), ace.last()

    # a corrupt map file is refused with the reason; the real one loads; save writes a loadable copy
    corrupt = tmp_path / "corrupt.ace"
    corrupt.write_bytes(b"not a map")
    assert client.set_parameter("map_path", str(corrupt))[0]
    loaded = client.call("load_map")
    assert not loaded.success and "cannot load the ACE map" in loaded.message, loaded.message
    assert client.set_parameter("map_path", str(map_path))[0]
    assert client.call("load_map").success
    assert client.set_parameter("map_path", str(tmp_path / "copy.ace"))[0]
    assert client.call("save_map").success and (tmp_path / "copy.ace").stat().st_size > 1000
    rejected = client.set_parameter("device", "cuda")
    assert not rejected[0] and "read-only" in rejected[1]
    assert client.spin_until(lambda: ace.last().get("failures.load_map") == "1", 5), ace.last()
    node.send_signal(2)
    assert node.wait(15) == 0
    assert "Traceback" not in log.read_text()

    # start-up: a corrupt map and an invalid parameter each end with exit code 2 and one line
    for params, needle in (({"map_path": corrupt}, "cannot read the map"), ({"min_inliers": 2}, "min_inliers")):
        bad = spawn_python(["-m", "prism_ros.nodes.ace_node"], "--ros-args", *ros_args(**params))
        _, err = bad.communicate(timeout=60)
        assert bad.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_an_exception_in_a_callback_leaves_ace_node_running(spawn_python, ros_node, tmp_path):
    """Fail points make each callback raise once: counted, answered as failed, and the next call works."""
    import os

    from sensor_msgs.msg import Image

    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import numpy_to_image
    from prism_ros.nodes.health import FAILPOINTS_VARIABLE

    ace = AceWatch(ros_node)
    client = NodeClient(ros_node, "/ace_node")
    log = tmp_path / "ace.log"
    node = spawn_python(["-m", "prism_ros.nodes.ace_node"], "--ros-args", *ros_args(
        rgb_topic="/probe/rgb", camera_info_topic="/probe/camera_info", image_qos="reliable",
        map_path=tmp_path / "none.ace", diagnostics_period=0.1), stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, FAILPOINTS_VARIABLE: "query,relocalize,parameters"})
    assert client.spin_until(lambda: ace.last().get("map") == "none", 60), log.read_text()
    failed = client.call("relocalize")
    assert not failed.success and "internal error" in failed.message, failed
    again = client.call("relocalize")
    assert not again.success and "internal error" not in again.message, again  # the usual answer: no image yet
    ok, reason = client.set_parameter("map_path", str(tmp_path / "other.ace"))
    assert not ok and "internal error" in reason, reason
    assert client.set_parameter("map_path", str(tmp_path / "other.ace"))[0]
    query = ros_node.create_publisher(Image, "/ace_node/query", reliable_qos(2))
    assert client.spin_until(lambda: query.get_subscription_count() > 0, 10)
    for _ in range(2):  # the first raises, the second is counted as the bad input it is (no map)
        query.publish(numpy_to_image(np.zeros((8, 8, 3), np.uint8), "rgb8"))
    assert client.spin_until(lambda: ace.last().get("bad_input.no_map") == "1", 10), ace.last()
    last = ace.last()
    assert [last[f"callback_errors.{n}"] for n in ("query", "relocalize", "parameters")] == ["1"] * 3, last
    assert last["callback_errors_total"] == "3" and node.poll() is None


def test_ace_covariance_reaches_ros_through_the_left_perturbation():
    """Sampled right perturbations of the camera pose, pushed to the base, give the ROS covariance."""
    from prism_ros.geometry import se3_exp
    from prism_ros.nodes.ace_node import camera_covariance_to_ros

    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    covariance = A @ A.T * 1e-5
    T_world_camera = se3_exp(torch.as_tensor(rng.normal(size=6))).numpy()
    T_camera_base = se3_exp(torch.as_tensor(rng.normal(size=6) * 0.2)).numpy()
    T_map_base = T_world_camera @ T_camera_base
    xi = rng.multivariate_normal(np.zeros(6), covariance, 40000)
    bases = T_world_camera @ se3_exp(torch.as_tensor(xi)).numpy() @ T_camera_base
    dp = bases[:, :3, 3] - T_map_base[:3, 3]
    ros = camera_covariance_to_ros(covariance, T_world_camera, T_map_base)
    assert np.allclose(np.cov(dp.T), ros[:3, :3], rtol=0.08, atol=1e-8)


def test_keyframes_are_new_viewpoints():
    from prism_ros.nodes.ace_node import is_new_keyframe

    turn = np.eye(4)
    turn[:3, :3] = [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]
    moved = np.eye(4)
    moved[:3, 3] = [0.05, 0, 0]
    assert is_new_keyframe(np.eye(4), [], 0.1, 10.0)
    assert not is_new_keyframe(moved, [np.eye(4)], 0.1, 10.0)
    assert is_new_keyframe(turn, [np.eye(4)], 0.1, 10.0)  # 17 deg
    far = np.eye(4)
    far[:3, 3] = [0.2, 0, 0]
    assert is_new_keyframe(far, [np.eye(4), moved], 0.1, 10.0)


def test_recovery_of_a_kidnapped_camera_without_the_user(ace_map_file, synthetic_sequence, domain_id, tmp_path):
    """The suite on a synthetic bag with a kidnap (the camera teleported back to its start while time runs on,
    then held still for 10 frames). ace_node starts with a map made offline in the scene's frame: it localizes
    an early image and sends it to /prism_node/reset_at_pose stamped like it, so PRISM restarts in that frame at
    that image. At the kidnap prism_node loses tracking; ace_node relocalizes the image PRISM lost (named on
    /prism_node/tracking_lost) and sends its pose to /prism_node/set_pose; PRISM tracks the rest of the
    kidnapped frames on the map it kept. Both poses carry their image's stamp, so the outcome does not depend
    on how far prism_node lags behind the bag (it queues every frame in a replay). Without the relocalized
    pose these frames stay lost (the filter is 0.43 m and 30+ degrees away; test_filter checks that case
    in-process)."""
    from dataclasses import replace

    import yaml
    from ros_helpers.kidnap_bag import write_kidnap_bag
    from scipy.spatial.transform import Rotation

    from prism_ros.evaluation.trajectory_io import read_tum
    from prism_ros.launch_graph.graph import ace_node_spec, share_dir
    from prism_ros.launch_graph.replay import PRESETS, bag_ground_truth, replay_bag

    bag = tmp_path / "kidnap"
    kidnap_ns, kidnapped = write_kidnap_bag(synthetic_sequence / "bag", bag, seconds=0.4, hold=10)
    share = share_dir()
    ace = ace_node_spec(share / "config/ace.yaml", share / "config/sensors/synthetic.yaml", ace_map_file,
                        use_sim_time=True)
    ace = replace(ace, parameters={**ace.parameters, "image_qos": "reliable", "min_inliers": 20,
                                   "recovery_period": 0.3, "diagnostics_period": 0.2, "image_buffer": 100})
    out = tmp_path / "replay"
    summary = replay_bag(bag, "synthetic", out, rate=0.2, extra_nodes=[ace], progress=False, domain_id=domain_id,
                         node_overrides={"transition_model": "constant_velocity", "publish_when_lost": False})
    ace_log, prism_log = (out / "other_nodes.log").read_text(), (out / "prism_node.log").read_text()
    assert "initial localization: sent /prism_node/reset_at_pose" in ace_log, ace_log
    assert "pose received on ~/reset_at_pose" in prism_log, prism_log
    assert "recovery: sent /prism_node/set_pose" in ace_log and summary["relocalizations"] >= 1, (ace_log, summary)

    times, poses = read_tum(out / "trajectory.tum")  # tracked frames only (publish_when_lost false)
    truth_times, truth = bag_ground_truth(bag, PRESETS["synthetic"])
    offsets = poses[:, :3, 3] - truth[np.searchsorted(truth_times, times - 1e-6), :3, 3]
    kidnap, last = kidnap_ns / 1e9, kidnap_ns / 1e9 + (kidnapped - 1) / 30
    assert not np.isclose(times, kidnap, rtol=0, atol=1e-3).any(), "the kidnapped frame was not lost"
    assert np.isclose(times, last, rtol=0, atol=1e-3).any(), (times, last, summary)  # tracking again at the end
    # ACE answered for a frame PRISM lost, not for the newest image (which a lagging PRISM has not reached)
    recovered = float(re.search(r"set_pose for the image at ([0-9.]+) s", ace_log).group(1))
    assert kidnap - 1e-3 < recovered < last and not np.isclose(times, recovered, rtol=0, atol=1e-3).any(), recovered
    after = times > kidnap + 1e-3  # frames processed while ACE relocalizes are lost too: a few, more under load
    assert after.sum() >= kidnapped // 2, (after.sum(), kidnapped, summary)
    # PRISM restarts in ACE's frame: at ACE's pose of the localized image moved by PRISM's own tracking since that
    # image (the restart comes while PRISM is frames ahead of it), so its map frame is the ACE map's up to ACE's
    # error, E = T_ace T_true(image)^-1; later poses are E applied to the truth, up to PRISM's drift. After the
    # recovery PRISM tracks on its own map again, so the kidnapped frames carry the same offset
    initial = re.search(r"/reset_at_pose for the image at ([0-9.]+) s \(\d+ inliers, base at \[([^]]+)\] "
                        r"quaternion ([-0-9.e ]+)\)", ace_log)
    T_ace = np.eye(4)
    T_ace[:3, :3] = Rotation.from_quat([float(x) for x in initial.group(3).split()]).as_matrix()
    T_ace[:3, 3] = [float(x) for x in initial.group(2).split(",")]
    preset = yaml.safe_load((share / "config/sensors/synthetic.yaml").read_text())["/**"]["ros__parameters"]
    T_ace = T_ace @ np.reshape(preset["T_base_camera"], (4, 4))  # ACE sends the base; the truth is the camera
    T_true = truth[np.searchsorted(truth_times, float(initial.group(1)) - 1e-6)]
    assert np.linalg.norm(T_ace[:3, 3] - T_true[:3, 3]) < 0.1, (T_ace, T_true)  # a localization, not noise
    E = T_ace @ np.linalg.inv(T_true)
    drift = poses[:, :3, 3] - (E @ truth[np.searchsorted(truth_times, times - 1e-6)])[:, :3, 3]
    in_ace_frame = np.flatnonzero(~after)[-5:]  # the first frames may precede the restart (PRISM's own frame)
    assert np.linalg.norm(drift[in_ace_frame], axis=1).max() < 0.03, drift[in_ace_frame]
    before = offsets[~after][-10:]
    assert np.linalg.norm(offsets[after] - before.mean(axis=0), axis=1).max() < 0.02, (offsets[after], before)
