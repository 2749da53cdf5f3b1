"""`prism-ros replay BAG --preset P`: the PRISM node on a bag, as it runs on the robot, with the outputs of
`prism-ros run`.

The bag player and ``prism_node`` run as separate processes over real DDS (by default on a private random
domain, loopback and shared memory only); this process hosts a small monitor node that receives the node's
``~/odometry`` (pose, covariance, twist), ``~/frame_timing`` and ``/diagnostics``, shows progress, and at
the end calls ``~/save_map`` (map file + mesh). Every input is reliable and the node's frame queue holds
the whole bag, so no frame is dropped for lack of time: the replay measures the node, not the machine's
load. The received messages are converted back to the filter's conventions (camera pose, left se(3)
covariance, [world velocity of the body, body rates]) and written with the offline runner's writers:
``trajectory.tum``, ``covariance.npz``, ``timing.csv``, ``mesh.ply``, ``summary.json``, ``trajectory.png``
(with ground truth), plus ``map.pt`` (load it with ``~/load_map``) and the node's log.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from prism_ros.errors import InputError
from prism_ros.launch_graph.graph import NodeSpec, bag_player_spec, config_path, prism_node_spec, share_dir
from prism_ros.loopback import apply_loopback_env, random_domain_id
from prism_ros.nodes.replay_monitor import NOT_STAGES, ReplayMonitor, estimates_from_messages


@dataclass(frozen=True)
class ReplayPreset:
    """A bag layout: the node's sensor preset and the bag reader's preset (ground truth, frame count)."""

    sensor: str  # config/sensors/<sensor>.yaml
    bag_reader: str | None  # prism_ros.datasets.rosbag.PRESETS key, None: no reader preset


PRESETS = {
    "tum": ReplayPreset("tum", "tum"),
    "euroc": ReplayPreset("euroc", "euroc"),
    "blackbird": ReplayPreset("blackbird", None),
    "synthetic": ReplayPreset("synthetic", "prism"),
}
NODE_START_TIMEOUT_S = 90.0  # torch import and filter construction on a loaded 2-core machine
IDLE_DONE_S = 5.0  # after the bag ended: nothing processed for this long = the node has finished


def node_parameter_values(parameter_files: Sequence[Path], overrides: dict) -> dict:
    """The node's parameter values as rcl resolves them: declared defaults, then each file's ``/**`` and
    ``prism_node`` sections in order, then ``overrides``."""
    from prism_ros.nodes.prism_node import NODE_NAME
    from prism_ros.nodes.prism_parameters import PARAMETERS

    values = {name: spec.default for name, spec in PARAMETERS.items()}
    for path in parameter_files:
        document = yaml.safe_load(Path(path).read_text()) or {}
        for section in ("/**", NODE_NAME, f"/{NODE_NAME}"):
            values.update((document.get(section) or {}).get("ros__parameters") or {})
    values.update(overrides)
    return values


def count_messages(bag: Path, topic: str) -> int:
    """Messages on ``topic`` in the bag (from its index, nothing is read)."""
    from rosbags.highlevel import AnyReader

    try:
        with AnyReader([Path(bag)]) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic == topic)
    except Exception as error:
        raise InputError(f"cannot read the bag ({error})", "give a rosbag2 folder (mcap or sqlite3) or a "
                         "ROS 1 .bag file", bag) from None


def bag_ground_truth(bag: Path, preset: ReplayPreset):
    """(stamps, T_world_camera) from the bag's ground-truth topic, or None."""
    if preset.bag_reader is None:
        return None
    from prism_ros.datasets import open_dataset

    try:
        return open_dataset(bag, fmt="rosbag", preset=preset.bag_reader).ground_truth()
    except InputError:
        return None


def replay_bag(bag: Path, preset: str, out: Path, rate: float = 1.0, config: str | Path | None = None,
               ground_truth: Path | None = None, extra_nodes: Sequence[NodeSpec] = (), visualize: bool = False,
               progress: bool = True, loopback: bool = True, domain_id: int | None = None,
               node_overrides: dict | None = None) -> dict:
    """Play ``bag`` into prism_node (separate processes, real DDS) and write the offline runner's outputs
    to ``out``; returns the summary. ``extra_nodes`` join the graph (e.g. a baseline and a recorder) and the
    player waits for them too. ``visualize`` keeps the live mesh/cloud publishing (for RViz)."""
    from prism_ros.launch_graph.launcher import start_graph

    bag, out = Path(bag), Path(out)
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", f"use --preset one of {', '.join(PRESETS)}")
    if not bag.exists():
        raise InputError("bag not found", "give the rosbag2 folder or .bag file", bag)
    if rate <= 0:
        raise InputError(f"rate {rate} is not positive", "use --rate 1 (real time) or a positive factor")
    choice = PRESETS[preset]
    share = share_dir()
    node_config = config_path(config or "prism.yaml", share)
    sensor_config = share / f"config/sensors/{choice.sensor}.yaml"
    for path in (node_config, sensor_config):
        if not path.is_file():
            raise InputError("parameter file not found", "give --config an existing prism_node YAML", path)
    values = node_parameter_values([node_config, sensor_config], {})
    frames_in_bag = count_messages(bag, values["rgb_topic"])
    if frames_in_bag == 0:
        raise InputError(f"the bag has no messages on {values['rgb_topic']} (the colour topic of preset "
                         f"{preset!r})", "pick the preset that matches the bag (`prism-ros info BAG` lists "
                         "its topics), or remap with --config", bag)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("map.pt", "map.ply", "mesh.ply", "trajectory.png"):
        (out / stale).unlink(missing_ok=True)
    # the map frame of `prism-ros run` (the first camera pose) and no levelling restart, which would change the
    # map frame mid-trajectory
    overrides = {"use_sim_time": True, "frame_queue": frames_in_bag + 1, "queue_size": 100, "level_map": False,
                 "map_origin": "camera",
                 "map_path": str((out / "map.pt").resolve()), "diagnostics_period": 0.25,
                 **{f"{role}_qos": "reliable" for role in ("rgb", "depth", "right", "camera_info", "imu", "control")},
                 **({} if visualize else {"map_publish_period": 1e6}), **(node_overrides or {})}
    values.update(overrides)
    node_spec = prism_node_spec(node_config, sensor_config, use_sim_time=True)
    node_spec = replace(node_spec, parameters={**node_spec.parameters, **overrides})
    player = bag_player_spec(str(bag.resolve()), rate=rate, qos="reliable",
                             wait_for_subscribers=1 + len(extra_nodes), quiet=True)

    domain_id = random_domain_id() if domain_id is None else domain_id
    env = apply_loopback_env(domain_id) if loopback else {**os.environ, "ROS_DOMAIN_ID": str(domain_id)}
    logs = {name: (out / f"{name}.log").open("w") for name in ("prism_node", "bag_player", "other_nodes")}
    monitor = ReplayMonitor(domain_id)
    started = time.monotonic()
    graph = player_graph = others = None
    try:
        graph = start_graph([node_spec], domain_id=domain_id, env=env,
                            stdout=logs["prism_node"], stderr=logs["prism_node"])
        others = start_graph(extra_nodes, domain_id=domain_id, env=env,
                             stdout=logs["other_nodes"], stderr=logs["other_nodes"])
        _wait_for_node(monitor, graph, out / "prism_node.log")
        player_graph = start_graph([player], domain_id=domain_id, env=env,
                                   stdout=logs["bag_player"], stderr=logs["bag_player"])
        _follow(monitor, graph, player_graph, frames_in_bag, progress)
        saved, message = monitor.call("save_map", timeout=300.0)
        summary_node = dict(monitor.diagnostics)
    finally:
        codes = [code for g, grace in ((player_graph, 5.0), (graph, 10.0), (others, 5.0)) if g
                 for code in g.stop(grace=grace)]
        monitor.spin(0.2)
        odometry, poses, timing = list(monitor.odometry), dict(monitor.poses), dict(monitor.timing)
        monitor.close()
        for handle in logs.values():
            handle.close()
    wall = time.monotonic() - started
    if not odometry:
        raise InputError(f"prism_node published no pose ({summary_node.get('frames_received', 0)} frame sets "
                         f"received, {summary_node.get('bad_input_total', 0)} bad inputs; exit codes {codes})",
                         f"read {out / 'prism_node.log'}; check that --preset matches the bag", bag)
    estimates = estimates_from_messages(odometry, timing, values, poses)
    return write_replay_outputs(out, estimates, timing, summary_node, frames_in_bag, wall, codes,
                                (saved, message), ground_truth, bag, choice)


def _wait_for_node(monitor: ReplayMonitor, graph, log: Path) -> None:
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while not monitor.node_ready():
        code = graph.nodes[0].process.poll()
        if code is not None:
            tail = log.read_text()[-2000:].strip() if log.is_file() else ""
            raise InputError(f"prism_node exited with code {code} before the bag started: {tail}",
                             "fix the parameters it names (exit code 2: invalid parameters)", log)
        if time.monotonic() > deadline:
            raise InputError(f"prism_node did not come up within {NODE_START_TIMEOUT_S:.0f} s",
                             "check the ROS 2 set-up with `prism-ros doctor`", log)
        monitor.spin(0.1)
    monitor.spin(1.0)  # settle: our subscriptions matched before the first pose


def _follow(monitor: ReplayMonitor, graph, player_graph, frames_in_bag: int, progress: bool) -> None:
    """Spin until the bag has played and the node has worked off its queue; a progress bar of frames."""
    from tqdm import tqdm

    bar = tqdm(total=frames_in_bag, desc="prism_node", unit="frame", disable=not progress)
    player_done_at = last_change = None
    last_mark: tuple = ()
    try:
        while True:
            monitor.spin(0.1)
            done = sum(monitor.count(key) for key in ("frames_processed", "frames_dropped", "frames_superseded"))
            bar.n = min(done, frames_in_bag)
            bar.set_postfix(lost=monitor.count("frames_lost"), bad=monitor.count("bad_input_total"), refresh=False)
            bar.refresh()
            now = time.monotonic()
            progress_mark = (done, monitor.count("frames_received"), monitor.count("bad_input_total"))
            if progress_mark != last_mark:
                last_mark, last_change = progress_mark, now
            if graph.nodes[0].process.poll() is not None:
                raise InputError(f"prism_node exited with code {graph.nodes[0].process.poll()} during the replay",
                                 "read prism_node.log in the output folder")
            if player_done_at is None and player_graph.nodes[0].process.poll() is not None:
                player_done_at = now
            if player_done_at is None or now - player_done_at < 1.0 or monitor.diagnostics_at < player_done_at:
                continue
            # every frame of the bag accounted for; or nothing received, processed or rejected for a while (frames
            # lost on the way). The node's received count lags the player on a loaded machine, so it is no end mark.
            if done >= frames_in_bag or now - last_change > IDLE_DONE_S:
                return
    finally:
        bar.close()


def write_replay_outputs(out: Path, estimates: list, timing: dict, diagnostics: dict, frames_in_bag: int,
                         wall: float, codes: list, saved: tuple[bool, str], ground_truth: Path | None,
                         bag: Path, preset: ReplayPreset) -> dict:
    """The offline runner's files from what the node published; the summary (also summary.json)."""
    from prism_ros.datasets.common import interpolate_poses
    from prism_ros.evaluation.trajectory_io import read_tum
    from prism_ros.prism.pipeline import score, score_map, write_outputs

    write_outputs(out, estimates)
    stats = [timing[stamp] for stamp in sorted(timing)]
    summary = {
        "frames": len(estimates), "frames_in_bag": frames_in_bag,
        "frames_received": int(diagnostics.get("frames_received", 0)),
        "lost_frames": int(sum(not e.tracking_ok for e in estimates)),
        "dropped_frames": int(diagnostics.get("frames_dropped", 0)),
        "relocalizations": int(diagnostics.get("relocalizations", 0)),
        "superseded_frames": int(diagnostics.get("frames_superseded", 0)),
        "bad_input_total": int(diagnostics.get("bad_input_total", 0)),
        "bad_inputs": {key.removeprefix("bad_input."): int(n) for key, n in diagnostics.items()
                       if key.startswith("bad_input.") and int(n)},
        "median_ms_per_frame": float(np.median([s["step_ms"] for s in stats[1:]] or [np.nan])),
        "median_ms_per_stage": {k[:-3]: float(np.median([s[k] for s in stats[1:] if k in s] or [np.nan]))
                                for k in sorted({k for s in stats for k in s if k.endswith("_ms")} - NOT_STAGES)},
        "median_latency_ms": float(np.median([s["latency_ms"] for s in stats] or [np.nan])),
        "wall_s": wall, "device": diagnostics.get("device"),
        "map_blocks": int(diagnostics.get("map_blocks", 0)),
        "map_memory_bytes": int(float(diagnostics.get("map_memory_mb", 0.0)) * 1e6),
        "node_exit_codes": codes, "save_map": saved[1],
    }
    if saved[0] and (out / "map.ply").is_file():
        shutil.move(out / "map.ply", out / "mesh.ply")
        summary["mesh"] = {"path": str(out / "mesh.ply")}
    gt = read_tum(ground_truth) if ground_truth is not None else bag_ground_truth(bag, preset)
    if gt is not None and len(gt[0]):
        stamps = np.array([e.t for e in estimates])
        truths = interpolate_poses(gt[0], gt[1], stamps)
        kept = [(e, t) for e, t in zip(estimates, truths) if t is not None]
        if len(kept) >= 2:
            summary.update(score(out, [e for e, _ in kept], [t for _, t in kept]))
            scene = _scene_of(bag)
            if scene is not None and saved[0]:
                from prism_ros.prism.map import GaussianSdfMap

                summary["map_error"] = score_map(GaussianSdfMap.load(out / "map.pt"), kept[0][0].T_world_camera,
                                                 kept[0][1], scene.sdf)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _scene_of(bag: Path):
    """The exact scene when the bag sits in a `prism-ros synth` folder (for the map error), else None."""
    from prism_ros.synthetic import read_scene

    folder = bag if bag.is_dir() else bag.parent
    for candidate in (folder, folder.parent):
        try:
            scene = read_scene(candidate)
        except InputError:
            scene = None
        if scene is not None:
            return scene
    return None
