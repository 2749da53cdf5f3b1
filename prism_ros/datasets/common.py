"""Helpers the dataset readers share: image and table loading, timestamp checks, association,
ground-truth interpolation, intrinsics parsing and frame slicing.

Every problem with the input raises :class:`~prism_ros.errors.InputError` naming the file and the fix.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import yaml
from scipy.spatial.transform import Rotation, Slerp

from prism_ros.frame import Frame, ImuSamples, Intrinsics

from ..errors import InputError
from .base import Dataset

#: Depth beyond these bounds means the depth scale is wrong: RGB-D sensors see roughly 0.3-10 m.
PLAUSIBLE_MEDIAN_DEPTH_M = 0.1
PLAUSIBLE_FAR_DEPTH_M = 12.0


# ----------------------------------------------------------------------------------------- images
def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB image (grey files are replicated to 3 channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot read the image (missing, truncated or not an image)",
                         "restore the file from the original dataset", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_grey(path: Path) -> np.ndarray:
    """HxW uint8 grey image."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError("cannot read the image (missing, truncated or not an image)",
                         "restore the file from the original dataset", path)
    return image


def read_depth(path: Path, scale: float, invalid: tuple[int, ...] = (0,)) -> np.ndarray:
    """Depth PNG (uint16, ``scale`` units per metre) as float32 metres, NaN where invalid."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError("cannot read the depth image (missing, truncated or not an image)",
                         "restore the file from the original dataset", path)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise InputError(f"depth PNG must be single-channel uint16, found {raw.dtype} with shape {raw.shape}",
                         "point the reader at the raw depth images, not a colour or 8-bit visualisation", path)
    return depth_from_raw(raw, scale, invalid)


def depth_from_raw(raw: np.ndarray, scale: float, invalid: tuple[int, ...] = (0,)) -> np.ndarray:
    """Integer depth to float32 metres; the ``invalid`` codes become NaN."""
    depth = raw.astype(np.float32) / np.float32(scale)
    for code in invalid:
        depth[raw == code] = np.nan
    return depth


def check_depth_scale(depth: np.ndarray, scale: float, path: object) -> None:
    """Reject a depth scale that puts the scene at implausible range (e.g. TUM read as millimetres)."""
    valid = depth[np.isfinite(depth)]
    if valid.size < 100:
        return
    median, far = np.percentile(valid, [50, 99])
    if median < PLAUSIBLE_MEDIAN_DEPTH_M or far > PLAUSIBLE_FAR_DEPTH_M:
        raise InputError(
            f"depth read with scale {scale:g} units/m gives median {median:.2f} m and 99th percentile "
            f"{far:.1f} m, implausible for an RGB-D sensor",
            "set depth_scale to the sensor's units per metre (TUM: 5000; 7-Scenes, SUN3D, ROS 16UC1: 1000)",
            path)


# ----------------------------------------------------------------------------------------- tables
def require_file(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise InputError("file not found", fix, path)
    return path


def read_rows(path: Path, min_columns: int, fix: str = "check the file format") -> list[list[str]]:
    """Non-comment lines split on commas or whitespace, each with at least ``min_columns`` fields."""
    rows = []
    for number, line in enumerate(require_file(path, fix).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "%")):
            continue
        fields = line.replace(",", " ").split()
        if len(fields) < min_columns:
            raise InputError(f"line {number}: expected at least {min_columns} columns, found {len(fields)}",
                             fix, path)
        rows.append(fields)
    return rows


def numeric(rows: list[list[str]], columns: slice, path: Path) -> np.ndarray:
    """The given columns of ``rows`` as a float64 array (N, k)."""
    try:
        return np.array([[float(v) for v in row[columns]] for row in rows], dtype=np.float64).reshape(len(rows), -1)
    except ValueError as error:
        raise InputError(f"non-numeric value ({error})", "check the file format", path) from None


def seconds_from_ns(rows: list[list[str]], path: Path) -> np.ndarray:
    """First column in integer nanoseconds (EuRoC) as float64 seconds."""
    try:
        return np.array([int(row[0]) for row in rows], dtype=np.int64) / 1e9
    except ValueError as error:
        raise InputError(f"timestamp is not integer nanoseconds ({error})", "check the file format", path) from None


def check_increasing(t: np.ndarray, path: object, what: str = "timestamps") -> np.ndarray:
    """Timestamps must be strictly increasing: no duplicates, sorted."""
    steps = np.diff(t)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0])
        kind = "duplicate" if steps[i] == 0 else "unsorted"
        raise InputError(f"{kind} {what}: entry {i + 2} ({t[i + 1]:.6f}) is not after entry {i + 1} ({t[i]:.6f})",
                         "sort by time and remove duplicate entries", path)
    return t


def load_yaml(path: Path) -> dict:
    """YAML mapping; tolerates the OpenCV ``%YAML:1.0`` header (EuRoC sensor.yaml)."""
    text = require_file(path, "add the calibration file").read_text()
    text = re.sub(r"^%YAML:1\.0\s*\n", "", text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"invalid YAML ({error})", "fix the syntax", path) from None
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping", "fix the file", path)
    return data


# ------------------------------------------------------------------------- intrinsics and extrinsics
def distortion5(coefficients) -> tuple[float, ...]:
    """OpenCV order (k1, k2, p1, p2, k3), zero-padded."""
    values = [float(v) for v in (coefficients or [])]
    return tuple(values + [0.0] * (5 - len(values))) if len(values) < 5 else tuple(values)


def matrix4(value, path: object = None, what: str = "transform") -> np.ndarray:
    """A 4x4 matrix from a nested list, a flat list of 16, or EuRoC's ``{rows, cols, data}``."""
    if isinstance(value, dict):
        value = value.get("data")
    try:
        matrix = np.asarray(value, dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a 4x4 matrix", "give 16 numbers (nested 4x4 or flat)", path) from None
    return matrix


def intrinsics_from_yaml(path: Path) -> Intrinsics:
    """Our ``camera.yaml`` (fx fy cx cy width height distortion) or a EuRoC ``sensor.yaml``."""
    data = load_yaml(path)
    model = str(data.get("distortion_model", "radial-tangential")).lower()
    if model not in ("radial-tangential", "radtan", "plumb_bob", "none"):
        raise InputError(f"distortion model {model!r} is not supported (pinhole + OpenCV k1 k2 p1 p2 k3 only)",
                         "undistort the images first or calibrate a radial-tangential model", path)
    try:
        if "intrinsics" in data:  # EuRoC/Kalibr: intrinsics [fu, fv, cu, cv], resolution [w, h]
            fx, fy, cx, cy = data["intrinsics"]
            width, height = data["resolution"]
            distortion = data.get("distortion_coefficients")
        else:
            fx, fy, cx, cy = (data[k] for k in ("fx", "fy", "cx", "cy"))
            width, height, distortion = data["width"], data["height"], data.get("distortion")
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"missing or malformed intrinsics ({error})",
                         "give fx, fy, cx, cy, width, height [, distortion]", path) from None
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height), distortion5(distortion))


def to_intrinsics(value, where: object = None) -> Intrinsics:
    """Intrinsics from an option: an Intrinsics, a dict, (fx, fy, cx, cy, width, height) or a YAML path."""
    if isinstance(value, Intrinsics):
        return value
    if isinstance(value, (str, Path)):
        return intrinsics_from_yaml(Path(value))
    if isinstance(value, dict):
        values = dict(value)
        values["distortion"] = distortion5(values.get("distortion"))
        try:
            return Intrinsics(**values)
        except TypeError as error:
            raise InputError(f"bad intrinsics option ({error})", "give fx, fy, cx, cy, width, height", where) from None
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 6:
        fx, fy, cx, cy, width, height = value
        return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height))
    raise InputError("bad intrinsics option", "give an Intrinsics, a dict, (fx, fy, cx, cy, w, h) or a YAML path",
                     where)


# ---------------------------------------------------------------------------------------- association
def associate(t_a: np.ndarray, t_b: np.ndarray, max_diff: float) -> list[tuple[int, int]]:
    """Pairs (i, j) with |t_a[i] - t_b[j]| <= max_diff, closest first, each index used once (TUM's
    associate.py rule), returned in order of i. Both inputs sorted."""
    candidates = []
    for i, t in enumerate(t_a):
        lo = int(np.searchsorted(t_b, t - max_diff, side="left"))
        hi = int(np.searchsorted(t_b, t + max_diff, side="right"))
        candidates += [(abs(t - t_b[j]), i, j) for j in range(lo, hi)]
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in sorted(candidates):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def last_at_or_before(times: np.ndarray, t: float) -> int | None:
    """Index of the last entry with time <= t, or None."""
    i = int(np.searchsorted(times, t, side="right")) - 1
    return i if i >= 0 else None


def imu_since_previous(imu: ImuSamples | None, timestamps: np.ndarray, index: int) -> ImuSamples | None:
    """IMU samples in (previous frame, this frame]; empty for the first frame of the dataset."""
    if imu is None:
        return None
    if index == 0:
        return ImuSamples.empty()
    return imu.between(timestamps[index - 1], timestamps[index])


# -------------------------------------------------------------------------------------------- poses
def poses_from_quaternions(translations: np.ndarray, quaternions_xyzw: np.ndarray) -> np.ndarray:
    """(N,4,4) poses from translations (N,3) and unit quaternions (N,4) in x, y, z, w order."""
    poses = np.tile(np.eye(4), (len(translations), 1, 1))
    if len(translations):
        poses[:, :3, :3] = Rotation.from_quat(quaternions_xyzw).as_matrix()
        poses[:, :3, 3] = translations
    return poses


def read_trajectory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(t (N,) seconds, poses (N,4,4)) from a TUM file (t tx ty tz qx qy qz qw) or an EuRoC/ASL csv
    (t_ns, px py pz, qw qx qy qz, ...)."""
    rows = read_rows(path, 8, "use TUM format 't tx ty tz qx qy qz qw' or EuRoC's ground-truth csv")
    if path.suffix.lower() == ".csv":
        t, values = seconds_from_ns(rows, path), numeric(rows, slice(1, 8), path)
        translations, quaternions = values[:, 0:3], values[:, [4, 5, 6, 3]]
    else:
        values = numeric(rows, slice(0, 8), path)
        t, translations, quaternions = values[:, 0], values[:, 1:4], values[:, 4:8]
    return check_increasing(t, path), poses_from_quaternions(translations, quaternions)


def interpolate_poses(t_gt: np.ndarray, poses: np.ndarray, t_query: np.ndarray,
                      max_gap: float = 0.1, end_tolerance: float = 1e-3) -> list[np.ndarray | None]:
    """Ground truth at ``t_query``: SLERP rotation, linear translation between the two samples around
    each time when they are at most ``max_gap`` apart (or a sample lies within ``end_tolerance``);
    None where the ground truth does not cover the time."""
    t_query = np.asarray(t_query, dtype=np.float64)
    result: list[np.ndarray | None] = [None] * len(t_query)
    if len(t_gt) == 0:
        return result
    if len(t_gt) == 1:
        return [poses[0].copy() if abs(t - t_gt[0]) <= end_tolerance else None for t in t_query]
    t = np.clip(t_query, t_gt[0], t_gt[-1])
    hi = np.clip(np.searchsorted(t_gt, t, side="left"), 1, len(t_gt) - 1)
    near = np.minimum(t - t_gt[hi - 1], t_gt[hi] - t) <= end_tolerance
    covered = (np.abs(t - t_query) <= end_tolerance) & ((t_gt[hi] - t_gt[hi - 1] <= max_gap) | near)
    if not covered.any():
        return result
    times = t[covered]
    rotations = Slerp(t_gt, Rotation.from_matrix(poses[:, :3, :3]))(times).as_matrix()
    translations = np.stack([np.interp(times, t_gt, poses[:, k, 3]) for k in range(3)], axis=-1)
    for k, rotation, translation in zip(np.flatnonzero(covered), rotations, translations):
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rotation, translation
        result[k] = pose
    return result


# ------------------------------------------------------------------------------------------ slicing
_SLICE = re.compile(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?")


def parse_frames(frames: str | slice | None, length: int, source: object = None) -> range:
    """Indices selected by ``frames`` ('A:B', 'A:', ':B', 'A:B:S' or a slice; python semantics)."""
    if frames is None:
        return range(length)
    fix = "use 'A:B', 'A:', ':B' or 'A:B:S' (python slice semantics, positive step)"
    if isinstance(frames, str):
        match = _SLICE.fullmatch(frames)
        if not match:
            raise InputError(f"frames={frames!r} is not a slice", fix, source)
        frames = slice(*(int(g) if g else None for g in match.groups()))
    if not isinstance(frames, slice) or (frames.step is not None and frames.step <= 0):
        raise InputError(f"frames={frames!r} is not a slice with positive step", fix, source)
    selected = range(length)[frames]
    if len(selected) == 0:
        raise InputError(f"frames {frames.start}:{frames.stop} selects none of the {length} frames",
                         f"choose indices within 0..{length - 1}", source)
    return selected


def check_index(index: int, length: int) -> int:
    """Python-style index (negative from the end); IndexError when out of range."""
    if not -length <= index < length:
        raise IndexError(f"frame index {index} out of range for {length} frames")
    return index % length


class StoredDataset(Dataset):
    """A reader that holds its timestamps, IMU stream, extrinsic and ground truth after opening.

    Subclasses set ``_timestamps``, ``_imu``, ``_T_imu_camera`` and ``_gt`` ((t, poses) or None).
    """

    _imu: ImuSamples | None = None
    _T_imu_camera: np.ndarray | None = None
    _gt: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._timestamps)

    @property
    def timestamps(self) -> np.ndarray:
        return self._timestamps

    @property
    def T_imu_camera(self) -> np.ndarray | None:
        return self._T_imu_camera

    @property
    def imu(self) -> ImuSamples | None:
        return self._imu

    def ground_truth(self):
        return None if self._gt is None else (self._gt[0].copy(), self._gt[1].copy())


class SlicedDataset(Dataset):
    """A view on some frames of a dataset; frames keep their original ``index``.

    With a step > 1 each frame's IMU samples cover the time since the previous frame of the view, so
    propagation between the kept frames stays complete.
    """

    def __init__(self, dataset: Dataset, indices: range):
        self.dataset, self.indices = dataset, indices
        self.format_name = dataset.format_name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Frame:
        index = check_index(index, len(self))
        frame = self.dataset[self.indices[index]]
        if self.indices.step != 1 and index > 0 and self.dataset.imu is not None:
            frame.imu = self.dataset.imu.between(self.timestamps[index - 1], frame.timestamp)
        return frame

    @property
    def preset_name(self) -> str:
        return self.dataset.preset_name

    @property
    def timestamps(self) -> np.ndarray:
        return self.dataset.timestamps[self.indices.start:self.indices.stop:self.indices.step]

    @property
    def T_imu_camera(self) -> np.ndarray | None:
        return self.dataset.T_imu_camera

    @property
    def imu(self) -> ImuSamples | None:
        return self.dataset.imu

    def ground_truth(self):
        return self.dataset.ground_truth()

    def __getattr__(self, name):  # path, topics, close(), ... of the underlying reader
        return getattr(self.__dict__["dataset"], name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        getattr(self.dataset, "close", lambda: None)()


def natural_key(path: Path) -> list:
    """Sort key that puts 'seq-2' before 'seq-10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
