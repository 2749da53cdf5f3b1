"""`prism-ros dynamics ...`: train the residual transition (VSSM-LM) on IMU + ground truth, and evaluate it.

Mounted by :mod:`prism_ros.cli` (``app.add_typer(dynamics_app, name="dynamics")``); torch is imported when a
command runs. Bad input is one line with exit code 2.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_ros.errors import InputError, reports_input_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learned residual transition: train on IMU + ground truth, multi-step evaluation.")

SPLITS = ("auto", "held-out", "all")


def _load(dataset: Path, fmt: str, seconds: str | None, imu: Path | None, groundtruth: Path | None):
    from prism_ros.dynamics_learning import load_motion_data

    data = load_motion_data(dataset, fmt, imu=imu, groundtruth=groundtruth)
    if seconds is None:
        return data
    try:
        start, end = (float(x) if x else None for x in seconds.split(":"))
    except ValueError:
        raise InputError(f"bad --seconds '{seconds}'", "use START:END in seconds from the first IMU sample, "
                         "e.g. 0:40") from None
    return data.slice(start or 0.0, end if end is not None else float("inf"))


def _threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


@app.command("train")
@reports_input_errors
def train_command(
    dataset: Annotated[Path, typer.Option(help="EuRoC/ASL folder (IMU csv + ground truth).")],
    out: Annotated[Path, typer.Option(help="Model file to write (.pt).")],
    fmt: Annotated[str, typer.Option("--format", help="Dataset format: euroc.")] = "euroc",
    steps: Annotated[int, typer.Option(min=0, help="Adam steps.")] = 300,
    horizon: Annotated[float, typer.Option(min=0.01, help="Rollout horizon (s).")] = 1.0,
    step: Annotated[float, typer.Option(min=0.001, help="Transition step (s), a whole number of IMU periods.")] = 0.05,
    held_out: Annotated[float, typer.Option(min=0.05, max=0.9, help="Last fraction kept for evaluation.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Initialisation and batch seed.")] = 0,
    calibrate_still: Annotated[bool, typer.Option(help="Give the engineered model the biases of the still start "
                                                  "(default: the config's zero biases).")] = False,
    seconds: Annotated[Optional[str], typer.Option(help="Use only START:END s from the first IMU sample.")] = None,
    imu: Annotated[Optional[Path], typer.Option(help="IMU csv (default: found in --dataset).")] = None,
    groundtruth: Annotated[Optional[Path], typer.Option(help="Ground truth, TUM or ASL csv.")] = None,
    threads: int = 1,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Train the residual MLP (mean + std heads) on the first part of a sequence; print held-out figures."""
    _threads(threads)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from prism_ros.dynamics import DynamicsConfig
    from prism_ros.dynamics_learning import (TrainingConfig, compare, format_table, save_residual, still_biases,
                                             train_residual)

    data = _load(dataset, fmt, seconds, imu, groundtruth)
    dynamics = DynamicsConfig(model="imu", residual_mlp=True)
    if calibrate_still:
        bias_gyro, bias_accel = still_biases(data)
        dynamics = dataclasses.replace(dynamics, bias_gyro=tuple(bias_gyro.tolist()),
                                       bias_accel=tuple(bias_accel.tolist()))
    config = TrainingConfig(step=step, horizon=horizon, held_out=held_out, steps=steps, seed=seed)
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
    typer.echo(f"{result.extra['train_windows']} training / {result.extra['held_out_windows']} held-out windows, "
               f"{steps} steps in {result.seconds:.1f} s; held-out NLL {result.held_out_before:.2f} -> "
               f"{result.held_out_after:.2f} -> {out}")
    typer.echo(f"held-out (last {held_out:.0%}, {int(results['learned']['windows'])} windows of "
               f"{config.rollout_steps * config.step:g} s):")
    typer.echo(format_table(results))


@app.command("eval")
@reports_input_errors
def eval_command(
    model: Annotated[Path, typer.Option(help="Model file written by `prism-ros dynamics train`.")],
    dataset: Annotated[Path, typer.Option(help="EuRoC/ASL folder (IMU csv + ground truth).")],
    fmt: Annotated[str, typer.Option("--format", help="Dataset format: euroc.")] = "euroc",
    split: Annotated[str, typer.Option(help="auto (held-out part when the data overlap the training sequence, "
                                       "else all), held-out or all.")] = "auto",
    seconds: Annotated[Optional[str], typer.Option(help="Use only START:END s from the first IMU sample.")] = None,
    imu: Annotated[Optional[Path], typer.Option(help="IMU csv (default: found in --dataset).")] = None,
    groundtruth: Annotated[Optional[Path], typer.Option(help="Ground truth, TUM or ASL csv.")] = None,
    threads: int = 1,
):
    """Multi-step position error at 0.5 s and 1 s, engineered Euler vs learned, and the learned 95 % coverage."""
    _threads(threads)
    from prism_ros.dynamics_learning import compare, format_table, load_residual

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
