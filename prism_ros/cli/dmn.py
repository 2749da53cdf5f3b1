"""`prism-ros dmn ...`: generate Rooms/Mazes data, train and evaluate the DMN methods, print Table 1, plot.

Mounted by :mod:`prism_ros.cli.main` (``app.add_typer(dmn_app, name="dmn")``); torch is imported when a command
runs. Bad input is one line with exit code 2.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_ros.errors import InputError, reports_input_errors
from prism_ros.threads import use_cpu_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DMN sparse visual localization: procedural Rooms/Mazes, training, Table 1.")

WEIGHTS = Path(__file__).resolve().parents[1] / "dmn" / "weights"  # shipped: weights/<domain>/<method>.pt
LEARNED = ("pf-dmn", "regr-dmn", "pf-image", "regr-image", "pf-vector", "regr-vector")
TABLE_ROWS = (("View-embedding", "PF (DMN)", "pf-dmn"), ("View-embedding", "Regression", "regr-dmn"),
              ("Latent image", "PF", "pf-image"), ("Latent image", "Regression", "regr-image"),
              ("Latent vector", "PF", "pf-vector"), ("Latent vector", "Regression", "regr-vector"),
              ("Closest context", "", "closest-context"), ("Uninformed estimate", "", "uninformed"))
# The paper's Table 1 (sequential, one-step success, %) per domain in TABLE_ROWS order, as the text of the paper
# in ../shared/papers gives it (column by column: Rooms sequential, Rooms one-step, Mazes sequential, one-step)
PAPER_TABLE1 = {"rooms": ((95.6, 93.5), (97.2, 60.5), (94.0, 90.5), (9.6, 5.1), (92.9, 88.1), (9.8, 5.6),
                          (11.0, 11.4), (1.7, 2.9)),
                "mazes": ((75.9, 27.0), (39.9, 19.0), (69.4, 21.1), (10.1, 5.5), (40.4, 13.2), (16.8, 7.3),
                          (39.3, 34.5), (3.3, 3.7))}


def _setup(threads: int, domain: str) -> None:
    from prism_ros.dmn.environments import domain_config

    domain_config(domain)  # InputError for an unknown domain
    use_cpu_threads(threads)


def weights_path(domain: str, method: str, folder: Path | None = None) -> Path:
    return (folder or WEIGHTS) / domain / f"{method}.pt"


def _method(domain: str, method: str, folder: Path | None):
    """A learned method from its weights file, or a parameter-free baseline."""
    from prism_ros.dmn.model import build_method

    if method not in LEARNED:
        return build_method(method), None
    path = weights_path(domain, method, folder)
    if not path.is_file():
        return None, None
    from prism_ros.dmn.training import load_method

    return load_method(path)


@app.command("generate")
@reports_input_errors
def generate_command(
    domain: Annotated[str, typer.Option(help="rooms or mazes.")],
    out: Annotated[Path, typer.Option(help="Data set file to write (.pt).")],
    environments: Annotated[int, typer.Option(min=1, help="Number of environments.")] = 1000,
    split: Annotated[str, typer.Option(help="train, val or test (disjoint seed ranges).")] = "train",
    start: Annotated[int, typer.Option(min=0, help="First seed offset within the split.")] = 0,
    views: Annotated[Optional[int], typer.Option(help="Views per environment (default: rooms 10, mazes 300).")] = None,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 32,
    threads: int = 1,
):
    """Render a data set of environments (images + normalised poses) from a seed split.

    Example: prism-ros dmn generate --domain rooms --environments 10000 --out rooms_train.pt
    """
    from prism_ros.dmn.environments import generate, save_dataset, split_seeds

    _setup(threads, domain)
    started = time.perf_counter()
    data = generate(domain, split_seeds(split, environments, start), views=views, image_size=image_size)
    seconds = time.perf_counter() - started
    save_dataset(data, out)
    count = data["poses"].shape[0] * data["poses"].shape[1]
    typer.echo(f"{domain}/{split}: {data['poses'].shape[0]} environments, {count} views at {image_size}x{image_size} "
               f"in {seconds:.1f} s ({count / seconds:.0f} views/s) -> {out}")


@app.command("train")
@reports_input_errors
def train_command(
    domain: Annotated[str, typer.Option(help="rooms or mazes.")],
    method: Annotated[str, typer.Option(help=f"one of {', '.join(LEARNED)}, or 'all'.")] = "pf-dmn",
    minutes: Annotated[float,
                       typer.Option(help="Wall-clock budget per method (0: until --steps or early stop).")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, help="Maximum training steps.")] = 20000,
    batch: Annotated[int, typer.Option(min=1, help="Episodes per step.")] = 32,
    learning_rate: float = 1e-3,
    pose_weight: Annotated[float, typer.Option(min=0.0, help="The paper's pose loss (tracking setting).")] = 1.0,
    ranking_weight: Annotated[float, typer.Option(min=0.0, help="The truth against its quarter turns about the "
                                                  "room's centre and 12 uniform poses (particle filters).")] = 0.0,
    ranking_near: Annotated[int, typer.Option(min=0, help="Ranking negatives near the truth but outside the "
                                              "success radius (moved, or turned in place).")] = 0,
    discrimination_weight: Annotated[float, typer.Option(min=0.0, help="The truth against 63 uniform poses "
                                                         "(particle filters).")] = 1.0,
    patience: Annotated[int, typer.Option(min=0, help="Validations without improvement before stopping (0: "
                                          "never).")] = 12,
    validate_every: Annotated[int, typer.Option(min=1, help="Steps between validations.")] = 250,
    init: Annotated[Optional[Path], typer.Option(help="Start from these weights (an earlier stage of the same "
                                                 "method and domain).")] = None,
    data: Annotated[Optional[Path],
                    typer.Option(help="Train on a generated data set instead of fresh environments.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Weights folder (default: the package's weights/).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: int = 2,
    seed: int = 0,
):
    """Train end to end on the pose loss in the tracking setting (t = 1, Nc = 4, K = 32), plus the ranking and
    discrimination terms of the particle filters; keeps the weights of the best validation loss and records the
    command, steps, time and validation history in the file.

    Example: prism-ros dmn train --domain rooms --method pf-dmn --minutes 30
    Ranking first: prism-ros dmn train --domain rooms --pose-weight 0 --discrimination-weight 0 --ranking-weight 1
    --patience 0 --steps 20000
    """
    from prism_ros.dmn.training import StoredEpisodes, TrainConfig, save_method, train

    _setup(threads, domain)
    device = _device(device)
    names = LEARNED if method == "all" else (method,)
    for name in names:
        if name not in LEARNED:
            raise InputError(f"unknown or untrainable method {name!r}", f"use one of {', '.join(LEARNED)} or all")
    config = TrainConfig(steps=steps, batch=batch, learning_rate=learning_rate, minutes=minutes, seed=seed,
                         pose_weight=pose_weight, ranking_weight=ranking_weight, ranking_near=ranking_near,
                         discrimination_weight=discrimination_weight, patience=patience, validate_every=validate_every)
    source = StoredEpisodes(_training_data(data, domain), seed) if data else None
    command = "prism-ros " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    start = _initial_weights(init, names, domain)
    for name in names:
        result = train(name, domain, config, source=source, device=device, init=start and start["state"])
        path = save_method(result, name, domain, result.method.config, config, weights_path(domain, name, out), command,
                           init=start and {k: v for k, v in start.items() if k != "state"})
        ranks = (f"; last rotation accuracy {result.history[-1][3]:.0%}, truth beats {result.history[-1][4]:.0%} of "
                 f"uniform poses" if result.history and len(result.history[-1]) > 3 else "")
        typer.echo(f"{name} ({domain}): {result.steps} steps in {result.seconds / 60:.1f} min, best validation loss "
                   f"{result.best_validation:.4f}{ranks} -> {path}")


def _initial_weights(path: Path | None, names: tuple, domain: str) -> dict | None:
    """The record of ``dmn train --init``: weights of the one method being trained, on its domain."""
    if path is None:
        return None
    from prism_ros.dmn.training import load_method

    _, record = load_method(path)
    if len(names) != 1 or record["method"] != names[0] or record["domain"] != domain:
        raise InputError(f"--init holds {record['method']} weights for {record['domain']}, training was asked for "
                         f"{', '.join(names)} on {domain}", f"train --method {record['method']} --domain "
                         f"{record['domain']}, or drop --init", path)
    return record


def _training_data(path: Path, domain: str) -> dict:
    """The data set of ``dmn train --data``: one of ``domain`` at the models' image size (InputError otherwise)."""
    from prism_ros.dmn.environments import load_dataset
    from prism_ros.dmn.model import DmnConfig

    data, size = load_dataset(path), DmnConfig().image_size
    if data["domain"] != domain:
        raise InputError(f"the data set holds {data['domain']} environments, training was asked for {domain}",
                         f"train with --domain {data['domain']}, or generate a {domain} data set", path)
    if data["image_size"] != size:
        raise InputError(f"the data set's images are {data['image_size']} px, the models take {size} px",
                         f"generate it again with --image-size {size}", path)
    return data


def _device(device: str) -> str:
    """``--device`` as a torch device name (auto: CUDA when available; InputError for CUDA without one). Imported
    here, not at the top: prism_ros.prism.config pulls in torch, which only a running command needs."""
    from prism_ros.prism.config import resolve_device

    return resolve_device(device)


@app.command("eval")
@reports_input_errors
def eval_command(
    domain: Annotated[str, typer.Option(help="rooms or mazes.")],
    method: Annotated[str, typer.Option(help="A method name (weights from --weights).")] = "pf-dmn",
    setting: Annotated[str, typer.Option(help="sequential, one_step or tracking.")] = "sequential",
    episodes: Annotated[int, typer.Option(min=1, help="Held-out test episodes.")] = 500,
    contexts: Annotated[int, typer.Option(min=1, help="Context views per episode.")] = 4,
    weights: Annotated[Optional[Path], typer.Option(help="Weights folder (default: the package's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: int = 2,
):
    """Evaluate one method in one setting on held-out test environments.

    Example: prism-ros dmn eval --domain rooms --method pf-dmn --setting one_step --episodes 300
    """
    from prism_ros.dmn.training import SETTINGS, evaluate

    _setup(threads, domain)
    if setting not in SETTINGS:
        raise InputError(f"unknown setting {setting!r}", f"use one of {', '.join(SETTINGS)}")
    model, _ = _method(domain, method, weights)
    if model is None:
        raise InputError(f"no weights for {method} on {domain}", f"train them: prism-ros dmn train --domain {domain} "
                         f"--method {method}", weights_path(domain, method, weights))
    result = evaluate(model, domain, setting, episodes, contexts, model.config if hasattr(model, "config") else
                      _default_config(), progress=True, device=_device(device))
    typer.echo(json.dumps(result))


def _default_config():
    from prism_ros.dmn.model import DmnConfig

    return DmnConfig()


@app.command("table")
@reports_input_errors
def table_command(
    domain: Annotated[str, typer.Option(help="rooms or mazes.")],
    episodes: Annotated[int, typer.Option(min=1, help="Held-out test episodes per setting.")] = 500,
    contexts: Annotated[int, typer.Option(min=1, help="Context views per episode.")] = 4,
    weights: Annotated[Optional[Path], typer.Option(help="Weights folder (default: the package's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the numbers as JSON.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: int = 2,
):
    """Table 1 of the paper for one domain: sequential (t = 5) and one-step (t = 1) global localization success
    rate (squared x-y error < 0.2, and with half the squared yaw error in radians added) next to the paper's,
    tracking MSE (t = 5) and the training cost of the weights, every method on the same held-out episodes.

    Example: prism-ros dmn table --domain rooms --episodes 500
    """
    from prism_ros.dmn.training import evaluate

    _setup(threads, domain)
    device = _device(device)
    rows = []
    for (map_name, algorithm, name), paper in zip(TABLE_ROWS, PAPER_TABLE1[domain]):
        model, record = _method(domain, name, weights)
        row = {"map": map_name, "algorithm": algorithm, "method": name, "trained": record is not None,
               "paper": {"sequential": paper[0], "one_step": paper[1]}}
        if model is not None:
            config = getattr(model, "config", _default_config())
            for setting in ("sequential", "one_step", "tracking"):
                row[setting] = evaluate(model, domain, setting, episodes, contexts, config, progress=False,
                                        device=device)
            if record is not None:
                row["training"] = {"steps": record.get("total_steps", record["steps"]),
                                   "seconds": record.get("total_seconds", record["seconds"]),
                                   **{k: record.get(k) for k in ("best_validation", "command", "init_command")}}
        rows.append(row)
        typer.echo(format_row(row), err=True)
    typer.echo(format_table(domain, rows, episodes, contexts))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        table = {"domain": domain, "episodes": episodes, "contexts": contexts, "rows": rows}
        out.write_text(json.dumps(table, indent=2))


def format_row(row: dict) -> str:
    label = f"{row['map']} {row['algorithm']}".strip()
    paper = row.get("paper", {})
    if "sequential" not in row:
        return (f"{label:<30} {'not trained':>15} {paper.get('sequential', float('nan')):>6.1f}%  {'':>15} "
                f"{paper.get('one_step', float('nan')):>6.1f}%")
    cells = []
    for setting in ("sequential", "one_step"):
        result = row[setting]
        cells.append(f"{100 * result['success_rate']:>6.1f}% {100 * result['success_rate_pose']:>6.1f}% "
                     f"{paper.get(setting, float('nan')):>6.1f}%")
    training = row.get("training")
    cost = f"{training['seconds'] / 60:.0f} min, {training['steps']} steps" if training else "-"
    return f"{label:<30} {cells[0]}  {cells[1]}  {row['tracking']['mse_xy']:>9.4f}  {cost}"


def format_table(domain: str, rows: list[dict], episodes: int, contexts: int) -> str:
    header = (f"DMN Table 1 ({domain}; {episodes} held-out episodes per setting, {contexts} contexts). Success: "
              f"x-y = squared x-y error < 0.2; +yaw = with 0.5 (yaw error, rad)^2 added; paper = its Table 1\n"
              f"{'':<30} {'sequential t=5':^23}  {'one-step t=1':^23}\n"
              f"{'map / algorithm':<30} {'x-y':>7} {'+yaw':>7} {'paper':>7}  {'x-y':>7} {'+yaw':>7} {'paper':>7}  "
              f"{'track MSE':>9}  training\n" + "-" * 110)
    return "\n".join([header, *map(format_row, rows)])


@app.command("plot")
@reports_input_errors
def plot_command(
    domain: Annotated[str, typer.Option(help="rooms or mazes.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    method: Annotated[str, typer.Option(help="A method name (weights from --weights).")] = "pf-dmn",
    episode: Annotated[int, typer.Option(min=0, help="Which held-out test environment.")] = 0,
    weights: Annotated[Optional[Path], typer.Option(help="Weights folder (default: the package's).")] = None,
    threads: int = 2,
):
    """An example trajectory of sequential global localization: particles per step, contexts, estimate.

    Example: prism-ros dmn plot --domain rooms --out rooms.png
    """
    from prism_ros.dmn.plot import plot_episode

    _setup(threads, domain)
    model, _ = _method(domain, method, weights)
    if model is None:
        raise InputError(f"no weights for {method} on {domain}", f"train them: prism-ros dmn train --domain {domain} "
                         f"--method {method}", weights_path(domain, method, weights))
    typer.echo(f"wrote {plot_episode(model, domain, out, episode=episode, title='')}")
