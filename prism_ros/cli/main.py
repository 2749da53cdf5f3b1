"""`prism-ros`: the offline entry point (synthetic data, dataset info, bag replay, evaluation, demo).

Commands import their modules lazily so `prism-ros --help` is instant and the ROS-free commands
work where rclpy is missing. Bad input raises :class:`prism_ros.errors.InputError`, printed here as
one line (problem -> fix) with exit code 2, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from prism_ros.errors import InputError, reports_input_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="prism_ros: probabilistic dense SLAM and relocalization for ROS 2.")
console = Console(stderr=True)


@app.command()
@reports_input_errors
def synth(
    out: Annotated[Path, typer.Option(help="Output folder (TUM-like layout + camera.yaml + bag/).")],
    frames: Annotated[int, typer.Option(min=2, help="Number of frames.")] = 300,
    seed: Annotated[int, typer.Option(help="Scene, trajectory and noise seed.")] = 0,
    motion: Annotated[str, typer.Option(help="Motion profile: handheld or drone.")] = "handheld",
    bag: Annotated[str, typer.Option(help="Bag storage: mcap, db3 or none.")] = "mcap",
    width: Annotated[int, typer.Option(min=16)] = 640,
    height: Annotated[int, typer.Option(min=16)] = 480,
    noise: Annotated[bool, typer.Option(help="Sensor noise, invalid pixels and IMU bias.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a sequence already in --out.")] = False,
):
    """Render a deterministic synthetic RGB-D + IMU sequence with exact ground truth.

    Example: prism-ros synth --out out/synth --frames 120 --width 320 --height 240 --motion drone
    """
    from prism_ros.synthetic import generate

    if motion not in ("handheld", "drone"):
        raise InputError(f"unknown motion profile '{motion}'", "use --motion handheld or --motion drone")
    if bag not in ("mcap", "db3", "none"):
        raise InputError(f"unknown bag storage '{bag}'", "use --bag mcap, --bag db3 or --bag none")
    generate(out, frames=frames, seed=seed, motion=motion, bag=None if bag == "none" else bag,
             width=width, height=height, noise=noise, overwrite=overwrite)


@app.command()
@reports_input_errors
def info(
    path: Annotated[Path, typer.Argument(help="Dataset folder or bag.")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="Force a format (see --list).")] = None,
    frames: Annotated[Optional[str], typer.Option(help="Frame slice A:B (python slice syntax).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Bag topic preset: tum, euroc or prism.")] = None,
):
    """Summarise a dataset: format, frames, duration, intrinsics, depth range, IMU and ground truth.

    Example: prism-ros info ../shared/data/7scenes_redkitchen_seq_0000_0399 --frames 0:100
    """
    from prism_ros.datasets import describe_dataset, open_dataset

    options = {"preset": preset} if preset else {}
    dataset = open_dataset(path, fmt=fmt, frames=frames, **options)
    for key, value in describe_dataset(dataset).items():
        typer.echo(f"{key:>14}: {value}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                              "help_option_names": []}, add_help_option=False)
def play(ctx: typer.Context):
    """Publish a ROS 1 or ROS 2 bag over ROS 2 with /clock: BAG [--rate R] [--loop] [--qos sensor|reliable]
    [--remap FROM:=TO] ... (`prism-ros play --help` lists all; same options as the bag_player node)."""
    from prism_ros.nodes.player import main as player_main

    raise typer.Exit(player_main(list(ctx.args)))


@app.command(name="eval")
@reports_input_errors
def evaluate(
    estimate: Annotated[Path, typer.Argument(help="Estimated trajectory, TUM format.")],
    ground_truth: Annotated[Path, typer.Argument(help="Ground-truth trajectory, TUM format.")],
    align: Annotated[str, typer.Option(help="Alignment: se3, sim3 or none.")] = "se3",
    plot: Annotated[Optional[Path], typer.Option(help="Write a trajectory plot PNG here.")] = None,
    max_time_diff: Annotated[float, typer.Option(help="Max stamp difference for association (s).")] = 0.02,
    rpe_delta: Annotated[float, typer.Option(help="RPE step, in frames.")] = 1.0,
    covariance: Annotated[Optional[Path], typer.Option(help="covariance.npz of the estimate (prism-ros run or "
                                                            "replay): adds the pose NEES checks.")] = None,
    reliability: Annotated[Optional[Path], typer.Option(help="With --covariance: write the reliability plot "
                                                             "PNG here.")] = None,
):
    """ATE and RPE of an estimated trajectory against ground truth (evo), one-line summary; with --covariance also
    the absolute and frame-to-frame pose NEES with their coverage.

    Example: prism-ros eval out/kitchen/trajectory.tum groundtruth.txt --covariance out/kitchen/covariance.npz
    """
    from prism_ros.evaluation.metrics import evaluate as run_evaluation

    if align not in ("se3", "sim3", "none"):
        raise InputError(f"unknown alignment '{align}'", "use --align se3, sim3 or none")
    if reliability is not None and covariance is None:
        raise InputError("--reliability needs --covariance", "give the covariance.npz of the estimate")
    result = run_evaluation(estimate, ground_truth, align=align, max_time_diff=max_time_diff,
                            rpe_delta=rpe_delta, plot_path=plot)
    typer.echo(result.summary_line())
    if covariance is not None:
        from prism_ros.evaluation import calibration

        checks = calibration.checks_from_files(estimate, ground_truth, covariance, max_time_diff)
        echo_scores(checks)
        if reliability is not None:
            calibration.plot_reliability(checks, reliability)


@app.command()
@reports_input_errors
def run(
    dataset: Annotated[Path, typer.Option(help="Dataset folder or bag.")],
    out: Annotated[Path, typer.Option(help="Output folder for trajectory, covariances, mesh, timings.")],
    fmt: Annotated[str, typer.Option("--format", help="auto, 7scenes, sun3d, tum, euroc or bag.")] = "auto",
    frames: Annotated[Optional[str], typer.Option(help="Frame slice A:B (python slice syntax).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML overriding the format's preset.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, fused (Warp kernels) or torch (the reference).")] = "auto",
    init_gt: Annotated[bool, typer.Option(help="Start at the ground-truth pose instead of identity.")] = False,
    preset: Annotated[Optional[str], typer.Option(help="Bag topic preset: tum, euroc or prism.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Run the PRISM filter offline on a dataset; writes trajectory.tum, covariance.npz, map.pt, mesh.ply,
    timing.csv, summary.json and a plot.

    Example: prism-ros run --dataset ../shared/data/7scenes_redkitchen_seq_0000_0399 --frames 0:100 --out out/kitchen
    """
    from prism_ros.prism.pipeline import run_sequence
    from prism_ros.synthetic import read_scene

    data, settings = filter_inputs(dataset, fmt, frames, preset, config, device, backend)
    scene = read_scene(dataset) if dataset.is_dir() else None
    summary = run_sequence(data, settings, out, init_gt=init_gt, progress=not quiet,
                           true_sdf=None if scene is None else scene.sdf)
    ate = f", ATE {summary['ate_rmse_m'] * 100:.2f} cm" if "ate_rmse_m" in summary else ""
    typer.echo(f"{summary['frames']} frames, {summary['lost_frames']} lost, "
               f"{summary['median_ms_per_frame']:.0f} ms/frame median on {summary['device']} "
               f"({summary['backend']}){ate} -> {out}")
    echo_scores(summary)


def filter_inputs(dataset: Path, fmt: str, frames: str | None, preset: str | None, config: Path | None, device: str,
                  backend: str):
    """(the dataset, its filter configuration) of `run` and `calibrate`: the format's preset, the user's file, the
    device and backend (a one-line error for an unknown backend or fused without Warp)."""
    from prism_ros.datasets import open_dataset
    from prism_ros.prism.config import preset_config

    data = open_dataset(dataset, fmt={"auto": None, "bag": "rosbag"}.get(fmt, fmt), frames=frames,
                        **({"preset": preset} if preset else {}))
    settings = preset_config(data, config)
    settings.device, settings.backend = device, backend
    settings.resolved_backend()
    return data, settings


def echo_scores(summary: dict) -> None:
    """The pose NEES calibration and the map error of a run's summary, when ground truth gave them."""
    for key, what, unit in (("nees", "pose NEES", "frames"), ("relative_nees", "frame-to-frame NEES", "frame pairs")):
        if summary.get(f"{key}_median") is not None:
            shares = ", ".join(f"{float(level):.0%}: {share:.0%}"
                               for level, share in summary[f"{key}_coverage"].items())
            typer.echo(f"{what} median {summary[f'{key}_median']:.1f} (ideal 5.3), "
                       f"{100 * summary[f'{key}_fraction_in_95_band']:.0f}% of {unit} in the 95% chi2 band; "
                       f"coverage (expected: observed) {shares}")
    if "map_error" in summary:
        from prism_ros.evaluation.metrics import MapError

        typer.echo(MapError(**summary["map_error"]).summary_line())


@app.command()
@reports_input_errors
def calibrate(
    dataset: Annotated[Path, typer.Option(help="Dataset folder or bag with ground truth (the calibration split).")],
    out: Annotated[Path, typer.Option(help="Filter preset (YAML) to write: the format's preset with the fitted "
                                           "noise parameters; use it with `prism-ros run --config`.")],
    fmt: Annotated[str, typer.Option("--format", help="auto, 7scenes, sun3d, tum, euroc or bag.")] = "auto",
    frames: Annotated[Optional[str], typer.Option(help="Frame slice A:B to calibrate on; keep the frames you "
                                                       "evaluate on out of it.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML overriding the format's preset (the starting "
                                                        "point).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, fused (Warp kernels) or torch (the reference).")] = "auto",
    gt_sigma_m: Annotated[float, typer.Option(help="Position noise of the ground truth (m), for the motion fit.")]
    = 1e-3,
    gt_sigma_rad: Annotated[float, typer.Option(help="Rotation noise of the ground truth (rad).")] = 2e-3,
    max_runs: Annotated[int, typer.Option(min=1, help="Filter runs at most to settle the correlation length.")] = 4,
    preset: Annotated[Optional[str], typer.Option(help="Bag topic preset: tum, euroc or prism.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Fit the noise parameters that set the pose covariance (motion noise, residual correlation length, map
    drift) to ground truth, and write a filter preset.

    Example: prism-ros calibrate --dataset ../shared/data/7scenes_redkitchen_seq_0000_0399 --frames 0:200 --out k.yaml
    """
    import yaml

    from prism_ros.evaluation.noise_fit import calibrate as fit
    from prism_ros.evaluation.noise_fit import preset_text
    from prism_ros.prism.config import deep_merge, preset_files

    data, settings = filter_inputs(dataset, fmt, frames, preset, config, device, backend)
    result = fit(data, settings, init_gt=True, gt_sigma=(gt_sigma_m, gt_sigma_rad), max_runs=max_runs,
                 progress=not quiet, log=typer.echo)
    base: dict = {}
    for path in preset_files(data, config):
        base = deep_merge(base, yaml.safe_load(path.read_text()) or {})
    options = {"--dataset": dataset, "--format": None if fmt == "auto" else fmt, "--frames": frames,
               "--config": config, "--preset": preset}
    command = " ".join(["prism-ros calibrate", *(f"{k} {v}" for k, v in options.items() if v is not None)])
    header = [f"Calibrated by: {command}", f"on {dataset}, frames {frames or 'all'} ({len(data)} frames)"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(preset_text(base, result, header))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"preset -> {out} (prism-ros run --config {out})")


@app.command()
@reports_input_errors
def replay(
    bag: Annotated[Path, typer.Argument(help="rosbag2 folder (mcap/sqlite3) or ROS 1 .bag.")],
    preset: Annotated[str, typer.Option(help="Bag layout: tum, euroc, blackbird or synthetic "
                                        "(config/sensors/<preset>.yaml).")],
    out: Annotated[Path, typer.Option(help="Output folder (the files of `prism-ros run`).")] = Path("out/replay"),
    rate: Annotated[float, typer.Option(help="Playback speed factor (1 = real time).")] = 1.0,
    config: Annotated[Optional[str], typer.Option(help="prism_node parameter YAML (default config/prism.yaml); "
                                                  "the preset overrides it.")] = None,
    ground_truth: Annotated[Optional[Path], typer.Option(help="TUM file of camera poses (default: the bag's "
                                                         "ground-truth topic, if any).")] = None,
    visualize: Annotated[bool, typer.Option(help="Keep publishing mesh and cloud for RViz.")] = False,
    loopback: Annotated[bool, typer.Option(help="DDS on 127.0.0.1 and shared memory only, on a private domain; "
                                           "--no-loopback uses the environment's set-up (to watch in RViz).")] = True,
    domain_id: Annotated[Optional[int], typer.Option(help="DDS domain (default: random with --loopback, "
                                                     "ROS_DOMAIN_ID or 0 without).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Replay a bag into prism_node (player and node as separate ROS 2 processes) and write what
    `prism-ros run` writes: trajectory.tum, covariance.npz, mesh.ply, timing.csv, summary.json, a plot.

    Example: prism-ros replay out/demo/synthetic/bag --preset synthetic --out out/replay
    """
    import os

    from prism_ros.launch_graph.replay import replay_bag

    domain = domain_id if domain_id is not None or loopback else int(os.environ.get("ROS_DOMAIN_ID") or 0)
    summary = replay_bag(bag, preset, out, rate=rate, config=config, ground_truth=ground_truth,
                         visualize=visualize, progress=not quiet, loopback=loopback, domain_id=domain)
    ate = f", ATE {summary['ate_rmse_m'] * 100:.2f} cm" if "ate_rmse_m" in summary else ""
    typer.echo(f"{summary['frames']} of {summary['frames_in_bag']} frames processed, {summary['lost_frames']} "
               f"lost, {summary['bad_input_total']} bad inputs, {summary['median_ms_per_frame']:.0f} ms/frame "
               f"median on {summary['device']}{ate} -> {out}")
    echo_scores(summary)


@app.command()
@reports_input_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    frames: Annotated[int, typer.Option(min=10)] = 120,
    seed: Annotated[int, typer.Option()] = 0,
    motion: Annotated[str, typer.Option()] = "handheld",
):
    """The main job on the built-in default: synthetic scene -> ROS 2 replay -> evaluation.

    Example: prism-ros demo --out out/demo
    """
    from prism_ros.cli.demo import run_demo

    run_demo(out, frames=frames, seed=seed, motion=motion)


@app.command()
def doctor():
    """Which optional ROS 2 pieces are present and which explicit fallbacks are in use."""
    from prism_ros.nodes.compat import format_ros_pieces

    typer.echo(format_ros_pieces())


def _mount_subcommands() -> None:
    """`prism-ros ace ...` (ACE), `prism-ros dmn ...` (DMN localization), `prism-ros dynamics ...` (the learned
    residual transition, predictive rollouts) and `prism-ros costmap` (collision cost on a map slice); cheap to
    import (lazy torch)."""
    from prism_ros.cli.ace import app as ace_app
    from prism_ros.cli.costmap import costmap_command
    from prism_ros.cli.dmn import app as dmn_app
    from prism_ros.cli.dynamics import app as dynamics_app

    app.add_typer(ace_app, name="ace")
    app.add_typer(dmn_app, name="dmn")
    app.add_typer(dynamics_app, name="dynamics")
    app.command(name="costmap")(costmap_command)


_mount_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
