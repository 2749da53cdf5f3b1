"""`make demo` / `prism-ros demo`: the main job on the built-in default (the synthetic scene).

Steps, each a real component: render the synthetic sequence (folder + ROS 2 bag); replay the bag over
ROS 2 into ``prism_node`` with `prism-ros replay`'s machinery (bag player, PRISM node, IMU dead-reckoning
baseline and trajectory recorder as separate processes on a private loopback DDS domain); score what was
published with evo (ATE, NEES, map error against the exact scene), leaving the mesh, map and plots in ``out``
(``prism/mesh_uncertainty.png``: the mesh coloured by the map's SDF std, the picture in the README).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from prism_ros.errors import InputError
from prism_ros.evaluation.metrics import evaluate
from prism_ros.evaluation.trajectory_io import read_tum
from prism_ros.launch_graph.graph import NodeSpec

console = Console(stderr=True)


def baseline_nodes(T_imu_camera: np.ndarray, record_dir: Path) -> list[NodeSpec]:
    """IMU dead reckoning and the recorder of what it and the bag's ground truth published."""
    recorder = NodeSpec("prism_ros", "trajectory_recorder", "trajectory_recorder", {
        "topics": ["/ground_truth=ground_truth_received.txt", "/imu_odometry/odometry=imu_odometry.txt"],
        "output_dir": str(record_dir), "idle_timeout_s": 0.0}, module="prism_ros.nodes.recorder")
    estimator = NodeSpec("prism_ros", "imu_odometry", "imu_odometry", {
        "T_imu_camera": [float(x) for x in T_imu_camera.ravel()]}, module="prism_ros.nodes.imu_odometry")
    return [recorder, estimator]


def ensure_sequence(data: Path, frames: int, seed: int, motion: str, width: int, height: int) -> dict:
    """Generate the synthetic sequence unless the same one is already there; its camera.yaml."""
    from prism_ros.synthetic import generate

    wanted = {"seed": seed, "motion": motion, "width": width, "height": height}
    camera_yaml = data / "camera.yaml"
    if camera_yaml.is_file():
        existing = yaml.safe_load(camera_yaml.read_text())
        frames_there = sum(1 for _ in (data / "rgb").glob("*.png"))
        if all(existing.get(k) == v for k, v in wanted.items()) and frames_there == frames:
            console.print(f"[1/3] reusing synthetic sequence in {data}")
            return existing
    console.print(f"[1/3] rendering {frames} synthetic frames ({motion}, seed {seed}, {width}x{height})")
    generate(data, frames=frames, seed=seed, motion=motion, bag="mcap", width=width, height=height,
             overwrite=True)
    return yaml.safe_load(camera_yaml.read_text())


def run_demo(out: Path, frames: int = 120, seed: int = 0, motion: str = "handheld",
             width: int = 320, height: int = 240) -> dict:
    """Run the demo end to end; returns (and writes to out/summary.json) what it measured."""
    from prism_ros.launch_graph.replay import replay_bag

    out = Path(out)
    started = time.monotonic()
    data, record_dir = out / "synthetic", out / "received"
    camera = ensure_sequence(data, frames, seed, motion, width, height)
    T_imu_camera = np.asarray(camera["T_imu_camera"], dtype=np.float64)
    record_dir.mkdir(parents=True, exist_ok=True)
    for stale in record_dir.glob("*.txt"):
        stale.unlink()
    console.print("[2/3] replaying the bag over ROS 2 (private DDS domain, loopback only): bag_player -> "
                  "prism_node, imu_odometry -> trajectory_recorder")
    prism = replay_bag(data / "bag", "synthetic", out / "prism", extra_nodes=baseline_nodes(T_imu_camera, record_dir))
    plot_mesh_uncertainty(out / "prism" / "mesh.ply", out / "prism" / "trajectory.tum",
                          out / "prism" / "mesh_uncertainty.png")

    console.print("[3/3] evaluating with evo")
    gt_t, _ = read_tum(data / "groundtruth.txt")
    received, estimate = record_dir / "ground_truth_received.txt", record_dir / "imu_odometry.txt"
    for path in (received, estimate):
        if not path.is_file():
            raise InputError(f"the replay recorded no poses (node exit codes: {prism['node_exit_codes']})",
                             "run `prism-ros doctor` and check the ROS 2 set-up", path)
    received_t, _ = read_tum(received)
    transport = evaluate(received, data / "groundtruth.txt", align="none")
    baseline = evaluate(estimate, data / "groundtruth.txt", align="none", plot_path=out / "imu_odometry.png")
    keys = ("frames", "frames_in_bag", "lost_frames", "dropped_frames", "bad_input_total", "bad_inputs",
            "median_ms_per_frame",
            "median_latency_ms", "ate_rmse_m", "nees_median", "nees_fraction_in_95_band", "map_error",
            "map_memory_bytes", "device", "mesh", "node_exit_codes")
    summary = {
        "frames": frames, "motion": motion, "seed": seed,
        "ground_truth_received": int(len(received_t)), "ground_truth_sent": int(len(gt_t)),
        "transport_max_error_m": transport.ate_max,
        "imu_odometry": baseline.to_dict(),
        "prism": {key: prism.get(key) for key in keys},
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, baseline, out)
    return summary


def plot_mesh_uncertainty(mesh_path: Path, trajectory_path: Path, png_path: Path, elevation_deg: float = 30.0) -> bool:
    """A PNG of the mesh coloured by its per-vertex SDF std: an orthographic view along the cameras' mean
    viewing direction, tilted down by ``elevation_deg`` (the surfaces the cameras saw, facing the viewer),
    faces drawn far to near and shaded by their normal. False when there is no mesh to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    from prism_ros.prism.mesh import read_ply

    if not Path(mesh_path).is_file() or not Path(trajectory_path).is_file():
        return False
    mesh = read_ply(mesh_path)
    _, poses = read_tum(trajectory_path)
    if len(mesh.faces) == 0 or len(poses) == 0:
        return False
    poses = np.asarray(poses, dtype=np.float64)
    forward = poses[:, :3, 2].mean(0)
    forward /= np.linalg.norm(forward)
    right = np.cross(poses[:, :3, 1].mean(0), forward)  # camera y is down: down x forward = right
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    tilt = np.radians(elevation_deg)
    forward, up = np.cos(tilt) * forward - np.sin(tilt) * up, np.sin(tilt) * forward + np.cos(tilt) * up

    vertices = mesh.vertices.astype(np.float64)
    triangles = vertices[mesh.faces]
    face_normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    vertex_normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(vertex_normals, mesh.faces[:, corner], face_normals)
    normals = vertex_normals[mesh.faces].sum(1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    std_mm = 1000.0 * mesh.sdf_std[mesh.faces].mean(1)
    norm = Normalize(*np.percentile(std_mm, [2, 98]))
    colours = plt.get_cmap("viridis")(norm(std_mm))
    colours[:, :3] *= (0.5 + 0.5 * np.abs(normals @ forward))[:, None]
    order = np.argsort(-(triangles @ forward).mean(1))  # painter's algorithm: far faces first
    projected = np.stack([triangles @ right, triangles @ up], -1)[order]

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    ax.add_collection(PolyCollection(projected, facecolors=colours[order], edgecolors="none", antialiased=False))
    ax.set_xlim(projected[..., 0].min(), projected[..., 0].max())
    ax.set_ylim(projected[..., 1].min(), projected[..., 1].max())
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, fraction=0.04, pad=0.02,
                 label="SDF std (mm)")
    ax.set_title("PRISM map: mesh coloured by its uncertainty")
    fig.savefig(png_path, bbox_inches="tight")
    plt.close(fig)
    return True


def print_summary(summary: dict, baseline, out: Path) -> None:
    table = Table(title="prism_ros demo (synthetic scene, bag replayed over ROS 2 into prism_node)")
    table.add_column("what")
    table.add_column("measured")
    table.add_row("ground-truth poses received / sent",
                  f"{summary['ground_truth_received']} / {summary['ground_truth_sent']}")
    table.add_row("pose error after DDS transport", f"{summary['transport_max_error_m']:.2e} m (max)")
    table.add_row("IMU dead reckoning (baseline)", baseline.summary_line())
    prism = summary["prism"]
    table.add_row("PRISM node", f"ATE rmse {prism['ate_rmse_m'] * 100:.2f} cm (se3), {prism['frames']} of "
                  f"{prism['frames_in_bag']} frames published, {prism['lost_frames']} lost, "
                  f"{prism['bad_input_total']} bad inputs")
    table.add_row("PRISM node time", f"{prism['median_ms_per_frame']:.0f} ms/frame filter step (median) on "
                  f"{prism['device']}; the node queues the whole bag, so no frame is dropped")
    if prism["nees_median"] is not None:
        table.add_row("PRISM pose NEES (6 DoF)", f"median {prism['nees_median']:.1f} (ideal 5.3), "
                      f"{100 * prism['nees_fraction_in_95_band']:.0f}% of frames in the 95% chi2 band")
    if prism.get("map_error"):
        from prism_ros.evaluation.metrics import MapError

        table.add_row("PRISM map", MapError(**prism["map_error"]).summary_line())
    table.add_row("wall time", f"{summary['wall_time_s']} s")
    table.add_row("outputs", f"{out}/summary.json, {out}/imu_odometry.png, {out}/received/, {out}/prism/ "
                  "(trajectory.tum, covariance.npz, mesh.ply, mesh_uncertainty.png, map.pt, timing.csv, "
                  "trajectory.png, node logs)")
    Console().print(table)
