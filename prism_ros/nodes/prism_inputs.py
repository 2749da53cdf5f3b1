"""prism_node's inputs, from ROS messages to the core's types: synchronised sets waiting for the worker
(:class:`Mailbox`), their decoding into a :class:`prism_ros.frame.Frame` (:class:`FrameDecoder`: registered depth,
or a stereo pair rectified and matched), and the IMU samples and commands handed to the filter with each frame
(:class:`MotionBuffer`). Bad input raises :class:`BadInput`: the cause counted in /diagnostics, the problem and
the fix."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from geometry_msgs.msg import AccelStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu

from prism_ros.errors import InputError
from prism_ros.frame import Frame, ImuSamples, Intrinsics
from prism_ros.nodes.conversions import (
    camera_info_to_intrinsics,
    compressed_source_encoding,
    compressed_to_numpy,
    covariance_from_msg,
    depth_to_metres,
    header_ns,
    image_to_numpy,
    matrix_to_transform_stamped,
    pose_to_matrix,
    ros_covariance_to_left,
    stamp_to_sec,
    to_rgb,
)
from prism_ros.nodes.prism_parameters import DEPTH_ENCODINGS, GREY_ENCODINGS, RGB_ENCODINGS, right_camera
from prism_ros.nodes.tf import TransformError
from prism_ros.prism.stereo import StereoConfig, StereoRectifier, rgbd_frame

IMU_BUFFER = 4000  # samples kept (20 s at 200 Hz)
SMOOTH_STEP = 0.05  # neighbouring depths on one surface differ by less than this fraction
IMU_LIMITS = (1000.0, 100.0)  # |accel| m/s^2 (~100 g), |gyro| rad/s: no IMU measures more; a sample beyond is bad
FOCAL_RANGE = (0.05, 100.0)  # plausible focal lengths, in image sizes (fields of view of ~170 to ~0.6 degrees)
CONTROL_BUFFER = 400


def smooth_fraction(depth: np.ndarray, step: float = SMOOTH_STEP) -> float:
    """The share of neighbouring valid depth pixels (right and down, on every other row and column) that differ
    by less than ``step`` of their depth: over 0.99 on real RGB-D and stereo depth (7-Scenes, TUM, SUN3D, EuRoC
    SGBM), about 0.05 for uniform noise. Depth that is mostly noise is not a surface to track or map."""
    d = np.asarray(depth[::2, ::2], dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    agree, pairs = 0, 0
    for a, b, both in ((d[:, :-1], d[:, 1:], valid[:, :-1] & valid[:, 1:]),
                       (d[:-1], d[1:], valid[:-1] & valid[1:])):
        with np.errstate(invalid="ignore"):
            agree += int((both & (np.abs(a - b) <= step * np.minimum(a, b))).sum())
        pairs += int(both.sum())
    return agree / pairs if pairs else 0.0


class BadInput(Exception):
    """A message the node cannot use: ``cause`` (counted in /diagnostics), the problem and the fix."""

    def __init__(self, cause: str, problem: str, fix: str):
        super().__init__(f"{problem} -> {fix}")
        self.cause, self.problem, self.fix = cause, problem, fix


@dataclass
class PendingFrame:
    """One synchronised set waiting for the worker (messages still undecoded); ``depth`` is None and ``right``
    the right image with stereo depth."""

    rgb: Any
    depth: Any
    info: Any
    stamp_ns: int
    received: float  # time.monotonic() when the set was complete
    reset_reason: str | None = None
    right: Any = None


def read_pose_input(msg, topic: str, map_frame: str, lookup, tolerance: float) -> tuple[np.ndarray, np.ndarray | None]:
    """T_map_base of a pose input (geometry_msgs/PoseWithCovarianceStamped) and the filter's left covariance of
    it, None when the message's is not a usable covariance (not positive definite, or too large to handle: the
    filter's own is used then). A pose in another frame (e.g. odom) is brought into ``map_frame`` through
    ``lookup(target, source, t, tolerance)`` (TF) at its stamp. BadInput (bad_initial_pose) when it is not finite,
    not a rotation, or in a frame TF does not connect."""
    frame = msg.header.frame_id.lstrip("/") or map_frame
    try:
        T_frame_base = pose_to_matrix(msg.pose.pose)
    except InputError as error:
        raise BadInput("bad_initial_pose", f"{topic}: {error.problem}", error.fix or "send a unit quaternion") from None
    covariance = covariance_from_msg(msg.pose.covariance)
    if not np.isfinite(T_frame_base).all() or not np.isfinite(covariance).all():
        raise BadInput("bad_initial_pose", f"{topic} has non-finite values", "send a finite pose and covariance")
    if frame != map_frame:
        stamp = stamp_to_sec(msg.header.stamp)
        try:
            T_map_frame = lookup(map_frame, frame, stamp if stamp > 0 else None, tolerance)
        except TransformError as error:
            raise BadInput("bad_initial_pose", f"{topic} is in frame {frame!r}: {error}",
                           f"send it in {map_frame!r}, or in a frame TF connects to it") from None
        rotate = np.kron(np.eye(2), T_map_frame[:3, :3])  # position and fixed-axis rotation errors turn alike
        T_frame_base, covariance = T_map_frame @ T_frame_base, rotate @ covariance @ rotate.T
    return T_frame_base, _left_covariance(covariance, T_frame_base)


def _left_covariance(ros_covariance: np.ndarray, T_map_base: np.ndarray) -> np.ndarray | None:
    try:
        covariance = ros_covariance_to_left(ros_covariance, T_map_base[:3, 3])
        with np.errstate(all="ignore"):
            symmetric = 0.5 * (covariance + covariance.T)
            usable = np.isfinite(symmetric).all() and np.all(np.linalg.eigvalsh(symmetric) > 0)
    except (np.linalg.LinAlgError, ValueError, OverflowError):
        return None
    return covariance if usable else None


class SyncWatch:
    """Why images arrive but no synchronised set completes: a stream that is missing, or streams whose stamps
    never agree. ``roles``: the synchronised inputs in order, colour first; ``topics``: role -> topic.

    :meth:`check` speaks when a colour image has waited ``timeout`` for its set while images keep arriving, so a
    stalled publisher whose next set arrives a message at a time is not mistaken for a missing stream."""

    FIXES = {"camera_info": "publish the camera's CameraInfo (remap camera_info_topic), or set "
                            "intrinsics_source:=parameters with intrinsics:=[fx, fy, cx, cy]",
             "depth": "check depth_topic (and that the depth driver runs)",
             "right": "check right_topic (the right camera's image, stamped like the left one)",
             "rgb": "check rgb_topic (and rgb_compressed for CompressedImage)"}

    def __init__(self, roles: list[str], topics: dict[str, str]):
        self.roles, self.topics = list(roles), dict(topics)
        self._lock = threading.Lock()
        self._arrivals: list[float | None] = [None] * len(roles)  # time.monotonic() of each input's last message
        self._stamps: list[int | None] = [None] * len(roles)
        self._unmatched = 0  # colour images since the last set
        self._unmatched_since: float | None = None  # arrival of the oldest of them

    def arrived(self, index: int, stamp_ns: int) -> None:
        with self._lock:
            self._arrivals[index] = time.monotonic()
            self._stamps[index] = stamp_ns
            if index == 0:
                if not self._unmatched:
                    self._unmatched_since = self._arrivals[0]
                self._unmatched += 1

    def matched(self) -> None:
        with self._lock:
            self._unmatched_since, self._unmatched = None, 0

    def check(self, timeout: float, slop: float) -> tuple[BadInput, int] | None:
        """The problem and how many colour images it cost, or None."""
        now = time.monotonic()
        with self._lock:
            recent = [a is not None and now - a < timeout for a in self._arrivals]
            waited = self._unmatched_since is not None and now - self._unmatched_since > timeout
            if not (any(recent) and waited):
                return None
            count, stamps = max(1, self._unmatched), list(self._stamps)
            self._unmatched, self._unmatched_since = 0, None
        arriving = ", ".join(r for r, ok in zip(self.roles, recent) if ok)
        missing = [role for role, ok in zip(self.roles, recent) if not ok]
        if missing:
            role = missing[0]
            return BadInput(f"missing_{role}", f"no {role} on {self.topics[role]} for {timeout:.1f} s while "
                            f"{arriving} arrive; frames cannot be synchronised", self.FIXES[role]), count
        spread = (max(stamps) - min(stamps)) / 1e9
        latest = ", ".join(f"{role} {s / 1e9:.6f}" for role, s in zip(self.roles, stamps))
        return BadInput("unsynchronised", f"{', '.join(self.roles)} arrive but their stamps never lie within "
                        f"sync_slop={slop} s (latest: {latest}; spread {spread:.3f} s)",
                        "stamp all streams from the same clock, or raise sync_slop"), count


class Mailbox:
    """Frames waiting for the worker, at most ``capacity``: ``put`` drops the oldest when full (returning it);
    ``take`` waits for the oldest. Capacity 1 is the "latest frame" slot. A dropped frame's reset request
    passes to the next frame, so a time jump is never lost with the frame that carried it."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._items: deque[PendingFrame] = deque()
        self._ready = threading.Condition()

    def put(self, item: PendingFrame) -> PendingFrame | None:
        with self._ready:
            self._items.append(item)
            dropped = self._items.popleft() if len(self._items) > self.capacity else None
            if dropped is not None and dropped.reset_reason and not self._items[0].reset_reason:
                self._items[0].reset_reason = dropped.reset_reason
            self._ready.notify()
        return dropped

    def take(self, timeout: float) -> PendingFrame | None:
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            return self._items.popleft() if self._items else None

    def clear(self) -> None:
        with self._ready:
            self._items.clear()

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()


class MotionBuffer:
    """IMU samples and control commands as they arrive (executor thread), taken by the worker with each frame:
    the IMU samples in (previous processed frame, t], the last command at or before t. ``values`` are the node's
    parameters (read live: ``time_jump_threshold``, ``imu_wait``, ``input_timeout``)."""

    def __init__(self, values: dict, stop: threading.Event):
        self.values, self._stop = values, stop
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.imu: deque = deque(maxlen=IMU_BUFFER)  # (t, gyro (3,), accel (3,)), sorted by t
        self._imu_newest: tuple[float, float] | None = None  # (stamp, monotonic arrival) of the newest sample
        self.control: deque = deque(maxlen=CONTROL_BUFFER)  # (t, (6,))
        self._last_twist: tuple[float, np.ndarray] | None = None

    def add_imu(self, msg: Imu) -> None:
        t = header_ns(msg) / 1e9
        gyro = np.array([msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z])
        accel = np.array([msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z])
        if not (np.isfinite(gyro).all() and np.isfinite(accel).all()):
            raise BadInput("bad_imu", f"IMU sample at {t:.6f} s has non-finite values", "fix the IMU driver")
        if np.abs(accel).max() > IMU_LIMITS[0] or np.abs(gyro).max() > IMU_LIMITS[1]:
            raise BadInput("bad_imu", f"IMU sample at {t:.6f} s is beyond any IMU's range (accel "
                           f"{np.abs(accel).max():.3g} m/s^2, gyro {np.abs(gyro).max():.3g} rad/s; limits "
                           f"{IMU_LIMITS[0]:g} and {IMU_LIMITS[1]:g})", "check the IMU driver's units (m/s^2, rad/s)")
        with self._lock:
            if self.imu and t < self.imu[-1][0] - self.values["time_jump_threshold"]:
                self.imu.clear()  # the stream restarted (looped bag)
                self._imu_newest = None
            if self._imu_newest is None or t > self._imu_newest[0]:
                self._imu_newest = (t, time.monotonic())
            self._arrived.notify_all()
            if self.imu and t <= self.imu[-1][0]:
                if any(s[0] == t for s in self.imu):
                    return  # duplicate
                samples = sorted([*self.imu, (t, gyro, accel)], key=lambda s: s[0])
                self.imu.clear()
                self.imu.extend(samples)
            else:
                self.imu.append((t, gyro, accel))

    def add_control(self, msg) -> None:
        """An AccelStamped (commanded body acceleration and rates) or TwistStamped (acceleration from
        consecutive linear velocities) command."""
        t = header_ns(msg) / 1e9
        if isinstance(msg, AccelStamped):
            a, w = msg.accel.linear, msg.accel.angular
            command = np.array([a.x, a.y, a.z, w.x, w.y, w.z])
        else:
            lin, w = msg.twist.linear, msg.twist.angular
            velocity = np.array([lin.x, lin.y, lin.z])
            previous, self._last_twist = self._last_twist, (t, velocity)
            if previous is None or t <= previous[0]:
                return  # acceleration needs two commands
            command = np.concatenate([(velocity - previous[1]) / (t - previous[0]), [w.x, w.y, w.z]])
        if not np.isfinite(command).all():
            raise BadInput("bad_control", f"control command at {t:.6f} s has non-finite values",
                           "fix the command publisher")
        with self._lock:
            if self.control and t < self.control[-1][0] - self.values["time_jump_threshold"]:
                self.control.clear()
            self.control.append((t, command))

    def wait_for_imu(self, t: float) -> None:
        """Wait (at most ``imu_wait``) for an IMU sample at or after ``t`` while the IMU stream is live.

        IMU messages can arrive after the images they precede (another DDS reader, another transport path);
        a window taken before they do would lose its last samples for good.
        """
        wait = self.values["imu_wait"]
        if not self.values["imu_topic"] or wait <= 0:
            return
        with self._arrived:
            newest = self._imu_newest
            if newest is None or time.monotonic() - newest[1] > self.values["input_timeout"]:
                return  # no live IMU stream: nothing to wait for (a model that needs it reports missing_imu)
            self._arrived.wait_for(lambda: self._stop.is_set() or (self._imu_newest or (t,))[0] >= t, timeout=wait)

    def wake(self) -> None:
        with self._arrived:
            self._arrived.notify_all()

    def take_imu(self, t: float, after: float | None) -> ImuSamples | None:
        """IMU samples in (``after``, t], removed from the buffer (with the older ones); None without an IMU."""
        if not self.values["imu_topic"]:
            return None
        with self._lock:
            samples = [s for s in self.imu if s[0] <= t]
            for _ in samples:
                self.imu.popleft()
        if after is not None:
            samples = [s for s in samples if s[0] > after]
        if not samples:
            return ImuSamples.empty()
        return ImuSamples(np.array([s[0] for s in samples]), np.stack([s[1] for s in samples]),
                          np.stack([s[2] for s in samples]))

    def control_at(self, t: float) -> np.ndarray | None:
        """The last command at or before ``t`` (held), or None."""
        with self._lock:
            before = [c for c in self.control if c[0] <= t]
        return before[-1][1].copy() if before else None

    def newest(self) -> tuple[tuple | None, np.ndarray | None]:
        """The newest IMU sample (t, gyro, accel) and the newest command, or None each."""
        with self._lock:
            return (self.imu[-1] if self.imu else None), (self.control[-1][1] if self.control else None)


class FrameDecoder:
    """A synchronised set -> a checked :class:`Frame` (worker thread): the colour image, registered depth or
    the stereo pair (rectified, OpenCV SGBM; the frame is then the rectified left camera's), and the camera
    from CameraInfo or the parameters. ``on_rectification(T_left_rect)`` is told when a new stereo
    calibration or image size gives a new rectified camera."""

    def __init__(self, values: dict, max_depth: float, stereo: StereoConfig | None = None,
                 T_left_right: np.ndarray | None = None,
                 on_rectification: Callable[[np.ndarray], None] = lambda T: None):
        self.values, self.max_depth = values, max_depth
        self._stereo, self._T_left_right = stereo, T_left_right if T_left_right is not None else np.eye(4)
        self._on_rectification = on_rectification
        self._rectifier: StereoRectifier | None = None  # built for the pairs' calibration and size
        self._rectifier_key: tuple | None = None
        self.index = 0  # frames decoded
        self.stereo_figures: tuple[float, float] | None = None  # (ms, valid fraction) of the last pair matched

    def frame(self, item: PendingFrame) -> Frame:
        """Decode and check one set (BadInput names the cause and the fix): an RGB-D frame from registered
        depth, or from the stereo pair (the rectified left camera)."""
        v = self.values
        self.stereo_figures = None
        rgb = self.decode_rgb(item.rgb)
        if rgb.shape[0] * rgb.shape[1] > v["max_image_pixels"]:
            raise BadInput("bad_image", f"colour on {v['rgb_topic']} is {rgb.shape[1]}x{rgb.shape[0]}, more than "
                           f"max_image_pixels ({v['max_image_pixels']})", "resize the images (image_proc's resize "
                           "node) or raise max_image_pixels")
        if v["depth_source"] == "stereo":
            frame = self._stereo_frame(item, rgb)
            fix = ("point the cameras at textured, lit surfaces; check that right_topic is this rig's right camera "
                   "and its calibration (right_intrinsics, right_distortion, T_left_right): a wrong one matches "
                   f"nothing; stereo_num_disparities={v['stereo_num_disparities']} sees down to "
                   f"{self._rectifier.focal * self._rectifier.baseline / v['stereo_num_disparities']:.2f} m")
        else:
            frame = self._registered_frame(item, rgb)
            fix = f"check depth_topic and depth_scale ({v['depth_scale']} m per unit for 16-bit depth)"
        depth = frame.depth
        finite = np.isfinite(depth)
        valid = finite & (depth > 0) & (depth < self.max_depth)
        fraction = float(valid.mean()) if valid.size else 0.0
        if fraction < v["min_valid_depth_fraction"]:
            values = depth[finite]
            typical = f"median {np.median(values):.3g} m" if values.size else "no finite value"
            kind = "stereo depth" if v["depth_source"] == "stereo" else "depth"
            raise BadInput("bad_depth", f"{kind} has {100 * fraction:.1f}% valid pixels (finite, > 0, < max_depth "
                           f"{self.max_depth} m; {typical}; need {100 * v['min_valid_depth_fraction']:.0f}%)", fix)
        smooth = smooth_fraction(depth)
        frame.extras["smooth_fraction"] = smooth
        if smooth < v["min_smooth_depth_fraction"]:
            kind = "stereo depth" if v["depth_source"] == "stereo" else "depth"
            raise BadInput("bad_depth", f"{kind} is noise, not surfaces: {100 * smooth:.1f}% of neighbouring valid "
                           f"pixels agree within {100 * SMOOTH_STEP:.0f}% (need "
                           f"{100 * v['min_smooth_depth_fraction']:.0f}%; real depth: over 99%)", fix)
        self.index += 1
        return frame

    def _registered_frame(self, item: PendingFrame, rgb: np.ndarray) -> Frame:
        """Colour + registered depth image (+ CameraInfo or parameters)."""
        v = self.values
        depth_msg = item.depth
        if depth_msg.encoding not in DEPTH_ENCODINGS:
            raise BadInput("bad_encoding", f"depth on {v['depth_topic']} has encoding {depth_msg.encoding!r}",
                           f"publish depth as {', '.join(DEPTH_ENCODINGS)} (16-bit scaled by depth_scale)")
        try:
            depth = depth_to_metres(image_to_numpy(depth_msg), depth_msg.encoding, v["depth_scale"])
        except InputError as error:
            raise BadInput("bad_image", f"depth on {v['depth_topic']}: {error.problem}",
                           error.fix or "fix the publisher") from None
        if rgb.shape[:2] != depth.shape[:2]:
            raise BadInput("size_mismatch", f"colour is {rgb.shape[1]}x{rgb.shape[0]} but depth is "
                           f"{depth.shape[1]}x{depth.shape[0]}", "publish depth registered to the colour camera at "
                           "the same resolution (e.g. aligned_depth_to_color)")
        intrinsics = self.intrinsics(item.info, rgb.shape)
        depth_intrinsics = None
        if any(v["depth_intrinsics"]):
            fx, fy, cx, cy = v["depth_intrinsics"]
            depth_intrinsics = Intrinsics(fx, fy, cx, cy, depth.shape[1], depth.shape[0])
        return Frame(index=self.index, timestamp=item.stamp_ns / 1e9, rgb=rgb, depth=depth,
                     intrinsics=intrinsics, depth_intrinsics=depth_intrinsics)

    def _stereo_frame(self, item: PendingFrame, left: np.ndarray) -> Frame:
        """The rectified left image, its pinhole intrinsics and the SGBM depth of the pair (worker thread)."""
        v = self.values
        started = time.perf_counter()
        right = self._decode_right(item.right)
        if left.shape[:2] != right.shape[:2]:
            raise BadInput("size_mismatch", f"left image on {v['rgb_topic']} is {left.shape[1]}x{left.shape[0]} but "
                           f"right on {v['right_topic']} is {right.shape[1]}x{right.shape[0]}",
                           "publish both cameras of the stereo pair at the same resolution (same binning and ROI)")
        left_camera = self.intrinsics(item.info, left.shape)
        right_camera_ = right_camera(v, right.shape[1], right.shape[0])
        rectifier = self._stereo_rectifier(left_camera, right_camera_)
        pair = Frame(index=self.index, timestamp=item.stamp_ns / 1e9, rgb=left, depth=None,
                     intrinsics=left_camera, right=right, right_intrinsics=right_camera_,
                     T_left_right=self._T_left_right)
        try:
            frame = rgbd_frame(pair, rectifier)
        except InputError as error:
            raise BadInput("bad_image", f"stereo pair: {error.problem}", error.fix or "fix the publishers") from None
        stereo_ms = 1e3 * (time.perf_counter() - started)
        frame.extras["stereo_ms"] = stereo_ms
        self.stereo_figures = (stereo_ms, frame.extras["stereo_valid_fraction"])  # also when its depth is refused
        return frame

    def _decode_right(self, msg: Image) -> np.ndarray:
        """The right image as HxW uint8 grey (SGBM matches grey images)."""
        import cv2

        topic = self.values["right_topic"]
        if msg.encoding not in RGB_ENCODINGS:
            raise BadInput("bad_encoding", f"right image on {topic} has encoding {msg.encoding!r}",
                           f"publish the right camera like the left one ({', '.join(RGB_ENCODINGS[:5])})")
        try:
            pixels = image_to_numpy(msg)
            if msg.encoding in GREY_ENCODINGS:
                return np.ascontiguousarray(pixels.reshape(pixels.shape[:2]))
            return cv2.cvtColor(to_rgb(pixels, msg.encoding), cv2.COLOR_RGB2GRAY)
        except InputError as error:
            raise BadInput("bad_image", f"right image on {topic}: {error.problem}",
                           error.fix or "fix the publisher") from None
        except cv2.error as error:
            raise BadInput("bad_encoding", f"right image on {topic} ({msg.encoding}) is not an image: {error}",
                           f"publish {', '.join(RGB_ENCODINGS[:5])}") from None

    def _stereo_rectifier(self, left: Intrinsics, right: Intrinsics) -> StereoRectifier:
        """The rectifier of this calibration and image size, built once (maps ~10 ms) and cached; a new one
        (the first pair, a new CameraInfo or image size) also moves the filter's camera to its rectified one."""
        key = (left, right)
        if self._rectifier_key != key:
            try:
                rectifier = StereoRectifier(left, right, self._T_left_right, config=self._stereo)
            except InputError as error:
                raise BadInput("bad_camera_info", f"stereo calibration for {left.width}x{left.height} images: "
                               f"{error.problem}", error.fix or "check the stereo calibration") from None
            self._rectifier, self._rectifier_key = rectifier, key
            self._on_rectification(rectifier.T_left_rect)
        return self._rectifier

    def decode_rgb(self, msg) -> np.ndarray:
        topic = self.values["rgb_topic"]
        if isinstance(msg, CompressedImage):
            encoding = compressed_source_encoding(msg.format)
            try:
                pixels = compressed_to_numpy(msg)
            except InputError as error:
                raise BadInput("bad_image", f"colour on {topic}: {error.problem}",
                               error.fix or "publish jpeg or png") from error
        else:
            encoding = msg.encoding
            if encoding not in RGB_ENCODINGS:
                raise BadInput("bad_encoding", f"colour on {topic} has encoding {encoding!r}",
                               f"publish {', '.join(RGB_ENCODINGS[:5])}")
            try:
                pixels = image_to_numpy(msg)
            except InputError as error:
                raise BadInput("bad_image", f"colour on {topic}: {error.problem}",
                               error.fix or "fix the publisher") from error
        try:
            return to_rgb(pixels, encoding)
        except (InputError, Exception) as error:
            raise BadInput("bad_encoding", f"colour on {topic} ({encoding}, shape {pixels.shape}) is not a colour "
                           f"image: {error}", f"publish {', '.join(RGB_ENCODINGS[:5])}") from error

    def intrinsics(self, info: CameraInfo | None, shape) -> Intrinsics:
        height, width = shape[:2]
        v = self.values
        if info is None:
            fx, fy, cx, cy = v["intrinsics"]
            return Intrinsics(fx, fy, cx, cy, width, height, tuple(v["distortion"]))
        try:
            intrinsics = camera_info_to_intrinsics(info, rectified=v["rectified_input"])
        except InputError as error:
            raise BadInput("bad_camera_info", f"CameraInfo on {v['camera_info_topic']}: {error.problem}",
                           error.fix or "publish a calibrated CameraInfo") from error
        if (info.width or info.height) and (info.width, info.height) != (width, height):
            raise BadInput("size_mismatch", f"CameraInfo is for {info.width}x{info.height} but the images are "
                           f"{width}x{height}", "publish the CameraInfo of the image stream (same resolution)")
        size = max(width, height)
        if not all(FOCAL_RANGE[0] * size <= f <= FOCAL_RANGE[1] * size for f in (intrinsics.fx, intrinsics.fy)) or \
                not (-width / 2 <= intrinsics.cx <= 1.5 * width and -height / 2 <= intrinsics.cy <= 1.5 * height):
            raise BadInput("bad_camera_info", f"CameraInfo on {v['camera_info_topic']} is not a camera for "
                           f"{width}x{height} images: focal {intrinsics.fx:.4g}, {intrinsics.fy:.4g} px (plausible: "
                           f"{FOCAL_RANGE[0] * size:.4g} to {FOCAL_RANGE[1] * size:.4g}), principal point "
                           f"{intrinsics.cx:.4g}, {intrinsics.cy:.4g}", "publish the calibrated CameraInfo of this "
                           "stream")
        return replace(intrinsics, width=width, height=height)


class StampOrder:
    """What a set's stamp means against the sets accepted before it (executor thread, under the node's order
    lock). A small step back is out of order (dropped). A jump of more than ``time_jump_threshold`` either way
    is held back: the set is dropped, and only when the next set continues from it is the jump taken: a
    looped bag or a restarted clock (backwards: the node resets), or a gap in the input (forwards). A single
    outlier stamp (0, a clock glitch, a stamp in another year) is therefore dropped, never a reset."""

    def __init__(self, values: dict):
        self.values = values
        self.newest: int | None = None  # ns of the newest accepted set
        self._candidate: int | None = None  # ns of a set that jumped, waiting for the next to confirm it

    def reset(self) -> None:
        """Any stamp is welcome next (a requested reset)."""
        self.newest = self._candidate = None

    def accept(self, stamp: int) -> str | None:
        """Accept the set stamped ``stamp`` ns: None, or the reason to reset first (a confirmed jump back);
        BadInput when it is dropped."""
        threshold = self.values["time_jump_threshold"]
        if stamp <= 0:
            raise BadInput("bad_stamp", "frame is unstamped (stamp 0); dropped", "stamp images with their capture time")
        newest = self.newest
        if newest is None:
            self.newest = stamp
            return None
        step = (stamp - newest) / 1e9
        if abs(step) <= threshold:
            if step <= 0:
                raise BadInput("out_of_order", f"frame stamped {stamp / 1e9:.6f} s is {-step:.3f} s older than the "
                               f"previous one ({newest / 1e9:.6f} s); dropped", "publish frames in stamp order with "
                               "unique stamps")
            self.newest, self._candidate = stamp, None
            return None
        candidate, self._candidate = self._candidate, stamp
        if candidate is not None and 0 < (stamp - candidate) / 1e9 <= threshold:  # the jump goes on: take it
            self.newest, self._candidate = stamp, None
            return f"time jumped back by {-step:.3f} s (looped bag or restarted clock)" if step < 0 else None
        raise BadInput("bad_stamp", f"frame stamped {stamp / 1e9:.6f} s is {step:+.3f} s from the previous one "
                       f"({newest / 1e9:.6f} s); dropped, and taken as a time jump only if the next frame follows it",
                       "check the camera clock; a looped bag or restarted clock resets the map after its second "
                       "frame")


class CameraPlacement:
    """Where the camera sits on the base. With ``extrinsics_source: tf`` the base -> camera transform is looked
    up once on TF for the colour image's frame (BadInput ``missing_tf`` until TF has it; then
    ``move_camera(T_base_left)`` and ``values["T_base_camera"]`` take it); with the parameter it is latched
    on /tf_static once per camera frame (``publish_camera_tf``). ``tf``: the node's TF (lookup, send_static)."""

    def __init__(self, values: dict, tf, move_camera: Callable[[np.ndarray], Any], log: Callable[[str], Any]):
        self.values, self.tf, self.move_camera, self.log = values, tf, move_camera, log
        self.known = values["extrinsics_source"] == "parameter"  # T_base_camera is final
        self.latched = ""  # the camera frame latched on /tf_static

    def place(self, camera_frame: str) -> None:
        v = self.values
        if self.known:
            if v["publish_camera_tf"] and v["extrinsics_source"] == "parameter" and camera_frame and \
                    camera_frame != self.latched:
                T_base_left = np.asarray(v["T_base_camera"], dtype=np.float64).reshape(4, 4)
                self.tf.send_static([matrix_to_transform_stamped(T_base_left, 0.0, v["base_frame"], camera_frame)])
                self.latched = camera_frame
            return
        fix = (f"publish {v['base_frame']} -> {camera_frame or 'the camera frame'} on /tf_static "
               "(robot_state_publisher with the robot's URDF), or extrinsics_source:=parameter with T_base_camera")
        if not camera_frame:
            raise BadInput("missing_tf", f"the colour image on {v['rgb_topic']} has no frame_id, so its place on "
                           f"{v['base_frame']} cannot be looked up; frame skipped", fix)
        try:
            T_base_left = self.tf.lookup(v["base_frame"], camera_frame)
        except TransformError as error:
            raise BadInput("missing_tf", f"camera extrinsics not on TF yet ({error}); frame skipped", fix) from None
        v["T_base_camera"] = T_base_left.ravel().tolist()
        self.move_camera(T_base_left)
        self.known = True
        self.log(f"camera extrinsics from TF: {v['base_frame']} -> {camera_frame} at "
                 f"{np.round(T_base_left[:3, 3], 3).tolist()}")
