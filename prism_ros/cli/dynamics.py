"""`prism-ros dynamics ...`: train the residual transition (VSSM-LM) on IMU + ground truth, evaluate it, and
sample predictive rollouts of any transition model (``predict``, :mod:`prism_ros.dynamics.rollout`).

Mounted by :mod:`prism_ros.cli.main` (``app.add_typer(dynamics_app, name="dynamics")``); torch is imported when a
command runs. Bad input is one line with exit code 2.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_ros.cli.support import parse_floats
from prism_ros.errors import InputError, reports_input_errors
from prism_ros.threads import use_cpu_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learned residual transition: train on IMU + ground truth, multi-step evaluation; "
                       "predictive rollouts.")

SPLITS = ("auto", "held-out", "all")
# the motion-data options of train and eval
Dataset = Annotated[Path, typer.Option(help="EuRoC/ASL folder (IMU csv + ground truth).")]
Format = Annotated[str, typer.Option("--format", help="Dataset format: euroc.")]
Seconds = Annotated[Optional[str], typer.Option(help="Use only START:END s from the first IMU sample.")]
ImuFile = Annotated[Optional[Path], typer.Option(help="IMU csv (default: found in --dataset).")]
GroundTruthFile = Annotated[Optional[Path], typer.Option(help="Ground truth, TUM or ASL csv.")]


def _load(dataset: Path, fmt: str, seconds: str | None, imu: Path | None, groundtruth: Path | None):
    from prism_ros.dynamics.learning import load_motion_data

    data = load_motion_data(dataset, fmt, imu=imu, groundtruth=groundtruth)
    if seconds is None:
        return data
    try:
        start, end = (float(x) if x else None for x in seconds.split(":"))
    except ValueError:
        raise InputError(f"bad --seconds '{seconds}'", "use START:END in seconds from the first IMU sample, "
                         "e.g. 0:40") from None
    return data.slice(start or 0.0, end if end is not None else float("inf"))


@app.command("train")
@reports_input_errors
def train_command(
    dataset: Dataset,
    out: Annotated[Path, typer.Option(help="Model file to write (.pt).")],
    fmt: Format = "euroc",
    model: Annotated[str, typer.Option(help="imu: the csv holds IMU samples; control: it holds commands (gyro "
                                       "columns = commanded body rates, accel columns = commanded body "
                                       "acceleration without gravity).")] = "imu",
    steps: Annotated[int, typer.Option(min=0, help="Adam steps.")] = 300,
    horizon: Annotated[float, typer.Option(min=0.01, help="Rollout horizon (s).")] = 1.0,
    step: Annotated[float, typer.Option(min=0.001, help="Transition step (s), a whole number of IMU periods.")] = 0.05,
    held_out: Annotated[float, typer.Option(min=0.05, max=0.9, help="Last fraction kept for evaluation.")] = 0.25,
    calibration: Annotated[float, typer.Option(min=0.0, max=0.5, help="Fraction before the held-out part that "
                                               "only scales the learned std to 95 % coverage (0: none).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Initialisation and batch seed.")] = 0,
    calibrate_still: Annotated[bool, typer.Option(help="Give the engineered model the biases of the still start "
                                                  "(default: the config's zero biases).")] = False,
    seconds: Seconds = None,
    imu: ImuFile = None,
    groundtruth: GroundTruthFile = None,
    threads: int = 1,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Train the residual MLP (mean + std heads) on the first part of a sequence; print held-out figures.

    Example: prism-ros dynamics train --dataset ../shared/data/euroc_V1_01_micro --out v101.pt --calibrate-still
    """
    use_cpu_threads(threads)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from prism_ros.dynamics.learning import (
        TRAINABLE,
        TrainingConfig,
        compare,
        format_table,
        save_residual,
        still_biases,
        train_residual,
    )
    from prism_ros.dynamics.model import DynamicsConfig

    if model not in TRAINABLE:  # before reading the data
        raise InputError(f"unknown --model '{model}'", "use imu or control")
    if calibrate_still and model != "imu":
        raise InputError("--calibrate-still estimates IMU biases", "drop it with --model control")
    data = _load(dataset, fmt, seconds, imu, groundtruth)
    dynamics = DynamicsConfig(model=model, residual_mlp=True)
    if calibrate_still:
        bias_gyro, bias_accel = still_biases(data)
        dynamics = dataclasses.replace(dynamics, bias_gyro=tuple(bias_gyro.tolist()),
                                       bias_accel=tuple(bias_accel.tolist()))
    config = TrainingConfig(step=step, horizon=horizon, held_out=held_out, calibration=calibration, steps=steps,
                            seed=seed)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=quiet, transient=True) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        result = train_residual(data, dynamics, config, lambda i, loss: bar.update(task, completed=i + 1, loss=loss))
    results = compare(data, result.residual, dynamics, config, start=result.split_time)
    lo, hi = data.span()
    save_residual(out, result.residual, dynamics, config, {
        "source": data.source, "train_start": lo, "split_time": result.split_time, "data_end": hi,
        "held_out_before": result.held_out_before, "held_out_after": result.held_out_after, "held_out": results})
    typer.echo(f"{result.extra['train_windows']} training / {result.extra['calibration_windows']} calibration / "
               f"{result.extra['held_out_windows']} held-out windows, {steps} steps in {result.seconds:.1f} s; std "
               f"scaled x{result.extra['std_scale']:.2f}; held-out NLL {result.held_out_before:.2f} -> "
               f"{result.held_out_after:.2f} -> {out}")
    typer.echo(f"held-out (last {held_out:.0%}, {int(results['learned']['windows'])} windows of "
               f"{config.rollout_steps * config.step:g} s):")
    typer.echo(format_table(results))


@app.command("eval")
@reports_input_errors
def eval_command(
    model: Annotated[Path, typer.Option(help="Model file written by `prism-ros dynamics train`.")],
    dataset: Dataset,
    fmt: Format = "euroc",
    split: Annotated[str, typer.Option(help="auto (held-out part when the data overlap the training sequence, "
                                       "else all), held-out or all.")] = "auto",
    seconds: Seconds = None,
    imu: ImuFile = None,
    groundtruth: GroundTruthFile = None,
    threads: int = 1,
):
    """Multi-step position error at 0.5 s and 1 s, engineered Euler vs learned, and the learned 95 % coverage.

    Example: prism-ros dynamics eval --model v101.pt --dataset ../shared/data/euroc_V1_01_micro/V1_02_imu_gt_subset
    """
    use_cpu_threads(threads)
    from prism_ros.dynamics.learning import compare, format_table, load_residual

    if split not in SPLITS:
        raise InputError(f"unknown split '{split}'", "use --split auto, held-out or all")
    residual, dynamics, config, extra = load_residual(model)
    data = _load(dataset, fmt, seconds, imu, groundtruth)
    lo, hi = data.span()
    overlaps = "split_time" in extra and lo < extra.get("data_end", extra["split_time"]) and hi > extra["train_start"]
    start = extra.get("split_time") if split == "held-out" or (split == "auto" and overlaps) else None
    if split == "held-out" and start is None:
        raise InputError("the model file does not record its training split", "use --split all", model)
    results = compare(data, residual, dynamics, config, start=start)
    part = "all windows" if start is None else f"windows from {start - lo:.1f} s (after the training split)"
    typer.echo(f"{data.source}: {part}, {int(results['learned']['windows'])} windows of "
               f"{config.rollout_steps * config.step:g} s (step {config.step:g} s)")
    typer.echo(format_table(results))


MODELS = ("constant_velocity", "control", "imu")


def _transition(model: str):
    """An engineered model by name, or a trained residual file (its Euler model + the residual and its dynamics
    config)."""
    from prism_ros.dynamics.learning import euler_model, load_residual
    from prism_ros.dynamics.model import DynamicsConfig, make_transition

    if model in MODELS:
        return make_transition(DynamicsConfig(model=model)), model
    if not model.endswith(".pt"):
        raise InputError(f"unknown --model '{model}'", f"use {', '.join(MODELS)} or a MODEL.pt from "
                         "`prism-ros dynamics train`")
    residual, dynamics, _, _ = load_residual(Path(model))
    return euler_model(dynamics, residual), f"learned ({Path(model).name})"


def _pose(text: str | None, option: str):
    """'x,y,z' or 'x,y,z,qx,qy,qz,qw' -> 4x4 (identity when None)."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    if text is None:
        return T
    values = parse_floats(text, 7 if text.count(",") == 6 else 3, option, "0,0,0 or 0,0,0,0,0,0,1")
    T[:3, 3] = values[:3]
    if len(values) == 7:
        if not 0.5 < np.linalg.norm(values[3:]) < 2.0:
            raise InputError(f"bad {option} '{text}': the quaternion qx,qy,qz,qw is not near unit length",
                             "give a unit quaternion, e.g. 0,0,0,1")
        T[:3, :3] = Rotation.from_quat(values[3:]).as_matrix()
    return T


def _controls(model, name: str, command: str | None, command_file: Path | None, T0):
    """What drives the rollout: None (constant velocity), a held command or a (K, 6) sequence (control), a
    held IMU sample (imu / learned; default: at rest, the gravity reaction and no rotation)."""
    import numpy as np

    from prism_ros.dynamics.model import ImuEuler
    from prism_ros.frame import ImuSamples

    given = parse_floats(command, 6, "--command", "0.5,0,0,0,0,0.2")
    if command_file is not None:
        if given is not None:
            raise InputError("both --command and --command-file given", "give one of them")
        if not command_file.is_file():
            raise InputError("no such command file", "give a text file of K rows 'ax ay az wx wy wz'", command_file)
        try:
            given = np.loadtxt(command_file, delimiter="," if "," in command_file.read_text() else None, ndmin=2)
        except ValueError as error:
            raise InputError(f"unreadable command file ({str(error)[:80]})", "K rows of 6 numbers",
                             command_file) from None
    if name == "constant_velocity":
        if given is not None:
            raise InputError("the constant_velocity model takes no --command", "drop it, or use --model control")
        return None
    if isinstance(model, ImuEuler):
        if given is None:  # at rest: specific force = the gravity reaction in the body
            given = np.r_[T0[:3, :3].T @ np.array([0.0, 0.0, model.config.gravity]), 0.0, 0.0, 0.0]
        given = np.asarray(given, dtype=np.float64)
        if given.shape != (6,):
            raise InputError("the imu model holds one IMU sample", "give --command fx,fy,fz,wx,wy,wz (specific "
                             "force and gyro, body frame), not a file")
        return ImuSamples(np.zeros(1), given[None, 3:], given[None, :3])
    return np.zeros(6) if given is None else np.asarray(given, dtype=np.float64)


@app.command("predict")
@reports_input_errors
def predict_command(
    model: Annotated[str, typer.Option(help="constant_velocity, control, imu, or a MODEL.pt (learned residual).")],
    velocity: Annotated[str, typer.Option(help="Start velocity vx,vy,vz[,wx,wy,wz]: world linear (m/s), body "
                                          "rates (rad/s).")] = "0,0,0",
    command: Annotated[Optional[str], typer.Option(help="Held command ax,ay,az,wx,wy,wz (control: body "
                                                   "acceleration without gravity; imu: specific force, default "
                                                   "at rest).")] = None,
    command_file: Annotated[Optional[Path], typer.Option(help="Control: K rows 'ax ay az wx wy wz', one per "
                                                         "step.")] = None,
    pose: Annotated[Optional[str], typer.Option(help="Start pose x,y,z[,qx,qy,qz,qw] (default identity).")] = None,
    pose_std: Annotated[float, typer.Option(min=0.0, help="Start pose std (m and rad).")] = 1e-4,
    velocity_std: Annotated[float, typer.Option(min=0.0, help="Start velocity std (m/s and rad/s).")] = 0.05,
    horizon: Annotated[float, typer.Option(min=1e-3, help="Horizon (s).")] = 1.0,
    step: Annotated[float, typer.Option(min=1e-4, help="Step (s).")] = 0.05,
    samples: Annotated[int, typer.Option(min=0, max=100000, help="Sampled trajectories.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    map_path: Annotated[Optional[Path], typer.Option("--map", help="Map (map.pt): predicted depth at the mean "
                                                     "poses.")] = None,
    intrinsics: Annotated[Optional[str], typer.Option(help="With --map: fx,fy,cx,cy,width,height.")] = None,
    body_camera: Annotated[Optional[str], typer.Option(help="With --map: T_body_camera x,y,z[,qx,qy,qz,qw] "
                                                       "(default identity).")] = None,
    depth_views: Annotated[int, typer.Option(min=1, max=50, help="With --map: depth images at this many evenly "
                                             "spaced horizons.")] = 4,
    plane: Annotated[str, typer.Option(help="Plot plane: auto (the two axes the samples spread most along), xy, "
                                       "xz or yz.")] = "auto",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/predict"),
    threads: int = 1,
):
    """Sample future trajectories from a start state: rollouts.npz, TUM files, a top-view plot, predicted depth.

    Example: prism-ros dynamics predict --model control --velocity 0.5,0,0 --command 0.5,0,0,0,0,0.5 --out out/predict
    """
    use_cpu_threads(threads)
    import time

    import numpy as np
    import torch

    from prism_ros.dynamics.rollout import sample_rollouts, save_plot, save_rollouts
    from prism_ros.prism.state import GaussianState

    if plane not in ("auto", "xy", "xz", "yz"):
        raise InputError(f"unknown --plane '{plane}'", "use auto, xy, xz or yz")
    transition, name = _transition(model)
    T0 = _pose(pose, "--pose")
    v = parse_floats(velocity, 6 if velocity.count(",") == 5 else 3, "--velocity", "0.5,0,0 or 0.5,0,0,0,0,0.2")
    controls = _controls(transition, name, command, command_file, T0)
    camera = T_body_camera = sdf_map = None
    if (map_path is None) != (intrinsics is None):
        raise InputError("--map and --intrinsics go together", "give both (or neither)")
    if map_path is not None:
        from prism_ros.geometry import PinholeCamera
        from prism_ros.prism.map import GaussianSdfMap

        fx, fy, cx, cy, width, height = parse_floats(intrinsics, 6, "--intrinsics", "525,525,319.5,239.5,640,480")
        if not (fx > 0 and fy > 0 and width >= 1 and height >= 1 and width == int(width) and height == int(height)):
            raise InputError(f"bad --intrinsics '{intrinsics}'", "positive focal lengths, whole width and height")
        camera = PinholeCamera(fx, fy, cx, cy, int(width), int(height))
        T_body_camera = torch.as_tensor(_pose(body_camera, "--body-camera"))
        sdf_map = GaussianSdfMap.load(map_path)
    state = GaussianState.initial(T0, pose_std=(pose_std,) * 6, velocity_std=(velocity_std,) * 6,
                                  velocity=list(v) + [0.0] * (6 - len(v)))
    started = time.perf_counter()
    rollouts = sample_rollouts(transition, state, controls, horizon, step, samples,
                               torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    depth = None
    if sdf_map is not None:
        from prism_ros.dynamics.rollout import predicted_depth

        index = np.unique(np.round(np.linspace(0, rollouts.steps, depth_views + 1)[1:]).astype(int))
        depth = (rollouts.times[index].numpy(), predicted_depth(sdf_map, rollouts.mean_poses[index], T_body_camera,
                                                                camera).numpy())
    files = save_rollouts(rollouts, out, depth)
    save_plot(rollouts, out / "rollouts.png", plane, f"{name}, {samples} samples")
    typer.echo(f"{name}: {rollouts.summary_line()}; {seconds * 1e3:.0f} ms -> {out} ({len(files) + 1} files)")
