"""Fuzzing the nodes' inputs over real DDS: seeded generation of malformed messages, sent to live nodes.

Each round picks an input class (table below) and draws a malformed message of it from a seeded generator;
after it the node must be alive, have counted the input under a ``bad_input.<cause>`` key, and have processed
no frame from it; at the end the map saved before the rounds equals the map saved after them, and good
frames are tracked again. ``PRISM_FUZZ_ROUNDS`` (default 48) and ``PRISM_FUZZ_SEED`` (default 7) choose
the run: e.g. ``PRISM_FUZZ_ROUNDS=1000 pytest test/test_fuzz_inputs.py`` for a long local run.

Input classes (prism_node): colour and depth encodings a camera never sends, depth that is NaN / zero /
negative / infinite / noise, images whose data is shorter than height x step, whose step is too small, of
zero size or of a size beyond max_image_pixels, colour and depth of different sizes, CameraInfo with
non-finite, zero, negative or absurd intrinsics or of another image size, IMU samples that are non-finite or
beyond any IMU's range, and pose inputs (/initialpose, ~/set_pose, ~/reset_at_pose) that are non-finite,
not a rotation, with a non-finite covariance, or in a frame TF does not know. dmn_node's camera gets the image
classes.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ros_helpers.dmn_probe import DmnProbe
from ros_helpers.ros_args import ros_args

pytestmark = pytest.mark.timeout(240)

ROUNDS = int(os.environ.get("PRISM_FUZZ_ROUNDS", "48"))
SEED = int(os.environ.get("PRISM_FUZZ_SEED", "7"))
PERIOD_NS = 33_333_333


# ----------------------------------------------------------------------------------- malformed images
def bad_encoding_rgb(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    encoding = rng.choice(["32FC1", "64FC1", "16UC1", "mono16", "yuv422_yuy2_x", "rgba16", ""])
    pixels = np.frombuffer(np.random.default_rng(rng.randrange(1 << 30)).bytes(rgb.size * 8), np.uint8)
    msg = numpy_to_image(rgb, "rgb8")
    msg.encoding = encoding
    msg.data = pixels[:len(msg.data)].tobytes()
    return "colour", msg, ("bad_encoding", "bad_image")


def bad_encoding_depth(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    msg = numpy_to_image(rgb, "rgb8")
    msg.encoding = rng.choice(["rgb8", "bgr8", "mono8", "8UC3", "64FC1", "nonsense"])
    return "depth", msg, ("bad_encoding", "bad_image", "size_mismatch")


def bad_depth_values(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    kind = rng.choice(["nan", "zero", "negative", "inf", "noise", "huge"])
    values = {"nan": np.full_like(depth, np.nan), "zero": np.zeros_like(depth), "negative": -np.abs(depth) - 0.1,
              "inf": np.full_like(depth, np.inf), "huge": np.full_like(depth, 1e30),
              "noise": np.random.default_rng(rng.randrange(1 << 30)).uniform(0.2, 8.0, depth.shape)}[kind]
    return "depth", numpy_to_image(values.astype(np.float32), "32FC1"), ("bad_depth",)


def truncated_image(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    which = rng.choice(["colour", "depth"])
    msg = numpy_to_image(rgb, "rgb8") if which == "colour" else numpy_to_image(depth, "32FC1")
    msg.data = bytes(msg.data[:rng.randrange(0, len(msg.data))])
    return which, msg, ("bad_image",)


def bad_geometry_image(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    msg = numpy_to_image(rgb, "rgb8")
    kind = rng.choice(["step", "zero", "huge"])
    if kind == "step":
        msg.step = rng.randrange(0, msg.width * 3)
    elif kind == "zero":
        msg.width, msg.height, msg.step, msg.data = 0, 0, 0, b""
    else:
        msg.width, msg.height = 40_000, 30_000
        msg.step = msg.width * 3
    return "colour", msg, ("bad_image", "size_mismatch")


def mismatched_depth(rng, rgb, depth):
    from prism_ros.nodes.conversions import numpy_to_image

    h, w = depth.shape
    small = np.ascontiguousarray(depth[: rng.randrange(2, h), : rng.randrange(2, w)])
    return "depth", numpy_to_image(small, "32FC1"), ("size_mismatch",)


def bad_camera_info(rng, rgb, depth, intrinsics=None):
    from prism_ros.nodes.conversions import intrinsics_to_camera_info

    info = intrinsics_to_camera_info(intrinsics)
    kind = rng.choice(["nan", "inf", "zero", "negative", "tiny", "huge", "centre", "size"])
    k = list(info.k)
    if kind == "size":
        info.width, info.height = info.width * 2 + rng.randrange(1, 9), info.height + rng.randrange(1, 9)
        return "info", info, ("size_mismatch",)
    if kind == "nan":
        k[rng.choice([0, 2, 4, 5])] = float("nan")
    elif kind == "inf":
        k[0] = float("inf")
    elif kind == "zero":
        k = [0.0] * 9
    elif kind == "negative":
        k[0], k[4] = -abs(k[0]), -abs(k[4])
    elif kind == "tiny":
        k[0] = k[4] = 1e-6
    elif kind == "huge":
        k[0] = k[4] = 1e12
    else:
        k[2] = 1e7
    info.k = k
    return "info", info, ("bad_camera_info",)


FRAME_CLASSES = [bad_encoding_rgb, bad_encoding_depth, bad_depth_values, truncated_image, bad_geometry_image,
                 mismatched_depth, bad_camera_info]


def bad_imu(rng):
    from sensor_msgs.msg import Imu

    msg = Imu()
    value = rng.choice([float("nan"), float("inf"), -float("inf"), 1e6, -5e4, 1e30])
    field = rng.choice(["linear_acceleration", "angular_velocity"])
    setattr(getattr(msg, field), rng.choice("xyz"), value)
    if field == "angular_velocity" and abs(value) < 1e5 and np.isfinite(value):
        msg.angular_velocity.x = 10000.0  # beyond 100 rad/s
    return msg


def bad_pose(rng):
    from geometry_msgs.msg import PoseWithCovarianceStamped

    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose.orientation.w = 1.0
    kind = rng.choice(["nan", "inf", "quaternion", "zero_quaternion", "huge_quaternion", "covariance", "frame"])
    if kind == "nan":
        msg.pose.pose.position.x = float("nan")
    elif kind == "inf":
        msg.pose.pose.position.y = float("inf")
    elif kind == "quaternion":
        msg.pose.pose.orientation.x = 0.9
    elif kind == "zero_quaternion":
        msg.pose.pose.orientation.w = 0.0
    elif kind == "huge_quaternion":
        msg.pose.pose.orientation.x = 1e200  # its square overflows a float
    elif kind == "covariance":
        covariance = np.zeros(36)
        covariance[rng.randrange(36)] = float("nan")
        msg.pose.covariance = covariance.tolist()
    else:
        msg.header.frame_id = f"nowhere_{rng.randrange(1000)}"
    return msg


# ----------------------------------------------------------------------------------------- prism_node
def _saved_tensors(path: Path) -> dict:
    import torch

    data = torch.load(path, map_location="cpu", weights_only=False)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value
        else:
            flat[prefix] = repr(value)
    walk("", data)
    return flat


def _same_map(a: Path, b: Path) -> bool:
    import torch

    first, second = _saved_tensors(a), _saved_tensors(b)
    return first.keys() == second.keys() and all(
        torch.equal(first[k], second[k]) if isinstance(first[k], torch.Tensor) else first[k] == second[k]
        for k in first)


def test_prism_node_survives_malformed_inputs_and_keeps_its_map(synthetic_sequence, spawn_python, ros_node,
                                                               tmp_path):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from ros_helpers.prism_probe import PrismProbe

    from prism_ros.datasets import open_dataset
    from prism_ros.nodes.compat import reliable_qos
    from prism_ros.nodes.conversions import intrinsics_to_camera_info, ns_to_stamp, numpy_to_image

    frames = [open_dataset(synthetic_sequence, fmt="tum")[i] for i in range(8)]
    intrinsics = frames[0].intrinsics
    probe = PrismProbe(ros_node)
    pose_pubs = [probe.initial_pose_pub, probe.reset_pose_pub,
                 ros_node.create_publisher(PoseWithCovarianceStamped, "/prism_node/set_pose", reliable_qos(10))]
    log = tmp_path / "node.log"
    node = spawn_python(["-m", "prism_ros.nodes.prism_node"], "--ros-args", *ros_args(
        rgb_topic="/probe/rgb", depth_topic="/probe/depth", camera_info_topic="/probe/camera_info",
        imu_topic="/probe/imu", rgb_qos="reliable", depth_qos="reliable", camera_info_qos="reliable",
        imu_qos="reliable", filter_config="prism_synthetic.yaml", transition_model="constant_velocity",
        diagnostics_period=0.05, frame_queue=10, max_image_pixels=1_000_000),
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    probe.wait_ready()
    for publisher in pose_pubs:
        assert probe.spin_until(lambda p=publisher: p.get_subscription_count() > 0, 10)
    t0 = int(round(frames[0].timestamp * 1e9))
    for k in range(3):
        probe.publish_frame(frames[k].rgb, frames[k].depth, intrinsics, t0 + k * PERIOD_NS)
        probe.wait_diag(lambda d, k=k: d["frames_processed"] == str(k + 1))
    before = tmp_path / "before.pt"
    assert probe.set_parameter("map_path", str(before))[0] and probe.call("save_map").success

    rng = random.Random(SEED)
    stamp = t0 + 2 * PERIOD_NS  # rejected frames are stamped 10 us apart, between the good frames 2 and 3, so
    # that tracking resumes at frame 3 as if nothing had come between
    processed = probe.value("frames_processed")
    for round_ in range(ROUNDS):
        seen = dict(probe.diag())
        counted = int(seen["bad_input_total"])
        if round_ % 5 == 3:
            probe.imu_pub.publish(bad_imu(rng))
            causes, what = ("bad_imu",), "imu"
        elif round_ % 5 == 4:
            msg = bad_pose(rng)
            rng.choice(pose_pubs).publish(msg)
            causes, what = ("bad_initial_pose",), f"pose {msg.header.frame_id} {msg.pose.pose}"
        else:
            make = rng.choice(FRAME_CLASSES)
            frame = frames[3]
            kwargs = {"intrinsics": intrinsics} if make is bad_camera_info else {}
            part, msg, causes = make(rng, frame.rgb, frame.depth, **kwargs)
            stamp += 10_000
            assert stamp < t0 + 3 * PERIOD_NS, "too many rounds for the stamps between two frames"
            msg.header.stamp = ns_to_stamp(stamp)
            rgb = msg if part == "colour" else numpy_to_image(frame.rgb, "rgb8")
            depth = msg if part == "depth" else numpy_to_image(frame.depth, "32FC1")
            info = msg if part == "info" else intrinsics_to_camera_info(intrinsics)
            for message in (rgb, depth, info):
                message.header.stamp = ns_to_stamp(stamp)
            probe.rgb_pub.publish(rgb)
            probe.depth_pub.publish(depth)
            probe.info_pub.publish(info)
            what = f"{make.__name__} {part} {getattr(msg, 'encoding', '')} {getattr(msg, 'width', '')}x" \
                   f"{getattr(msg, 'height', '')}"
        got = probe.wait_diag(lambda d, c=counted: int(d["bad_input_total"]) > c, 15)
        assert node.poll() is None, f"round {round_} ({what}) ended the node:\n{log.read_text()[-3000:]}"
        grew = [key[len("bad_input."):] for key, value in got.items()
                if key.startswith("bad_input.") and int(value) > int(seen.get(key, 0))]
        assert len(grew) == 1 and grew[0] in causes, (round_, what, causes, grew)
        assert int(got["bad_input_total"]) == counted + 1, (round_, what, got)
        assert int(got["frames_processed"]) == processed, (round_, what, got)

    after = tmp_path / "after.pt"
    assert probe.set_parameter("map_path", str(after))[0] and probe.call("save_map").success
    assert _same_map(before, after), "a rejected input changed the map"
    for k in range(3, 8):  # tracking resumes on good frames
        probe.publish_frame(frames[k].rgb, frames[k].depth, intrinsics, t0 + k * PERIOD_NS)
        probe.spin(0.1)
    resumed = probe.wait_diag(lambda d: int(d["frames_processed"]) >= processed + 3 and d["state"] == "tracking", 30)
    assert resumed["callback_errors_total"] == "0" and node.poll() is None, resumed


# ------------------------------------------------------------------------------------------- dmn_node
IMAGE_CLASSES = [bad_encoding_rgb, truncated_image, bad_geometry_image]


def test_dmn_node_survives_malformed_images(spawn_python, ros_node, tmp_path, tiny_dmn):
    """The image classes against dmn_node's camera: each counted once, the node alive, a good image localized."""

    from prism_ros.nodes.conversions import numpy_to_image, sec_to_stamp

    weights, contexts, queries, _, _ = tiny_dmn
    probe = DmnProbe(ros_node)
    diag, particles, images, spin_until = probe.diag, probe.particles, probe.images, probe.spin_until
    log = tmp_path / "dmn.log"
    node = probe.start(spawn_python, log, weights, contexts, particles=64, diagnostics_period=0.05)
    rng = random.Random(SEED)
    depth = np.ones(queries[0].shape[:2], np.float32)
    for round_ in range(max(8, ROUNDS // 4)):
        counted = int(diag[-1]["bad_input_total"])
        make = rng.choice(IMAGE_CLASSES)
        _, msg, _ = make(rng, queries[0], depth)
        if msg.encoding == "32FC1":  # the depth half of truncated_image: a camera image here
            msg.encoding = "rgb8"
        msg.header.stamp = sec_to_stamp(1.0 + round_)
        images.publish(msg)
        assert spin_until(lambda c=counted: int(diag[-1]["bad_input_total"]) > c, 15), (round_, make.__name__, diag[-1])
        assert node.poll() is None, log.read_text()[-3000:]
    images.publish(numpy_to_image(queries[0], "rgb8", stamp=100.0))
    assert spin_until(lambda: particles, 20), log.read_text()[-2000:]
    assert diag[-1]["callback_errors_total"] == "0" and node.poll() is None
