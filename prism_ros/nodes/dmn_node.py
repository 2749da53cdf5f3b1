"""dmn_node: DMN particle-filter localization (Karkus et al. 2020) as a ROS 2 node.

A thin adapter over :class:`prism_ros.dmn.localizer.DmnLocalizer`:

- Context map: ``context_source: file`` reads (image, planar pose) pairs and their area from
  ``context_path`` (``prism_ros.dmn.localizer.save_contexts``); ``context_source: prism`` collects them from
  the camera and ``<prism_node>/pose`` (6-DoF -> x, y, yaw of the base), one per ``keyframe_distance`` /
  ``keyframe_angle_deg``, up to ``max_contexts``, in the square ``area`` [x0, y0, side] (metres).
- Inputs: colour images on ``rgb_topic`` (the sensor preset's) (the newest one is processed when the worker is free) and
  ``nav_msgs/Odometry`` on ``odometry_topic`` (e.g. PRISM's): the planar motion between the odometry poses
  nearest two processed images drives the particles (the transition input).
- Outputs: ``~/particles`` (``geometry_msgs/PoseArray``), ``~/pose`` (``PoseWithCovarianceStamped`` with the
  particle covariance of x, y, yaw; z, roll and pitch are unknown: large variances), ``/diagnostics``.
- ``~/global_localization`` (std_srvs/Trigger): uniform belief over the area. ``/initialpose``: tracking
  mode, a Gaussian belief around it (the paper's σx = σy = 0.3, σψ = 30° in normalised units).

Bad input (encodings, a context file that cannot be read, poses outside the area) is logged once per cause,
counted in /diagnostics, and the node keeps running; invalid parameters at start-up exit with code 2.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from prism_ros.errors import InputError
from prism_ros.nodes.compat import qos_by_name, reliable_qos
from prism_ros.nodes.conversions import (
    diagnostics_message,
    header_ns,
    image_to_numpy,
    make_header,
    matrix_to_pose_with_covariance,
    pose_to_matrix,
    to_rgb,
)
from prism_ros.nodes.health import Health, failed_trigger
from prism_ros.nodes.parameters import Param, declare, non_negative, one_of, parameters_file, positive, read_all
from prism_ros.nodes.prism_parameters import QOS_NAMES, RGB_ENCODINGS
from prism_ros.nodes.runner import Periodic, run_node

NODE_NAME = "dmn_node"
CAUSES = ("bad_encoding", "bad_image", "bad_pose", "no_contexts", "no_odometry")
UNKNOWN_VARIANCE = 1e6  # z, roll, pitch: not estimated


def _area(values):
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or values[2] <= 0:
        return "needs [x0, y0, side] in metres with side > 0"
    return None


PARAMETERS: dict[str, Param] = {
    "weights_path": Param("", "str", "DMN weights (a PF method); empty = the package's rooms pf-dmn weights"),
    "context_source": Param("file", "str", "file: context_path; prism: keyframes of the camera + PRISM's pose",
                            check=one_of(("file", "prism"))),
    "context_path": Param("", "str", "context file (images + planar poses + area) for context_source: file"),
    "area": Param([0.0, 0.0, 10.0], "floats", "[x0, y0, side] (m): the square mapped to normalised [-1, 1] "
                  "(context_source: prism; a context file carries its own)", check=_area),
    "rgb_topic": Param("rgb/image", "str", "colour camera (rgb8, bgr8, rgba8, bgra8, mono8)"),
    "image_qos": Param("sensor_data", "str", "QoS of the camera", check=one_of(QOS_NAMES)),
    "odometry_topic": Param("prism_node/odometry", "str", "nav_msgs/Odometry driving the particles"),
    "prism_node": Param("prism_node", "str", "PRISM node whose ~/pose gives context poses (context_source: prism)"),
    "keyframe_distance": Param(0.5, "float", "a new context when this far (m) from every other", check=positive),
    "keyframe_angle_deg": Param(30.0, "float", "... or turned this much (deg) from the nearest", check=positive),
    "max_contexts": Param(32, "int", "contexts kept (the oldest is dropped)", check=lambda v: None if v >= 1 else
                          "must be >= 1"),
    "particles": Param(2048, "int", "particles (the paper: 2048 global, 256 tracking)",
                       check=lambda v: None if v >= 8 else "must be >= 8"),
    "start_global": Param(True, "bool", "start with a uniform belief (else wait for /initialpose)"),
    "min_period": Param(0.0, "float", "seconds between filter updates (0: whenever the worker is free)",
                        check=non_negative),
    "map_frame": Param("map", "str", "frame of the context poses and the outputs"),
    "diagnostics_period": Param(1.0, "float", "seconds between /diagnostics messages", check=positive),
    "seed": Param(0, "int", "random seed of the particle draws"),
}


def parameters_yaml() -> str:
    """config/dmn.yaml: every parameter with its default and meaning."""
    return parameters_file(PARAMETERS, [
        "dmn_node parameters with their defaults (a ROS 2 parameters file: --params-file config/dmn.yaml).",
        "Invalid values at start-up: exit code 2."])


def default_weights() -> Path:
    from prism_ros.cli.dmn import weights_path

    return weights_path("rooms", "pf-dmn")


def planar_to_pose(x: float, y: float, yaw: float) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y = float(x), float(y)
    pose.orientation.z, pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return pose


def planar_covariance_to_ros(covariance: np.ndarray) -> np.ndarray:
    """3x3 (x, y, yaw) -> 6x6 ROS order (x, y, z, roll, pitch, yaw); unknowns get a large variance."""
    ros = np.diag([0.0, 0.0, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, 0.0])
    index = [0, 1, 5]
    ros[np.ix_(index, index)] = covariance
    return ros


@dataclass
class Stats:
    images: int = 0
    updates: int = 0
    contexts: int = 0
    last_ms: float = float("nan")


class DmnNode(Node):
    """See the module docstring. :meth:`configure` (InputError on bad parameters), :meth:`start`, :meth:`stop`."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare(self, PARAMETERS)
        self.stats = Stats()
        self._lock = threading.Lock()
        self.health = Health(self.get_logger(), CAUSES)
        self._latest: Image | None = None
        self._odometry: deque = deque(maxlen=400)  # (stamp ns, planar pose)
        self._contexts: list[tuple[np.ndarray, np.ndarray]] = []  # (rgb, planar pose) from PRISM
        self._recent_images: deque = deque(maxlen=60)
        self._previous_odometry: np.ndarray | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._diagnostics: Periodic | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def configure(self) -> None:
        from prism_ros.dmn.localizer import Area, DmnLocalizer, load_contexts
        from prism_ros.dmn.training import load_method

        self.values = v = read_all(self, PARAMETERS, "config/dmn.yaml")
        weights = Path(v["weights_path"]).expanduser() if v["weights_path"] else default_weights()
        if not weights.is_file():
            raise InputError(f"DMN weights {weights} not found", "set weights_path, or train them with "
                             "`prism-ros dmn train --domain rooms --method pf-dmn`")
        method, record = load_method(weights)
        area = Area(*v["area"])
        contexts = None
        if v["context_source"] == "file":
            if not v["context_path"]:
                raise InputError("context_source is file but context_path is empty",
                                 "set context_path, or context_source:=prism")
            images, poses, area = load_contexts(Path(v["context_path"]).expanduser())
            contexts = (list(images), poses)
        self.localizer = DmnLocalizer(method, area, v["particles"], method.config.image_size, seed=v["seed"])
        if contexts:
            self.localizer.set_contexts(*contexts)
            self.stats.contexts = len(contexts[1])
        if v["start_global"]:
            self.localizer.global_localization()
        self.get_logger().info(f"DMN {record['method']} ({record['domain']}) from {weights}; {self.stats.contexts} "
                               f"contexts; area {area}; {v['particles']} particles")
        self._create_interfaces()

    def _create_interfaces(self) -> None:
        v = self.values
        guard = self.health.guard
        self.create_subscription(Image, v["rgb_topic"], guard("image", self._on_image), qos_by_name(v["image_qos"], 5))
        self.create_subscription(Odometry, v["odometry_topic"], guard("odometry", self._on_odometry), reliable_qos(100))
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", guard("initialpose", self._on_initial_pose),
                                 reliable_qos(10))
        if v["context_source"] == "prism":
            self.create_subscription(PoseWithCovarianceStamped, f"{v['prism_node'].rstrip('/')}/pose",
                                     guard("prism_pose", self._on_prism_pose), reliable_qos(50))
        self.particles_pub = self.create_publisher(PoseArray, "~/particles", reliable_qos(5))
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", reliable_qos(10))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable_qos(10))
        self.create_service(Trigger, "~/global_localization", guard("global_localization", self._srv_global,
                                                                    failed_trigger))
        self._diagnostics = Periodic(v["diagnostics_period"], self._publish_diagnostics, "dmn_diagnostics",
                                     lambda error: self.get_logger().error(f"diagnostics failed: {error!r}"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dmn_filter", daemon=True)
        self._thread.start()
        self._diagnostics.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._diagnostics:
            self._diagnostics.stop()
        if self._thread:
            self._thread.join(timeout)

    def _bad_input(self, cause: str, problem: str, fix: str) -> None:
        self.health.bad_input(cause, problem, fix)

    # -- inputs ---------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._latest = msg
            self.stats.images += 1
            if self.values["context_source"] == "prism":
                self._recent_images.append(msg)
        self._wake.set()

    def _planar(self, pose, topic: str) -> np.ndarray | None:
        """(x, y, yaw) of a geometry_msgs/Pose, or None (counted as bad_pose)."""
        from prism_ros.dmn.localizer import planar_pose

        try:
            return planar_pose(pose_to_matrix(pose))
        except InputError as error:
            self._bad_input("bad_pose", f"{topic}: {error.problem}", "send unit quaternions")
            return None

    def _on_odometry(self, msg: Odometry) -> None:
        pose = self._planar(msg.pose.pose, self.values["odometry_topic"])
        if pose is not None:
            with self._lock:
                self._odometry.append((header_ns(msg), pose))

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        pose = self._planar(msg.pose.pose, "/initialpose")
        if pose is None:
            return
        with self._lock:
            self.localizer.track_from(pose)
        self.get_logger().info(f"tracking from /initialpose {np.round(pose, 3).tolist()}")

    def _on_prism_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """A new context when PRISM's pose of an image we hold is a new viewpoint."""
        stamp = header_ns(msg)
        with self._lock:
            image = next((m for m in self._recent_images if header_ns(m) == stamp), None)
        pose = None if image is None else self._planar(msg.pose.pose, f"{self.values['prism_node']}/pose")
        if pose is None:
            return
        known = np.array([p for _, p in self._contexts]) if self._contexts else np.zeros((0, 3))
        if len(known):
            gaps = np.linalg.norm(known[:, :2] - pose[:2], axis=1)
            turn = np.degrees(np.abs((known[int(gaps.argmin()), 2] - pose[2] + np.pi) % (2 * np.pi) - np.pi))
            if gaps.min() < self.values["keyframe_distance"] and turn < self.values["keyframe_angle_deg"]:
                return
        rgb = self._rgb(image)
        if rgb is None:
            return
        self._contexts.append((rgb, pose))
        self._contexts = self._contexts[-self.values["max_contexts"]:]
        with self._lock:
            self.localizer.set_contexts([c for c, _ in self._contexts], np.array([p for _, p in self._contexts]))
            self.stats.contexts = len(self._contexts)

    def _rgb(self, msg: Image) -> np.ndarray | None:
        if msg.encoding not in RGB_ENCODINGS:
            self._bad_input("bad_encoding", f"image encoding {msg.encoding!r}", f"publish {', '.join(RGB_ENCODINGS)}")
            return None
        try:
            return to_rgb(image_to_numpy(msg), msg.encoding)
        except InputError as error:
            self._bad_input("bad_image", error.problem, error.fix or "fix the publisher")
            return None

    def _odometry_at(self, stamp: int) -> np.ndarray | None:
        with self._lock:
            if not self._odometry:
                return None
            return min(self._odometry, key=lambda item: abs(item[0] - stamp))[1]

    # -- the filter -----------------------------------------------------------------------------
    def _work(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            if time.monotonic() - last < self.values["min_period"]:
                continue
            with self._lock:
                msg, self._latest = self._latest, None
            if msg is None:
                continue
            try:
                if self._localize(msg):
                    last = time.monotonic()
            except Exception as error:  # a defect: counted and logged once; the next image is localized
                self.health.callback_failed("filter", error)

    def _localize(self, msg: Image) -> bool:
        """One image through the particle filter and out; False when it was not used."""
        from prism_ros.dmn.localizer import planar_delta

        if self.localizer.view_map is None:
            self._bad_input("no_contexts", "an image arrived before any context", "load a context file, or "
                            "let PRISM keyframes build the map (context_source: prism)")
            return False
        odometry = self._odometry_at(header_ns(msg))
        if odometry is None:
            self._bad_input("no_odometry", f"no odometry on {self.values['odometry_topic']} yet; the "
                            "particles are weighed without motion", "publish nav_msgs/Odometry")
            delta = np.zeros(3)
        else:
            delta = np.zeros(3) if self._previous_odometry is None else planar_delta(self._previous_odometry,
                                                                                      odometry)
            self._previous_odometry = odometry
        rgb = self._rgb(msg)
        if rgb is None:
            return False
        started = time.perf_counter()
        with self._lock:
            if self.localizer.particles is None:
                return False  # waiting for /initialpose
            estimate, covariance = self.localizer.step(rgb, delta)
            particles = self.localizer.metric_particles()
        with self._lock:
            self.stats.updates += 1
            self.stats.last_ms = 1e3 * (time.perf_counter() - started)
        self._publish(estimate, covariance, particles, msg.header.stamp)
        return True

    def _publish(self, estimate: np.ndarray, covariance: np.ndarray, particles: np.ndarray, stamp) -> None:
        frame = self.values["map_frame"]
        T = np.eye(4)
        c, s = math.cos(estimate[2]), math.sin(estimate[2])
        T[:2, :2], T[:2, 3] = [[c, -s], [s, c]], estimate[:2]
        self.pose_pub.publish(matrix_to_pose_with_covariance(T, planar_covariance_to_ros(covariance), stamp, frame))
        array = PoseArray(header=make_header(frame, stamp))
        array.poses = [planar_to_pose(*p) for p in particles]
        self.particles_pub.publish(array)

    def _srv_global(self, _request, response):
        with self._lock:
            self.localizer.global_localization()
        response.success, response.message = True, f"uniform belief over the area ({self.localizer.count} particles)"
        self.get_logger().info(response.message)
        return response

    # -- diagnostics ----------------------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, str]:
        with self._lock:
            s = self.stats
            values = {"images": s.images, "updates": s.updates, "contexts": s.contexts, "last_ms": f"{s.last_ms:.1f}",
                      **self.health.values()}
        return {k: str(v) for k, v in values.items()}

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        ready = int(values["contexts"]) > 0
        self.diag_pub.publish(diagnostics_message(f"{NODE_NAME}: localization", ready,
                                                  "localizing" if ready else "no contexts", values,
                                                  self.get_clock().now().to_msg(), "cpu"))


def main(args: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 2 on invalid parameters."""
    return run_node(DmnNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
