"""What a sensor gives the filter per frame: :class:`Frame` (images, depth, intrinsics, IMU, control, pose).

Conventions (all readers, the synthetic generator and the filter share them):
- time in seconds (float64), poses as 4x4 float64 camera-to-world ``T_world_camera`` of the colour
  camera's optical frame (x right, y down, z forward);
- depth in metres, float32, NaN where invalid (each reader applies its sensor's scale and invalid code);
- IMU samples in the IMU (body) frame: gyro in rad/s, accelerometer as specific force in m/s^2 (reads
  +9.81 upwards at rest); ``T_imu_camera`` maps camera coordinates into the IMU frame;
- control: commanded body-frame linear acceleration (m/s^2, gravity excluded) and body rates (rad/s),
  stacked as ``[ax, ay, az, wx, wy, wz]`` in the IMU (body) frame.
Images and arrays are numpy here (I/O); the core moves them to torch on its device.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics with OpenCV-order distortion (k1, k2, p1, p2[, k3]); zeros when undistorted."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> "Intrinsics":
        """Intrinsics of the image resized by ``factor`` (pixel-centre convention)."""
        return replace(self, fx=self.fx * factor, fy=self.fy * factor,
                       cx=(self.cx + 0.5) * factor - 0.5, cy=(self.cy + 0.5) * factor - 0.5,
                       width=int(round(self.width * factor)), height=int(round(self.height * factor)))


@dataclass
class ImuSamples:
    """IMU samples, sorted by time: ``t`` (N,), ``gyro`` (N,3) rad/s, ``accel`` (N,3) m/s^2."""

    t: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @staticmethod
    def empty() -> "ImuSamples":
        return ImuSamples(np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)))

    def between(self, t0: float, t1: float) -> "ImuSamples":
        """Samples with t0 < t <= t1."""
        lo, hi = np.searchsorted(self.t, [t0, t1], side="right")
        return ImuSamples(self.t[lo:hi], self.gyro[lo:hi], self.accel[lo:hi])


@dataclass
class Frame:
    """One RGB-D (or stereo) frame and what came with it since the previous frame."""

    index: int
    timestamp: float
    rgb: np.ndarray | None  # HxWx3 uint8 (grey cameras: the grey image replicated)
    depth: np.ndarray | None  # HxW float32 metres, NaN invalid; None for stereo-only datasets
    intrinsics: Intrinsics  # of the colour (left) camera
    depth_intrinsics: Intrinsics | None = None  # when the depth camera differs from the colour one
    T_color_depth: np.ndarray | None = None  # 4x4, depth camera -> colour camera, when known
    right: np.ndarray | None = None  # stereo right image (HxW uint8), EuRoC
    right_intrinsics: Intrinsics | None = None
    T_left_right: np.ndarray | None = None  # 4x4, right camera -> left camera
    imu: ImuSamples | None = None  # samples with previous timestamp < t <= timestamp
    control: np.ndarray | None = None  # (6,) [ax, ay, az, wx, wy, wz] body frame
    pose: np.ndarray | None = None  # 4x4 ground-truth T_world_camera, when known
    extras: dict = field(default_factory=dict)
