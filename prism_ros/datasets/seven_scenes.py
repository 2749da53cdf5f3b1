"""Microsoft 7-Scenes and SUN3D (3DMatch "rgbd-frames") folders.

Layout: ``frame-NNNNNN.color.{jpg,png}``, ``frame-NNNNNN.depth.png`` (uint16 mm), ``frame-NNNNNN.pose.txt``
(4x4 camera-to-world) and optionally ``camera-intrinsics.txt`` (3x3 K) in the folder or its parent.
The path is one sequence folder, or a scene folder holding several (``seq-01``..., ``fragment-1-...``);
for a 7-Scenes scene ``split="train"|"test"`` picks the sequences listed in TrainSplit/TestSplit.txt.

Intrinsics. 7-Scenes colour and depth come from the two unregistered Kinect v1 cameras. Its authors give
only the depth camera's (fx=fy=585, cx=320, cy=240, used by their KinectFusion to make the poses), and
that is what ``camera-intrinsics.txt`` holds, so it becomes ``depth_intrinsics``. The colour camera was
never calibrated: ``intrinsics`` is the nominal Kinect v1 RGB model (525, 525, 319.5, 239.5) unless the
``intrinsics=`` option says otherwise, and ``T_color_depth`` is None (unknown, about 2.5 cm). Poses are
KinectFusion's, i.e. of the depth camera. SUN3D depth is registered to colour, so one K serves both
(``depth_intrinsics`` None, ``T_color_depth`` identity).

Timestamps. Neither dataset stores times: t = frame number / 30 Hz. When several sequences are read
together, a sequence whose times would overlap the previous one is shifted to start 1 s after it ends;
``extras["sequence"]`` tells which sequence a frame came from.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism_ros.evaluation.trajectory_io import orthonormalize_poses
from prism_ros.frame import Frame, Intrinsics

from ..errors import InputError
from .base import Dataset
from .common import check_depth_scale, check_index, natural_key, read_depth, read_rgb, to_intrinsics

COLOR_FILE = re.compile(r"frame-(\d+)\.color\.(?:jpg|png)$")
INTRINSICS_FILE = "camera-intrinsics.txt"
SPLIT_FILES = {"train": "TrainSplit.txt", "test": "TestSplit.txt"}
SEQUENCE_GAP_S = 1.0


@dataclass(frozen=True)
class _FrameFiles:
    sequence: str
    number: int
    color: Path
    depth: Path
    pose: Path | None
    timestamp: float


def has_frames(folder: Path) -> bool:
    return folder.is_dir() and any(COLOR_FILE.match(name) for name in os.listdir(folder))


def sequence_folders(path: Path) -> list[Path]:
    """Sub-folders holding frames, in natural order."""
    return sorted((d for d in path.iterdir() if has_frames(d)), key=natural_key)


def frames_of_sequence(folder: Path) -> list[tuple[int, Path, Path, Path | None]]:
    """(number, colour, depth, pose or None) per frame of one sequence folder, by frame number."""
    names = set(os.listdir(folder))
    frames = []
    for name in names:
        match = COLOR_FILE.match(name)
        if not match:
            continue
        stem = f"frame-{match.group(1)}"
        if f"{stem}.depth.png" not in names:
            raise InputError(f"{name} has no {stem}.depth.png", "restore the depth image or remove the frame", folder)
        pose = folder / f"{stem}.pose.txt" if f"{stem}.pose.txt" in names else None
        frames.append((int(match.group(1)), folder / name, folder / f"{stem}.depth.png", pose))
    return sorted(frames, key=lambda f: f[0])


def read_pose(path: Path) -> np.ndarray:
    """4x4 camera-to-world matrix from a text file."""
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except ValueError as error:
        raise InputError(f"not a numeric 4x4 matrix ({error})", "restore the pose file", path) from None
    if pose.shape != (4, 4):
        raise InputError(f"pose must be 4x4, found shape {pose.shape}", "restore the pose file", path)
    return orthonormalize_poses(pose)  # printed matrices are orthonormal to ~1e-4 only


def read_camera_matrix(folder: Path) -> tuple[float, float, float, float] | None:
    """(fx, fy, cx, cy) from camera-intrinsics.txt in the folder or its parent, when present."""
    for candidate in (folder / INTRINSICS_FILE, folder.parent / INTRINSICS_FILE):
        if candidate.is_file():
            try:
                K = np.loadtxt(candidate, dtype=np.float64)
            except ValueError:
                K = np.zeros(0)
            if K.shape != (3, 3):
                raise InputError("camera-intrinsics.txt must hold a 3x3 matrix", "restore the file", candidate)
            return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    return None


class SevenScenesDataset(Dataset):
    """7-Scenes sequence(s) with depth in millimetres (0 and 65535 invalid)."""

    format_name = "7scenes"
    default_color = (525.0, 525.0, 319.5, 239.5)  # nominal Kinect v1 RGB; 7-Scenes colour is uncalibrated
    default_depth = (585.0, 585.0, 320.0, 240.0)  # 7-Scenes' published depth intrinsics
    depth_registered = False
    invalid_depth = (0, 65535)

    def __init__(self, path, split: str | None = None, depth_scale: float = 1000.0, intrinsics=None,
                 depth_intrinsics=None, T_color_depth=None, rate_hz: float = 30.0):
        self.path, self.depth_scale = Path(path), float(depth_scale)
        self._files = self._index(self._sequences(split), rate_hz)
        self._timestamps = np.array([f.timestamp for f in self._files])
        height, width = read_rgb(self._files[0].color).shape[:2]
        first_depth = read_depth(self._files[0].depth, self.depth_scale, self.invalid_depth)
        check_depth_scale(first_depth, self.depth_scale, self._files[0].depth)
        self._set_intrinsics(intrinsics, depth_intrinsics, width, height, first_depth.shape)
        self.T_color_depth = np.eye(4) if self.depth_registered else (
            None if T_color_depth is None else np.asarray(T_color_depth, dtype=np.float64))

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and (has_frames(path) or bool(sequence_folders(path)))

    def _sequences(self, split: str | None) -> list[Path]:
        if not self.path.is_dir():
            raise InputError("folder not found", "give a sequence folder (frame-NNNNNN.* files) or a scene folder",
                             self.path)
        if has_frames(self.path):
            if split is not None:
                raise InputError("split= applies to a scene folder, this is a sequence folder",
                                 "drop split= or give the scene folder", self.path)
            return [self.path]
        folders = sequence_folders(self.path)
        if not folders:
            raise InputError("no frame-NNNNNN.color.{jpg,png} files here or in sub-folders",
                             "give a 7-Scenes/SUN3D sequence or scene folder", self.path)
        return folders if split is None else self._split(folders, split)

    def _split(self, folders: list[Path], split: str) -> list[Path]:
        if split not in SPLIT_FILES:
            raise InputError(f"unknown split {split!r}", f"use one of {sorted(SPLIT_FILES)}", self.path)
        split_file = self.path / SPLIT_FILES[split]
        if not split_file.is_file():
            raise InputError("split file not found", "use a 7-Scenes scene folder or drop split=", split_file)
        wanted = [int(n) for n in re.findall(r"(\d+)", split_file.read_text())]
        by_number = {int(re.findall(r"\d+", f.name)[-1]): f for f in folders if re.search(r"\d+", f.name)}
        missing = [n for n in wanted if n not in by_number]
        if missing:
            raise InputError(f"sequences {missing} listed but not present", "restore the sequence folders", split_file)
        return [by_number[n] for n in sorted(wanted)]

    def _index(self, folders: list[Path], rate_hz: float) -> list[_FrameFiles]:
        files: list[_FrameFiles] = []
        for folder in folders:
            frames = frames_of_sequence(folder)
            times = np.array([number for number, *_ in frames]) / rate_hz
            if files and times[0] <= files[-1].timestamp:
                times += files[-1].timestamp + SEQUENCE_GAP_S - times[0]
            files += [_FrameFiles(folder.name, number, color, depth, pose, t)
                      for (number, color, depth, pose), t in zip(frames, times)]
        return files

    def _set_intrinsics(self, intrinsics, depth_intrinsics, width: int, height: int, depth_shape) -> None:
        """Colour and depth intrinsics: options first, then camera-intrinsics.txt, then the defaults."""
        from_file = read_camera_matrix(self._files[0].color.parent)

        def option_or(value, default: Intrinsics) -> Intrinsics:
            return default if value is None else to_intrinsics(value, self.path)

        if self.depth_registered:  # one camera: the file describes it
            self.intrinsics = option_or(intrinsics, Intrinsics(*(from_file or self.default_color), width, height))
            self.depth_intrinsics = None
        else:  # the file describes the depth camera; colour keeps the nominal model
            self.intrinsics = option_or(intrinsics, Intrinsics(*self.default_color, width, height))
            self.depth_intrinsics = option_or(
                depth_intrinsics, Intrinsics(*(from_file or self.default_depth), depth_shape[1], depth_shape[0]))

    def __len__(self) -> int:
        return len(self._files)

    @property
    def timestamps(self) -> np.ndarray:
        return self._timestamps

    def __getitem__(self, index: int) -> Frame:
        index = check_index(index, len(self))
        files = self._files[index]
        return Frame(
            index=index, timestamp=float(files.timestamp), rgb=read_rgb(files.color),
            depth=read_depth(files.depth, self.depth_scale, self.invalid_depth),
            intrinsics=self.intrinsics, depth_intrinsics=self.depth_intrinsics, T_color_depth=self.T_color_depth,
            pose=read_pose(files.pose) if files.pose else None,
            extras={"sequence": files.sequence, "frame_number": files.number, "color_path": str(files.color)})

    def ground_truth(self):
        if not all(f.pose for f in self._files):
            return None
        return self._timestamps.copy(), np.stack([read_pose(f.pose) for f in self._files])


class Sun3dDataset(SevenScenesDataset):
    """SUN3D fragments as 3DMatch ships them: 7-Scenes file names, PNG colour, depth registered to colour."""

    format_name = "sun3d"
    default_color = (570.342205, 570.342205, 320.0, 240.0)  # 3DMatch's SUN3D camera-intrinsics.txt
    depth_registered = True
    invalid_depth = (0,)

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not super().detect(path):
            return False
        names = [path.name] + [d.name for d in sequence_folders(path)] if path.is_dir() else []
        return "sun3d" in str(path.resolve()).lower() or any(n.startswith("fragment-") for n in names)
