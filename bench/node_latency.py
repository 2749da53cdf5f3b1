"""prism_node live latency and sustained rate over real DDS (a benchmark, not a test).

Per resolution (QVGA 320x240, VGA 640x480) and device (cpu, plus cuda when available) a synthetic bag is
played in real time (rate 1.0, 30 Hz) by the bag player into prism_node, both started as separate processes
with :func:`prism_ros.launch_graph.launcher.start_graph` (loopback DDS settings, one random domain). The node runs
its default live settings (``frame_queue`` 1: only the newest frame waits, the rest are dropped) with the
synthetic sensor preset and ``use_sim_time`` off, so its outputs carry the input stamps.

This process joins the same domain (loopback settings applied before rclpy is imported) and records, with
one monotonic clock: the arrival of each colour image (raw CDR, stamp read from the header; best effort so
it never holds the player back), each ``/prism_node/pose``, the node's ``/diagnostics`` and its per-frame
``/prism_node/frame_timing`` (stage times, step, and the node-side latency from synchronised set to publish).

    latency   = pose arrival - arrival of the colour image with the same stamp (stamp -> publish)
    rate      = poses received / (last pose arrival - first colour arrival)
    dropped   = frames sent - poses received (the node's own frames_dropped counter is shown too)
    vs target = rate / 10 Hz (the target is stated for QVGA)

    python bench/node_latency.py [--frames 60] [--resolutions qvga,vga] [--device cpu,cuda]
                                 [--out out/bench/node_latency]

Bags are cached in --out (``seq_<W>x<H>_<frames>``; --regenerate rewrites them): rendering is slow on CPU
(about 0.5 s per QVGA frame, 2 s per VGA frame). Timings are wall clock on this machine, in this run.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import struct
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from prism_ros.loopback import apply_loopback_env, random_domain_id

RESOLUTIONS = {"qvga": (320, 240), "vga": (640, 480)}
TARGET_HZ = 10.0
RGB_TOPIC = "/camera/rgb/image_color"
TIMING_TOPIC = "/prism_node/frame_timing"
POSE_TOPIC = "/prism_node/pose"
NODE_NAME = "prism_node"
VIEWERS = ("none", "map")
# A map viewer (what RViz with rviz/prism.rviz subscribes to), taking every message raw: the node's cost of
# serving a display, not the display's own drawing. Prints its message and byte counts when stopped.
VIEWER = """
from prism_ros.nodes.runner import die_with_launcher
die_with_launcher()  # ends with the bench
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray
rclpy.init(); node = Node("node_latency_viewer"); got = {}
latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
def counter(name):
    def count(raw):
        n, size = got.get(name, (0, 0)); got[name] = (n + 1, size + len(raw))
    return count
for kind, topic, qos in ((MarkerArray, "mesh", latched), (PointCloud2, "map_cloud", latched),
                         (Image, "rendered/depth", qos_profile_sensor_data),
                         (Image, "rendered/uncertainty", qos_profile_sensor_data)):
    node.create_subscription(kind, "/prism_node/" + topic, counter(topic), qos, raw=True)
try:
    rclpy.spin(node)
except BaseException:  # Ctrl-C (SIGINT) ends the count
    pass
print(" ".join(f"{k}={n}/{size}" for k, (n, size) in sorted(got.items())), flush=True)
"""


def ensure_bag(out: Path, width: int, height: int, frames: int, seed: int, regenerate: bool) -> Path:
    """The synthetic sequence's bag folder (generated unless cached)."""
    from prism_ros.synthetic import generate

    seq = out / f"seq_{width}x{height}_{frames}"
    if regenerate or not (seq / "bag").is_dir() or not (seq / "groundtruth.txt").is_file():
        started = time.perf_counter()
        print(f"generating {frames} synthetic frames at {width}x{height} into {seq} ...", flush=True)
        generate(seq, frames=frames, seed=seed, motion="handheld", bag="mcap", width=width, height=height,
                 progress=False, overwrite=True)
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return seq / "bag"


def header_stamp_ns(raw: bytes) -> int:
    """Stamp of a serialised message whose first field is std_msgs/Header (CDR, after the 4-byte encapsulation)."""
    little = raw[1] & 1  # 0x0001 = CDR_LE, 0x0000 = CDR_BE
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


class Probe:
    """In-process ROS node: colour arrivals, poses and the node's diagnostics, with monotonic wall times."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from prism_ros.nodes.compat import reliable_qos, sensor_qos

        self.lock = threading.Lock()
        self.reset()
        self.node = rclpy.create_node("node_latency_probe")
        self.node.create_subscription(Image, RGB_TOPIC, self._on_rgb, sensor_qos(100), raw=True)
        self.node.create_subscription(PoseWithCovarianceStamped, POSE_TOPIC, self._on_pose, reliable_qos(1000))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable_qos(100))
        self.node.create_subscription(DiagnosticArray, TIMING_TOPIC, self._on_timing, reliable_qos(1000))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self.lock:
            self.rgb: dict[int, float] = {}  # stamp ns -> first arrival (monotonic s)
            self.poses: list[tuple[int, float]] = []  # (stamp ns, arrival)
            self.matrices: list[np.ndarray] = []  # T_map_base (4,4) of each pose, in arrival order
            self.diag: dict[str, str] = {}
            self.diag_count = 0
            self.timing: list[dict[str, float]] = []  # the node's ~/frame_timing per processed frame

    def _on_rgb(self, raw: bytes) -> None:
        now = time.monotonic()
        stamp = header_stamp_ns(raw)
        with self.lock:
            self.rgb.setdefault(stamp, now)

    def _on_pose(self, msg) -> None:
        from prism_ros.nodes.conversions import pose_with_covariance_to_matrix

        now = time.monotonic()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        matrix, _ = pose_with_covariance_to_matrix(msg)
        with self.lock:
            self.poses.append((stamp, now))
            self.matrices.append(matrix)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(NODE_NAME):
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag_count += 1

    def _on_timing(self, msg) -> None:
        for status in msg.status:
            with self.lock:
                self.timing.append({kv.key: float(kv.value) for kv in status.values})

    def snapshot(self):
        with self.lock:
            return dict(self.rgb), list(self.poses), dict(self.diag), self.diag_count

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """Stamps (s) and poses (N,4,4) of the received poses."""
        with self.lock:
            stamps = np.array([stamp / 1e9 for stamp, _ in self.poses])
            return stamps, np.array(self.matrices).reshape(-1, 4, 4)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def start_viewer(domain_id: int):
    """The map viewer process (see VIEWER) on the graph's domain."""
    import os

    from prism_ros.launch_graph.launcher import LAUNCHER_PID_VARIABLE
    from prism_ros.loopback import spawn

    return spawn([sys.executable, "-c", VIEWER], domain_id,
                 env={**os.environ, LAUNCHER_PID_VARIABLE: str(os.getpid())})


def stop_viewer(viewer) -> dict:
    """Stop the viewer; {topic: (messages, bytes)} it received."""
    viewer.send_signal(signal.SIGINT)
    try:
        out, _ = viewer.communicate(timeout=10.0)
    except Exception:
        viewer.kill()
        out, _ = viewer.communicate()
    got = {}
    for item in (out or "").split():
        name, _, counts = item.partition("=")
        n, _, size = counts.partition("/")
        got[name] = (int(n), int(size))
    return got


def run_case(probe: Probe, bag: Path, frames: int, device: str, domain_id: int, out: Path, label: str,
             rate: float, node_parameters: dict | None = None, viewer: str = "none") -> dict:
    """Play the bag into a fresh prism_node (with the map viewer process when ``viewer`` is "map"); the
    measured figures of this case."""
    from prism_ros.launch_graph.graph import bag_player_spec, config_path, prism_node_spec, share_dir
    from prism_ros.launch_graph.launcher import start_graph

    share = share_dir()
    node = prism_node_spec(config_path("prism.yaml", share), share / "config/sensors/synthetic.yaml",
                           use_sim_time=False)
    node = replace(node, parameters={**node.parameters, **(node_parameters or {}), "device": device,
                                     "diagnostics_period": 0.25,
                                     "map_path": str(out / "prism_map.pt")})
    player = bag_player_spec(str(bag), rate=rate, qos="reliable", wait_for_subscribers=2, quiet=True)
    # no /clock (the node runs on wall time); node start-up (torch, filter) can be slow on a busy machine
    player = replace(player, parameters={**player.parameters, "clock": False, "wait_timeout": 180.0})
    probe.reset()
    logs = {name: (out / f"{label}_{name}.log").open("w") for name in ("node", "player")}
    display = node_graph = player_graph = None
    shown = {}
    try:
        display = start_viewer(domain_id) if viewer == "map" else None
        # one start_graph call per process so each gets its own log (same domain, same loopback settings)
        node_graph = start_graph([node], loopback=True, domain_id=domain_id, stdout=logs["node"],
                                 stderr=subprocess_stdout())
        player_graph = start_graph([player], loopback=True, domain_id=domain_id, stdout=logs["player"],
                                   stderr=subprocess_stdout())
        play_timeout = 180.0 + frames / 30.0 / max(rate, 1e-3) + 30.0
        codes = player_graph.wait(play_timeout)
        if codes[0] is None:
            raise RuntimeError(f"{label}: the player did not finish in {play_timeout:.0f} s "
                               f"(see {out / (label + '_player.log')})")
        if codes[0] != 0:
            raise RuntimeError(f"{label}: the player exited with {codes[0]} (see {out / (label + '_player.log')})")
        # drain: the node has taken in every frame and finished (processed/dropped/lost) all of them
        deadline = time.monotonic() + 60.0
        seen = probe.snapshot()[3]
        while time.monotonic() < deadline:
            _, poses, diag, count = probe.snapshot()
            if node_graph.returncodes()[0] is not None:
                raise RuntimeError(f"{label}: prism_node exited with {node_graph.returncodes()[0]} "
                                   f"(see {out / (label + '_node.log')})")
            if diag and count >= seen + 2:
                received = int(diag["frames_received"])
                done = (int(diag["frames_processed"]) + int(diag["frames_dropped"])
                        + int(diag.get("frames_skipped_paused", 0)))
                if received > 0 and done >= received and len(poses) >= int(diag["frames_processed"]):
                    break
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        for graph, grace in ((node_graph, 5.0), (player_graph, 1.0)):
            if graph is not None:
                graph.stop(grace=grace)
        if display is not None:
            shown = stop_viewer(display)
        for log in logs.values():
            log.close()
    rgb, poses, diag, _ = probe.snapshot()
    with probe.lock:
        timing = list(probe.timing)
    row = summarise(label, device, frames, rgb, poses, diag, timing)
    row["viewer"] = viewer
    row["viewer_received"] = {topic: {"messages": n, "mb": size / 1e6} for topic, (n, size) in shown.items()}
    sensor = yaml.safe_load((share / "config/sensors/synthetic.yaml").read_text())["/**"]["ros__parameters"]
    T_base_camera = np.asarray(sensor["T_base_camera"], dtype=np.float64).reshape(4, 4)
    row["ate_cm"] = received_ate_cm(probe, bag.parent / "groundtruth.txt", T_base_camera)
    return row


def received_ate_cm(probe: Probe, groundtruth: Path, T_base_camera: np.ndarray) -> float:
    """ATE rmse (cm, SE(3)-aligned, evo) of the camera poses the probe received (published base poses times
    ``T_base_camera``) against the sequence's ground-truth camera poses; NaN with < 3 poses."""
    from prism_ros.evaluation.metrics import evaluate

    stamps, matrices = probe.trajectory()
    if len(stamps) < 3:
        return float("nan")
    return 100.0 * evaluate((stamps, matrices @ T_base_camera), groundtruth, align="se3").ate_rmse


def subprocess_stdout():
    import subprocess

    return subprocess.STDOUT


def summarise(label: str, device: str, frames: int, rgb: dict, poses: list, diag: dict, timing: list) -> dict:
    """Latency statistics, rate and drops of one case."""
    # colour arrivals missed by the (best effort) probe: bag time -> wall time from the others (rate 1)
    offsets = [wall - stamp / 1e9 for stamp, wall in rgb.items()]
    offset = statistics.median(offsets) if offsets else None
    latencies, estimated = [], 0
    for stamp, wall in poses:
        sent = rgb.get(stamp)
        if sent is None and offset is not None:
            sent, estimated = stamp / 1e9 + offset, estimated + 1
        if sent is not None:
            latencies.append(1e3 * (wall - sent))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    first = min(rgb.values()) if rgb else (poses[0][1] if poses else None)
    span = poses[-1][1] - first if poses and first is not None else float("nan")
    rate = len(poses) / span if poses and span > 0 else 0.0
    return {
        "case": label, "device": diag.get("device", device), "frames_sent": frames,
        "colour_seen_by_probe": len(rgb), "poses": len(poses),
        "latency_median_ms": float(np.median(lat)), "latency_p95_ms": float(np.percentile(lat, 95)),
        "latency_max_ms": float(np.max(lat)), "latency_estimated_from_rate": estimated,
        "rate_hz": rate, "span_s": span, "dropped": frames - len(poses),
        "node_frames_received": int(diag.get("frames_received", -1)),
        "node_frames_processed": int(diag.get("frames_processed", -1)),
        "node_frames_dropped": int(diag.get("frames_dropped", -1)),
        "node_frames_lost": int(diag.get("frames_lost", -1)),
        "lost_pct": 100.0 * int(diag.get("frames_lost", 0)) / max(int(diag.get("frames_processed", 0)), 1),
        "node_step_ms_last": diag.get("step_ms"), "node_latency_ms_last": diag.get("latency_ms"),
        "vs_target": rate / TARGET_HZ,
        # the node's own clock (~/frame_timing): synchronised set complete -> outputs published, and the step
        "node_latency_p50_ms": _median(timing[1:], "latency_ms"), "node_step_p50_ms": _median(timing[1:], "step_ms"),
        "node_stage_p50_ms": {key[:-3]: _median(timing[1:], key) for key in sorted({k for t in timing for k in t})
                              if key not in ("latency_ms", "step_ms")},
    }


def _median(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if key in row]
    return float(np.median(values)) if values else float("nan")


def print_table(rows: list[dict]) -> None:
    header = (f"{'case':<6} {'device':<7} {'viewer':<6} {'sent':>5} {'recv':>5} {'poses':>5} {'lat p50 ms':>10} "
              f"{'lat p95 ms':>10} "
              f"{'fps':>6} {'dropped':>7} {'node drop':>9} {'lost':>5} {'ATE cm':>7} {'step ms':>8} {'vs 10 Hz':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<6} {r['device']:<7} {r['viewer']:<6} {r['frames_sent']:>5} "
              f"{r['node_frames_received']:>5} {r['poses']:>5} "
              f"{r['latency_median_ms']:>10.1f} {r['latency_p95_ms']:>10.1f} {r['rate_hz']:>6.2f} "
              f"{r['dropped']:>7} {r['node_frames_dropped']:>9} {r['node_frames_lost']:>5} {r['ate_cm']:>7.2f} "
              f"{r['node_step_p50_ms']:>8.1f} "
              f"{r['vs_target']:>7.2f}x")
    print(f"(target: {TARGET_HZ:.0f} Hz at QVGA with < 5 % of processed frames lost and ATE < 1 cm; input 30 Hz "
          "real time, frame_queue 1; recv = complete sets the node received; 'vs 10 Hz' = fps / 10; "
          "lost = the node's frames_lost; ATE of the received poses, "
          "SE(3)-aligned; step ms = the node's median filter step)")
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["node_stage_p50_ms"].items())
        shown = ", ".join(f"{topic} {v['messages']} ({v['mb']:.1f} MB)" for topic, v in r["viewer_received"].items())
        print(f"{r['case']} {r['device']} viewer {r['viewer']}: node-side latency p50 {r['node_latency_p50_ms']:.1f} "
              f"ms; stages p50 ms: {stages}" + (f"; viewer received {shown}" if shown else ""))


def node_parameter(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` (the value parsed as YAML) -> (name, value)."""
    import yaml

    name, _, value = text.partition("=")
    if not name or not _:
        raise SystemExit(f"--node-param {text!r}: write NAME=VALUE")
    return name.strip(), yaml.safe_load(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=60, help="frames per synthetic bag (30 Hz)")
    p.add_argument("--resolutions", default="qvga,vga", help="comma list of " + ", ".join(RESOLUTIONS))
    p.add_argument("--out", type=Path, default=Path("out/bench/node_latency"))
    p.add_argument("--device", default="", help="comma list (cpu, cuda, cuda:N); default cpu, plus cuda when "
                   "torch.cuda.is_available()")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate (1.0 = real time, 30 Hz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regenerate", action="store_true", help="rewrite cached bags")
    p.add_argument("--viewers", default="none,map", help="comma list: none (nobody watches the map) and/or map "
                   "(a process subscribed to the mesh, cloud and rendered images, as RViz with rviz/prism.rviz)")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME=VALUE",
                   help="prism_node parameter override (YAML value), e.g. map_publish_period=1000 (repeatable)")
    args = p.parse_args(argv)

    resolutions = [r.strip().lower() for r in args.resolutions.split(",") if r.strip()]
    unknown = [r for r in resolutions if r not in RESOLUTIONS]
    if unknown:
        p.error(f"unknown resolution(s) {unknown}; use {', '.join(RESOLUTIONS)}")
    viewers = [v.strip() for v in args.viewers.split(",") if v.strip()]
    if not viewers or any(v not in VIEWERS for v in viewers):
        p.error(f"--viewers {args.viewers!r}: use a comma list of {', '.join(VIEWERS)}")
    if args.device:
        devices = [d.strip() for d in args.device.split(",") if d.strip()]
    else:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bags = {r: ensure_bag(out, *RESOLUTIONS[r], args.frames, args.seed, args.regenerate) for r in resolutions}

    domain_id = random_domain_id()
    apply_loopback_env(domain_id)  # before rclpy: this process joins the graph's domain, loopback only
    import rclpy

    rclpy.init()
    probe = Probe()
    rows = []
    try:
        for r in resolutions:
            for device in devices:
                for viewer in viewers:
                    print(f"running {r} {RESOLUTIONS[r][0]}x{RESOLUTIONS[r][1]} on {device}, viewer {viewer} "
                          f"(domain {domain_id}) ...", flush=True)
                    started = time.perf_counter()
                    row = run_case(probe, bags[r], args.frames, device, domain_id, out, f"{r}_{device}_{viewer}",
                                   args.rate, dict(node_parameter(text) for text in args.node_param), viewer)
                    row["case"] = r
                    row["resolution"] = "x".join(map(str, RESOLUTIONS[r]))
                    rows.append(row)
                    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        probe.close()
        rclpy.shutdown()
    print()
    print_table(rows)
    result = {"target_hz": TARGET_HZ, "input_hz": 30.0 * args.rate, "frames": args.frames, "frame_queue": 1,
              "domain_id": domain_id, "rows": rows}
    (out / "node_latency.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'node_latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
