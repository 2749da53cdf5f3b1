"""PRISM vs Open3D's dense SLAM (t.pipelines.slam frame-to-model), same frames, same process.

Open3D in its documented dense SLAM set-up: VoxelBlockGrid with 2 cm voxels, depth scale 1000,
depth max 4 m, point-to-plane frame-to-model tracking. Both trajectories are scored with evo
(SE(3)-aligned ATE); the script prints ATE and median ms/frame of both and our/their ratios, plus
our map memory per m^2 of mapped surface. Timings are wall-clock on this machine, in this run.

    python bench/prism_vs_open3d.py [--dataset ../shared/data/7scenes_redkitchen_seq_0000_0399]
                                    [--frames 0:400] [--device cpu] [--out out/bench]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from prism_ros.datasets import open_dataset
from prism_ros.evaluation.metrics import evaluate
from prism_ros.prism.config import preset_config
from prism_ros.prism.pipeline import run_sequence

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_seq_0000_0399"


def run_open3d(dataset, voxel_size: float = 0.02, depth_scale: float = 1000.0, depth_max: float = 4.0,
               device: str = "CPU:0") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open3D frame-to-model dense SLAM; (stamps, T_world_camera (N,4,4), ms per frame (N,))."""
    import open3d as o3d
    import open3d.core as o3c

    o3d_device = o3c.Device(device)
    first = dataset[0]
    intr = first.depth_intrinsics or first.intrinsics
    K = o3c.Tensor(intr.K, o3c.Dtype.Float64)
    model = o3d.t.pipelines.slam.Model(voxel_size, 16, 40000, o3c.Tensor(np.eye(4)), o3d_device)
    input_frame = o3d.t.pipelines.slam.Frame(intr.height, intr.width, K, o3d_device)
    raycast_frame = o3d.t.pipelines.slam.Frame(intr.height, intr.width, K, o3d_device)
    T = np.eye(4)
    stamps, poses, ms = [], [], []
    for i, frame in enumerate(dataset):
        depth_mm = np.nan_to_num(frame.depth * depth_scale, nan=0.0).astype(np.uint16)
        start = time.perf_counter()
        input_frame.set_data_from_image("depth", o3d.t.geometry.Image(o3c.Tensor(depth_mm)).to(o3d_device))
        input_frame.set_data_from_image("color", o3d.t.geometry.Image(o3c.Tensor(
            np.ascontiguousarray(frame.rgb))).to(o3d_device))  # integrate() needs colour; tracking uses depth
        if i > 0:
            result = model.track_frame_to_model(input_frame, raycast_frame, depth_scale, depth_max)
            T = T @ result.transformation.cpu().numpy()
        model.update_frame_pose(i, o3c.Tensor(T))
        model.integrate(input_frame, depth_scale, depth_max)
        model.synthesize_model_frame(raycast_frame, depth_scale, 0.1, depth_max)
        ms.append(1e3 * (time.perf_counter() - start))
        stamps.append(frame.timestamp)
        poses.append(T.copy())
    return np.array(stamps), np.stack(poses), np.array(ms)


def ground_truth(dataset) -> tuple[np.ndarray, np.ndarray]:
    frames = [dataset[i] for i in range(len(dataset))]
    return np.array([f.timestamp for f in frames]), np.stack([f.pose for f in frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--frames", default=None, help="slice A:B")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", help="auto, fused or torch (PRISM's per-frame stages)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    dataset = open_dataset(args.dataset, frames=args.frames)
    gt = ground_truth(dataset)
    print(f"dataset: {args.dataset} ({len(dataset)} frames)")

    o3d_stamps, o3d_poses, o3d_ms = run_open3d(dataset)
    o3d_ate = evaluate((o3d_stamps, o3d_poses), gt, align="se3").ate_rmse
    print(f"open3d : ATE {o3d_ate * 100:.2f} cm, median {np.median(o3d_ms[1:]):.1f} ms/frame")

    config = preset_config(dataset)
    config.device, config.backend = args.device, args.backend
    ours = run_sequence(dataset, config, args.out / "prism", progress=True, mesh=False)
    our_ate, our_ms = ours["ate_rmse_m"], ours["median_ms_per_frame"]
    print(f"prism  : ATE {our_ate * 100:.2f} cm, median {our_ms:.1f} ms/frame ({ours['backend']} on "
          f"{ours['device']}, kernels loaded in {ours['kernel_load_s']:.1f} s), {ours['lost_frames']} lost, "
          f"map {ours['map_bytes_per_m2'] / 1e3:.1f} kB per m^2 of surface, peak memory "
          f"{ours['peak_memory_bytes'] / 2**20:.0f} MiB")
    print("prism stages, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ours["median_ms_per_stage"].items()))
    ratios = {"ate_ours_over_open3d": our_ate / o3d_ate,
              "ms_ours_over_open3d": our_ms / float(np.median(o3d_ms[1:]))}
    print(f"ratios : ATE {ratios['ate_ours_over_open3d']:.2f}x, ms/frame {ratios['ms_ours_over_open3d']:.2f}x "
          "(ours / open3d; < 1 is better)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({
        "open3d": {"ate_rmse_m": o3d_ate, "median_ms_per_frame": float(np.median(o3d_ms[1:]))},
        "prism": {k: ours[k] for k in ("ate_rmse_m", "median_ms_per_frame", "median_ms_per_stage", "lost_frames",
                                       "map_bytes_per_m2", "peak_memory_bytes", "backend", "device", "kernel_load_s")},
        "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
