"""ROS 2 messages <-> numpy arrays and prism_ros types (the thin layer between DDS and the core).

Images go through cv_bridge when it is importable and through the numpy code here otherwise; both
give the same arrays (the numpy path is what the tests exercise on machines without cv_bridge).
Conventions: time as exact integer nanoseconds or float seconds, poses as 4x4 float64 matrices,
covariances as 6x6 in ROS order (x, y, z, rot_x, rot_y, rot_z).
"""
from __future__ import annotations

import array
import re
import struct
import sys
from decimal import Decimal
from functools import lru_cache
from typing import Iterable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped, Transform, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu
from std_msgs.msg import Header

from prism_ros.errors import InputError
from prism_ros.frame import ImuSamples, Intrinsics
from prism_ros.geometry.lie import skew_np
from prism_ros.nodes.compat import has_ros_piece

NS_PER_S = 1_000_000_000

# ---------------------------------------------------------------------------------------------
# time and headers
# ---------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Time) -> int:
    """Exact integer nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_to_sec(stamp: Time) -> float:
    """Float seconds of a stamp (rounded to float64; keep nanoseconds where exactness matters)."""
    return stamp_to_ns(stamp) / NS_PER_S


def ns_to_stamp(ns: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds (nanosec always in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def sec_to_ns(seconds: float) -> int:
    """Integer nanoseconds of float seconds, via the float's shortest decimal form.

    ``int(t * 1e9)`` loses digits for epoch times (1700000000.123 -> ...122999808 ns); going through
    ``repr`` keeps what the user wrote (1700000000.123 -> ...123000000 ns).
    """
    if isinstance(seconds, (int, np.integer)):
        return int(seconds) * NS_PER_S
    return int((Decimal(repr(float(seconds))) * NS_PER_S).to_integral_value())


def sec_to_stamp(seconds: float) -> Time:
    """builtin_interfaces/Time from float seconds."""
    return ns_to_stamp(sec_to_ns(seconds))


def as_stamp(stamp: Time | float | int | None) -> Time:
    """A Time message from a Time (returned as is), seconds (int or float) or None (zero)."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    return sec_to_stamp(stamp)


def make_header(frame_id: str = "", stamp: Time | float | int | None = None) -> Header:
    """std_msgs/Header; ``stamp`` is a Time message or seconds."""
    return Header(stamp=as_stamp(stamp), frame_id=frame_id)


def diagnostics_message(name: str, ok: bool, message: str, values: dict, stamp=None, hardware_id: str = "",
                        frame_id: str = "", level: bytes | None = None) -> DiagnosticArray:
    """A DiagnosticArray of one status (OK, else WARN, or ``level``) whose key/values are ``values`` (strings)."""
    if level is None:
        level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
    status = DiagnosticStatus(level=level, name=name, message=message,
                              hardware_id=hardware_id, values=[KeyValue(key=k, value=v) for k, v in values.items()])
    return DiagnosticArray(header=make_header(frame_id, stamp), status=[status])


def header_ns(msg) -> int:
    """Integer nanoseconds of ``msg.header.stamp`` (or of a Header itself)."""
    header = msg if isinstance(msg, Header) else msg.header
    return stamp_to_ns(header.stamp)


def header_sec(msg) -> float:
    """Float seconds of ``msg.header.stamp`` (or of a Header itself)."""
    return header_ns(msg) / NS_PER_S


# ---------------------------------------------------------------------------------------------
# sensor_msgs/Image
# ---------------------------------------------------------------------------------------------

_NAMED_ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3), "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4), "mono8": (np.uint8, 1), "mono16": (np.uint16, 1),
}
_CV_DEPTHS = {("8", "U"): np.uint8, ("8", "S"): np.int8, ("16", "U"): np.uint16,
              ("16", "S"): np.int16, ("32", "S"): np.int32, ("32", "F"): np.float32,
              ("64", "F"): np.float64}
_CV_PATTERN = re.compile(r"^(8|16|32|64)([USF])C(\d+)$")


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(element dtype, channel count) of a sensor_msgs/Image encoding such as rgb8 or 32FC1."""
    if encoding in _NAMED_ENCODINGS:
        dtype, channels = _NAMED_ENCODINGS[encoding]
        return np.dtype(dtype), channels
    if encoding.startswith("bayer_"):  # raw Bayer mosaics: one channel of 8 or 16 bits
        return np.dtype(np.uint16 if encoding.endswith("16") else np.uint8), 1
    match = _CV_PATTERN.match(encoding)
    if match and (match[1], match[2]) in _CV_DEPTHS and int(match[3]) >= 1:
        return np.dtype(_CV_DEPTHS[(match[1], match[2])]), int(match[3])
    raise InputError(f"unsupported image encoding {encoding!r}",
                     "use rgb8, bgr8, rgba8, mono8, mono16, 16UC1, 32FC1 or another <bits><U|S|F>C<n>")


def _pixels_shape(height: int, width: int, channels: int) -> tuple[int, ...]:
    return (height, width) if channels == 1 else (height, width, channels)


def _image_to_numpy_np(msg: Image) -> np.ndarray:
    """Numpy decoding of an Image that honours row padding (step) and byte order."""
    dtype, channels = encoding_layout(msg.encoding)
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes:
        raise InputError(f"image step {msg.step} is smaller than width*channels*bytes = {row_bytes}",
                         "fix the publisher's step field")
    if len(msg.data) < msg.step * msg.height:
        raise InputError(f"image data has {len(msg.data)} bytes, expected step*height = "
                         f"{msg.step * msg.height}", "fix the publisher's data or step")
    raw = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    if msg.step == row_bytes:
        pixels = raw.view(wire)
    else:  # drop the padding at the end of each row
        pixels = np.ascontiguousarray(raw.reshape(msg.height, msg.step)[:, :row_bytes]).view(wire)
    pixels = pixels.astype(dtype, copy=False)  # to native byte order (copies only if swapped)
    return pixels.reshape(_pixels_shape(msg.height, msg.width, channels))


def _numpy_to_image_np(pixels: np.ndarray, encoding: str) -> Image:
    """Numpy encoding of an Image: tightly packed rows in native byte order."""
    dtype, channels = encoding_layout(encoding)
    pixels = np.asarray(pixels)
    if channels == 1 and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"{encoding} needs an array of shape "
                         f"{'(H, W)' if channels == 1 else f'(H, W, {channels})'}, got {pixels.shape}")
    if pixels.dtype != dtype:
        if not np.can_cast(pixels.dtype, dtype, casting="same_kind"):
            raise ValueError(f"{encoding} needs {dtype} pixels, got {pixels.dtype}")
        pixels = pixels.astype(dtype)
    height, width = pixels.shape[:2]
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(pixels).tobytes())
    return Image(height=height, width=width, encoding=encoding,
                 is_bigendian=int(sys.byteorder == "big"),
                 step=width * channels * dtype.itemsize, data=data)


@lru_cache(maxsize=1)
def _bridge():
    from cv_bridge import CvBridge

    return CvBridge()


def _use_cv_bridge(backend: str) -> bool:
    if backend not in ("auto", "numpy", "cv_bridge"):
        raise ValueError(f"backend must be auto, numpy or cv_bridge, not {backend!r}")
    return backend == "cv_bridge" or (backend == "auto" and has_ros_piece("cv_bridge"))


def image_to_numpy(msg: Image, backend: str = "auto") -> np.ndarray:
    """Pixels of an Image as (H, W) or (H, W, C) in the message's encoding and native byte order.

    ``backend``: "auto" (cv_bridge when importable, numpy otherwise), "numpy" or "cv_bridge". The
    result may share memory with ``msg.data``; copy it before modifying. An image without pixels is an
    InputError (nothing downstream can use one; OpenCV asserts on it).
    """
    if msg.width == 0 or msg.height == 0:
        raise InputError(f"image is {msg.width}x{msg.height}: no pixels", "publish a non-empty image")
    if _use_cv_bridge(backend):
        return np.asarray(_bridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    return _image_to_numpy_np(msg)


def numpy_to_image(pixels: np.ndarray, encoding: str, stamp: Time | float | None = None,
                   frame_id: str = "", backend: str = "auto") -> Image:
    """Image message from (H, W) or (H, W, C) pixels that are already in ``encoding``."""
    if _use_cv_bridge(backend):
        msg = _bridge().cv2_to_imgmsg(np.ascontiguousarray(pixels), encoding=encoding)
    else:
        msg = _numpy_to_image_np(pixels, encoding)
    msg.header = make_header(frame_id, stamp)
    return msg


def image_to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a colour or grey 8-bit Image (what the core's Frame.rgb holds)."""
    pixels = image_to_numpy(msg)
    return to_rgb(pixels, msg.encoding)


def to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Convert 8-bit pixels in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1/3/4) to RGB."""
    import cv2

    conversions = {"rgb8": None, "8UC3": None, "bgr8": cv2.COLOR_BGR2RGB,
                   "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB, "8UC4": cv2.COLOR_RGBA2RGB,
                   "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB}
    if encoding not in conversions:
        raise InputError(f"cannot use encoding {encoding!r} as a colour image",
                         "publish rgb8, bgr8, rgba8, bgra8 or mono8")
    code = conversions[encoding]
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(pixels, code)


def depth_to_metres(pixels: np.ndarray, encoding: str, depth_scale: float = 0.001) -> np.ndarray:
    """float32 depth in metres with NaN where invalid, from 16UC1/mono16 (scaled) or 32FC1 pixels.

    ``depth_scale``: metres per unit of integer depth (0.001 for millimetres, the ROS convention).
    Zero and non-finite values are invalid.
    """
    if encoding in ("16UC1", "mono16"):
        depth = pixels.astype(np.float32) * np.float32(depth_scale)
    elif encoding in ("32FC1", "64FC1"):
        depth = pixels.astype(np.float32, copy=True)
    else:
        raise InputError(f"cannot use encoding {encoding!r} as depth", "publish 16UC1 (mm) or 32FC1 (m)")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def image_to_depth(msg: Image, depth_scale: float = 0.001) -> np.ndarray:
    """Depth Image -> float32 metres, NaN invalid (see :func:`depth_to_metres`)."""
    return depth_to_metres(image_to_numpy(msg), msg.encoding, depth_scale)


# ---------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage
# ---------------------------------------------------------------------------------------------

_COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")  # format, depthQuantA, depthQuantB


def compressed_source_encoding(fmt: str) -> str:
    """The original encoding named in a CompressedImage format ("rgb8; jpeg compressed bgr8" -> rgb8).

    Bare formats ("jpeg", "png") come from older publishers that encoded BGR: bgr8.
    """
    head = fmt.split(";")[0].strip()
    return "bgr8" if head in ("", "jpeg", "jpg", "png") else head


def compressed_to_numpy(msg: CompressedImage) -> np.ndarray:
    """Decode a CompressedImage (jpeg/png, and compressedDepth png) into its original encoding.

    Colour images come back in the channel order of the original encoding (RGB for rgb8 sources,
    BGR for bgr8 ones); compressedDepth 16UC1 gives uint16, 32FC1 gives float32 metres (NaN invalid).
    """
    import cv2

    data = np.frombuffer(msg.data, dtype=np.uint8)
    is_depth = "compresseddepth" in msg.format.replace(" ", "").lower()
    if is_depth:
        quant_a, quant_b = _COMPRESSED_DEPTH_HEADER.unpack_from(data)[1:]
        data = data[_COMPRESSED_DEPTH_HEADER.size:]
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InputError(f"could not decode CompressedImage with format {msg.format!r}",
                         "publish jpeg or png data")
    encoding = compressed_source_encoding(msg.format)
    if is_depth:
        return _inverse_depth_to_metres(pixels, quant_a, quant_b) if encoding == "32FC1" else pixels
    if pixels.ndim == 3 and encoding.startswith("rgb"):
        code = cv2.COLOR_BGR2RGB if pixels.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        pixels = cv2.cvtColor(pixels, code)
    return pixels


def _inverse_depth_to_metres(quantized: np.ndarray, quant_a: float, quant_b: float) -> np.ndarray:
    """compressedDepth stores 32FC1 depth as quant_a / depth + quant_b in uint16; invert it."""
    values = quantized.astype(np.float32)
    with np.errstate(divide="ignore"):
        depth = np.float32(quant_a) / (values - np.float32(quant_b))
    depth[quantized == 0] = np.nan
    return depth


def numpy_to_compressed(pixels: np.ndarray, encoding: str = "rgb8", fmt: str = "jpeg",
                        quality: int = 95, stamp: Time | float | None = None,
                        frame_id: str = "") -> CompressedImage:
    """Encode 8-bit colour/grey (jpeg or png) or 16-bit grey (png) pixels as a CompressedImage.

    The format string follows image_transport ("rgb8; jpeg compressed bgr8") so other ROS tools
    decode it; RGB sources are stored as BGR as OpenCV expects.
    """
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be jpeg or png, not {fmt!r}")
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and encoding.startswith("rgb"):
        code = cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        pixels = cv2.cvtColor(pixels, code)
    params = ([cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg"
              else [cv2.IMWRITE_PNG_COMPRESSION, 3])
    ok, buffer = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", pixels, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {pixels.dtype} {pixels.shape} as {fmt}")
    stored = "bgr8" if pixels.ndim == 3 else encoding
    data = array.array("B")
    data.frombytes(buffer.tobytes())
    return CompressedImage(header=make_header(frame_id, stamp),
                           format=f"{encoding}; {fmt} compressed {stored}", data=data)


# ---------------------------------------------------------------------------------------------
# sensor_msgs/CameraInfo
# ---------------------------------------------------------------------------------------------

_OPENCV_ORDER_MODELS = ("plumb_bob", "rational_polynomial", "")


def camera_info_to_intrinsics(msg: CameraInfo, rectified: bool = False) -> Intrinsics:
    """Intrinsics (fx, fy, cx, cy, size, OpenCV-order distortion) of a CameraInfo.

    Only models whose coefficients are in OpenCV order are accepted (plumb_bob,
    rational_polynomial); other models are fine when all their coefficients are zero. ``rectified``: the
    images are already rectified (``image_rect`` topics), so the projection P gives the camera and there is no
    distortion left to remove (K and D describe the raw image).
    """
    values = [*msg.k, *msg.d] + ([*msg.p] if rectified else [])
    if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
        raise InputError("CameraInfo has non-finite values in " + ("K, D or P" if rectified else "K or D"),
                         "publish a calibrated CameraInfo")
    if rectified:
        p = np.asarray(msg.p, dtype=np.float64)
        if p.size != 12 or p[0] <= 0 or p[5] <= 0:
            raise InputError("CameraInfo has no projection matrix P for rectified images",
                             "publish the CameraInfo that image_proc sets P in, or rectified_input:=false")
        return Intrinsics(fx=float(p[0]), fy=float(p[5]), cx=float(p[2]), cy=float(p[6]),
                          width=int(msg.width), height=int(msg.height), distortion=(0.0,) * 5)
    k = np.asarray(msg.k, dtype=np.float64)
    distortion = tuple(float(v) for v in msg.d)
    if msg.distortion_model not in _OPENCV_ORDER_MODELS and any(distortion):
        raise InputError(f"distortion model {msg.distortion_model!r} is not supported",
                         "rectify the images (image_proc) or calibrate with plumb_bob")
    if not distortion:
        distortion = (0.0,) * 5
    if k[0] <= 0 or k[4] <= 0:
        raise InputError("CameraInfo has no focal length (K is zero)", "publish a calibrated CameraInfo")
    return Intrinsics(fx=float(k[0]), fy=float(k[4]), cx=float(k[2]), cy=float(k[5]),
                      width=int(msg.width), height=int(msg.height), distortion=distortion)


def intrinsics_to_camera_info(intrinsics: Intrinsics, stamp: Time | float | None = None,
                              frame_id: str = "") -> CameraInfo:
    """CameraInfo of a pinhole camera (R = identity, P = [K | 0])."""
    K = intrinsics.K
    projection = np.zeros((3, 4))
    projection[:, :3] = K
    distortion = [float(v) for v in intrinsics.distortion]
    return CameraInfo(header=make_header(frame_id, stamp), width=intrinsics.width,
                      height=intrinsics.height,
                      distortion_model="plumb_bob" if len(distortion) <= 5 else "rational_polynomial",
                      d=distortion, k=K.ravel().tolist(), r=np.eye(3).ravel().tolist(),
                      p=projection.ravel().tolist())


# ---------------------------------------------------------------------------------------------
# sensor_msgs/Imu
# ---------------------------------------------------------------------------------------------


def _vector3(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def imu_to_arrays(msg: Imu) -> tuple[float, np.ndarray, np.ndarray]:
    """(t seconds, gyro (3,) rad/s, accel (3,) m/s^2) of an Imu message."""
    return header_sec(msg), _vector3(msg.angular_velocity), _vector3(msg.linear_acceleration)


def imu_messages_to_samples(msgs: Iterable[Imu]) -> ImuSamples:
    """ImuSamples (sorted by time) from Imu messages."""
    rows = sorted((imu_to_arrays(m) for m in msgs), key=lambda row: row[0])
    if not rows:
        return ImuSamples.empty()
    return ImuSamples(t=np.array([r[0] for r in rows]), gyro=np.stack([r[1] for r in rows]),
                      accel=np.stack([r[2] for r in rows]))


def arrays_to_imu(t: Time | float, gyro, accel, frame_id: str = "imu",
                  orientation_xyzw=None, gyro_cov=None, accel_cov=None) -> Imu:
    """Imu message; orientation is marked unknown (covariance[0] = -1) unless given."""
    msg = Imu(header=make_header(frame_id, t))
    msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = map(float, gyro)
    msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = map(float, accel)
    if orientation_xyzw is None:
        msg.orientation_covariance[0] = -1.0
    else:
        q = msg.orientation
        q.x, q.y, q.z, q.w = map(float, orientation_xyzw)
    if gyro_cov is not None:
        msg.angular_velocity_covariance = np.asarray(gyro_cov, dtype=np.float64).reshape(9)
    if accel_cov is not None:
        msg.linear_acceleration_covariance = np.asarray(accel_cov, dtype=np.float64).reshape(9)
    return msg


# ---------------------------------------------------------------------------------------------
# rotations, poses, transforms, odometry
# ---------------------------------------------------------------------------------------------


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a (normalised here) quaternion."""
    q = np.array([x, y, z, w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if norm == 0.0:
        raise InputError("quaternion has zero length", "publish a unit quaternion (w=1 for identity)")
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3x3 rotation, with w >= 0 (largest-component method, stable everywhere)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-300))
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q) / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


#: a message's quaternion may differ from unit length by this much in squared norm (tf2's tolerance); more is
#: not a rotation but a bug or garbage upstream, and is refused rather than silently normalised
QUATERNION_TOLERANCE = 0.01


def _matrix(translation, quaternion) -> np.ndarray:
    q = np.array([quaternion.x, quaternion.y, quaternion.z, quaternion.w], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        squared = float(q @ q)  # inf for huge components, nan for nan ones
    if not np.isfinite(squared) or (squared != 0.0 and abs(squared - 1.0) > QUATERNION_TOLERANCE):
        raise InputError(f"quaternion ({quaternion.x:g}, {quaternion.y:g}, {quaternion.z:g}, {quaternion.w:g}) has "
                         f"length {np.sqrt(squared):.4g}, not 1", "publish a unit quaternion (w=1 for identity)")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion.x, quaternion.y, quaternion.z, quaternion.w)
    T[:3, 3] = _vector3(translation)
    return T


def _check_pose_matrix(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 matrix, got shape {T.shape}")
    return T


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """4x4 matrix of a geometry_msgs/Pose."""
    return _matrix(pose.position, pose.orientation)


def matrix_to_pose(T: np.ndarray) -> Pose:
    """geometry_msgs/Pose of a 4x4 matrix."""
    T = _check_pose_matrix(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = map(float, T[:3, 3])
    q = pose.orientation
    q.x, q.y, q.z, q.w = matrix_to_quaternion(T[:3, :3])
    return pose


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """4x4 matrix of a geometry_msgs/Transform."""
    return _matrix(transform.translation, transform.rotation)


def matrix_to_transform(T: np.ndarray) -> Transform:
    """geometry_msgs/Transform of a 4x4 matrix."""
    T = _check_pose_matrix(T)
    transform = Transform()
    t = transform.translation
    t.x, t.y, t.z = map(float, T[:3, 3])
    q = transform.rotation
    q.x, q.y, q.z, q.w = matrix_to_quaternion(T[:3, :3])
    return transform


def pose_stamped_to_matrix(msg: PoseStamped) -> np.ndarray:
    """4x4 matrix of a PoseStamped (time: :func:`header_ns`)."""
    return pose_to_matrix(msg.pose)


def matrix_to_pose_stamped(T: np.ndarray, stamp: Time | float | None = None,
                           frame_id: str = "map") -> PoseStamped:
    """PoseStamped of a 4x4 matrix expressed in ``frame_id``."""
    return PoseStamped(header=make_header(frame_id, stamp), pose=matrix_to_pose(T))


def transform_stamped_to_matrix(msg: TransformStamped) -> np.ndarray:
    """4x4 matrix of a TransformStamped (maps child_frame_id coordinates into header.frame_id)."""
    return transform_to_matrix(msg.transform)


def matrix_to_transform_stamped(T: np.ndarray, stamp: Time | float | None = None,
                                frame_id: str = "map", child_frame_id: str = "camera") -> TransformStamped:
    """TransformStamped parent ``frame_id`` <- child ``child_frame_id``."""
    return TransformStamped(header=make_header(frame_id, stamp), child_frame_id=child_frame_id,
                            transform=matrix_to_transform(T))


def covariance_from_msg(values) -> np.ndarray:
    """6x6 covariance from a ROS row-major 36-vector (order x, y, z, rot_x, rot_y, rot_z)."""
    return np.asarray(values, dtype=np.float64).reshape(6, 6).copy()


def covariance_to_msg(covariance: np.ndarray) -> np.ndarray:
    """ROS row-major 36-vector of a 6x6 covariance (order x, y, z, rot_x, rot_y, rot_z)."""
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.shape != (6, 6):
        raise ValueError(f"covariance must be 6x6, got {covariance.shape}")
    return covariance.reshape(36).copy()


def swap_rotation_translation(covariance: np.ndarray) -> np.ndarray:
    """Reorder a 6x6 covariance between (rot, trans) and ROS (trans, rot) blocks; its own inverse."""
    order = [3, 4, 5, 0, 1, 2]
    return np.asarray(covariance, dtype=np.float64)[np.ix_(order, order)]


def pose_with_covariance_to_matrix(msg: PoseWithCovarianceStamped) -> tuple[np.ndarray, np.ndarray]:
    """(4x4 pose, 6x6 covariance) of a PoseWithCovarianceStamped."""
    return pose_to_matrix(msg.pose.pose), covariance_from_msg(msg.pose.covariance)


def matrix_to_pose_with_covariance(T: np.ndarray, covariance: np.ndarray,
                                   stamp: Time | float | None = None,
                                   frame_id: str = "map") -> PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped of a 4x4 pose and a 6x6 ROS-order covariance."""
    msg = PoseWithCovarianceStamped(header=make_header(frame_id, stamp))
    msg.pose.pose = matrix_to_pose(T)
    msg.pose.covariance = covariance_to_msg(covariance)
    return msg


def odometry_to_matrix(msg: Odometry) -> tuple[np.ndarray, np.ndarray]:
    """(4x4 pose of child_frame_id in header.frame_id, 6x6 pose covariance) of an Odometry."""
    return pose_to_matrix(msg.pose.pose), covariance_from_msg(msg.pose.covariance)


def matrix_to_odometry(T: np.ndarray, stamp: Time | float | None = None,
                       frame_id: str = "odom", child_frame_id: str = "base_link",
                       covariance: np.ndarray | None = None, twist: np.ndarray | None = None,
                       twist_covariance: np.ndarray | None = None) -> Odometry:
    """Odometry from a 4x4 pose, optional 6x6 covariances and a (6,) body twist [v, w]."""
    msg = Odometry(header=make_header(frame_id, stamp), child_frame_id=child_frame_id)
    msg.pose.pose = matrix_to_pose(T)
    if covariance is not None:
        msg.pose.covariance = covariance_to_msg(covariance)
    if twist is not None:
        v = np.asarray(twist, dtype=np.float64).reshape(6)
        lin, ang = msg.twist.twist.linear, msg.twist.twist.angular
        lin.x, lin.y, lin.z, ang.x, ang.y, ang.z = map(float, v)
    if twist_covariance is not None:
        msg.twist.covariance = covariance_to_msg(twist_covariance)
    return msg


# ---------------------------------------------------------------------------------------------
# frames: covariance and twist conversions between the filter and ROS
# ---------------------------------------------------------------------------------------------


def left_covariance_to_ros(covariance: np.ndarray, position: np.ndarray) -> np.ndarray:
    """6x6 covariance of the left perturbation [rho, phi] of a pose at ``position`` -> ROS (position error,
    world-fixed-axis rotation error): dp = rho + phi x p, dR = Exp(phi) R."""
    J = np.eye(6)
    J[:3, 3:] = -skew_np(position)
    return J @ np.asarray(covariance) @ J.T


def ros_covariance_to_left(covariance: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Inverse of :func:`left_covariance_to_ros`: J^-1 = [[I, [p]x], [0, I]]."""
    J_inv = np.eye(6)
    J_inv[:3, 3:] = skew_np(position)
    return J_inv @ np.asarray(covariance) @ J_inv.T


def base_twist(velocity: np.ndarray, velocity_covariance: np.ndarray, T_world_body: np.ndarray,
               T_world_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The filter's velocity [v_world of the body origin, omega in the body frame] (and its covariance) as the
    base's twist in the base frame: [v of the base origin, omega], both in base coordinates."""
    R_wb, R_wbase = T_world_body[:3, :3], T_world_base[:3, :3]
    lever = T_world_base[:3, 3] - T_world_body[:3, 3]
    J = np.zeros((6, 6))
    J[:3, :3] = R_wbase.T
    J[:3, 3:] = -R_wbase.T @ skew_np(lever) @ R_wb
    J[3:, 3:] = R_wbase.T @ R_wb
    return J @ np.asarray(velocity), J @ np.asarray(velocity_covariance) @ J.T
