"""Offline runner: the filter over a dataset, writing what `prism-ros run` promises.

Outputs in ``out_dir``: ``trajectory.tum`` (camera-to-world), ``covariance.npz`` (per-frame 6x6 pose
covariances against the world and against the map, each frame's cross-covariance with the previous one, velocity
covariances, velocities, tracking flags),
``map.pt`` (the map: ``prism-ros costmap``, ``prism_node``'s ``~/load_map``), ``mesh.ply``, ``timing.csv``
(ms per stage per frame), ``summary.json`` (frames, lost frames, median ms/frame, peak memory, map memory,
ATE, absolute and frame-to-frame NEES with their coverage when ground truth exists), ``trajectory.png`` and
``reliability.png`` (observed against expected coverage, with ground truth).
"""
from __future__ import annotations

import csv
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prism_ros.datasets.base import Dataset
from prism_ros.evaluation.trajectory_io import write_tum
from prism_ros.prism.config import FilterConfig
from prism_ros.prism.filter import Estimate, PrismFilter

STAGES = ("observe", "predict", "render", "track", "velocity", "map")


def run_sequence(dataset: Dataset, config: FilterConfig, out_dir: Path, init_gt: bool = False,
                 progress: bool = True, mesh: bool = True, true_sdf=None, save_map: bool = True) -> dict:
    """Run the filter on every frame; write the outputs; return the summary.

    ``true_sdf(points (N,3) world) -> (N,)``, when the scene is known exactly (synthetic data), adds the
    map's SDF error near surfaces and how well its std ranks that error.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slam, estimates, truths, wall = track_sequence(dataset, config, init_gt, progress)
    write_outputs(out_dir, estimates)
    summary = summarise(estimates, truths, slam, wall, config)
    if all(t is not None for t in truths):
        summary.update(score(out_dir, estimates, truths))
        if true_sdf is not None:
            summary["map_error"] = score_map(slam.map, estimates[0].T_world_camera, truths[0], true_sdf)
    if save_map:
        slam.map.save(out_dir / "map.pt")
        summary["map"] = str(out_dir / "map.pt")
    if mesh:
        summary["mesh"] = export_mesh(slam, out_dir / "mesh.ply")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def track_sequence(dataset: Dataset, config: FilterConfig, init_gt: bool = False, progress: bool = True):
    """The filter over every frame: (filter, estimates without their renders, ground-truth poses or None per
    frame, wall seconds)."""
    first = dataset[0]
    if init_gt and first.pose is None:
        from prism_ros.errors import InputError

        raise InputError("--init-gt needs ground truth for the first frame", "drop --init-gt")
    slam = PrismFilter(config, initial_pose=first.pose if init_gt else None)
    estimates, truths = [], []
    started = time.perf_counter()
    for frame in tqdm(dataset, total=len(dataset), desc="prism", unit="frame", disable=not progress):
        estimates.append(replace(slam.step(frame), render=None))  # keep the numbers, not every render
        truths.append(frame.pose)
    return slam, estimates, truths, time.perf_counter() - started


def write_outputs(out_dir: Path, estimates: list[Estimate]) -> None:
    stamps = np.array([e.t for e in estimates])
    write_tum(out_dir / "trajectory.tum", stamps, np.stack([e.T_world_camera for e in estimates]))
    against_map = [e.map_pose_covariance for e in estimates]  # absent from poses received over ROS
    cross = cross_covariances(estimates)
    np.savez_compressed(out_dir / "covariance.npz", t=stamps,
                        pose_covariance=np.stack([e.pose_covariance for e in estimates]),
                        velocity=np.stack([e.velocity for e in estimates]),
                        velocity_covariance=np.stack([e.velocity_covariance for e in estimates]),
                        tracking_ok=np.array([e.tracking_ok for e in estimates]),
                        **({"map_pose_covariance": np.stack(against_map)}
                           if all(c is not None for c in against_map) else {}),
                        **({"map_cross_covariance": cross} if cross is not None else {}))
    with open(out_dir / "timing.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", *STAGES, "total"])
        for e in estimates:
            row = [e.timings_ms.get(stage, 0.0) for stage in STAGES]
            writer.writerow([f"{e.t:.6f}", *(f"{ms:.2f}" for ms in row), f"{sum(row):.2f}"])


def cross_covariances(estimates: list[Estimate]) -> np.ndarray | None:
    """(N,6,6) covariance of each frame's map-relative pose error with the previous frame's (zero where the
    filter restarted); None when no estimate carries one (poses received over ROS)."""
    if all(e.map_cross_covariance is None for e in estimates):
        return None
    return np.stack([np.zeros((6, 6)) if e.map_cross_covariance is None else e.map_cross_covariance
                     for e in estimates])


def summarise(estimates: list[Estimate], truths, slam: PrismFilter, wall: float, config: FilterConfig) -> dict:
    totals = np.array([sum(e.timings_ms.values()) for e in estimates[1:]]) if len(estimates) > 1 else np.zeros(1)
    device = slam.device
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    surface = slam.map.surface_area_estimate()
    return {
        "frames": len(estimates),
        "lost_frames": int(sum(not e.tracking_ok for e in estimates)),
        "median_ms_per_frame": float(np.median(totals)),
        "median_ms_per_stage": {s: float(np.median([e.timings_ms.get(s, 0.0) for e in estimates[1:]] or [0]))
                                for s in STAGES},
        "wall_s": wall,
        "device": str(device),
        "backend": slam.backend,
        "kernel_load_s": float(sum(slam.kernel_load_s.values())),  # compile (first run here) or cache load
        "peak_memory_bytes": int(peak),
        "map_blocks": int(slam.map.num_blocks),
        "map_memory_bytes": int(slam.map.memory_bytes()),
        "map_surface_m2": float(surface),
        "map_bytes_per_m2": float(slam.map.memory_bytes() / surface) if surface > 0 else None,
        "config": config.to_dict(),
    }


def score(out_dir: Path, estimates: list[Estimate], truths: list[np.ndarray]) -> dict:
    """ATE/RPE with evo (SE(3)-aligned); absolute pose NEES (world frames tied at the first frame) and
    frame-to-frame NEES, each with its coverage (:mod:`prism_ros.evaluation.calibration`)."""
    from prism_ros.evaluation import calibration
    from prism_ros.evaluation.metrics import evaluate

    stamps = np.array([e.t for e in estimates])
    result = evaluate((stamps, np.stack([e.T_world_camera for e in estimates])), (stamps, np.stack(truths)),
                      align="se3", plot_path=out_dir / "trajectory.png")
    absolute, relative = pose_checks(estimates, truths)
    scores = {"ate": result.to_dict(), "ate_rmse_m": result.ate_rmse, **calibration.summary(absolute, "nees")}
    if relative is not None:
        scores.update(calibration.summary(relative, "relative_nees"))
    calibration.plot_reliability(scores, out_dir / "reliability.png")
    return scores


def pose_checks(estimates: list[Estimate], truths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(absolute NEES of the tracked frames but the first, where the world frames are tied; frame-to-frame NEES of
    the pairs of tracked frames, None when the estimates lack the map-relative covariance) of a run
    (:mod:`prism_ros.evaluation.calibration`)."""
    from prism_ros.evaluation import calibration

    est = np.stack([e.T_world_camera for e in estimates])
    gt = np.stack(truths)
    ok = np.array([e.tracking_ok for e in estimates])
    absolute = calibration.pose_nees(est, gt, np.stack([e.pose_covariance for e in estimates]))[1:][ok[1:]]
    if any(e.map_pose_covariance is None for e in estimates):  # poses received over ROS
        return absolute, None
    relative = calibration.relative_pose_nees(est, gt, np.stack([e.map_pose_covariance for e in estimates]),
                                              cross_covariances(estimates))
    return absolute, relative[ok[1:] & ok[:-1]]


def score_map(sdf_map, first_estimate: np.ndarray, first_truth: np.ndarray, true_sdf) -> dict:
    """Map SDF error within two voxels of the true surface, in the ground truth's world frame (the
    frames are tied at the first frame, as for NEES)."""
    from prism_ros.evaluation.metrics import map_error
    from prism_ros.geometry import transform_points

    voxels = sdf_map.voxel_centres_and_values()
    align = torch.as_tensor(first_truth @ np.linalg.inv(first_estimate))
    centres = transform_points(align, voxels.centres.double().cpu())
    band = 2 * sdf_map.config.voxel_size
    return map_error(centres, voxels.mean.cpu(), voxels.std.cpu(), true_sdf, band).to_dict()


def export_mesh(slam: PrismFilter, path: Path) -> dict:
    from prism_ros.prism.mesh import extract_mesh, write_ply

    mesh = extract_mesh(slam.map)
    write_ply(mesh, path)
    return {"path": str(path), "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces))}
