"""`make demo` / `prism-ros demo`: the main job on the built-in default (the synthetic scene).

Steps, each a real component: render the synthetic sequence (folder + ROS 2 bag); replay the bag over
ROS 2 (bag player, IMU dead-reckoning baseline and trajectory recorder as separate processes on a
private loopback DDS domain) and score what was received with evo; run the PRISM filter on the
sequence and report its ATE, NEES calibration and ms/frame, leaving the mesh and plots in ``out``.
(The PRISM node replaces the offline run in the ROS replay when the node lands.)
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
from prism_ros.evaluation import evaluate
from prism_ros.nodes.graph import NodeSpec, bag_player_spec
from prism_ros.trajectory_io import read_tum

console = Console(stderr=True)


def demo_graph(bag: Path, T_imu_camera: np.ndarray, record_dir: Path) -> list[NodeSpec]:
    """Player, IMU baseline and recorder: the graph the demo runs (PRISM joins it later)."""
    recorder = NodeSpec("prism_ros", "trajectory_recorder", "trajectory_recorder", {
        "topics": ["/ground_truth=ground_truth_received.txt", "/imu_odometry/odometry=imu_odometry.txt"],
        "output_dir": str(record_dir), "idle_timeout_s": 2.0}, module="prism_ros.nodes.recorder")
    estimator = NodeSpec("prism_ros", "imu_odometry", "imu_odometry", {
        "T_imu_camera": [float(x) for x in T_imu_camera.ravel()]}, module="prism_ros.nodes.imu_odometry")
    # wait until the estimator and the recorder are matched: volatile topics drop what came before
    player = bag_player_spec(str(bag), rate=1.0, qos="reliable", wait_for_subscribers=2, quiet=True)
    return [recorder, estimator, player]


def ensure_sequence(data: Path, frames: int, seed: int, motion: str, width: int, height: int) -> dict:
    """Generate the synthetic sequence unless the same one is already there; its camera.yaml."""
    from prism_ros.synthetic import generate

    wanted = {"seed": seed, "motion": motion, "width": width, "height": height}
    camera_yaml = data / "camera.yaml"
    if camera_yaml.is_file():
        existing = yaml.safe_load(camera_yaml.read_text())
        frames_there = sum(1 for _ in (data / "rgb").glob("*.png"))
        if all(existing.get(k) == v for k, v in wanted.items()) and frames_there == frames:
            console.print(f"[1/4] reusing synthetic sequence in {data}")
            return existing
    console.print(f"[1/4] rendering {frames} synthetic frames ({motion}, seed {seed}, {width}x{height})")
    generate(data, frames=frames, seed=seed, motion=motion, bag="mcap", width=width, height=height,
             overwrite=True)
    return yaml.safe_load(camera_yaml.read_text())


def replay(bag: Path, T_imu_camera: np.ndarray, record_dir: Path, duration: float) -> list[int | None]:
    """Replay the bag over ROS 2 into the estimator and recorder; wait for the recorder to finish."""
    from prism_ros.nodes.launcher import start_graph

    record_dir.mkdir(parents=True, exist_ok=True)
    for stale in record_dir.glob("*.txt"):
        stale.unlink()
    graph = start_graph(demo_graph(bag, T_imu_camera, record_dir), loopback=True)
    console.print(f"[2/4] replaying over ROS 2 (DDS domain {graph.domain_id}, loopback only): "
                  "bag_player -> imu_odometry -> trajectory_recorder")
    recorder = graph.nodes[0].process
    deadline = time.monotonic() + duration + 60.0
    while recorder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return graph.stop(grace=5.0)


def run_demo(out: Path, frames: int = 120, seed: int = 0, motion: str = "handheld",
             width: int = 320, height: int = 240) -> dict:
    """Run the demo end to end; returns (and writes to out/summary.json) what it measured."""
    out = Path(out)
    started = time.monotonic()
    data, record_dir = out / "synthetic", out / "received"
    camera = ensure_sequence(data, frames, seed, motion, width, height)
    T_imu_camera = np.asarray(camera["T_imu_camera"], dtype=np.float64)
    gt_t, _ = read_tum(data / "groundtruth.txt")
    codes = replay(data / "bag", T_imu_camera, record_dir, duration=gt_t[-1] - gt_t[0])

    received = record_dir / "ground_truth_received.txt"
    estimate = record_dir / "imu_odometry.txt"
    for path in (received, estimate):
        if not path.is_file():
            raise InputError("the replay produced no poses (node exit codes: "
                             f"{codes})", "run `prism-ros doctor` and check the ROS 2 set-up", path)
    received_t, _ = read_tum(received)
    console.print("[3/4] evaluating the replay with evo")
    transport = evaluate(received, data / "groundtruth.txt", align="none")
    baseline = evaluate(estimate, data / "groundtruth.txt", align="none", plot_path=out / "imu_odometry.png")
    summary = {
        "frames": frames, "motion": motion, "seed": seed,
        "ground_truth_received": int(len(received_t)), "ground_truth_sent": int(len(gt_t)),
        "transport_max_error_m": transport.ate_max,
        "imu_odometry": baseline.to_dict(),
        "node_exit_codes": codes,
    }
    summary["prism"] = run_prism(data, out / "prism")
    summary["wall_time_s"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, baseline, out)
    return summary


def run_prism(data: Path, out: Path) -> dict:
    """PRISM on the synthetic folder with the format's preset; the figures the demo prints."""
    from prism_ros.config import preset_config
    from prism_ros.datasets import open_dataset
    from prism_ros.pipeline import run_sequence
    from prism_ros.synthetic import read_scene

    console.print(f"[4/4] running the PRISM filter on {data}")
    dataset = open_dataset(data)
    result = run_sequence(dataset, preset_config(dataset), out, progress=True, true_sdf=read_scene(data).sdf)
    keys = ("frames", "lost_frames", "median_ms_per_frame", "ate_rmse_m", "nees_median",
            "nees_fraction_in_95_band", "map_error", "map_bytes_per_m2", "device")
    return {key: result.get(key) for key in keys} | {"mesh": str(out / "mesh.ply")}


def print_summary(summary: dict, baseline, out: Path) -> None:
    table = Table(title="prism_ros demo (synthetic scene, replayed over ROS 2)")
    table.add_column("what")
    table.add_column("measured")
    table.add_row("ground-truth poses received / sent",
                  f"{summary['ground_truth_received']} / {summary['ground_truth_sent']}")
    table.add_row("pose error after DDS transport", f"{summary['transport_max_error_m']:.2e} m (max)")
    table.add_row("IMU dead reckoning (baseline)", baseline.summary_line())
    prism = summary["prism"]
    table.add_row("PRISM filter", f"ATE rmse {prism['ate_rmse_m'] * 100:.2f} cm (se3), {prism['lost_frames']} of "
                  f"{prism['frames']} frames lost, {prism['median_ms_per_frame']:.0f} ms/frame on {prism['device']}")
    if prism["nees_median"] is not None:
        table.add_row("PRISM pose NEES (6 DoF)", f"median {prism['nees_median']:.1f} (ideal 5.3), "
                      f"{100 * prism['nees_fraction_in_95_band']:.0f}% of frames in the 95% chi2 band")
    if prism.get("map_error"):
        from prism_ros.evaluation import MapError

        table.add_row("PRISM map", MapError(**prism["map_error"]).summary_line())
    table.add_row("wall time", f"{summary['wall_time_s']} s")
    table.add_row("outputs", f"{out}/summary.json, {out}/imu_odometry.png, {out}/received/, "
                  f"{out}/prism/ (trajectory, covariances, mesh.ply, timing.csv, trajectory.png)")
    Console().print(table)
