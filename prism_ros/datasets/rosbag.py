"""ROS 1 (.bag) and ROS 2 (db3/mcap folder or file) bags through ``rosbags.highlevel.AnyReader``.

Topics are given per role (``topics=dict(rgb=..., depth=..., camera_info=..., imu=..., control=...,
right=..., ground_truth=...)``; a role set to None is dropped) on top of a ``preset``:
- ``prism`` (our synthetic bags): /camera/rgb/image_color (rgb8), /camera/depth/image (32FC1 m),
  /camera/rgb/camera_info, /imu (sensor_msgs/Imu), /control (geometry_msgs/AccelStamped:
  accel.linear = commanded body acceleration m/s^2, accel.angular = commanded body RATES rad/s),
  /ground_truth (geometry_msgs/PoseStamped, T_world_camera);
- ``tum``: /camera/rgb/image_color, /camera/depth/image, /camera/rgb/camera_info, /imu;
- ``euroc``: /cam0/image_raw, /cam1/image_raw (as ``right``), /imu0 (no camera_info: pass
  ``intrinsics=``, e.g. the path of cam0/sensor.yaml).
Without ``preset`` the first preset whose colour topic is in the bag gives the defaults; a preset's
topics missing from the bag are skipped, explicitly given ones must exist.

The bag is read once on open to index it: image topics keep (header stamp, bag time, connection), the
small messages (IMU, control, ground truth, camera info) are kept decoded. ``__getitem__`` then reads one
message per image through ``reader.messages(connections, start, stop)`` at its bag time.
Times are header stamps (the bag time when a stamp is zero). Colour and depth (and right) are paired by
nearest stamp within ``max_diff``; colour frames without depth are dropped when there is a depth topic.
Images: sensor_msgs/Image rgb8, bgr8, rgba8, bgra8, mono8, mono16/16UC1 (``depth_scale`` units/m,
default 1000 = mm), 32FC1 (metres), and sensor_msgs/CompressedImage (JPEG/PNG, and compressedDepth).
Depth is taken as registered to colour (true for the prism and TUM bags): T_color_depth identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from prism_ros.frame import Frame, ImuSamples, Intrinsics

from ..errors import InputError
from .common import (
    StoredDataset,
    associate,
    check_depth_scale,
    check_index,
    depth_from_raw,
    distortion5,
    imu_since_previous,
    interpolate_poses,
    last_at_or_before,
    matrix4,
    poses_from_quaternions,
    to_intrinsics,
)

PRESETS = {
    "prism": {"rgb": "/camera/rgb/image_color", "depth": "/camera/depth/image",
              "camera_info": "/camera/rgb/camera_info", "imu": "/imu", "control": "/control",
              "ground_truth": "/ground_truth"},
    "tum": {"rgb": "/camera/rgb/image_color", "depth": "/camera/depth/image",
            "camera_info": "/camera/rgb/camera_info", "imu": "/imu"},
    "euroc": {"rgb": "/cam0/image_raw", "right": "/cam1/image_raw", "imu": "/imu0"},
}
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ROLE_TYPES = {
    "rgb": IMAGE_TYPES, "depth": IMAGE_TYPES, "right": IMAGE_TYPES,
    "camera_info": ("sensor_msgs/msg/CameraInfo",), "imu": ("sensor_msgs/msg/Imu",),
    "control": ("geometry_msgs/msg/AccelStamped",),
    "ground_truth": ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/TransformStamped", "nav_msgs/msg/Odometry"),
}
#: encoding -> (dtype, channels)
ENCODINGS = {"rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
             "8uc1": ("u1", 1), "mono16": ("u2", 1), "16uc1": ("u2", 1), "32fc1": ("f4", 1)}


@dataclass(frozen=True)
class _ImageRef:
    stamp: float
    bag_time: int
    connection: object


def stamp_of(msg, bag_time: int) -> float:
    """Header stamp in seconds, or the bag time when the message has no (or a zero) stamp."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None or (stamp.sec == 0 and stamp.nanosec == 0):
        return bag_time * 1e-9
    return stamp.sec + stamp.nanosec * 1e-9


def image_array(msg, source: str) -> np.ndarray:
    """Decoded image: HxWx3 RGB uint8, HxW uint8/uint16 or HxW float32, as the message holds."""
    if hasattr(msg, "format"):  # CompressedImage
        return compressed_image_array(msg, source)
    encoding = msg.encoding.lower()
    if encoding not in ENCODINGS:
        raise InputError(f"unsupported image encoding {msg.encoding!r}", f"use one of {sorted(ENCODINGS)}", source)
    kind, channels = ENCODINGS[encoding]
    dtype = np.dtype((">" if msg.is_bigendian else "<") + kind)
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.height * msg.step:
        raise InputError(f"image data ({len(msg.data)} bytes, step {msg.step}) too short for {msg.width}x"
                         f"{msg.height} {msg.encoding}", "check the publisher", source)
    rows = np.frombuffer(msg.data, np.uint8)[:msg.height * msg.step].reshape(msg.height, msg.step)[:, :row_bytes]
    image = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="))
    image = image.reshape(msg.height, msg.width, channels)
    if encoding in ("bgr8", "bgra8"):
        image = image[..., 2::-1]
    return np.ascontiguousarray(image[..., :3] if channels == 4 else image.squeeze(-1) if channels == 1 else image)


def compressed_image_array(msg, source: str) -> np.ndarray:
    """sensor_msgs/CompressedImage: JPEG/PNG (colour as RGB) or compressed_depth_image_transport's
    'compressedDepth' (12-byte header, then PNG: 16UC1 as is, 32FC1 as quantised inverse depth)."""
    data, fmt = np.frombuffer(msg.data, np.uint8), msg.format.lower()
    is_depth = "compresseddepth" in fmt
    image = cv2.imdecode(data[12:] if is_depth else data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot decode compressed image ({msg.format!r})", "check the image_transport format", source)
    if is_depth and fmt.startswith("32fc1"):
        quant_a, quant_b = np.frombuffer(data[4:12].tobytes(), "<f4")
        with np.errstate(divide="ignore"):
            depth = (quant_a / (image.astype(np.float32) - quant_b)).astype(np.float32)
        depth[image == 0] = np.nan
        return depth
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    return image


def pose_of(msg) -> np.ndarray:
    """4x4 pose of a PoseStamped, TransformStamped or Odometry message."""
    if hasattr(msg, "transform"):
        t, q = msg.transform.translation, msg.transform.rotation
    else:
        pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
        t, q = pose.position, pose.orientation
    return poses_from_quaternions(np.array([[t.x, t.y, t.z]]), np.array([[q.x, q.y, q.z, q.w]]))[0]


def intrinsics_of(msg) -> Intrinsics:
    """Intrinsics from sensor_msgs/CameraInfo (ROS 1 names K, D; ROS 2 names k, d)."""
    K = np.asarray(msg.k if hasattr(msg, "k") else msg.K, dtype=np.float64)
    D = msg.d if hasattr(msg, "d") else msg.D
    return Intrinsics(float(K[0]), float(K[4]), float(K[2]), float(K[5]), int(msg.width), int(msg.height),
                      distortion5(list(D)))


def vector3(v) -> list[float]:
    return [v.x, v.y, v.z]


class RosbagDataset(StoredDataset):
    """RGB-D (or stereo) frames from a ROS bag, random access through a stamp index."""

    format_name = "rosbag"

    def __init__(self, path, topics: dict | None = None, preset: str | None = None, max_diff: float = 0.02,
                 depth_scale: float = 1000.0, intrinsics=None, right_intrinsics=None, T_imu_camera=None,
                 gt_max_gap: float = 0.1):
        self.path, self.depth_scale = Path(path), float(depth_scale)
        self._reader = self._open()
        self.topics = self._resolve_topics(topics, preset)
        self._index()
        self._associate(max_diff)
        self._poses = interpolate_poses(*self._gt, self._timestamps, gt_max_gap) if self._gt else [None] * len(self)
        self.intrinsics = self._resolve_intrinsics(intrinsics)
        self.right_intrinsics = None if right_intrinsics is None else to_intrinsics(right_intrinsics, self.path)
        self._T_imu_camera = None if T_imu_camera is None else matrix4(T_imu_camera, self.path, "T_imu_camera")
        self._check_depth_scale()

    @classmethod
    def detect(cls, path: Path) -> bool:
        if path.is_file():
            return path.suffix in (".bag", ".db3", ".mcap")
        return path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.db3"))
                                  or any(path.glob("*.mcap")))

    # ------------------------------------------------------------------------------------ opening
    def _open(self) -> AnyReader:
        if not self.path.exists():
            raise InputError("bag not found", "give a ROS 1 .bag file or a ROS 2 bag folder", self.path)
        try:
            reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_KILTED))
            reader.open()
        except Exception as error:  # rosbags raises several reader-specific errors
            raise InputError(f"cannot open the bag ({error})", "check that it is a complete ROS 1/2 bag",
                             self.path) from None
        return reader

    def _resolve_topics(self, topics: dict | None, preset: str | None) -> dict[str, str]:
        """Role -> topic, from the preset and the explicit topics, checked against the bag."""
        available = {c.topic: c.msgtype for c in self._reader.connections}
        listing = ", ".join(f"{topic} [{msgtype}]" for topic, msgtype in sorted(available.items())) or "none"
        requested = dict(topics or {})
        unknown_roles = sorted(set(requested) - set(ROLE_TYPES))
        if unknown_roles:
            raise InputError(f"unknown topic roles {unknown_roles}", f"use roles among {sorted(ROLE_TYPES)}", self.path)
        if preset is not None and preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}", f"use one of {sorted(PRESETS)}", self.path)
        if preset is None:
            preset = next((name for name, roles in PRESETS.items() if roles["rgb"] in available), None)
        chosen = {role: topic for role, topic in PRESETS.get(preset, {}).items()
                  if topic in available or role == "rgb"}
        chosen.update(requested)
        chosen = {role: topic for role, topic in chosen.items() if topic}
        missing = [f"{role}={topic}" for role, topic in chosen.items() if topic not in available]
        if "rgb" not in chosen or missing:
            problem = f"topics {missing} are not in the bag" if missing else "no colour topic found"
            raise InputError(f"{problem}; the bag has: {listing}",
                             "pass topics=dict(rgb=..., depth=..., ...) or preset=" + "|".join(PRESETS), self.path)
        for role, topic in chosen.items():
            if available[topic] not in ROLE_TYPES[role]:
                raise InputError(f"topic {topic} has type {available[topic]}, role {role} needs one of "
                                 f"{list(ROLE_TYPES[role])}", "pass the right topic in topics=", self.path)
        return chosen

    def _index(self) -> None:
        """One pass over the bag: image references per role, the small messages decoded."""
        role_of = {topic: role for role, topic in self.topics.items()}
        connections = [c for c in self._reader.connections if c.topic in role_of]
        refs: dict[str, list[_ImageRef]] = {role: [] for role in ("rgb", "depth", "right")}
        samples: dict[str, list] = {"imu": [], "control": [], "ground_truth": []}
        self._camera_info = None
        for connection, bag_time, raw in self._reader.messages(connections=connections):
            role = role_of[connection.topic]
            msg = self._reader.deserialize(raw, connection.msgtype)
            stamp = stamp_of(msg, bag_time)
            if role in refs:
                refs[role].append(_ImageRef(stamp, bag_time, connection))
            elif role == "camera_info":
                self._camera_info = self._camera_info or msg
            elif role == "imu":
                samples[role].append((stamp, vector3(msg.angular_velocity) + vector3(msg.linear_acceleration)))
            elif role == "control":
                samples[role].append((stamp, vector3(msg.accel.linear) + vector3(msg.accel.angular)))
            else:
                samples[role].append((stamp, pose_of(msg)))
        self._refs = {role: self._sorted_unique(items, role) for role, items in refs.items()}
        if not self._refs["rgb"]:
            raise InputError(f"no messages on {self.topics['rgb']}", "choose a topic with images", self.path)
        imu = sorted(samples["imu"], key=lambda s: s[0])
        values = np.array([v for _, v in imu]).reshape(-1, 6)
        self._imu = ImuSamples(np.array([t for t, _ in imu]), values[:, :3], values[:, 3:]) if "imu" in self.topics \
            else None
        control = sorted(samples["control"], key=lambda s: s[0])
        self._control = (np.array([t for t, _ in control]), np.array([v for _, v in control]).reshape(-1, 6))
        truth = sorted(samples["ground_truth"], key=lambda s: s[0])
        truth_times, first = np.unique([t for t, _ in truth], return_index=True)  # drop repeated stamps
        self._gt = (truth_times, np.array([truth[i][1] for i in first])) if truth else None

    def _sorted_unique(self, refs: list[_ImageRef], role: str) -> list[_ImageRef]:
        refs = sorted(refs, key=lambda r: r.stamp)
        for previous, current in zip(refs, refs[1:]):
            if current.stamp == previous.stamp:
                raise InputError(f"duplicate stamp {current.stamp:.9f} on {self.topics[role]}",
                                 "republish with unique header stamps", self.path)
        return refs

    def _associate(self, max_diff: float) -> None:
        rgb = self._refs["rgb"]
        rgb_times = np.array([r.stamp for r in rgb])

        def matched(role: str) -> dict[int, _ImageRef]:
            others = self._refs[role]
            return {i: others[j] for i, j in associate(rgb_times, np.array([r.stamp for r in others]), max_diff)}

        depth, right = matched("depth"), matched("right")
        keep = sorted(depth) if "depth" in self.topics else list(range(len(rgb)))
        if not keep:
            raise InputError(f"no colour/depth pair within {max_diff} s", "check the stamps or raise max_diff",
                             self.path)
        self._rgb_refs = [rgb[i] for i in keep]
        self._depth_refs = [depth.get(i) for i in keep]
        self._right_refs = [right.get(i) for i in keep]
        self._timestamps = rgb_times[keep]

    def _resolve_intrinsics(self, option) -> Intrinsics:
        if option is not None:
            return to_intrinsics(option, self.path)
        if self._camera_info is None:
            raise InputError(f"no camera_info message (topic {self.topics.get('camera_info')})",
                             "pass intrinsics= (Intrinsics, dict, or a camera.yaml/sensor.yaml path) or "
                             "topics=dict(camera_info=...)", self.path)
        return intrinsics_of(self._camera_info)

    def _check_depth_scale(self) -> None:
        """Integer depth (16UC1, mono16, PNG) must look plausible at ``depth_scale``; float depth is metres."""
        ref = self._depth_refs[0]
        raw = None if ref is None else self._read(ref, "depth")
        if raw is not None and raw.dtype == np.uint16:
            check_depth_scale(depth_from_raw(raw, self.depth_scale), self.depth_scale,
                              f"{self.path} {self.topics['depth']}")

    # ------------------------------------------------------------------------------------ access
    def _read(self, ref: _ImageRef, role: str) -> np.ndarray:
        """Decoded image of one indexed message, read at its bag time."""
        for connection, bag_time, raw in self._reader.messages([ref.connection], start=ref.bag_time,
                                                               stop=ref.bag_time + 1):
            msg = self._reader.deserialize(raw, connection.msgtype)
            if stamp_of(msg, bag_time) == ref.stamp:
                return image_array(msg, f"{self.path} {self.topics[role]}")
        raise InputError(f"message at {ref.stamp:.9f} on {self.topics[role]} vanished", "reopen the bag", self.path)

    def _rgb(self, ref: _ImageRef) -> np.ndarray:
        image = self._read(ref, "rgb")
        if image.dtype != np.uint8:
            raise InputError(f"colour topic {self.topics['rgb']} holds {image.dtype} images",
                             "use an 8-bit colour or mono topic", self.path)
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image

    def _depth(self, ref: _ImageRef | None) -> np.ndarray | None:
        if ref is None:
            return None
        image = self._read(ref, "depth")
        if image.dtype == np.uint16:
            return depth_from_raw(image, self.depth_scale)
        if image.dtype != np.float32 or image.ndim != 2:
            raise InputError(f"depth topic {self.topics['depth']} holds {image.dtype} images with shape "
                             f"{image.shape}", "use a 16UC1 (mm) or 32FC1 (m) depth topic", self.path)
        depth = image.copy()
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
        return depth

    def _right(self, ref: _ImageRef | None) -> np.ndarray | None:
        if ref is None:
            return None
        image = self._read(ref, "right")
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image

    def __getitem__(self, index: int) -> Frame:
        index = check_index(index, len(self))
        timestamp = float(self._timestamps[index])
        last = last_at_or_before(self._control[0], timestamp)
        depth_ref, pose = self._depth_refs[index], self._poses[index]
        return Frame(
            index=index, timestamp=timestamp, rgb=self._rgb(self._rgb_refs[index]), depth=self._depth(depth_ref),
            intrinsics=self.intrinsics, T_color_depth=np.eye(4) if "depth" in self.topics else None,
            right=self._right(self._right_refs[index]), right_intrinsics=self.right_intrinsics,
            imu=imu_since_previous(self._imu, self._timestamps, index),
            control=None if last is None else self._control[1][last].copy(),
            pose=None if pose is None else pose.copy(),
            extras={"depth_timestamp": None if depth_ref is None else depth_ref.stamp})

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
