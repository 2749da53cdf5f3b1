"""TUM RGB-D folders, including what the prism synthetic generator writes.

Layout: ``rgb.txt`` and ``depth.txt`` ('t path' per line) with ``rgb/`` and ``depth/`` (uint16 PNG,
``depth_scale`` = 5000 units/m), optional ``groundtruth.txt`` (t tx ty tz qx qy qz qw, T_world_camera),
``imu.txt`` (t gx gy gz ax ay az), ``control.txt`` (t ax ay az wx wy wz) and ``camera.yaml``
(fx fy cx cy width height distortion [T_imu_camera 4x4]).

Colour and depth are paired by nearest timestamp within ``max_diff`` (0.02 s, each used once, as TUM's
associate.py); the frame time is the colour time. Ground truth is interpolated (SLERP rotation, linear
translation) when samples at most ``gt_max_gap`` apart surround the frame time, else None. Per frame:
IMU samples in (previous frame, frame], and the last control command at or before the frame.

Intrinsics: the ``intrinsics=`` option, else ``camera.yaml``, else TUM's calibration for the
freiburg1/2/3 sensor named in the path, else the ROS default Kinect model (with a warning).
TUM depth images are registered to colour (depth_intrinsics None, T_color_depth identity).

Also reads the keyframe layout of the cube_slam fr3/cabinet sample: ``raw_imgs/NNNN_rgb_raw.jpg``,
``depth_imgs/NNNN_depth_raw.png`` and ``truth_cam_poses.txt`` (one TUM pose per frame, in order, whose
times are the frame times).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from prism_ros.frame import Frame, ImuSamples, Intrinsics

from ..errors import InputError
from .common import (
    StoredDataset,
    associate,
    check_depth_scale,
    check_increasing,
    check_index,
    distortion5,
    imu_since_previous,
    interpolate_poses,
    last_at_or_before,
    load_yaml,
    matrix4,
    numeric,
    read_depth,
    read_rgb,
    read_rows,
    read_trajectory,
    to_intrinsics,
)

#: TUM's published calibration per sensor: fx, fy, cx, cy, distortion (k1, k2, p1, p2, k3).
TUM_INTRINSICS = {
    1: ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    2: ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    3: ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
}
ROS_DEFAULT = ((525.0, 525.0, 319.5, 239.5), (0.0, 0.0, 0.0, 0.0, 0.0))
KEYFRAME_POSES = "truth_cam_poses.txt"


def sensor_from_name(path: Path) -> int | None:
    """1, 2 or 3 when a path component names freiburgN / frN."""
    for part in reversed(path.resolve().parts):
        match = re.search(r"(?:freiburg|fr)([123])(?!\d)", part.lower())
        if match:
            return int(match.group(1))
    return None


def read_file_list(path: Path, root: Path) -> tuple[np.ndarray, list[Path]]:
    """TUM 't relative/path' list: sorted unique times and the files, which must exist."""
    rows = read_rows(path, 2, "each line must be 'timestamp relative/path'")
    times = check_increasing(numeric(rows, slice(0, 1), path)[:, 0], path)
    files = [root / row[1] for row in rows]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(files)} listed images are missing, first {missing[0]}",
                         "restore the image folder or regenerate the list", path)
    return times, files


class TumDataset(StoredDataset):
    """TUM RGB-D sequence (standard or cube_slam keyframe layout)."""

    format_name = "tum"

    def __init__(self, path, depth_scale: float = 5000.0, max_diff: float = 0.02, intrinsics=None,
                 gt_max_gap: float = 0.1):
        self.path, self.depth_scale = Path(path), float(depth_scale)
        self._imu, self._control, self._T_imu_camera, self._generator = None, None, None, None
        if (self.path / "rgb.txt").is_file():
            self._load_standard(max_diff, gt_max_gap)
        elif (self.path / KEYFRAME_POSES).is_file():
            self._load_keyframes()
        else:
            raise InputError("no rgb.txt (TUM) or truth_cam_poses.txt (keyframe layout) here",
                             "give a TUM RGB-D sequence folder", self.path)
        self.intrinsics = self._resolve_intrinsics(intrinsics)
        check_depth_scale(read_depth(self._depth_files[0], self.depth_scale), self.depth_scale, self._depth_files[0])

    @property
    def preset_name(self) -> str:
        """"synthetic" for folders the prism generator wrote (IMU-driven preset), else "tum"."""
        return "synthetic" if self._generator == "prism_ros.synthetic" else self.format_name

    @classmethod
    def detect(cls, path: Path) -> bool:
        return ((path / "rgb.txt").is_file() and (path / "depth.txt").is_file()) or (
            (path / KEYFRAME_POSES).is_file() and (path / "raw_imgs").is_dir())

    def _load_standard(self, max_diff: float, gt_max_gap: float) -> None:
        rgb_times, rgb_files = read_file_list(self.path / "rgb.txt", self.path)
        depth_times, depth_files = read_file_list(self.path / "depth.txt", self.path)
        pairs = associate(rgb_times, depth_times, max_diff)
        if not pairs:
            raise InputError(f"no colour/depth pair within {max_diff} s", "check the timestamps or raise max_diff",
                             self.path / "depth.txt")
        self._timestamps = rgb_times[[i for i, _ in pairs]]
        self._rgb_files = [rgb_files[i] for i, _ in pairs]
        self._depth_files = [depth_files[j] for _, j in pairs]
        self._depth_times = depth_times[[j for _, j in pairs]]
        self._gt = read_trajectory(self.path / "groundtruth.txt") if (self.path / "groundtruth.txt").is_file() else None
        self._poses = interpolate_poses(*self._gt, self._timestamps, gt_max_gap) if self._gt else [None] * len(pairs)
        self._load_imu_and_control()

    def _load_keyframes(self) -> None:
        poses_file = self.path / KEYFRAME_POSES
        self._gt = read_trajectory(poses_file)
        self._timestamps, self._poses = self._gt[0], list(self._gt[1])
        self._rgb_files = sorted((self.path / "raw_imgs").glob("*_rgb_raw.*"))
        depth_folder = self.path / "depth_imgs"
        self._depth_files = [depth_folder / f"{f.name.split('_')[0]}_depth_raw.png" for f in self._rgb_files]
        if len(self._rgb_files) != len(self._timestamps):
            raise InputError(f"{len(self._timestamps)} poses but {len(self._rgb_files)} images in raw_imgs/",
                             "the keyframe layout needs one pose line per image", poses_file)
        missing = [f for f in self._depth_files if not f.is_file()]
        if missing:
            raise InputError(f"{len(missing)} depth images missing, first {missing[0]}", "restore depth_imgs/",
                             self.path / "depth_imgs")
        self._depth_times = self._timestamps

    def _load_imu_and_control(self) -> None:
        imu_file, control_file = self.path / "imu.txt", self.path / "control.txt"
        if imu_file.is_file():
            values = numeric(read_rows(imu_file, 7, "each line must be 't gx gy gz ax ay az'"), slice(0, 7), imu_file)
            self._imu = ImuSamples(check_increasing(values[:, 0], imu_file), values[:, 1:4], values[:, 4:7])
        if control_file.is_file():
            values = numeric(read_rows(control_file, 7, "each line must be 't ax ay az wx wy wz'"), slice(0, 7),
                             control_file)
            self._control = (check_increasing(values[:, 0], control_file), values[:, 1:7])

    def _resolve_intrinsics(self, option) -> Intrinsics:
        height, width = read_rgb(self._rgb_files[0]).shape[:2]
        camera_file = self.path / "camera.yaml"
        if option is not None:
            return to_intrinsics(option, self.path)
        if camera_file.is_file():
            data = load_yaml(camera_file)
            self._generator = data.get("generator")
            if data.get("T_imu_camera") is not None:
                self._T_imu_camera = matrix4(data["T_imu_camera"], camera_file, "T_imu_camera")
            return to_intrinsics(camera_file)
        sensor = sensor_from_name(self.path)
        if sensor is None:
            warnings.warn(f"{self.path}: no camera.yaml and no freiburg1/2/3 in the path; using the ROS default "
                          "Kinect intrinsics (525, 525, 319.5, 239.5). Pass intrinsics= to be exact.", stacklevel=3)
        (fx, fy, cx, cy), distortion = TUM_INTRINSICS[sensor] if sensor else ROS_DEFAULT
        return Intrinsics(fx, fy, cx, cy, width, height, distortion5(distortion))

    def __getitem__(self, index: int) -> Frame:
        index = check_index(index, len(self))
        timestamp = float(self._timestamps[index])
        control = None
        if self._control is not None:
            last = last_at_or_before(self._control[0], timestamp)
            control = None if last is None else self._control[1][last].copy()
        pose = self._poses[index]
        return Frame(
            index=index, timestamp=timestamp, rgb=read_rgb(self._rgb_files[index]),
            depth=read_depth(self._depth_files[index], self.depth_scale), intrinsics=self.intrinsics,
            T_color_depth=np.eye(4), imu=imu_since_previous(self._imu, self._timestamps, index), control=control,
            pose=None if pose is None else pose.copy(),
            extras={"rgb_path": str(self._rgb_files[index]), "depth_path": str(self._depth_files[index]),
                    "depth_timestamp": float(self._depth_times[index])})
