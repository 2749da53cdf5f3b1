"""EuRoC MAV datasets in the ASL layout (``mav0/{cam0,cam1,imu0}/data.csv`` + ``sensor.yaml``).

Frames are cam0 images (grey, replicated to RGB) with the cam1 image of the same time (within
``max_diff``) as ``right``; no depth. Timestamps are nanoseconds in the files, seconds here.
Calibration comes from each ``sensor.yaml``: pinhole intrinsics, radial-tangential distortion and
``T_BS`` (sensor -> body). Hence ``T_left_right = inv(T_B_cam0) @ T_B_cam1`` and
``T_imu_camera = inv(T_B_imu0) @ T_B_cam0`` (imu0 is the body frame in EuRoC, so this is T_B_cam0).

Ground truth (body pose in the world) comes from ``mav0/state_groundtruth_estimate0/data.csv``, or the
``groundtruth=`` option (TUM text or ASL csv), or else a ground-truth file (``*gt*.txt``,
``*groundtruth*.{txt,csv}``, ``*gt*.csv``) found next to ``mav0``, chosen as the one covering most
frame times (so another sequence's file lying there is ignored). The frame pose is
``T_world_body(t) @ T_body_cam0``, interpolated, None where the ground truth does not cover t.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from prism_ros.frame import Frame, ImuSamples

from ..errors import InputError
from .common import (
    StoredDataset,
    associate,
    check_increasing,
    check_index,
    imu_since_previous,
    interpolate_poses,
    intrinsics_from_yaml,
    load_yaml,
    matrix4,
    numeric,
    read_grey,
    read_rows,
    read_trajectory,
    seconds_from_ns,
)

GROUND_TRUTH_PATTERNS = ("*gt*.txt", "*groundtruth*.txt", "*groundtruth*.csv", "*gt*.csv")


def find_mav0(path: Path) -> Path | None:
    """The folder holding cam0/: the path itself or its mav0/ child."""
    for candidate in (path / "mav0", path):
        if (candidate / "cam0" / "data.csv").is_file():
            return candidate
    return None


def read_camera_list(sensor: Path) -> tuple[np.ndarray, list[Path]]:
    """Times (s) and image files of one camera folder (data.csv + data/)."""
    csv = sensor / "data.csv"
    rows = read_rows(csv, 2, "each line must be 'timestamp_ns,filename'")
    times = check_increasing(seconds_from_ns(rows, csv), csv)
    return times, [sensor / "data" / row[1] for row in rows]


def sensor_extrinsics(sensor: Path) -> np.ndarray:
    """T_BS (sensor -> body) of a sensor folder."""
    path = sensor / "sensor.yaml"
    data = load_yaml(path)
    if "T_BS" not in data:
        raise InputError("no T_BS in sensor.yaml", "restore the EuRoC calibration file", path)
    return matrix4(data["T_BS"], path, "T_BS")


class EurocDataset(StoredDataset):
    """EuRoC stereo + IMU sequence."""

    format_name = "euroc"

    def __init__(self, path, groundtruth=None, max_diff: float = 0.002, gt_max_gap: float = 0.1):
        self.path = Path(path)
        self.mav0 = find_mav0(self.path)
        if self.mav0 is None:
            raise InputError("no mav0/cam0/data.csv or cam0/data.csv here", "give a EuRoC ASL folder", self.path)
        self._timestamps, self._left_files = read_camera_list(self.mav0 / "cam0")
        self.intrinsics = intrinsics_from_yaml(self.mav0 / "cam0" / "sensor.yaml")
        T_body_cam0 = sensor_extrinsics(self.mav0 / "cam0")
        self._right_files: list[Path | None] = [None] * len(self)
        self.right_intrinsics, self.T_left_right = None, None
        if (self.mav0 / "cam1" / "data.csv").is_file():
            right_times, right_files = read_camera_list(self.mav0 / "cam1")
            for i, j in associate(self._timestamps, right_times, max_diff):
                self._right_files[i] = right_files[j]
            self.right_intrinsics = intrinsics_from_yaml(self.mav0 / "cam1" / "sensor.yaml")
            self.T_left_right = np.linalg.inv(T_body_cam0) @ sensor_extrinsics(self.mav0 / "cam1")
        self._imu, self._T_imu_camera = None, None
        if (self.mav0 / "imu0" / "data.csv").is_file():
            self._imu = self._read_imu(self.mav0 / "imu0" / "data.csv")
            self._T_imu_camera = np.linalg.inv(sensor_extrinsics(self.mav0 / "imu0")) @ T_body_cam0
        self._gt = self._ground_truth(groundtruth, T_body_cam0, gt_max_gap)
        self._poses = interpolate_poses(*self._gt, self._timestamps, gt_max_gap) if self._gt else [None] * len(self)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and (find_mav0(path) is not None or (path / "mav0").is_dir())

    @staticmethod
    def _read_imu(csv: Path) -> ImuSamples:
        rows = read_rows(csv, 7, "each line must be 'timestamp_ns,wx,wy,wz,ax,ay,az'")
        values = numeric(rows, slice(1, 7), csv)
        return ImuSamples(check_increasing(seconds_from_ns(rows, csv), csv), values[:, 0:3], values[:, 3:6])

    def _ground_truth(self, option, T_body_cam0, max_gap: float):
        """(t, T_world_cam0) from the option, the ASL ground-truth folder or a file found nearby."""
        asl = self.mav0 / "state_groundtruth_estimate0"
        if option is not None:
            t, T_world_body = read_trajectory(Path(option))
        elif (asl / "data.csv").is_file():
            t, T_world_sensor = read_trajectory(asl / "data.csv")
            T_world_body = T_world_sensor @ np.linalg.inv(sensor_extrinsics(asl))
        else:
            found = self._find_ground_truth_file(max_gap)
            if found is None:
                return None
            t, T_world_body = found
        return t, T_world_body @ T_body_cam0

    def _find_ground_truth_file(self, max_gap: float):
        """The nearby ground-truth file covering most frame times, or None."""
        root = self.mav0.parent
        candidates = {p for pattern in GROUND_TRUTH_PATTERNS for depth in ("", "*/")
                      for p in root.glob(depth + pattern) if self.mav0 not in p.parents}
        best, best_count = None, 0
        for candidate in sorted(candidates):
            try:
                t, poses = read_trajectory(candidate)
            except InputError:
                continue
            count = sum(p is not None for p in interpolate_poses(t, poses, self._timestamps, max_gap))
            if count > best_count:
                best, best_count = (t, poses), count
        return best

    def __getitem__(self, index: int) -> Frame:
        index = check_index(index, len(self))
        left = read_grey(self._left_files[index])
        right_file = self._right_files[index]
        pose = self._poses[index]
        return Frame(
            index=index, timestamp=float(self._timestamps[index]), rgb=cv2.cvtColor(left, cv2.COLOR_GRAY2RGB),
            depth=None, intrinsics=self.intrinsics, right=read_grey(right_file) if right_file else None,
            right_intrinsics=self.right_intrinsics, T_left_right=self.T_left_right,
            imu=imu_since_previous(self._imu, self._timestamps, index),
            pose=None if pose is None else pose.copy(), extras={"left_path": str(self._left_files[index])})
