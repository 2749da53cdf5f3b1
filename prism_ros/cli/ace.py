"""`prism-ros ace ...`: map a posed sequence, relocalize frames against a map, pretrain the encoder.

Mounted by :mod:`prism_ros.cli.main` with ``app.add_typer(ace_app, name="ace")``. Bad input raises
:class:`~prism_ros.errors.InputError`, printed as one line with exit code 2.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from prism_ros.errors import InputError, reports_input_errors
from prism_ros.threads import use_cpu_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ACE relocalization: map a scene in minutes, relocalize single images in it.")
console = Console(stderr=True)


def resolve_device(name: str) -> str:
    """:func:`prism_ros.prism.config.resolve_device`, imported when a command runs (it pulls in torch; --help stays
    quick)."""
    from prism_ros.prism.config import resolve_device as resolve

    return resolve(name)


@app.command("map")
@reports_input_errors
def map_command(
    dataset: Annotated[Path, typer.Option(help="Posed dataset folder (any format open_dataset reads).")],
    out: Annotated[Path, typer.Option(help="Map file to write (.pt).")],
    frames: Annotated[Optional[str], typer.Option(help="Mapping frames A:B[:S].")] = None,
    depth: Annotated[bool, typer.Option("--depth/--no-depth", help="Use depth (RGB-D term) when present.")] = True,
    recipe: Annotated[str, typer.Option(help="cpu, gpu (ACE paper) or test.")] = "cpu",
    steps: Annotated[Optional[int], typer.Option(help="Override the recipe's head steps.")] = None,
    chunks: Annotated[int, typer.Option(min=1, help="Ensemble: k-means chunks of camera positions.")] = 1,
    encoder: Annotated[Optional[Path], typer.Option(help="Encoder weights (default: shipped).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch default).")] = 2,
    seed: int = 0,
    features_step: Annotated[int, typer.Option(min=0, help="With depth: every k-th frame a SIFT keyframe of the "
                                               "second opinion, plus the depth check's map cloud (0: neither).")] = 5,
):
    """Train a scene map (ACE head) from posed images; prints the mapping time.

    Example: prism-ros ace map --dataset ../shared/data/7scenes_redkitchen_seq_0000_0399 --frames 0:300
    --out kitchen.ace
    """
    from prism_ros.ace.encoder import load_encoder
    from prism_ros.ace.mapfile import save_map
    from prism_ros.ace.mapping import get_recipe, map_scene
    from prism_ros.datasets import open_dataset

    use_cpu_threads(threads)
    dev = resolve_device(device)
    chosen = get_recipe(recipe, steps=steps)
    net = load_encoder(encoder, dev)
    data = open_dataset(dataset, frames=frames)
    start = time.perf_counter()
    ace_map = map_scene(data, net, chosen, use_depth=depth, chunks=chunks, seed=seed, device=dev, progress=True,
                        feature_step=features_step)
    seconds = time.perf_counter() - start
    save_map(ace_map, out)
    extras = "no depth check or second opinion"
    if ace_map.cloud is not None:
        extras = (f"depth check on {len(ace_map.cloud)} map points, second opinion from "
                  f"{len(ace_map.features)} SIFT keyframes ({ace_map.meta['check_maps_seconds']:.1f} s)")
    typer.echo(f"mapped {ace_map.meta['frames']} frames in {seconds:.1f} s (recipe {chosen.name}, "
               f"{len(ace_map.heads)} head(s), depth {'on' if ace_map.meta['depth'] else 'off'}, device {dev}; "
               f"{extras}) -> {out}")


@app.command("localize")
@reports_input_errors
def localize_command(
    map_file: Annotated[Path, typer.Option("--map", help="Map file from `prism-ros ace map`.")],
    dataset: Annotated[Path, typer.Option(help="Query dataset folder.")],
    out: Annotated[Path, typer.Option(help="TUM file of the accepted poses.")],
    frames: Annotated[Optional[str], typer.Option(help="Query frames A:B[:S].")] = None,
    min_inliers: Annotated[int, typer.Option(help="Reject poses with fewer inliers.")] = 50,
    solver: Annotated[str, typer.Option(help="p3p (ACE: P3P hypotheses + soft inliers) or usac (MAGSAC++).")] = "p3p",
    encoder: Annotated[Optional[Path],
                       typer.Option(help="Encoder weights used for mapping (default: shipped).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch default).")] = 2,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Keep a pose only if the query's depth lies on "
                                        "the map's surfaces (maps and queries with depth).")] = True,
    second_opinion: Annotated[bool, typer.Option("--second-opinion/--no-second-opinion",
                                                 help="Ask the map's SIFT keyframes when ACE's pose fails.")] = True,
):
    """Relocalize every frame; writes accepted poses (TUM) and, with ground truth, prints the accuracy.

    Example: prism-ros ace localize --map kitchen.ace --dataset ../shared/data/7scenes_redkitchen_seq_0000_0399
    --frames 300:400 --out kitchen_queries.tum
    """
    import numpy as np

    from prism_ros.ace.encoder import load_encoder
    from prism_ros.ace.hybrid import answer_dataset
    from prism_ros.ace.mapfile import load_map
    from prism_ros.ace.relocalize import accuracy_summary
    from prism_ros.datasets import open_dataset
    from prism_ros.evaluation.trajectory_io import write_tum

    if solver not in ("p3p", "usac"):
        raise InputError(f"unknown solver {solver!r}", "use --solver p3p or --solver usac")
    use_cpu_threads(threads)
    dev = resolve_device(device)
    net = load_encoder(encoder, dev)
    ace_map = load_map(map_file, net.encoder_id, dev)
    data = open_dataset(dataset, frames=frames)
    start = time.perf_counter()
    rows = answer_dataset(ace_map, net, data, True, check, second_opinion, min_inliers=min_inliers, solver=solver)
    seconds = time.perf_counter() - start
    accepted = [(t, r.pose) for t, _, r in rows if r.accepted]
    sources = [r.source + (" (depth-checked)" if r.verified else "") for _, _, r in rows if r.accepted]
    if accepted:
        write_tum(out, np.array([t for t, _ in accepted]), np.stack([p for _, p in accepted]),
                  header=f"ACE relocalization of {dataset} with {map_file}")
    typer.echo(f"{len(accepted)}/{len(rows)} frames relocalized ({seconds / max(len(rows), 1) * 1000:.0f} ms each)"
               + (f" -> {out}" if accepted else " (nothing written)"))
    if accepted:
        typer.echo("answered by: " + ", ".join(f"{name} {sources.count(name)}" for name in sorted(set(sources))))
    if any(T is not None for _, T, _ in rows):
        s = accuracy_summary([r for _, _, r in rows], [T for _, T, _ in rows])
        typer.echo(f"within 5 cm / 5 deg: {100 * s['within_5cm_5deg']:.1f} %   within 10 cm / 10 deg: "
                   f"{100 * s['within_10cm_10deg']:.1f} %   median error: {100 * s['median_translation_m']:.1f} cm, "
                   f"{s['median_rotation_deg']:.2f} deg (rejected frames count as failures)")


@app.command("pretrain-encoder")
@reports_input_errors
def pretrain_command(
    out: Annotated[Path, typer.Option(help="Encoder weights file to write (fp16).")],
    scenes: Annotated[int, typer.Option(min=1, help="Procedural scenes (one head each).")] = 16,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (upper bound).")] = 8000,
    minutes: Annotated[float, typer.Option(help="Wall-time budget, rendering included (0: none).")] = 22.0,
    real: Annotated[Optional[list[Path]], typer.Option(help="Real posed RGB-D sequences to add (repeatable).")] = None,
    config: Annotated[str, typer.Option(help="Encoder architecture: ace-lite or ace.")] = "ace-lite",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch default).")] = 2,
    seed: int = 0,
):
    """Train the scene-agnostic encoder ACE-style on procedural scenes (+ real sequences).

    Example: prism-ros ace pretrain-encoder --out my_encoder.pt --minutes 60 --device cuda
    """
    from prism_ros.ace.encoder import CONFIGS
    from prism_ros.ace.pretrain import PretrainConfig, pretrain_encoder

    if config not in CONFIGS:
        raise InputError(f"unknown encoder configuration {config!r}", f"use one of {sorted(CONFIGS)}")
    for path in real or []:
        if not path.exists():
            raise InputError("real sequence not found", "give an existing dataset folder", path)
    use_cpu_threads(threads)
    cfg = PretrainConfig(scenes=scenes, steps=steps, minutes=minutes or None, seed=seed)
    encoder = pretrain_encoder(out, cfg, [str(p) for p in real or []], CONFIGS[config], resolve_device(device))
    typer.echo(f"encoder {encoder.encoder_id} -> {out}")
