"""Dataset readers, one module per format, behind one entry point: :func:`open_dataset`.

>>> ds = open_dataset("../shared/data/tum_fr3_cabinet_keyframes", frames="0:10")
>>> frame = ds[0]  # Frame: rgb, depth (m), intrinsics, pose, imu, control ...

Options per format (keyword arguments of open_dataset):
- 7scenes: split ("train"|"test", scene folder), depth_scale (1000), intrinsics, depth_intrinsics,
  T_color_depth, rate_hz (30);  sun3d: the same (depth registered, so depth_intrinsics is unused);
- tum: depth_scale (5000), max_diff (0.02 s), intrinsics, gt_max_gap (0.1 s);
- euroc: groundtruth (TUM or ASL file), max_diff (0.002 s, stereo pairing), gt_max_gap (0.1 s);
- rosbag: topics (dict role -> topic), preset ("prism"|"tum"|"euroc"), max_diff (0.02 s), depth_scale
  (1000, for 16UC1), intrinsics, right_intrinsics, T_imu_camera, gt_max_gap (0.1 s).
``intrinsics`` options take an Intrinsics, a dict, (fx, fy, cx, cy, width, height) or a YAML path.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from prism_ros.frame import Frame, ImuSamples, Intrinsics

from ..errors import InputError
from .base import Dataset
from .common import SlicedDataset, parse_frames
from .euroc import EurocDataset
from .rosbag import RosbagDataset
from .seven_scenes import SevenScenesDataset, Sun3dDataset
from .tum import TumDataset

#: format name -> reader class; autodetection tries them in this order.
DATASETS: dict[str, type[Dataset]] = {
    "rosbag": RosbagDataset,
    "euroc": EurocDataset,
    "tum": TumDataset,
    "sun3d": Sun3dDataset,
    "7scenes": SevenScenesDataset,
}

__all__ = ["DATASETS", "Dataset", "Frame", "ImuSamples", "Intrinsics", "describe_dataset", "detect_format",
           "list_formats", "open_dataset"]


def list_formats() -> list[str]:
    """Names accepted by ``open_dataset(fmt=...)``."""
    return list(DATASETS)


def detect_format(path: str | Path) -> str:
    """Format name of the dataset at ``path``, from its layout."""
    path = Path(path)
    if not path.exists():
        raise InputError("path not found", "give an existing dataset folder or bag", path)
    for name, reader in DATASETS.items():
        if reader.detect(path):
            return name
    raise InputError(
        "unknown dataset layout (looked for frame-*.color.* (7-Scenes/SUN3D), rgb.txt+depth.txt (TUM), "
        "mav0/ or cam0/data.csv (EuRoC), a .bag file or a folder with metadata.yaml/*.db3/*.mcap (ROS bag))",
        f"pass fmt= one of {list_formats()} or fix the layout", path)


def open_dataset(path: str | Path, fmt: str | None = None, frames: str | slice | None = None,
                 **options) -> Dataset:
    """Open the dataset at ``path`` (format autodetected when ``fmt`` is None), optionally only the
    frames selected by ``frames`` ('A:B', 'A:', ':B', 'A:B:S'; frames keep their original index).
    ``options`` go to the reader; see each reader's constructor for what it accepts."""
    fmt = fmt or detect_format(path)
    if fmt not in DATASETS:
        raise InputError(f"unknown format {fmt!r}", f"use one of {list_formats()}", path)
    reader = DATASETS[fmt]
    accepted = [name for name in inspect.signature(reader.__init__).parameters if name not in ("self", "path")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for format {fmt!r}", f"use among {accepted}", path)
    dataset = reader(path, **options)
    if frames is None:
        return dataset
    return SlicedDataset(dataset, parse_frames(frames, len(dataset), path))


def describe_dataset(dataset: Dataset) -> dict[str, str]:
    """A human summary of a dataset (what `prism-ros info` prints): reads the first frame only."""
    stamps = dataset.timestamps
    first = dataset[0]
    intr = first.intrinsics
    summary = {
        "format": getattr(dataset, "format_name", "") or type(dataset).__name__,
        "frames": str(len(dataset)),
        "duration": f"{stamps[-1] - stamps[0]:.2f} s ({stamps[0]:.3f} .. {stamps[-1]:.3f})",
        "rate": f"{(len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9):.1f} Hz" if len(stamps) > 1 else "-",
        "intrinsics": f"fx {intr.fx:.1f} fy {intr.fy:.1f} cx {intr.cx:.1f} cy {intr.cy:.1f} "
                      f"{intr.width}x{intr.height}" + (" (distorted)" if any(intr.distortion) else ""),
    }
    if first.depth is not None:
        valid = first.depth[first.depth > 0]
        summary["depth frame 0"] = (f"{valid.min():.2f} .. {valid.max():.2f} m, "
                                    f"{100 * (1 - valid.size / first.depth.size):.0f}% invalid"
                                    if valid.size else "no valid depth")
    summary["stereo"] = "yes" if first.right is not None else "no"
    imu = dataset.imu
    summary["imu"] = f"{len(imu)} samples" if imu is not None and len(imu) else "no"
    gt = dataset.ground_truth()
    summary["ground truth"] = f"{len(gt[0])} poses" if gt is not None else "no"
    return summary
