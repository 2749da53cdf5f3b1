"""Synthetic RGB-D-inertial sequences: build one in memory, or write it as a TUM-style folder and a
ROS 2 bag (preset "prism").

Folder layout (``out_dir``):
- ``rgb/<t>.png`` 8-bit RGB, ``depth/<t>.png`` uint16 with 5000 per metre (0 = invalid);
- ``rgb.txt``, ``depth.txt`` (``t path``), ``groundtruth.txt`` (``t tx ty tz qx qy qz qw`` of
  T_world_camera, at the frame times), ``imu.txt`` (``t gx gy gz ax ay az``, body frame),
  ``control.txt`` (``t ax ay az wx wy wz``, commanded body acceleration without gravity and body rates);
- ``camera.yaml``: intrinsics, ``T_imu_camera``, gravity, rates, the IMU/control/depth noise models
  and the biases drawn, seed, motion profile, scene description;
- ``bag/`` (optional): ``/camera/rgb/image_color`` (rgb8), ``/camera/depth/image`` (32FC1 metres, NaN
  invalid), ``/camera/rgb/camera_info``, ``/imu`` (sensor_msgs/Imu, orientation unknown),
  ``/control`` (geometry_msgs/AccelStamped: ``accel.linear`` commanded body acceleration,
  ``accel.angular`` commanded body rates in rad/s), ``/ground_truth`` (PoseStamped T_world_camera, frame
  ``world``); header stamps are the data times, log times equal them.
Times are integer microseconds from ``start_time`` (so text, file names and bag stamps agree exactly).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from prism_ros.dynamics.imu import GRAVITY
from prism_ros.errors import InputError
from prism_ros.frame import Intrinsics
from prism_ros.synthetic.imu import ControlModel, ImuModel, ImuStream, synthesize_control, synthesize_imu
from prism_ros.synthetic.scene import DepthNoise, Scene, make_scene, noisy_depth, render_scene, rgb_to_uint8
from prism_ros.synthetic.trajectory import Trajectory, make_trajectory

DEFAULT_INTRINSICS = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
DEPTH_SCALE = 5000.0
RGB_NOISE_SIGMA = 1.0  # grey levels
CAMERA_FRAME, IMU_FRAME, WORLD_FRAME = "camera_rgb_optical_frame", "imu_link", "world"
TOPICS = {
    "rgb": ("/camera/rgb/image_color", "sensor_msgs/msg/Image"),
    "depth": ("/camera/depth/image", "sensor_msgs/msg/Image"),
    "camera_info": ("/camera/rgb/camera_info", "sensor_msgs/msg/CameraInfo"),
    "imu": ("/imu", "sensor_msgs/msg/Imu"),
    "control": ("/control", "geometry_msgs/msg/AccelStamped"),
    "ground_truth": ("/ground_truth", "geometry_msgs/msg/PoseStamped"),
}
BAG_STORAGES = ("mcap", "db3", None)
OUTPUTS = ("rgb", "depth", "bag", "rgb.txt", "depth.txt", "groundtruth.txt", "imu.txt", "control.txt", "camera.yaml")
KEEP_OUT_HORIZON = 120.0  # s of the (non-periodic) profile kept clear of objects, at least


def intrinsics_for(width: int, height: int) -> Intrinsics:
    """The default Kinect-like intrinsics (fx = fy = 525 at 640x480) scaled to ``width`` x ``height``."""
    sx, sy = width / DEFAULT_INTRINSICS.width, height / DEFAULT_INTRINSICS.height
    d = DEFAULT_INTRINSICS
    return Intrinsics(d.fx * sx, d.fy * sy, (d.cx + 0.5) * sx - 0.5, (d.cy + 0.5) * sy - 0.5, width, height)


def imu_from_camera() -> np.ndarray:
    """T_imu_camera (4x4): the optical frame (x right, y down, z forward) in the FLU body frame, pitched
    8 deg down with a small mounting misalignment, 6 cm ahead, 1.5 cm right and 2.5 cm above the IMU."""
    optical_to_flu = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    mount = Rotation.from_euler("zyx", [1.5, 8.0, -1.0], degrees=True).as_matrix()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = mount @ optical_to_flu, [0.06, -0.015, 0.025]
    return T


def grid_us(rate: float, end_us: int | None = None, count: int | None = None) -> np.ndarray:
    """Sample times in integer microseconds: k / rate rounded, ``count`` of them or up to ``end_us``."""
    if count is None:
        count = int(np.floor(end_us * rate / 1e6 + 1e-9)) + 1
    return np.round(np.arange(count) * 1e6 / rate).astype(np.int64)


@dataclass
class Sequence:
    """A synthetic sequence in memory. Times are integer microseconds since ``start_us``; profile
    times (seconds from the start) are ``*_us / 1e6``."""

    trajectory: Trajectory
    scene: Scene
    intrinsics: Intrinsics
    T_imu_camera: np.ndarray
    frame_us: np.ndarray  # (F,)
    poses: np.ndarray  # (F,4,4) T_world_camera at the frame times
    imu_us: np.ndarray  # (N,)
    imu: ImuStream
    control: np.ndarray  # (F,6) at the frame times
    start_us: int
    seed: int
    noise: bool
    depth_noise: DepthNoise | None
    imu_model: ImuModel | None
    control_model: ControlModel | None

    def __len__(self) -> int:
        return len(self.frame_us)

    def stamp(self, us: int) -> str:
        """Absolute time as text with exactly 6 decimals."""
        total = self.start_us + int(us)
        return f"{total // 1_000_000}.{total % 1_000_000:06d}"

    def frame(self, index: int, ao: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rgb HxWx3 uint8, depth HxW float32 metres with NaN invalid) of one frame; deterministic."""
        view = render_scene(self.scene, self.poses[index], self.intrinsics, ao=ao)
        if not self.noise:
            return rgb_to_uint8(view.rgb).cpu().numpy(), view.depth.float().cpu().numpy()
        generator = torch.Generator(device=self.scene.device)
        generator.manual_seed(int(np.random.SeedSequence([self.seed, 17, index]).generate_state(1)[0]))
        depth = noisy_depth(view.depth, view.cos_incidence, self.depth_noise, generator)
        return rgb_to_uint8(view.rgb, RGB_NOISE_SIGMA, generator).cpu().numpy(), depth.cpu().numpy()


def make_sequence(frames: int = 300, seed: int = 0, motion: str = "handheld", width: int = 640, height: int = 480,
                  fps: float = 30.0, imu_rate: float = 200.0, noise: bool = True, device="cpu",
                  start_time: float = 1_700_000_000.0) -> Sequence:
    """Trajectory, scene, ground truth, IMU and control of a synthetic sequence (images render lazily)."""
    if frames < 1 or fps <= 0 or imu_rate <= 0 or width < 8 or height < 8:
        raise InputError(f"bad sequence size: frames={frames}, fps={fps}, imu_rate={imu_rate}, {width}x{height}",
                         "use frames >= 1, positive rates and an image of at least 8x8 pixels")
    trajectory = make_trajectory(motion, seed)
    frame_us = grid_us(fps, count=frames)
    imu_us = grid_us(imu_rate, end_us=int(frame_us[-1]))
    T_imu_camera = imu_from_camera()
    horizon = np.arange(0.0, max(KEEP_OUT_HORIZON, frame_us[-1] / 1e6), 0.05)
    body = trajectory.kinematics(horizon).poses().numpy()
    keep_out = np.concatenate([body[:, :3, 3], (body @ T_imu_camera)[:, :3, 3]])
    scene = make_scene(seed, keep_out, device=device)
    poses = trajectory.kinematics(frame_us / 1e6).poses().numpy() @ T_imu_camera
    imu_model, control_model = (ImuModel(), ControlModel()) if noise else (None, None)
    imu = synthesize_imu(trajectory, imu_us / 1e6, imu_rate, imu_model, seed)
    control = synthesize_control(trajectory, frame_us / 1e6, control_model, seed)
    return Sequence(trajectory, scene, intrinsics_for(width, height), T_imu_camera, frame_us, poses, imu_us, imu,
                    control, int(round(start_time * 1e6)), seed, noise, DepthNoise() if noise else None,
                    imu_model, control_model)


# ----------------------------------------------------------------------------- folder
def prepare_folder(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; refuse (or with ``overwrite`` remove) outputs of an earlier run."""
    existing = [out_dir / name for name in OUTPUTS if (out_dir / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out_dir} already holds a sequence ({existing[0].name})",
                         "choose another folder or pass overwrite=True (--overwrite)", out_dir)
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out_dir / "rgb").mkdir(parents=True)
    (out_dir / "depth").mkdir()


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """Metres (NaN invalid) -> uint16 at 5000 per metre, 0 invalid."""
    scaled = np.nan_to_num(depth.astype(np.float64) * DEPTH_SCALE, nan=0.0)
    return np.clip(np.round(scaled), 0, 65535).astype(np.uint16)


def write_frame_images(out_dir: Path, stamp: str, rgb: np.ndarray, depth: np.ndarray) -> None:
    cv2.imwrite(str(out_dir / "rgb" / f"{stamp}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / "depth" / f"{stamp}.png"), depth_to_png(depth))


def write_text_files(out_dir: Path, seq: Sequence) -> None:
    """rgb.txt, depth.txt, groundtruth.txt, imu.txt and control.txt."""
    stamps = [seq.stamp(us) for us in seq.frame_us]
    for name in ("rgb", "depth"):
        lines = [f"{s} {name}/{s}.png" for s in stamps]
        write_lines(out_dir / f"{name}.txt", [f"{name} images (prism_ros synthetic)", "timestamp filename"], lines)
    quat = Rotation.from_matrix(seq.poses[:, :3, :3]).as_quat()
    write_lines(out_dir / "groundtruth.txt", ["ground truth T_world_camera (optical frame)",
                                             "timestamp tx ty tz qx qy qz qw"],
                [f"{s} " + " ".join(f"{x:.9f}" for x in (*T[:3, 3], *q)) for s, T, q in zip(stamps, seq.poses, quat)])
    imu = np.concatenate([seq.imu.gyro, seq.imu.accel], 1)
    write_lines(out_dir / "imu.txt", ["IMU in the body frame (imu_link): gyro rad/s, specific force m/s^2",
                                      "timestamp gx gy gz ax ay az"], rows_text(seq, seq.imu_us, imu))
    write_lines(out_dir / "control.txt", ["commanded body acceleration (gravity excluded) m/s^2 and body rates rad/s",
                                          "timestamp ax ay az wx wy wz"], rows_text(seq, seq.frame_us, seq.control))


def rows_text(seq: Sequence, times_us: np.ndarray, values: np.ndarray) -> list[str]:
    return [f"{seq.stamp(us)} " + " ".join(f"{x:.9f}" for x in row) for us, row in zip(times_us, values)]


def write_lines(path: Path, comments: list[str], lines: list[str]) -> None:
    path.write_text("".join(f"# {c}\n" for c in comments) + "\n".join(lines) + "\n")


def camera_yaml(seq: Sequence, fps: float, imu_rate: float, motion: str) -> dict:
    """Everything a reader or a filter needs to know about the sequence (plain Python types)."""
    k = seq.intrinsics
    imu = {"rate": imu_rate, "frame_id": IMU_FRAME, "noise": seq.imu_model is not None,
           "bias_gyro": seq.imu.bias_gyro.tolist(), "bias_accel": seq.imu.bias_accel.tolist(),
           "bias_model": "constant over the sequence"}
    imu.update(seq.imu_model.as_dict() if seq.imu_model else {})
    control = {"rate": fps, "convention": "[ax, ay, az, wx, wy, wz]: commanded body acceleration (gravity "
               "excluded, m/s^2) and body rates (rad/s) in the IMU frame; control(t) = true(t + lag) + noise"}
    control.update(seq.control_model.as_dict() if seq.control_model else {"lag": 0.0, "accel_sigma": 0.0,
                                                                           "gyro_sigma": 0.0})
    depth = {"scale": DEPTH_SCALE, "exact": seq.depth_noise is None}
    depth.update(vars(seq.depth_noise) if seq.depth_noise else {})
    return {
        "fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height,
        "distortion": [0.0] * 5, "depth_scale": DEPTH_SCALE, "T_imu_camera": seq.T_imu_camera.tolist(),
        "gravity": [0.0, 0.0, -GRAVITY], "frame_rate": fps, "frames": len(seq), "start_time": seq.stamp(0),
        "frame_ids": {"camera": CAMERA_FRAME, "imu": IMU_FRAME, "world": WORLD_FRAME},
        "seed": seq.seed, "motion": motion, "noise": seq.noise,
        "rgb_noise_sigma": RGB_NOISE_SIGMA if seq.noise else 0.0,
        "imu": imu, "control": control, "depth_noise": depth, "scene": seq.scene.describe(),
        "generator": "prism_ros.synthetic",
    }


# ----------------------------------------------------------------------------- bag
class BagWriter:
    """The "prism" preset topics written with rosbags (storage "mcap" or "db3")."""

    def __init__(self, path: Path, storage: str, seq: Sequence):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.ROS2_KILTED)
        self.types = self.store.types
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self.writer.open()
        self.connections = {key: self.writer.add_connection(topic, msgtype, typestore=self.store)
                            for key, (topic, msgtype) in TOPICS.items()}
        self.seq = seq
        self.camera_info_msg = None

    def close(self) -> None:
        self.writer.close()

    def write(self, key: str, ns: int, msg) -> None:
        self.writer.write(self.connections[key], ns, self.store.serialize_cdr(msg, TOPICS[key][1]))

    def header(self, ns: int, frame_id: str):
        t = self.types
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                         frame_id=frame_id)

    def vector3(self, xyz):
        return self.types["geometry_msgs/msg/Vector3"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))

    def image(self, ns: int, array: np.ndarray, encoding: str):
        h, w = array.shape[:2]
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        return self.types["sensor_msgs/msg/Image"](header=self.header(ns, CAMERA_FRAME), height=h, width=w,
                                                   encoding=encoding, is_bigendian=0, step=data.size // h, data=data)

    def camera_info(self, ns: int):
        k, t = self.seq.intrinsics, self.types
        return t["sensor_msgs/msg/CameraInfo"](
            header=self.header(ns, CAMERA_FRAME), height=k.height, width=k.width, distortion_model="plumb_bob",
            d=np.zeros(5), k=k.K.reshape(-1), r=np.eye(3).reshape(-1),
            p=np.hstack([k.K, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
            roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def frame(self, index: int, rgb: np.ndarray, depth: np.ndarray) -> None:
        """All messages of one frame: images, camera info, ground truth and control."""
        ns, t = self.ns(self.seq.frame_us[index]), self.types
        self.write("rgb", ns, self.image(ns, rgb, "rgb8"))
        self.write("depth", ns, self.image(ns, depth.astype(np.float32), "32FC1"))
        self.write("camera_info", ns, self.camera_info(ns))
        T = self.seq.poses[index]
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        position = t["geometry_msgs/msg/Point"](x=T[0, 3], y=T[1, 3], z=T[2, 3])
        orientation = t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])
        pose = t["geometry_msgs/msg/Pose"](position=position, orientation=orientation)
        self.write("ground_truth", ns,
                   t["geometry_msgs/msg/PoseStamped"](header=self.header(ns, WORLD_FRAME), pose=pose))
        c = self.seq.control[index]
        accel = t["geometry_msgs/msg/Accel"](linear=self.vector3(c[:3]), angular=self.vector3(c[3:]))
        self.write("control", ns, t["geometry_msgs/msg/AccelStamped"](header=self.header(ns, IMU_FRAME), accel=accel))

    def imu(self, index: int) -> None:
        ns, t, seq = self.ns(self.seq.imu_us[index]), self.types, self.seq
        rate = 1e6 / np.median(np.diff(seq.imu_us)) if len(seq.imu_us) > 1 else 200.0
        model = seq.imu_model
        gyro_var = (model.gyro_noise_density**2 * rate) if model else 0.0
        accel_var = (model.accel_noise_density**2 * rate) if model else 0.0
        orientation_cov = np.zeros(9)
        orientation_cov[0] = -1.0  # ROS convention: orientation not provided
        msg = t["sensor_msgs/msg/Imu"](
            header=self.header(ns, IMU_FRAME),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=orientation_cov,
            angular_velocity=self.vector3(seq.imu.gyro[index]),
            angular_velocity_covariance=(np.eye(3) * gyro_var).reshape(-1),
            linear_acceleration=self.vector3(seq.imu.accel[index]),
            linear_acceleration_covariance=(np.eye(3) * accel_var).reshape(-1))
        self.write("imu", ns, msg)

    def ns(self, us: int) -> int:
        return (self.seq.start_us + int(us)) * 1000


# ----------------------------------------------------------------------------- entry point
def generate(out_dir, frames: int = 300, seed: int = 0, motion: str = "handheld", bag: str | None = "mcap",
             width: int = 640, height: int = 480, fps: float = 30.0, imu_rate: float = 200.0, noise: bool = True,
             device="cpu", progress: bool = True, ao: bool = False, overwrite: bool = False,
             start_time: float = 1_700_000_000.0) -> Path:
    """Write a synthetic sequence to ``out_dir`` (TUM-style folder, plus ``out_dir/bag`` unless ``bag`` is
    None) and return the folder. ``noise=False`` writes exact data (depth still quantised in the PNGs);
    ``ao`` adds ambient occlusion to the shading (slower)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if bag not in BAG_STORAGES:
        raise InputError(f"unknown bag storage {bag!r}", 'use bag="mcap", bag="db3" or bag=None')
    seq = make_sequence(frames, seed, motion, width, height, fps, imu_rate, noise, device, start_time)
    prepare_folder(out_dir, overwrite)
    writer = BagWriter(out_dir / "bag", bag, seq) if bag else None
    next_imu = 0
    try:
        for index in tqdm(range(len(seq)), desc="synthetic frames", unit="frame", disable=not progress):
            rgb, depth = seq.frame(index, ao=ao)
            write_frame_images(out_dir, seq.stamp(seq.frame_us[index]), rgb, depth)
            if writer:
                while next_imu < len(seq.imu_us) and seq.imu_us[next_imu] <= seq.frame_us[index]:
                    writer.imu(next_imu)
                    next_imu += 1
                writer.frame(index, rgb, depth)
    finally:
        if writer:
            writer.close()
    write_text_files(out_dir, seq)
    description = camera_yaml(seq, fps, imu_rate, motion) | {"ambient_occlusion": ao}
    (out_dir / "camera.yaml").write_text(yaml.safe_dump(description, sort_keys=False, default_flow_style=None))
    if progress:
        print(summary(out_dir, seq, motion, bag, time.perf_counter() - started))
    return out_dir


def summary(out_dir: Path, seq: Sequence, motion: str, bag: str | None, seconds: float) -> str:
    """One line saying what was written."""
    positions = seq.poses[:, :3, 3]
    length = float(np.linalg.norm(np.diff(positions, axis=0), axis=1).sum())
    duration = (seq.frame_us[-1] - seq.frame_us[0]) / 1e6
    size = sum(f.stat().st_size for f in (out_dir / "bag").rglob("*") if f.is_file()) / 1e6 if bag else 0.0
    return (f"prism_ros synthetic: {len(seq)} frames {seq.intrinsics.width}x{seq.intrinsics.height} over "
            f"{duration:.2f} s ({motion}, seed {seq.seed}, noise {seq.noise}), camera path {length:.2f} m, "
            f"{len(seq.imu_us)} IMU samples, bag {bag or 'none'} ({size:.0f} MB) -> {out_dir} in {seconds:.1f} s")


def read_scene(folder) -> Scene | None:
    """The exact scene of a folder this generator wrote (from its camera.yaml), else None."""
    camera_yaml = Path(folder) / "camera.yaml"
    if not camera_yaml.is_file():
        return None
    description = yaml.safe_load(camera_yaml.read_text()) or {}
    if description.get("generator") != "prism_ros.synthetic" or "scene" not in description:
        return None
    return Scene.from_description(description["scene"])
