"""Dense depth from a calibrated stereo pair (EuRoC-like rigs): rectify once, then SGBM per frame.

Which camera the depth belongs to: the **rectified left camera**. Rectification rotates the left camera
about its centre (``R_rect_left``, OpenCV's ``R1``) and replaces its lens model by a pinhole without
distortion (:attr:`StereoRectifier.intrinsics`, from OpenCV's ``P1``). Depth, the rectified left image
and those intrinsics form one consistent pinhole RGB-D frame: depth[v, u] is the z coordinate (metres,
along the rectified optical axis) of what the rectified image shows at (u, v). Depth is never warped back
into the distorted left image (that would need a second resampling with holes); callers compose poses
and extrinsics instead, with the rectified camera having the same centre as the left camera:

    T_world_rect = T_world_left @ T_left_rect        (StereoRectifier.T_left_rect, rotation only)
    T_imu_rect   = T_imu_left   @ T_left_rect

:func:`rgbd_frame` does this for one stereo :class:`~prism_ros.frame.Frame` (EuRoC reader:
``right``, ``right_intrinsics``, ``T_left_right`` = right -> left) and :class:`StereoDepthDataset`
for a whole dataset (poses, ground truth and ``T_imu_camera`` composed), so the filter sees a plain
RGB-D dataset.

Depth is ``f * B / d`` with the rectified focal length ``f`` (px), the baseline ``B`` (m) and SGBM's
sub-pixel disparity ``d`` (px); pixels without a disparity (occlusion, no texture, left border,
uniqueness or left-right check failed, speckles) or outside [min_depth, max_depth] are NaN.
:meth:`StereoRectifier.depth_std` gives the first-order depth noise ``z^2 / (f B) * sigma_d``.

Bad calibration or images raise :class:`prism_ros.errors.InputError` (problem and fix). No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from prism_ros.datasets.base import Dataset
from prism_ros.errors import InputError
from prism_ros.frame import Frame, ImuSamples, Intrinsics

SGBM_MODES = {"sgbm": cv2.StereoSGBM_MODE_SGBM, "hh": cv2.StereoSGBM_MODE_HH,
              "sgbm_3way": cv2.StereoSGBM_MODE_SGBM_3WAY, "hh4": cv2.StereoSGBM_MODE_HH4}
ZERO_DISPARITY = getattr(cv2, "STEREO_ZERO_DISPARITY", getattr(cv2, "CALIB_ZERO_DISPARITY", 1024))


@dataclass(frozen=True)
class StereoConfig:
    """Rectification and ``cv2.StereoSGBM`` settings; the defaults suit EuRoC (752x480, B = 0.11 m).

    num_disparities: search range in px (multiple of 16); with f ~ 460 px and B = 0.11 m, 96 px reaches
      down to ~0.53 m. block_size: odd matching window. p1, p2: smoothness penalties (None: the usual
      8 and 32 x channels x block_size^2). disp12_max_diff: left-right check tolerance in px (< 0 off).
    pre_filter_cap, uniqueness_ratio (%), speckle_window_size (px, 0 off), speckle_range (px): SGBM's.
    mode: "sgbm" (5 paths), "sgbm_3way" (faster, multi-threaded), "hh" (8 paths, slow), "hh4".
    min_depth, max_depth: depth outside is NaN (m). alpha: rectification scaling, 0 = crop to valid
      pixels only (no black borders), 1 = keep every source pixel. disparity_sigma: disparity noise
      (px) behind :meth:`StereoRectifier.depth_std`.
    """

    num_disparities: int = 96
    block_size: int = 5
    p1: int | None = None
    p2: int | None = None
    min_disparity: int = 0
    disp12_max_diff: int = 1
    pre_filter_cap: int = 31
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    mode: str = "sgbm_3way"
    min_depth: float = 0.3
    max_depth: float = 10.0
    alpha: float = 0.0
    disparity_sigma: float = 0.3

    def check(self) -> "StereoConfig":
        """Self, or InputError naming the first bad value."""
        problems = [
            (self.num_disparities <= 0 or self.num_disparities % 16 != 0,
             f"num_disparities {self.num_disparities} must be a positive multiple of 16"),
            (self.block_size < 1 or self.block_size % 2 == 0, f"block_size {self.block_size} must be odd and >= 1"),
            (self.p1 is not None and self.p2 is not None and not 0 <= self.p1 < self.p2,
             f"smoothness penalties need 0 <= p1 < p2 (got {self.p1}, {self.p2})"),
            (self.mode not in SGBM_MODES, f"unknown SGBM mode {self.mode!r} (use one of {', '.join(SGBM_MODES)})"),
            (not 0 < self.min_depth < self.max_depth,
             f"need 0 < min_depth < max_depth (got {self.min_depth}, {self.max_depth})"),
            (not (self.alpha == -1 or 0 <= self.alpha <= 1), f"alpha {self.alpha} must be in [0, 1] (or -1)"),
            (self.disparity_sigma <= 0, f"disparity_sigma {self.disparity_sigma} must be > 0"),
        ]
        for bad, problem in problems:
            if bad:
                raise InputError(problem, "fix the StereoConfig value")
        return self

    def matcher(self, channels: int = 1) -> cv2.StereoSGBM:
        """A ``cv2.StereoSGBM`` with these settings for images with ``channels`` channels."""
        area = channels * self.block_size * self.block_size
        return cv2.StereoSGBM_create(
            minDisparity=self.min_disparity, numDisparities=self.num_disparities, blockSize=self.block_size,
            P1=8 * area if self.p1 is None else self.p1, P2=32 * area if self.p2 is None else self.p2,
            disp12MaxDiff=self.disp12_max_diff, preFilterCap=self.pre_filter_cap,
            uniquenessRatio=self.uniqueness_ratio, speckleWindowSize=self.speckle_window_size,
            speckleRange=self.speckle_range, mode=SGBM_MODES[self.mode])


@dataclass
class StereoDepth:
    """One pair's result, all in the rectified left camera (see :attr:`StereoRectifier.intrinsics`).

    depth: HxW float32 metres, NaN invalid. image: the rectified left image (same channels and dtype
    as the left input). disparity: HxW float32 px, NaN invalid.
    """

    depth: np.ndarray
    image: np.ndarray
    disparity: np.ndarray

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.depth).mean())


def _check_intrinsics(intrinsics: Intrinsics, which: str) -> None:
    if not isinstance(intrinsics, Intrinsics):
        raise InputError(f"{which} camera intrinsics missing or not an Intrinsics ({type(intrinsics).__name__})",
                         "give the calibrated Intrinsics of both cameras")
    values = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, *intrinsics.distortion)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{which} camera intrinsics are not finite: {intrinsics}", "check the calibration file")
    if intrinsics.fx <= 0 or intrinsics.fy <= 0:
        raise InputError(f"{which} camera focal length must be positive (fx={intrinsics.fx}, fy={intrinsics.fy})",
                         "check the calibration file (fx fy cx cy, in pixels)")
    if intrinsics.width <= 0 or intrinsics.height <= 0:
        raise InputError(f"{which} camera image size must be positive ({intrinsics.width}x{intrinsics.height})",
                         "check the resolution in the calibration file")
    if len(intrinsics.distortion) not in (4, 5, 8, 12, 14):
        raise InputError(f"{which} camera has {len(intrinsics.distortion)} distortion coefficients",
                         "give OpenCV-order radial-tangential coefficients (k1, k2, p1, p2[, k3])")


def _check_transform(T: np.ndarray, what: str) -> np.ndarray:
    try:
        T = np.asarray(T, dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a 4x4 matrix", "give the stereo extrinsic as a 4x4 transform") from None
    R = T[:3, :3]
    if not np.all(np.isfinite(T)) or not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise InputError(f"{what} is not a rigid transform (rotation not orthonormal or not finite)",
                         "check the stereo extrinsic (a 4x4 [R t; 0 1] with R a rotation)")
    return T


class StereoRectifier:
    """Rectification of one calibrated stereo rig, built once, and SGBM depth per pair.

    ``left``/``right``: calibrated intrinsics with radtan distortion; the extrinsic as exactly one of
    ``T_left_right`` (right camera -> left camera coordinates, the :class:`Frame` convention) or
    ``T_right_left`` (left -> right, OpenCV's ``R, T`` of ``stereoCalibrate``). The right camera must
    lie to the right of the left one (horizontal rig). One SGBM matcher per instance: use one instance
    per thread.
    """

    def __init__(self, left: Intrinsics, right: Intrinsics, T_left_right=None, *,
                 T_right_left=None, config: StereoConfig | None = None):
        self.config = (config or StereoConfig()).check()
        _check_intrinsics(left, "left")
        _check_intrinsics(right, "right")
        if (left.width, left.height) != (right.width, right.height):
            raise InputError(f"left and right image sizes differ ({left.width}x{left.height} vs "
                             f"{right.width}x{right.height})",
                             "give calibrations of the same resolution (resize one camera's intrinsics)")
        if (T_left_right is None) == (T_right_left is None):
            raise InputError("give exactly one stereo extrinsic", "pass T_left_right (right -> left) "
                             "or T_right_left (left -> right)")
        if T_right_left is None:
            T_right_left = np.linalg.inv(_check_transform(T_left_right, "T_left_right"))
        T_right_left = _check_transform(T_right_left, "T_right_left")
        if np.linalg.norm(T_right_left[:3, 3]) < 1e-6:
            raise InputError("stereo baseline is zero", "check the stereo extrinsic (translation in metres)")
        self.left, self.right = left, right
        size = (left.width, left.height)
        R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(
            left.K, np.asarray(left.distortion, np.float64), right.K, np.asarray(right.distortion, np.float64),
            size, T_right_left[:3, :3].copy(), T_right_left[:3, 3].reshape(3, 1).copy(), flags=ZERO_DISPARITY,
            alpha=self.config.alpha, newImageSize=size)
        if abs(P2[1, 3]) > abs(P2[0, 3]):
            raise InputError("the stereo rig is vertical (baseline mostly along the image y axis)",
                             "SGBM needs a horizontal rig; rotate both images by 90 degrees with their calibration")
        if P2[0, 3] >= 0:
            raise InputError("the 'right' camera lies to the left of the 'left' camera",
                             "swap the two cameras (images and calibrations) or invert the extrinsic")
        self.R_rect_left = np.asarray(R1, np.float64)  # left camera -> rectified left camera (rotation)
        self.focal = float(P1[0, 0])
        self.baseline = float(-P2[0, 3] / P2[0, 0])
        self.intrinsics = Intrinsics(float(P1[0, 0]), float(P1[1, 1]), float(P1[0, 2]), float(P1[1, 2]),
                                     left.width, left.height)
        self._maps = [cv2.initUndistortRectifyMap(cam.K, np.asarray(cam.distortion, np.float64), R, P, size,
                                                  cv2.CV_16SC2)
                      for cam, R, P in ((left, R1, P1), (right, R2, P2))]
        self._matcher = self.config.matcher(1)  # SGBM runs on grey images

    @classmethod
    def from_frame(cls, frame: Frame, config: StereoConfig | None = None) -> "StereoRectifier":
        """The rectifier of a stereo frame's calibration (``intrinsics``, ``right_intrinsics``, ``T_left_right``)."""
        if frame.right_intrinsics is None or frame.T_left_right is None:
            raise InputError(f"frame {frame.index} has no right camera calibration",
                             "use a stereo dataset (EuRoC with cam1/ and its sensor.yaml)")
        return cls(frame.intrinsics, frame.right_intrinsics, frame.T_left_right, config=config)

    @property
    def T_rect_left(self) -> np.ndarray:
        """4x4 left camera -> rectified left camera (pure rotation, same centre)."""
        T = np.eye(4)
        T[:3, :3] = self.R_rect_left
        return T

    @property
    def T_left_rect(self) -> np.ndarray:
        """4x4 rectified left camera -> left camera: ``T_world_rect = T_world_left @ T_left_rect``."""
        T = np.eye(4)
        T[:3, :3] = self.R_rect_left.T
        return T

    def _image(self, image, which: str) -> np.ndarray:
        cam = self.left if which == "left" else self.right
        if image is None:
            raise InputError(f"no {which} image", "give both images of the stereo pair")
        image = np.asarray(image)
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise InputError(f"{which} image has shape {image.shape}", "give an HxW grey or HxWx3 RGB image")
        if image.shape[:2] != (cam.height, cam.width):
            raise InputError(f"{which} image is {image.shape[1]}x{image.shape[0]} but its calibration is "
                             f"{cam.width}x{cam.height}", "use the calibration of this resolution")
        if image.dtype != np.uint8:
            raise InputError(f"{which} image has dtype {image.dtype}", "give 8-bit images")
        return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image

    def rectify(self, left, right) -> tuple[np.ndarray, np.ndarray]:
        """Both images rectified (same channels as given)."""
        images = (self._image(left, "left"), self._image(right, "right"))
        return tuple(cv2.remap(image, m1, m2, cv2.INTER_LINEAR) for image, (m1, m2) in zip(images, self._maps))

    def compute(self, left, right) -> StereoDepth:
        """Depth of one pair (uint8 grey or RGB each) in the rectified left camera."""
        left_rect, right_rect = self.rectify(left, right)
        grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im for im in (left_rect, right_rect)]
        raw = self._matcher.compute(grey[0], grey[1])
        disparity = raw.astype(np.float32) / 16.0
        disparity[raw <= (self.config.min_disparity - 1) * 16] = np.nan
        disparity[disparity <= 0] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = (self.focal * self.baseline / disparity).astype(np.float32)
        depth[~((depth >= self.config.min_depth) & (depth <= self.config.max_depth))] = np.nan
        disparity[np.isnan(depth)] = np.nan
        return StereoDepth(depth, left_rect, disparity)

    def depth_std(self, depth: np.ndarray) -> np.ndarray:
        """First-order depth noise (m) of stereo depth: ``z^2 / (f B) * disparity_sigma``."""
        return (np.asarray(depth) ** 2 / (self.focal * self.baseline) * self.config.disparity_sigma).astype(np.float32)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image


def rgbd_frame(frame: Frame, rectifier: StereoRectifier | None = None,
               config: StereoConfig | None = None) -> Frame:
    """An RGB-D frame from a stereo one (EuRoC reader): rectified left image and its SGBM depth.

    ``intrinsics`` become the rectified pinhole ones, ``pose`` (when known) becomes that of the
    rectified camera (``pose @ T_left_rect``); IMU, control and timestamp are kept; the stereo fields are
    cleared. ``extras`` gains ``T_left_rect`` (4x4), ``stereo_valid_fraction`` and ``depth_std``
    (HxW float32 m). Build the ``rectifier`` once per sequence and pass it in (rectification maps cost
    ~10 ms); without one it is built from the frame's calibration.
    """
    if frame.right is None:
        raise InputError(f"frame {frame.index} has no right image",
                         "use a stereo dataset whose cam1 images match cam0 in time (EuRoC: cam1/data.csv)")
    if frame.rgb is None:
        raise InputError(f"frame {frame.index} has no left image", "check the dataset's cam0 images")
    rectifier = rectifier or StereoRectifier.from_frame(frame, config)
    result = rectifier.compute(frame.rgb, frame.right)
    extras = dict(frame.extras)
    extras.update(T_left_rect=rectifier.T_left_rect, stereo_valid_fraction=result.valid_fraction,
                  depth_std=rectifier.depth_std(result.depth))
    return replace(frame, rgb=_as_rgb(result.image), depth=result.depth, intrinsics=rectifier.intrinsics,
                   depth_intrinsics=None, T_color_depth=None, right=None, right_intrinsics=None, T_left_right=None,
                   pose=None if frame.pose is None else frame.pose @ rectifier.T_left_rect, extras=extras)


class StereoDepthDataset(Dataset):
    """A stereo dataset (EuRoC) seen as RGB-D in the rectified left camera: frames via :func:`rgbd_frame`,
    ``T_imu_camera`` and ground truth composed with ``T_left_rect``. The rig calibration is taken from
    the dataset's first frame and must not change along the sequence."""

    def __init__(self, dataset: Dataset, config: StereoConfig | None = None):
        self.dataset = dataset
        self.format_name = dataset.format_name
        if len(dataset) == 0:
            raise InputError("the stereo dataset has no frames", "check the dataset folder")
        self.rectifier = StereoRectifier.from_frame(dataset[0], config)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Frame:
        return rgbd_frame(self.dataset[index], self.rectifier)

    @property
    def preset_name(self) -> str:
        return self.dataset.preset_name

    @property
    def timestamps(self) -> np.ndarray:
        return self.dataset.timestamps

    @property
    def T_imu_camera(self) -> np.ndarray | None:
        T = self.dataset.T_imu_camera
        return None if T is None else T @ self.rectifier.T_left_rect

    @property
    def imu(self) -> ImuSamples | None:
        return self.dataset.imu

    def ground_truth(self):
        truth = self.dataset.ground_truth()
        return None if truth is None else (truth[0], truth[1] @ self.rectifier.T_left_rect)
