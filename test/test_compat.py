"""Fallbacks for missing ROS pieces (synchroniser, TF, piece detection, QoS) and msg <-> numpy conversions."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
from ros_helpers.dds import spin_until
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu

from prism_ros.errors import InputError
from prism_ros.frame import Intrinsics
from prism_ros.nodes import compat
from prism_ros.nodes import conversions as cv
from prism_ros.nodes.compat import (
    ApproximateTimeSynchronizer,
    has_ros_piece,
    make_synchronizer,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# approximate-time synchroniser (pure Python) fed with real rclpy messages
# ---------------------------------------------------------------------------------------------


def _image(t: float, name: str = "") -> Image:
    return Image(header=cv.make_header(name, t))


def _info(t: float, name: str = "") -> CameraInfo:
    return CameraInfo(header=cv.make_header(name, t))


class _Collector:
    def __init__(self):
        self.sets = []

    def __call__(self, *msgs):
        self.sets.append(tuple(m.header.frame_id for m in msgs))


def _sync(queue_size=10, slop=0.02, n=2):
    collected = _Collector()
    return ApproximateTimeSynchronizer(n, queue_size, slop, collected), collected


def test_sync_matches_exact_and_within_slop_pairs():
    sync, got = _sync()
    sync.add(0, _image(1.00, "a0"))
    sync.add(1, _info(1.00, "b0"))
    sync.add(0, _image(2.00, "a1"))
    sync.add(1, _info(2.015, "b1"))  # 15 ms apart, slop 20 ms
    assert got.sets == [("a0", "b0"), ("a1", "b1")]
    assert sync.pending() == [0, 0]


def test_sync_ignores_pairs_outside_slop_until_a_partner_arrives():
    sync, got = _sync()
    sync.add(0, _image(3.00, "a"))
    sync.add(1, _info(3.20, "far"))  # 200 ms: no match
    assert got.sets == [] and sync.pending() == [1, 1]
    sync.add(1, _info(3.01, "near"))  # arrives late but within slop of "a"
    assert got.sets == [("a", "near")]
    assert sync.pending() == [0, 1]  # "far" is newer than the match: kept


def test_sync_drops_older_unmatched_messages_after_a_match():
    sync, got = _sync()
    sync.add(0, _image(4.00, "stale"))
    sync.add(1, _info(3.50, "stale_info"))
    sync.add(0, _image(5.00, "a"))
    sync.add(1, _info(5.01, "b"))
    assert got.sets == [("a", "b")]
    assert sync.pending() == [0, 0]  # both stale messages were older than the match


def test_sync_picks_the_tightest_set():
    sync, got = _sync(slop=0.05)
    sync.add(0, _image(6.00, "early"))
    sync.add(0, _image(6.04, "close"))
    sync.add(1, _info(6.03, "b"))  # both images within slop; 6.04 is 10 ms away
    assert got.sets == [("close", "b")]
    assert sync.pending() == [0, 0]


def test_sync_queue_size_drops_the_oldest():
    sync, got = _sync(queue_size=2)
    for i, t in enumerate((7.0, 7.5, 8.0)):
        sync.add(0, _image(t, f"a{i}"))
    assert sync.pending() == [2, 0]
    sync.add(1, _info(7.0, "b"))  # its partner 7.0 fell out of the queue
    assert got.sets == []
    sync.add(1, _info(8.0, "b8"))
    assert got.sets == [("a2", "b8")]


def test_sync_three_inputs_and_callbacks_in_input_order():
    sync, got = _sync(n=3, slop=0.01)
    sync.add(2, _image(9.000, "c"))
    sync.add(0, _image(9.005, "a"))
    assert got.sets == []
    sync.add(1, _info(9.009, "b"))  # spread 9 ms
    assert got.sets == [("a", "b", "c")]
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer(1, 10, 0.1)


def test_make_synchronizer_in_a_node_with_a_publisher_process(ros_node, spawn_python, unique_ns):
    """Real subscriptions: 10 jittered pairs match; the 10 extra images are dropped, never paired."""
    from prism_ros.nodes.compat import reliable_qos

    got = _Collector()
    arrivals = []
    result = make_synchronizer(ros_node, [(Image, f"{unique_ns}/image", reliable_qos(100)),
                                          (CameraInfo, f"{unique_ns}/info", reliable_qos(100))],
                               queue_size=10, slop=0.02, callback=got, prefer="pure-python",
                               on_arrival=lambda index, msg: arrivals.append((index, msg.header.frame_id)))
    assert result.implementation == "pure-python" and len(result.subscriptions) == 2
    publisher = spawn_python("pair_publisher.py", unique_ns, "--pairs", 10)
    spin_until(ros_node, lambda: len(got.sets) >= 10 and publisher.poll() is not None, timeout=30)
    assert got.sets == [(f"seq_{i}", f"seq_{i}") for i in range(10)]
    assert result.synchronizer.pending() == [0, 0]
    assert sorted(arrivals) == sorted([(0, f"seq_{i}") for i in range(10)] + [(0, f"extra_{i}") for i in range(10)]
                                      + [(1, f"seq_{i}") for i in range(10)])  # every message, matched or not
    assert publisher.wait(timeout=20) == 0
    result.set_slop(0.5)
    assert result.synchronizer.slop_ns == 500_000_000


def test_make_synchronizer_uses_message_filters_when_present(ros_node):
    result = make_synchronizer(ros_node, [(Image, "a", 10), (CameraInfo, "b", 10)], 5, 0.1,
                               lambda *m: None)
    expected = "message_filters" if has_ros_piece("message_filters") else "pure-python"
    assert result.implementation == expected


# ---------------------------------------------------------------------------------------------
# TF, piece detection, QoS
# ---------------------------------------------------------------------------------------------


def test_has_ros_piece_is_not_fooled_by_a_launch_folder():
    """This repository has a launch/ folder, which imports as an empty namespace package."""
    spec = importlib.util.find_spec("launch")
    if spec is not None and spec.origin in (None, "namespace"):  # only the folder
        assert not has_ros_piece("launch")
    summary = {p.name: p for p in compat.ros_pieces_summary()}
    assert set(summary) == set(compat.ROS_PIECES)
    assert summary["launch"].present == has_ros_piece("launch")
    assert "tf2_msgs" in compat.format_ros_pieces()
    with pytest.raises(KeyError):
        has_ros_piece("not_a_piece")


def test_qos_profiles():
    sensor, reliable = compat.sensor_qos(3), compat.reliable_qos(7)
    assert (sensor.reliability, sensor.durability, sensor.history, sensor.depth) == (
        ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, HistoryPolicy.KEEP_LAST, 3)
    assert (reliable.reliability, reliable.durability, reliable.history, reliable.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, HistoryPolicy.KEEP_LAST, 7)
    assert compat.qos_by_name("sensor", 2).depth == 2
    with pytest.raises(ValueError):
        compat.qos_by_name("fast", 1)


# ---------------------------------------------------------------------------------------------
# conversions: images
# ---------------------------------------------------------------------------------------------

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "8UC1", "8UC3", "8UC4",
             "8SC1", "16UC1", "16SC1", "32SC1", "32FC1", "32FC3", "64FC1"]


def _random_pixels(encoding: str, rng, height=5, width=7) -> np.ndarray:
    dtype, channels = cv.encoding_layout(encoding)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_numpy_image_round_trip(encoding):
    pixels = _random_pixels(encoding, np.random.default_rng(1))
    msg = cv.numpy_to_image(pixels, encoding, stamp=1.5, frame_id="cam", backend="numpy")
    assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == (encoding, 5, 7, "cam")
    assert msg.step == 7 * pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    back = cv.image_to_numpy(msg, backend="numpy")
    assert back.dtype == pixels.dtype and np.array_equal(back, pixels)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "rgb16", "64FC1"])
def test_numpy_image_honours_row_padding_and_big_endian(encoding):
    import array

    pixels = _random_pixels(encoding, np.random.default_rng(2))
    big = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = big.reshape(5, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((5, 6), 0xEE, np.uint8)], axis=1)
    data = array.array("B")
    data.frombytes(padded.tobytes())
    msg = Image(height=5, width=7, encoding=encoding, is_bigendian=1, step=padded.shape[1], data=data)
    back = cv.image_to_numpy(msg, backend="numpy")
    assert back.dtype == pixels.dtype and back.dtype.isnative
    assert np.array_equal(back, pixels)


def test_numpy_image_rejects_bad_input():
    with pytest.raises(InputError):
        cv.encoding_layout("yuv422_weird")
    short = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(5))
    with pytest.raises(InputError):
        cv.image_to_numpy(short, backend="numpy")
    with pytest.raises(ValueError):
        cv.numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8", backend="numpy")


@pytest.mark.skipif(not has_ros_piece("cv_bridge"), reason="cv_bridge not installed: numpy path only")
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1"])
def test_cv_bridge_and_numpy_agree(encoding):
    pixels = _random_pixels(encoding, np.random.default_rng(3))
    for make in ("numpy", "cv_bridge"):
        msg = cv.numpy_to_image(pixels, encoding, backend=make)
        for read in ("numpy", "cv_bridge"):
            assert np.array_equal(cv.image_to_numpy(msg, backend=read), pixels), (make, read)


def test_rgb_and_depth_helpers():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    rgb = cv.image_to_rgb(cv.numpy_to_image(bgr, "bgr8", backend="numpy"))
    assert rgb[0, 0].tolist() == [0, 0, 255]
    millimetres = np.array([[0, 1500], [65535, 250]], np.uint16)
    depth = cv.image_to_depth(cv.numpy_to_image(millimetres, "16UC1", backend="numpy"))
    assert np.isnan(depth[0, 0]) and depth.dtype == np.float32
    assert depth[0, 1] == pytest.approx(1.5) and depth[1, 1] == pytest.approx(0.25)
    metres = np.array([[np.inf, 2.0]], np.float32)
    assert np.isnan(cv.depth_to_metres(metres, "32FC1")[0, 0])


def test_compressed_images_round_trip():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = cv.numpy_to_compressed(rgb, "rgb8", "png", stamp=2.0, frame_id="cam")
    assert isinstance(png, CompressedImage) and png.format == "rgb8; png compressed bgr8"
    assert np.array_equal(cv.compressed_to_numpy(png), rgb)
    smooth = np.repeat(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2)
    jpeg = cv.numpy_to_compressed(smooth, "rgb8", "jpeg", quality=95)
    assert np.abs(cv.compressed_to_numpy(jpeg).astype(int) - smooth).max() <= 8
    grey16 = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    assert np.array_equal(cv.compressed_to_numpy(cv.numpy_to_compressed(grey16, "mono16", "png")), grey16)


def test_compressed_depth_png():
    import struct

    import cv2

    depth_mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    ok, png = cv2.imencode(".png", depth_mm)
    msg = CompressedImage(format="16UC1; compressedDepth png",
                          data=struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes())
    assert np.array_equal(cv.compressed_to_numpy(msg), depth_mm)
    quant_a, quant_b = 100.0, 10.0  # 32FC1: stored = a / depth + b
    metres = np.array([[1.0, 2.0]], np.float32)
    stored = np.array([[0, 0]], np.uint16)
    stored[0] = np.round(quant_a / metres[0] + quant_b)
    stored[0, 0] = 0  # invalid
    ok, png = cv2.imencode(".png", stored)
    msg = CompressedImage(format="32FC1; compressedDepth png",
                          data=struct.pack("<iff", 0, quant_a, quant_b) + png.tobytes())
    back = cv.compressed_to_numpy(msg)
    assert np.isnan(back[0, 0]) and back[0, 1] == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# conversions: time, camera info, IMU, poses
# ---------------------------------------------------------------------------------------------


def test_stamps_keep_exact_nanoseconds():
    ns = 1_700_000_000_123_456_789
    stamp = cv.ns_to_stamp(ns)
    assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert cv.stamp_to_ns(stamp) == ns
    assert cv.sec_to_ns(1700000000.123) == 1_700_000_000_123_000_000  # not ...122999808
    assert cv.sec_to_ns(2) == 2_000_000_000
    assert cv.stamp_to_sec(cv.sec_to_stamp(12.25)) == 12.25
    negative = cv.ns_to_stamp(-1)
    assert (negative.sec, negative.nanosec) == (-1, 999_999_999)
    header = cv.make_header("cam", Time(sec=3, nanosec=4))
    assert cv.header_ns(header) == 3_000_000_004 and cv.header_sec(Image(header=header)) == 3.000000004
    assert cv.make_header("x").stamp == Time()


def test_camera_info_and_intrinsics_round_trip():
    intrinsics = Intrinsics(525.0, 526.0, 319.5, 239.5, 640, 480, (0.1, -0.2, 0.001, 0.002, 0.05))
    msg = cv.intrinsics_to_camera_info(intrinsics, stamp=1.0, frame_id="cam")
    assert msg.distortion_model == "plumb_bob" and list(msg.p[:4]) == [525.0, 0.0, 319.5, 0.0]
    assert cv.camera_info_to_intrinsics(msg) == intrinsics
    msg.d = []
    assert cv.camera_info_to_intrinsics(msg).distortion == (0.0,) * 5
    msg.distortion_model, msg.d = "equidistant", [0.1, 0.0, 0.0, 0.0]
    with pytest.raises(InputError):
        cv.camera_info_to_intrinsics(msg)
    with pytest.raises(InputError):
        cv.camera_info_to_intrinsics(CameraInfo())


def test_rectified_camera_info_gives_the_projection_and_no_distortion():
    """image_rect topics: K and D describe the raw image; the rectified camera is P (image_proc's new matrix)."""
    raw = Intrinsics(525.0, 526.0, 319.5, 239.5, 640, 480, (0.1, -0.2, 0.001, 0.002, 0.05))
    msg = cv.intrinsics_to_camera_info(raw)
    msg.p = [510.0, 0.0, 318.0, 0.0, 0.0, 512.0, 241.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert cv.camera_info_to_intrinsics(msg) == raw
    assert cv.camera_info_to_intrinsics(msg, rectified=True) == Intrinsics(510.0, 512.0, 318.0, 241.0, 640, 480)
    msg.p = [0.0] * 12
    with pytest.raises(InputError, match="rectified_input"):
        cv.camera_info_to_intrinsics(msg, rectified=True)


def test_imu_round_trip():
    msg = cv.arrays_to_imu(5.5, [0.1, 0.2, 0.3], [0.0, 0.0, 9.81], frame_id="imu")
    assert isinstance(msg, Imu) and msg.orientation_covariance[0] == -1.0
    t, gyro, accel = cv.imu_to_arrays(msg)
    assert t == 5.5 and gyro.tolist() == [0.1, 0.2, 0.3] and accel.tolist() == [0.0, 0.0, 9.81]
    later = cv.arrays_to_imu(6.0, [1, 1, 1], [0, 0, 0], orientation_xyzw=[0, 0, 0, 1], gyro_cov=np.eye(3))
    samples = cv.imu_messages_to_samples([later, msg])
    assert samples.t.tolist() == [5.5, 6.0] and samples.gyro.shape == (2, 3)
    assert later.angular_velocity_covariance[4] == 1.0 and later.orientation.w == 1.0
    assert len(cv.imu_messages_to_samples([])) == 0


def _random_pose(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    T = np.eye(4)
    T[:3, :3] = cv.quaternion_to_matrix(*q)
    T[:3, 3] = rng.standard_normal(3)
    return T


def test_quaternions_and_poses_round_trip():
    rng = np.random.default_rng(5)
    for _ in range(50):
        T = _random_pose(rng)
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
        assert np.allclose(cv.pose_to_matrix(cv.matrix_to_pose(T)), T, atol=1e-12)
        assert np.allclose(cv.transform_to_matrix(cv.matrix_to_transform(T)), T, atol=1e-12)
    for angle_axis in ([np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi]):  # trace = -1 corner cases
        R = cv.quaternion_to_matrix(*angle_axis, 0.0)
        assert np.allclose(cv.quaternion_to_matrix(*cv.matrix_to_quaternion(R)), R)
    with pytest.raises(InputError):
        cv.quaternion_to_matrix(0, 0, 0, 0)


def test_stamped_poses_odometry_and_covariance():
    rng = np.random.default_rng(6)
    T, cov = _random_pose(rng), np.diag([1.0, 2, 3, 4, 5, 6])
    pose = cv.matrix_to_pose_stamped(T, 1.25, "map")
    assert isinstance(pose, PoseStamped) and cv.header_sec(pose) == 1.25
    assert np.allclose(cv.pose_stamped_to_matrix(pose), T)
    tf = cv.matrix_to_transform_stamped(T, 1.25, "map", "camera")
    assert isinstance(tf, TransformStamped) and tf.child_frame_id == "camera"
    assert np.allclose(cv.transform_stamped_to_matrix(tf), T)
    odom = cv.matrix_to_odometry(T, 2.0, "odom", "base", covariance=cov, twist=np.arange(6.0),
                                 twist_covariance=np.eye(6))
    assert isinstance(odom, Odometry) and odom.twist.twist.angular.z == 5.0
    back, back_cov = cv.odometry_to_matrix(odom)
    assert np.allclose(back, T) and np.array_equal(back_cov, cov)
    assert odom.pose.covariance[0] == 1.0 and odom.pose.covariance[35] == 6.0  # x first, rot_z last
    rot_first = cv.swap_rotation_translation(cov)
    assert np.diag(rot_first).tolist() == [4, 5, 6, 1, 2, 3]
    assert np.array_equal(cv.swap_rotation_translation(rot_first), cov)
    pwc = cv.matrix_to_pose_with_covariance(T, cov, 3.0)
    back, back_cov = cv.pose_with_covariance_to_matrix(pwc)
    assert np.allclose(back, T) and np.array_equal(back_cov, cov)
    with pytest.raises(ValueError):
        cv.covariance_to_msg(np.eye(3))
