"""Dataset readers on the real samples in ../shared/data and on small fabricated TUM folders and bags."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation
from shared_data import sample

from prism_ros.datasets import DATASETS, Intrinsics, detect_format, list_formats, open_dataset
from prism_ros.errors import InputError


def tum_pose(values) -> np.ndarray:
    """4x4 from 'tx ty tz qx qy qz qw', via the quaternion formula (independent of the readers)."""
    tx, ty, tz, x, y, z, w = values
    n = np.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    pose = np.eye(4)
    pose[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    pose[:3, 3] = tx, ty, tz
    return pose


def check_depth(depth: np.ndarray, near: float = 0.4, far: float = 8.0) -> float:
    """Depth is float32 metres within a plausible range; returns the invalid fraction."""
    assert depth.dtype == np.float32
    valid = depth[np.isfinite(depth)]
    assert valid.size > 0.5 * depth.size
    assert near <= valid.min() and valid.max() <= far
    return 1.0 - valid.size / depth.size


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_the_formats():
    assert {"7scenes", "tum", "euroc", "rosbag", "sun3d"} <= set(DATASETS)
    assert list_formats() == list(DATASETS)


@pytest.mark.parametrize("name, fmt", [
    ("7scenes_redkitchen_seq_0000_0399", "7scenes"),
    ("7scenes_stairs_tiny/stairs", "7scenes"),
    ("7scenes_stairs_tiny/stairs/seq-03", "7scenes"),
    ("sun3d_studyroom_2fragments", "sun3d"),
    ("tum_fr3_cabinet_keyframes", "tum"),
    ("euroc_V1_01_micro", "euroc"),
    ("euroc_V1_01_micro/mav0", "euroc"),
])
def test_autodetection(name, fmt):
    assert detect_format(sample(name)) == fmt


# ------------------------------------------------------------------------------------ 7-Scenes
def test_7scenes_redkitchen():
    path = sample("7scenes_redkitchen_seq_0000_0399")
    ds = open_dataset(path)
    assert ds.format_name == "7scenes" and len(ds) == 400
    np.testing.assert_allclose(ds.timestamps[:3], [0.0, 1 / 30, 2 / 30])
    frame = ds[123]
    assert frame.index == 123 and frame.rgb.shape == (480, 640, 3) and frame.rgb.dtype == np.uint8
    # depth camera: camera-intrinsics.txt (585, 585, 320, 240); colour: nominal Kinect RGB, unregistered
    assert (frame.depth_intrinsics.fx, frame.depth_intrinsics.cx, frame.depth_intrinsics.cy) == (585.0, 320.0, 240.0)
    assert frame.intrinsics.fx == 525.0 and frame.T_color_depth is None
    invalid = check_depth(frame.depth, 0.4, 5.0)
    assert 0.0 < invalid < 0.3
    # the printed matrix, projected onto SE(3) (it is orthonormal to ~1e-4 only)
    np.testing.assert_allclose(frame.pose, np.loadtxt(path / "frame-000123.pose.txt"), atol=1e-3)
    R = frame.pose[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    t, poses = ds.ground_truth()
    assert poses.shape == (400, 4, 4)


def test_7scenes_original_layout_and_splits():
    scene = sample("7scenes_stairs_tiny/stairs")
    train = open_dataset(scene, split="train")
    assert len(train) == 6 and [f.extras["sequence"] for f in train] == ["seq-02"] * 3 + ["seq-03"] * 3
    assert np.all(np.diff(train.timestamps) > 0)  # sequences placed one after the other
    test = open_dataset(scene, split="test")
    assert sorted({f.extras["sequence"] for f in test}) == ["seq-01", "seq-04"]
    assert len(open_dataset(scene)) == 12
    seq = open_dataset(scene / "seq-04")
    assert len(seq) == 3
    np.testing.assert_allclose(seq[2].pose, np.loadtxt(scene / "seq-04" / "frame-000002.pose.txt"), atol=1e-3)
    check_depth(seq[0].depth, 0.4, 5.0)


def test_sun3d_fragments():
    path = sample("sun3d_studyroom_2fragments")
    ds = open_dataset(path)
    assert ds.format_name == "sun3d" and len(ds) == 100
    first, second = ds[0], ds[50]
    assert first.extras["sequence"] == "fragment-1-rgbd-frames"
    assert second.extras["sequence"] == "fragment-2-rgbd-frames" and second.extras["frame_number"] == 3160
    assert first.intrinsics.fx == pytest.approx(570.342205) and first.depth_intrinsics is None
    np.testing.assert_array_equal(first.T_color_depth, np.eye(4))
    check_depth(first.depth, 0.4, 8.0)
    np.testing.assert_allclose(  # printed matrix projected onto SE(3)
        second.pose, np.loadtxt(path / "fragment-2-rgbd-frames" / "frame-003160.pose.txt"), atol=1e-3)
    # the two fragments share one world frame, about 2.5 m apart
    assert 1.0 < np.linalg.norm(first.pose[:3, 3] - second.pose[:3, 3]) < 4.0
    assert len(open_dataset(path / "fragment-2-rgbd-frames")) == 50


# ------------------------------------------------------------------------------------------ TUM
def test_tum_keyframe_sample():
    path = sample("tum_fr3_cabinet_keyframes")
    ds = open_dataset(path)
    assert ds.format_name == "tum" and len(ds) == 58
    rows = np.loadtxt(path / "truth_cam_poses.txt")
    np.testing.assert_allclose(ds.timestamps, rows[:, 0])
    frame = ds[10]
    k = frame.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (535.4, 539.2, 320.1, 247.6, 640, 480)
    check_depth(frame.depth, 0.4, 5.0)
    np.testing.assert_allclose(frame.pose, tum_pose(rows[10, 1:8]), atol=1e-9)


def write_tum_folder(root: Path, n: int = 6, camera_yaml: bool = True) -> Path:
    """A TUM folder as the synthetic generator writes it; frame i has red = 10 * i, depth 2 m."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rgb_lines, depth_lines = [], []
    for i in range(n):
        t = 100.0 + 0.04 * i
        bgr = np.zeros((24, 32, 3), np.uint8)
        bgr[..., 2], bgr[..., 1] = 10 * i, 200
        cv2.imwrite(str(root / "rgb" / f"{t:.6f}.png"), bgr)
        depth = np.full((24, 32), 10000, np.uint16)  # 2 m at 5000 units/m
        depth[0, :] = 0
        cv2.imwrite(str(root / "depth" / f"{t + 0.005:.6f}.png"), depth)
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
        depth_lines.append(f"{t + 0.005:.6f} depth/{t + 0.005:.6f}.png")
    (root / "rgb.txt").write_text("# colour images\n" + "\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("# depth images\n" + "\n".join(depth_lines) + "\n")
    times = 99.9 + 0.01 * np.arange(int((0.04 * n + 0.2) / 0.01))  # 100 Hz; x = t - 100, yaw = 0.5 (t - 100)
    quats = Rotation.from_euler("z", 0.5 * (times - 100.0)[:, None]).as_quat()
    (root / "groundtruth.txt").write_text("".join(
        f"{t:.4f} {t - 100.0:.6f} 0 1.5 {q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f}\n" for t, q in zip(times, quats)))
    imu_times = 99.95 + 0.0025 + 0.005 * np.arange(int((0.04 * n + 0.1) / 0.005))
    (root / "imu.txt").write_text("# t gx gy gz ax ay az\n" + "".join(
        f"{t:.6f} 0 0 0.5 0 0 9.81\n" for t in imu_times))
    (root / "control.txt").write_text("".join(f"{100.05 + 0.1 * k:.6f} {k} 0 0 0 0 0.5\n" for k in range(5)))
    if camera_yaml:
        (root / "camera.yaml").write_text(
            "fx: 30.0\nfy: 31.0\ncx: 15.5\ncy: 11.5\nwidth: 32\nheight: 24\ndistortion: [0, 0, 0, 0, 0]\n"
            "T_imu_camera: [[0, 0, 1, 0.1], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]]\n")
    return root


def test_tum_synthetic_layout(tmp_path):
    ds = open_dataset(write_tum_folder(tmp_path / "synthetic"))
    assert len(ds) == 6
    assert ds.intrinsics == Intrinsics(30.0, 31.0, 15.5, 11.5, 32, 24)
    np.testing.assert_array_equal(ds.T_imu_camera[:3, 3], [0.1, 0, 0])
    frame = ds[3]
    assert frame.timestamp == pytest.approx(100.12) and frame.extras["depth_timestamp"] == pytest.approx(100.125)
    assert frame.rgb[0, 0].tolist() == [30, 200, 0]  # RGB order, the right file
    assert np.isnan(frame.depth[0]).all() and np.all(frame.depth[1:] == 2.0)
    expected = np.eye(4)
    expected[:3, :3] = Rotation.from_euler("z", 0.5 * 0.12).as_matrix()
    expected[:3, 3] = [0.12, 0.0, 1.5]
    np.testing.assert_allclose(frame.pose, expected, atol=1e-6)
    assert len(ds[0].imu) == 0 and all(len(ds[i].imu) == 8 for i in range(1, 6))
    assert ds[0].control is None and ds[3].control.tolist() == [0, 0, 0, 0, 0, 0.5]
    assert ds[5].control[0] == 1  # command at 100.15 is the last before 100.20


def test_tum_default_intrinsics_by_sensor_name(tmp_path):
    ds = open_dataset(write_tum_folder(tmp_path / "rgbd_dataset_freiburg1_xyz", camera_yaml=False))
    k = ds.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy) == (517.3, 516.5, 318.6, 255.3)
    assert k.distortion == (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)
    assert ds.T_imu_camera is None


def test_tum_association_tolerance(tmp_path):
    root = write_tum_folder(tmp_path / "fr3")
    with pytest.raises(InputError, match="no colour/depth pair"):
        open_dataset(root, max_diff=0.001)  # depth lags colour by 5 ms: nothing pairs


# ---------------------------------------------------------------------------------------- EuRoC
def test_euroc_micro():
    path = sample("euroc_V1_01_micro")
    ds = open_dataset(path)
    assert ds.format_name == "euroc" and len(ds) == 40
    frame = ds[5]
    assert frame.rgb.shape == (480, 752, 3) and frame.right.shape == (480, 752) and frame.depth is None
    assert (frame.rgb[..., 0] == frame.rgb[..., 2]).all()
    k = frame.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy, k.width) == (458.654, 457.296, 367.215, 248.375, 752)
    assert k.distortion[:2] == (-0.28340811, 0.07395907)
    assert np.linalg.norm(frame.T_left_right[:3, 3]) == pytest.approx(0.110, abs=0.001)  # stereo baseline
    # 200 Hz IMU, 20 Hz camera: 10 samples per frame, none before the first frame
    assert len(ds.imu) == 29120
    assert len(ds[0].imu) == 0 and [len(ds[i].imu) for i in range(1, 40)] == [10] * 39
    assert frame.imu.t[-1] == frame.timestamp
    # ground truth found next to mav0 (V101_gt.txt; V102's file must be ignored): T_world_body @ T_body_cam0
    T_body_cam0 = np.array([[0.0148655429818, -0.999880929698, 0.00414029679422, -0.0216401454975],
                            [0.999557249008, 0.0149672133247, 0.025715529948, -0.064676986768],
                            [-0.0257744366974, 0.00375618835797, 0.999660727178, 0.00981073058949],
                            [0.0, 0.0, 0.0, 1.0]])
    gt = np.loadtxt(path / "groundtruth_V1_01_and_V1_02" / "V101_gt.txt")
    row = gt[np.argmin(np.abs(gt[:, 0] - frame.timestamp))]
    assert abs(row[0] - frame.timestamp) < 1e-5
    np.testing.assert_allclose(frame.pose, tum_pose(row[1:8]) @ T_body_cam0, atol=1e-4)
    np.testing.assert_allclose(ds.T_imu_camera, T_body_cam0)


def test_euroc_explicit_ground_truth_of_another_sequence_gives_no_pose():
    path = sample("euroc_V1_01_micro")
    ds = open_dataset(path, groundtruth=path / "groundtruth_V1_01_and_V1_02" / "V102_groundtruth.csv")
    assert ds[0].pose is None  # V1_02 starts minutes later


# -------------------------------------------------------------------------------------- slicing
def test_slicing_keeps_original_indices():
    ds = open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="10:20:3")
    assert len(ds) == 4 and [f.index for f in ds] == [10, 13, 16, 19]
    np.testing.assert_allclose(ds.timestamps, np.array([10, 13, 16, 19]) / 30)
    assert [f.index for f in open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="395:")] == list(
        range(395, 400))
    assert len(open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames=":7")) == 7
    assert ds[-1].index == 19


def test_slicing_with_step_keeps_all_imu_samples():
    ds = open_dataset(sample("euroc_V1_01_micro"), frames="4:12:2")
    assert [f.index for f in ds] == [4, 6, 8, 10]
    assert [len(f.imu) for f in ds] == [10, 20, 20, 20]


# ------------------------------------------------------------------------------------- ROS bags
H, W = 24, 32
RNG = np.random.default_rng(7)
RGB = [RNG.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(4)]
DEPTH_MM = [RNG.integers(500, 4000, (H, W)).astype(np.uint16) for _ in range(4)]
for d in DEPTH_MM:
    d[0, :5] = 0


class BagWriter:
    """Writes prism-style messages with rosbags for ROS 1 or ROS 2 (db3 or mcap)."""

    def __init__(self, path: Path, kind: str):
        self.ros1 = kind == "ros1"
        self.store = get_typestore(Stores.ROS1_NOETIC if self.ros1 else Stores.ROS2_KILTED)
        self.writer = Ros1Writer(path) if self.ros1 else Ros2Writer(
            path, version=9, storage_plugin=StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3)
        self.connections = {}

    def __enter__(self):
        self.writer.open()
        return self

    def __exit__(self, *_):
        self.writer.close()

    def msg(self, name: str, **fields):
        return self.store.types[name](**fields)

    def header(self, t: float):
        stamp = self.msg("builtin_interfaces/msg/Time", sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))
        extra = {"seq": 0} if self.ros1 else {}
        return self.msg("std_msgs/msg/Header", stamp=stamp, frame_id="camera", **extra)

    def write(self, topic: str, message, t: float):
        msgtype = message.__msgtype__
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        data = self.store.serialize_ros1(message, msgtype) if self.ros1 else self.store.serialize_cdr(message, msgtype)
        self.writer.write(self.connections[topic], int(round(t * 1e9)) + 1000, data)

    def image(self, t: float, array: np.ndarray, encoding: str):
        return self.msg("sensor_msgs/msg/Image", header=self.header(t), height=array.shape[0], width=array.shape[1],
                        encoding=encoding, is_bigendian=0, step=array.strides[0],
                        data=np.frombuffer(array.tobytes(), np.uint8))

    def vector(self, x, y, z):
        return self.msg("geometry_msgs/msg/Vector3", x=float(x), y=float(y), z=float(z))


def write_prism_bag(path: Path, kind: str) -> Path:
    """Four RGB-D frames at 10 Hz (+ alternative encodings), camera info, 200 Hz IMU, control, ground truth."""
    with BagWriter(path, kind) as bag:
        names = ("D", "K", "R", "P") if bag.ros1 else ("d", "k", "r", "p")
        info = dict(zip(names, (np.zeros(5), np.array([30.0, 0, 15.5, 0, 31.0, 11.5, 0, 0, 1]), np.eye(3).ravel(),
                                np.zeros(12))))
        roi = bag.msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        bag.write("/camera/rgb/camera_info", bag.msg(
            "sensor_msgs/msg/CameraInfo", header=bag.header(9.9), height=H, width=W, distortion_model="plumb_bob",
            binning_x=0, binning_y=0, roi=roi, **info), 9.9)
        for k in range(int(0.5 * 200)):
            t = 9.95 + 0.0025 + 0.005 * k
            q = bag.msg("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0)
            bag.write("/imu", bag.msg("sensor_msgs/msg/Imu", header=bag.header(t), orientation=q,
                                      orientation_covariance=np.zeros(9), angular_velocity=bag.vector(0, 0, 0.1 * k),
                                      angular_velocity_covariance=np.zeros(9),
                                      linear_acceleration=bag.vector(0, 0, 9.81),
                                      linear_acceleration_covariance=np.zeros(9)), t)
        for i in range(4):
            t = 10.0 + 0.1 * i
            bag.write("/camera/rgb/image_color", bag.image(t, RGB[i], "rgb8"), t)
            bag.write("/camera/depth/image", bag.image(t + 0.003, DEPTH_MM[i].astype(np.float32) / 1000, "32FC1"),
                      t + 0.003)
            bag.write("/cam/bgr", bag.image(t, np.ascontiguousarray(RGB[i][..., ::-1]), "bgr8"), t)
            bag.write("/cam/mono", bag.image(t, RGB[i][..., 1].copy(), "mono8"), t)
            bag.write("/depth16", bag.image(t, DEPTH_MM[i], "16UC1"), t)
            png = cv2.imencode(".png", RGB[i][..., ::-1])[1]
            bag.write("/cam/compressed", bag.msg("sensor_msgs/msg/CompressedImage", header=bag.header(t),
                                                 format="rgb8; png compressed bgr8", data=png.ravel()), t)
            accel = bag.msg("geometry_msgs/msg/Accel", linear=bag.vector(i, 0, 0), angular=bag.vector(0, 0, 0.5))
            bag.write("/control", bag.msg("geometry_msgs/msg/AccelStamped", header=bag.header(t - 0.01), accel=accel),
                      t - 0.01)
            pose = bag.msg("geometry_msgs/msg/Pose", position=bag.msg("geometry_msgs/msg/Point", x=i, y=0.0, z=1.0),
                           orientation=bag.msg("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0))
            bag.write("/ground_truth", bag.msg("geometry_msgs/msg/PoseStamped", header=bag.header(t), pose=pose), t)
    return path


@pytest.fixture(scope="module", params=["mcap", "db3", "ros1"])
def prism_bag(request, tmp_path_factory):
    name = "prism.bag" if request.param == "ros1" else f"prism_{request.param}"
    return write_prism_bag(tmp_path_factory.mktemp(request.param) / name, request.param)


def expected_depth(i: int) -> np.ndarray:
    depth = DEPTH_MM[i].astype(np.float32) / 1000
    depth[DEPTH_MM[i] == 0] = np.nan
    return depth


def test_rosbag_prism_preset_round_trip(prism_bag):
    assert detect_format(prism_bag) == "rosbag"
    with open_dataset(prism_bag) as ds:
        assert ds.topics["rgb"] == "/camera/rgb/image_color" and ds.topics["control"] == "/control"
        assert len(ds) == 4
        np.testing.assert_allclose(ds.timestamps, [10.0, 10.1, 10.2, 10.3])
        assert ds.intrinsics == Intrinsics(30.0, 31.0, 15.5, 11.5, W, H)
        for i in (2, 0, 3):  # random access
            frame = ds[i]
            np.testing.assert_array_equal(frame.rgb, RGB[i])
            np.testing.assert_array_equal(frame.depth, expected_depth(i))
            assert frame.pose[0, 3] == pytest.approx(i) and frame.control.tolist() == [i, 0, 0, 0, 0, 0.5]
        assert len(ds[0].imu) == 0 and [len(ds[i].imu) for i in (1, 2, 3)] == [20, 20, 20]
        assert len(ds.imu) == 100


@pytest.mark.parametrize("topics, expected", [
    (dict(rgb="/cam/bgr", depth="/depth16"), "rgb"),
    (dict(rgb="/cam/compressed", depth=None), "rgb"),
    (dict(rgb="/cam/mono", depth=None), "mono"),
])
def test_rosbag_encodings(prism_bag, topics, expected):
    with open_dataset(prism_bag, topics=topics) as ds:
        frame = ds[1]
        if expected == "mono":
            np.testing.assert_array_equal(frame.rgb, np.repeat(RGB[1][..., 1:2], 3, axis=2))
        else:
            np.testing.assert_array_equal(frame.rgb, RGB[1])
        if topics["depth"]:
            np.testing.assert_array_equal(frame.depth, expected_depth(1))
        else:
            assert frame.depth is None


def test_rosbag_sliced(prism_bag):
    ds = open_dataset(prism_bag, frames="1:")
    assert [f.index for f in ds] == [1, 2, 3]
    np.testing.assert_array_equal(ds[0].rgb, RGB[1])


def test_image_decoding_of_compressed_depth_and_padded_rows():
    from types import SimpleNamespace

    from prism_ros.datasets.rosbag import image_array

    depth_mm = DEPTH_MM[0]
    png = cv2.imencode(".png", depth_mm)[1].ravel()
    msg = SimpleNamespace(format="16UC1; compressedDepth png", data=np.concatenate([np.zeros(12, np.uint8), png]))
    np.testing.assert_array_equal(image_array(msg, "test"), depth_mm)
    # 32FC1 compressedDepth: quantised inverse depth q = A / d + B, 0 = invalid
    quant_a, quant_b = 100.0 * 101.0, 1 - 100.0 * 101.0 / 10.0
    metres = depth_mm.astype(np.float32) / 1000
    q = np.where(depth_mm > 0, np.round(quant_a / np.maximum(metres, 1e-3) + quant_b), 0).astype(np.uint16)
    header = np.zeros(4, np.uint8).tobytes() + np.array([quant_a, quant_b], "<f4").tobytes()
    data = np.frombuffer(header + cv2.imencode(".png", q)[1].tobytes(), np.uint8)
    msg = SimpleNamespace(format="32FC1; compressedDepth png", data=data)
    decoded = image_array(msg, "test")
    assert np.isnan(decoded[depth_mm == 0]).all()
    np.testing.assert_allclose(decoded[depth_mm > 0], metres[depth_mm > 0], rtol=2e-3)
    # big-endian mono16 with padded rows
    padded = np.zeros((H, W * 2 + 6), np.uint8)
    padded[:, :W * 2] = np.frombuffer(depth_mm.astype(">u2").tobytes(), np.uint8).reshape(H, W * 2)
    msg = SimpleNamespace(encoding="mono16", is_bigendian=1, height=H, width=W, step=W * 2 + 6, data=padded.ravel())
    np.testing.assert_array_equal(image_array(msg, "test"), depth_mm)
