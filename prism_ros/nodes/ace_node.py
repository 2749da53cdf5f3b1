"""ace_node: ACE relocalization as a ROS 2 node, and the recovery of prism_node when its tracking is lost.

A thin adapter over :mod:`prism_ros.ace` (messages <-> numpy, parameters, threads):

- Inputs: colour + CameraInfo (+ depth registered to colour, for online mapping and the depth check),
  approximate-time synchronised; the newest set is kept. ``~/query`` (sensor_msgs/Image) relocalizes that
  image (with the newest CameraInfo): the "image in the request" of a relocalization service, as a topic
  because the PyPI wheels cannot build custom service types.
- ``~/relocalize`` (std_srvs/Trigger) relocalizes the newest image and answers with the pose and inlier
  count; ``continuous_rate`` > 0 relocalizes the newest image at that rate.
- Answers (:func:`prism_ros.ace.hybrid.answer_query`): ACE's pose; with ``depth_check``, depth and a map made
  with depth, it is kept only when the query's depth lies on the map's surfaces (refined by ICP); when it
  fails, with ``second_opinion``, the map's SIFT keyframes are asked and their pose goes through the same
  check. Diagnostics count who answered (``answered_ace`` / ``answered_features``) and ``last_source``.
- Outputs: ``~/pose`` (PoseWithCovarianceStamped of ``base_frame`` in ``map_frame``; ACE's covariance of the
  camera pose mapped to the ROS convention and inflated by ``covariance_scale``, since RANSAC's inlier
  covariance ignores correlated errors), ``~/inliers`` (std_msgs/Int32, every attempt, 0 when rejected) and
  ``/diagnostics``.
- Recovery: with ``recovery``, after ``lost_frames_for_recovery`` consecutive false on
  ``<prism_node>/tracking_ok`` the node relocalizes the image PRISM lost last (its stamp comes on
  ``<prism_node>/tracking_lost``; the newest image when that one has left the ``image_buffer`` recent sets),
  at most once per ``recovery_period``, and sends an accepted pose, stamped like that image, to
  ``<prism_node>/set_pose``: PRISM continues from it on the map it kept. Answering for the frame PRISM lost,
  not the newest one, keeps the two in step when PRISM lags behind its input (a replay, a slow machine).
- Initial localization: with ``initial_localization``, a map read from a file (at start-up or by
  ``~/load_map``) is in its own world, not in the frame PRISM started in: the node relocalizes incoming
  images (at most once per ``recovery_period``) until one is accepted and sends it once to
  ``<prism_node>/reset_at_pose``, so PRISM restarts there and builds its map in the ACE map's frame (recovery
  poses then fit PRISM's map).
- Online mapping: with ``online_mapping``, sets whose stamp matches a ``<prism_node>/pose`` become
  keyframes (``keyframe_distance`` / ``keyframe_angle_deg`` from every other keyframe); every
  ``remap_after_keyframes`` new keyframes a background thread maps them all again with the recipe and
  checkpoints the map to ``map_path``. The ACE map is then in PRISM's map frame.
- Services ``~/save_map`` / ``~/load_map`` (file: ``map_path``).

Frames: the ACE map's world is ``map_frame`` (maps made offline from dataset poses are in the dataset's
world: initial localization starts PRISM there). The base pose is ``T_world_camera @ inv(T_base_camera)``.
Bad input (wrong encodings, missing CameraInfo, relocalization without a map) is logged once per cause,
counted in /diagnostics, and the node keeps running.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool, Header, Int32
from std_srvs.srv import Trigger

from prism_ros.errors import InputError
from prism_ros.frame import Frame, Intrinsics
from prism_ros.nodes.compat import make_synchronizer, qos_by_name, reliable_qos
from prism_ros.nodes.conversions import (
    camera_info_to_intrinsics,
    depth_to_metres,
    diagnostics_message,
    header_ns,
    image_to_numpy,
    left_covariance_to_ros,
    matrix_to_pose_with_covariance,
    pose_to_matrix,
    to_rgb,
)
from prism_ros.nodes.health import Health, failed_trigger, refused_parameters
from prism_ros.nodes.parameters import (
    Param,
    check_intrinsics_source,
    checked_changes,
    count,
    declare,
    intrinsics_check,
    non_negative,
    not_empty,
    one_of,
    parameters_file,
    positive,
    read_all,
    transform,
)
from prism_ros.nodes.prism_inputs import BadInput
from prism_ros.nodes.prism_parameters import DEPTH_ENCODINGS, IDENTITY16, QOS_NAMES, RGB_ENCODINGS
from prism_ros.nodes.runner import Periodic, counted, run_node
from prism_ros.prism.config import resolve_device

NODE_NAME = "ace_node"
RECIPES = ("cpu", "gpu", "test")
CAUSES = ("bad_encoding", "bad_image", "missing_camera_info", "no_map", "bad_pose")
FAILURES = ("rejected_parameter", "save_map", "load_map", "mapping")


def _at_least(n: int):
    return lambda v: None if v >= n else f"must be >= {n}"


PARAMETERS: dict[str, Param] = {
    # -- map and encoder
    "map_path": Param("ace_map.pt", "str", "ACE map file: loaded at start-up when it exists and by ~/load_map; "
                      "written by ~/save_map and by online-mapping checkpoints", dynamic=True, check=not_empty),
    "encoder_path": Param("", "str", "encoder weights; empty = the encoder shipped with prism_ros"),
    "device": Param("cpu", "str", "cpu | cuda | cuda:N | auto"),
    # -- inputs
    "rgb_topic": Param("rgb/image", "str", "colour image (rgb8, bgr8, rgba8, bgra8, mono8)",
                       check=not_empty),
    "camera_info_topic": Param("rgb/camera_info", "str", "CameraInfo of the colour camera (synchronised "
                               "with the images when intrinsics_source is camera_info)"),
    "intrinsics_source": Param("camera_info", "str", "camera_info: from the synchronised CameraInfo; parameters: "
                               "from `intrinsics` and `distortion` (cameras without CameraInfo, e.g. EuRoC)",
                               check=one_of(("camera_info", "parameters"))),
    "rectified_input": Param(False, "bool", "the images are rectified (image_rect topics): the camera is "
                             "CameraInfo's P and no distortion is removed (K and D describe the raw image)"),
    "intrinsics": Param([0.0, 0.0, 0.0, 0.0], "floats", "fx fy cx cy (intrinsics_source: parameters)",
                        check=intrinsics_check),
    "distortion": Param([0.0, 0.0, 0.0, 0.0, 0.0], "floats", "k1 k2 p1 p2 k3 (intrinsics_source: parameters)",
                        check=count(5)),
    "depth_topic": Param("", "str", "depth registered to colour (16UC1 x depth_scale or 32FC1 m), used by online "
                         "mapping and the depth check; empty = colour only (no check)"),
    "image_qos": Param("sensor_data", "str", "QoS of colour, CameraInfo and depth", check=one_of(QOS_NAMES)),
    "depth_scale": Param(0.001, "float", "metres per unit of 16-bit depth", check=positive),
    "sync_slop": Param(0.02, "float", "seconds within which colour, CameraInfo (and depth) stamps must lie",
                       check=non_negative),
    # -- relocalization
    "continuous_rate": Param(0.0, "float", "relocalize the newest image at this rate (Hz); 0 = only on "
                             "~/relocalize, ~/query and recovery", check=non_negative),
    "min_inliers": Param(50, "int", "poses with fewer RANSAC inliers are rejected", dynamic=True,
                         check=_at_least(4)),
    "threshold_px": Param(0.0, "float", "RANSAC inlier threshold in working-resolution pixels; 0 = ACE's 10 px "
                          "at 480 rows, scaled", dynamic=True, check=non_negative),
    "hypotheses": Param(64, "int", "RANSAC hypotheses per image", dynamic=True, check=_at_least(1)),
    "depth_check": Param(True, "bool", "keep a pose only if the query's depth lies on the map's surfaces (needs "
                         "depth_topic and a map made with depth); the pose is refined by the check", dynamic=True),
    "second_opinion": Param(True, "bool", "when ACE's pose fails, ask the map's SIFT keyframes (maps made with "
                            "depth)", dynamic=True),
    "covariance_scale": Param(25.0, "float", "factor on ACE's inlier covariance (it ignores correlated errors)",
                              dynamic=True, check=positive),
    "position_std_floor": Param(0.05, "float", "added position std (m, per axis) of a relocalized pose: ACE is "
                                "rarely better than a few cm, whatever its inlier covariance says", dynamic=True,
                                check=non_negative),
    "rotation_std_floor_deg": Param(2.0, "float", "added rotation std (deg, per axis) of a relocalized pose",
                                    dynamic=True, check=non_negative),
    # -- frames
    "map_frame": Param("map", "str", "world frame of the ACE map and of ~/pose", dynamic=True, check=not_empty),
    "T_base_camera": Param(list(IDENTITY16), "floats", "camera -> base_frame transform, 16 numbers row-major "
                           "(the same as prism_node's)", check=transform(allow_empty=False)),
    # -- recovery of prism_node
    "recovery": Param(True, "bool", "relocalize when prism_node reports tracking lost and send it the pose",
                      dynamic=True),
    "prism_node": Param("prism_node", "str", "the PRISM node (a name relative to this node's namespace, or "
                        "absolute): its tracking_ok, pose, set_pose and reset_at_pose topics",
                        check=not_empty),
    "initial_localization": Param(True, "bool", "after a map is read from a file, relocalize until a pose is "
                                  "accepted and send it to <prism_node>/reset_at_pose (PRISM restarts in the "
                                  "map's frame)",
                                  dynamic=True),
    "lost_frames_for_recovery": Param(2, "int", "consecutive lost frames before relocalizing", dynamic=True,
                                      check=_at_least(1)),
    "recovery_period": Param(1.0, "float", "seconds between relocalization attempts while lost", dynamic=True,
                             check=positive),
    "image_buffer": Param(60, "int", "recent image sets kept, so recovery relocalizes the frame PRISM lost and "
                          "online mapping pairs PRISM's poses with their images (memory: one set each)",
                          check=_at_least(1)),
    # -- online mapping
    "online_mapping": Param(False, "bool", "keyframes from prism_node's poses; the head is trained in the "
                            "background and checkpointed to map_path"),
    "keyframe_distance": Param(0.10, "float", "a posed image becomes a keyframe when it is this far (m) from "
                               "every keyframe", dynamic=True, check=positive),
    "keyframe_angle_deg": Param(10.0, "float", "... or turned this much (deg) from the nearest keyframe",
                                dynamic=True, check=positive),
    "max_keyframes": Param(400, "int", "keyframes kept (the oldest is dropped)", check=_at_least(2)),
    "remap_after_keyframes": Param(20, "int", "map again once this many keyframes were added", dynamic=True,
                                   check=_at_least(1)),
    "mapping_recipe": Param("cpu", "str", "cpu (minutes on 2 cores) | gpu (the paper's) | test (seconds)",
                            check=one_of(RECIPES)),
    "mapping_steps": Param(0, "int", "head training steps; 0 = the recipe's", check=non_negative),
    "diagnostics_period": Param(1.0, "float", "seconds between /diagnostics messages", check=positive),
}


def parameters_yaml() -> str:
    """config/ace.yaml: every parameter with its default and meaning."""
    return parameters_file(PARAMETERS, [
        "ace_node parameters with their defaults (a ROS 2 parameters file: --params-file config/ace.yaml).",
        "`dynamic` ones may be changed at runtime; the others are read at start-up (invalid values: exit code 2)."])


def camera_covariance_to_ros(covariance: np.ndarray, T_world_camera: np.ndarray,
                             T_map_base: np.ndarray, scale: float = 1.0,
                             floor: np.ndarray | None = None) -> np.ndarray:
    """ACE's covariance of a right perturbation T exp(xi) of the camera pose -> ROS pose covariance of the base:
    left = scale Ad(T) cov Ad(T)^T + diag(floor^2) (invariant to the constant camera -> base transform), then
    the ROS lever arm. ``floor``: std per [rho, phi] axis added in the world frame."""
    import torch

    from prism_ros.geometry import se3_adjoint

    adjoint = se3_adjoint(torch.as_tensor(T_world_camera, dtype=torch.float64)).numpy()
    left = scale * adjoint @ covariance @ adjoint.T
    if floor is not None:
        left = left + np.diag(np.asarray(floor, dtype=np.float64) ** 2)
    return left_covariance_to_ros(left, T_map_base[:3, 3])


def is_new_keyframe(T: np.ndarray, keyframes: list[np.ndarray], distance: float, angle_deg: float) -> bool:
    """True when ``T`` (camera pose) is ``distance`` from every keyframe or turned ``angle_deg`` from the
    nearest one (the usual keyframe rule: new viewpoints, not new times)."""
    if not keyframes:
        return True
    poses = np.stack(keyframes)
    gaps = np.linalg.norm(poses[:, :3, 3] - T[:3, 3], axis=1)
    nearest = poses[int(np.argmin(gaps))]
    cos = (np.trace(nearest[:3, :3].T @ T[:3, :3]) - 1.0) / 2.0
    return bool(gaps.min() >= distance or np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) >= angle_deg)


@dataclass
class ImageSet:
    rgb: Image
    info: CameraInfo | None = None
    depth: Image | None = None


@dataclass
class Stats:
    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    recoveries_sent: int = 0
    initial_poses_sent: int = 0
    last_inliers: int = 0
    last_ms: float = float("nan")
    keyframes: int = 0
    mappings: int = 0
    last_mapping_s: float = float("nan")
    answered: dict = field(default_factory=lambda: {"ace": 0, "features": 0})
    depth_checked: int = 0
    last_source: str = ""


class AceNode(Node):
    """See the module docstring. Construct, :meth:`configure` (InputError on bad parameters), then
    :meth:`start`; :meth:`stop` before destroying."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare(self, PARAMETERS)
        self.values: dict[str, Any] = {}
        self.stats = Stats()
        self._lock = threading.Lock()  # stats, latest set, keyframes
        self._map_lock = threading.Lock()
        self.health = Health(self.get_logger(), CAUSES, FAILURES)
        self._latest: ImageSet | None = None
        self._latest_info: CameraInfo | None = None
        self._recent: deque[ImageSet] = deque()  # recent sets by stamp (recovery, online mapping); sized by configure
        self._lost_stamp_ns: int | None = None  # the frame PRISM lost last (<prism_node>/tracking_lost)
        self._keyframes: deque = deque()  # (T_world_camera, MappingFrame)
        self._new_keyframes = 0
        self._lost_run = 0
        self._last_recovery = 0.0
        self._initial_pending = False  # a map was read from a file: PRISM still has to start in its frame
        self._jobs: deque = deque(maxlen=4)
        self._job_ready = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._periodic: list[Periodic] = []  # diagnostics (and continuous relocalization)
        self.ace_map = None

    # -- set-up ---------------------------------------------------------------------------------
    def configure(self) -> None:
        from prism_ros.ace import load_encoder

        self.values = read_all(self, PARAMETERS, "config/ace.yaml")
        v = self.values
        check_intrinsics_source(v)
        self._recent = deque(maxlen=v["image_buffer"])
        self.T_base_camera = np.asarray(v["T_base_camera"], dtype=np.float64).reshape(4, 4)
        self.T_camera_base = np.linalg.inv(self.T_base_camera)
        self.device = resolve_device(v["device"])
        self.encoder = load_encoder(v["encoder_path"] or None, self.device)
        path = Path(v["map_path"]).expanduser()
        if path.is_file():
            self.ace_map = self._read_map(path)  # a bad file at start-up: InputError, exit code 2
            self.get_logger().info(f"ACE map {path}: {len(self.ace_map.heads)} head(s), working height "
                                   f"{self.ace_map.image_height}")
            self._initial_pending = v["initial_localization"]
        else:
            self.get_logger().info(f"no ACE map at {path} yet" + (": online mapping builds it" if v["online_mapping"]
                                   else ": load one with ~/load_map (relocalization answers 'no map' until then)"))
        self._create_interfaces()
        self.add_on_set_parameters_callback(self.health.guard("parameters", self._on_set_parameters,
                                                              refused_parameters))

    def _read_map(self, path: Path):
        from prism_ros.ace import load_map

        return load_map(path, encoder_id=self.encoder.encoder_id, device=self.device)

    def _create_interfaces(self) -> None:
        v = self.values
        qos = qos_by_name(v["image_qos"], 10)
        inputs = [(Image, v["rgb_topic"], qos)]
        self._roles = ["rgb"]
        if v["intrinsics_source"] == "camera_info":
            inputs.append((CameraInfo, v["camera_info_topic"], qos))
            self._roles.append("info")
        if v["depth_topic"]:
            inputs.append((Image, v["depth_topic"], qos))
            self._roles.append("depth")
        guard = self.health.guard
        self.sync = make_synchronizer(self, inputs, 10, v["sync_slop"], guard("images", self._on_images), guard=guard)
        self.create_subscription(Image, "~/query", guard("query", self._on_query), reliable_qos(2))
        prism = v["prism_node"].rstrip("/")
        self.create_subscription(Bool, f"{prism}/tracking_ok", guard("tracking_ok", self._on_tracking),
                                 reliable_qos(10))
        self.create_subscription(Header, f"{prism}/tracking_lost", guard("tracking_lost", self._on_tracking_lost),
                                 reliable_qos(10))
        if v["online_mapping"]:
            self.create_subscription(PoseWithCovarianceStamped, f"{prism}/pose",
                                     guard("prism_pose", self._on_prism_pose), reliable_qos(50))
        self.set_pose_pub = self.create_publisher(PoseWithCovarianceStamped, f"{prism}/set_pose", reliable_qos(10))
        self.initial_pose_pub = self.create_publisher(PoseWithCovarianceStamped, f"{prism}/reset_at_pose",
                                                      reliable_qos(10))
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", reliable_qos(10))
        self.inliers_pub = self.create_publisher(Int32, "~/inliers", reliable_qos(10))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable_qos(10))
        services = ReentrantCallbackGroup()  # ~/relocalize waits for the worker while others are served
        for name, callback in (("relocalize", self._srv_relocalize), ("save_map", self._srv_save_map),
                               ("load_map", self._srv_load_map)):
            self.create_service(Trigger, f"~/{name}", guard(name, callback, failed_trigger), callback_group=services)
        self._periodic = [Periodic(v["diagnostics_period"], self._publish_diagnostics, "ace_diagnostics",
                                   counted(self.health, "diagnostics"))]
        if v["continuous_rate"] > 0:
            self._periodic.append(Periodic(1.0 / v["continuous_rate"], lambda: self._request(None, "continuous"),
                                           "ace_continuous", counted(self.health, "continuous")))

    def start(self) -> None:
        targets = [self._work] + ([self._map_in_background] if self.values["online_mapping"] else [])
        for target in targets:
            thread = threading.Thread(target=target, name=f"ace_{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for periodic in self._periodic:
            periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for periodic in self._periodic:
            periodic.stop()
        with self._job_ready:
            self._job_ready.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _log_once(self, key: str, text: str) -> None:
        self.health.log_once(key, text)

    def _bad_input(self, cause: str, problem: str, fix: str) -> None:
        self.health.bad_input(cause, problem, fix)

    def _failure(self, name: str, text: str) -> None:
        self.health.failure(name, text)

    # -- inputs ---------------------------------------------------------------------------------
    def _on_images(self, *msgs) -> None:
        item = ImageSet(**dict(zip(self._roles, msgs)))
        with self._lock:
            self._latest = item
            self._latest_info = item.info or self._latest_info
            self._recent.append(item)
        if self._initial_pending:
            self._request_at_most_every_period("initial")

    def _on_query(self, msg: Image) -> None:
        with self._lock:
            info = self._latest_info
        self._request(ImageSet(msg, info), "query")

    def _on_tracking(self, msg: Bool) -> None:
        v = self.values
        self._lost_run = 0 if msg.data else self._lost_run + 1
        if v["recovery"] and self._lost_run >= v["lost_frames_for_recovery"] and not self._initial_pending:
            self._request_at_most_every_period("recovery")

    def _on_tracking_lost(self, msg: Header) -> None:
        with self._lock:
            self._lost_stamp_ns = header_ns(msg)

    def _lost_image(self) -> ImageSet | None:
        """The set PRISM lost last; None if it has left the buffer or PRISM never said which (the caller then
        takes the newest set)."""
        with self._lock:
            stamp = self._lost_stamp_ns
            match = next((s for s in reversed(self._recent) if header_ns(s.rgb) == stamp), None)
        if match is None and stamp is not None:
            self._log_once("lost_image_gone", f"the image PRISM lost ({stamp / 1e9:.3f} s) is no longer among the "
                           f"{self.values['image_buffer']} buffered sets: relocalizing the newest one (raise "
                           "image_buffer when PRISM lags this far behind)")
        return match

    def _request_at_most_every_period(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_recovery >= self.values["recovery_period"]:
            self._last_recovery = now
            self._request(None, reason)

    def _on_prism_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """Online mapping: the image set with this stamp becomes a keyframe when it shows a new viewpoint."""
        stamp = header_ns(msg)
        with self._lock:
            match = next((s for s in self._recent if header_ns(s.rgb) == stamp), None)
            poses = [T for T, _ in self._keyframes]
        if match is None:
            return
        try:
            T_world_camera = pose_to_matrix(msg.pose.pose) @ self.T_base_camera
        except InputError as error:
            self._bad_input("bad_pose", f"{self.values['prism_node']}/pose: {error.problem}", "send unit quaternions")
            return
        if not is_new_keyframe(T_world_camera, poses, self.values["keyframe_distance"],
                               self.values["keyframe_angle_deg"]):
            return
        try:
            frame = self._frame(match, with_depth=True)
        except BadInput as bad:
            self._bad_input(bad.cause, bad.problem, bad.fix)
            return
        from prism_ros.ace.buffer import prepare_frame
        from prism_ros.ace.mapping import get_recipe

        frame.pose = T_world_camera
        view = prepare_frame(frame, get_recipe(self.values["mapping_recipe"]).image_height, use_depth=True)
        with self._lock:
            self._keyframes.append((T_world_camera, view))
            while len(self._keyframes) > self.values["max_keyframes"]:
                self._keyframes.popleft()
            self._new_keyframes += 1
            self.stats.keyframes = len(self._keyframes)

    def _frame(self, item: ImageSet, with_depth: bool = False) -> Frame:
        """Decode one set into a Frame (BadInput naming the cause, the problem and the fix)."""
        rgb_msg = item.rgb
        if rgb_msg.encoding not in RGB_ENCODINGS:
            raise BadInput("bad_encoding", f"colour has encoding {rgb_msg.encoding!r}",
                           f"publish {', '.join(RGB_ENCODINGS[:5])}")
        v = self.values
        if item.info is None and v["intrinsics_source"] == "camera_info":
            raise BadInput("missing_camera_info", f"no CameraInfo on {v['camera_info_topic']} yet",
                       "publish the colour camera's CameraInfo")
        try:
            rgb = to_rgb(image_to_numpy(rgb_msg), rgb_msg.encoding)
            if v["intrinsics_source"] == "camera_info":
                intrinsics = camera_info_to_intrinsics(item.info, rectified=v["rectified_input"])
            else:
                fx, fy, cx, cy = v["intrinsics"]
                intrinsics = Intrinsics(fx, fy, cx, cy, rgb.shape[1], rgb.shape[0], tuple(v["distortion"]))
        except InputError as error:
            raise BadInput("bad_image", error.problem, error.fix or "fix the publisher") from None
        height, width = rgb.shape[:2]
        intrinsics = replace(intrinsics, width=width, height=height)
        depth = None
        if with_depth and item.depth is not None:
            if item.depth.encoding not in DEPTH_ENCODINGS:
                raise BadInput("bad_encoding", f"depth has encoding {item.depth.encoding!r}", "publish 16UC1 or 32FC1")
            try:
                depth = depth_to_metres(image_to_numpy(item.depth), item.depth.encoding, self.values["depth_scale"])
            except InputError as error:
                raise BadInput("bad_image", f"depth: {error.problem}", error.fix or "fix the publisher") from None
            if depth.shape[:2] != rgb.shape[:2]:
                raise BadInput("bad_image", "depth and colour sizes differ", "publish depth registered to colour")
        return Frame(index=0, timestamp=header_ns(rgb_msg) / 1e9, rgb=rgb, depth=depth, intrinsics=intrinsics)

    # -- relocalization -------------------------------------------------------------------------
    def _request(self, item: ImageSet | None, reason: str, done: dict | None = None) -> None:
        """Queue a relocalization (``item`` None: the newest set at the time it runs)."""
        with self._job_ready:
            self._jobs.append((item, reason, done))
            self._job_ready.notify()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._job_ready:
                if not self._jobs:
                    self._job_ready.wait(0.1)
                if not self._jobs:
                    continue
                item, reason, done = self._jobs.popleft()
            try:
                answer = self._relocalize(item, reason)
            except Exception as error:
                answer = (False, f"relocalization failed: {type(error).__name__}: {error}")
                self.get_logger().error(f"{answer[1]}\n{traceback.format_exc()}")
            if done is not None:
                done["answer"] = answer
                done["event"].set()

    def _relocalize(self, item: ImageSet | None, reason: str) -> tuple[bool, str]:
        from prism_ros.ace.hybrid import answer_query

        if item is None and reason == "recovery":
            item = self._lost_image()
        if item is None:
            with self._lock:
                item = self._latest
            if item is None:
                return False, f"no image received on {self.values['rgb_topic']} yet"
        with self._map_lock:
            ace_map = self.ace_map
        if ace_map is None:
            self._bad_input("no_map", "relocalization requested but no ACE map is loaded",
                            "set map_path and call ~/load_map, map offline with `prism-ros ace map`, or enable "
                            "online_mapping")
            return False, "no ACE map loaded"
        try:
            frame = self._frame(item, with_depth=True)
        except BadInput as bad:
            self._bad_input(bad.cause, bad.problem, bad.fix)
            return False, str(bad)
        v = self.values
        started = time.perf_counter()
        result = answer_query(ace_map, self.encoder, frame, v["depth_check"], v["second_opinion"],
                              threshold_px=v["threshold_px"] or None, hypotheses=v["hypotheses"],
                              min_inliers=v["min_inliers"])
        ms = 1e3 * (time.perf_counter() - started)
        with self._lock:
            self.stats.attempts += 1
            self.stats.last_inliers, self.stats.last_ms = int(result.inliers), ms
            self.stats.accepted += int(result.accepted)
            self.stats.rejected += int(not result.accepted)
            self.stats.last_source = result.source or "none"
            if result.accepted:
                self.stats.answered[result.source] += 1
                self.stats.depth_checked += int(result.verified)
        self.inliers_pub.publish(Int32(data=int(result.inliers) if result.accepted else 0))
        if not result.accepted:
            return False, f"rejected ({reason}): {result.reason}"
        T_map_base = result.pose @ self.T_camera_base
        floor = [v["position_std_floor"]] * 3 + [np.radians(v["rotation_std_floor_deg"])] * 3
        own = result.covariance if result.covariance is not None else np.zeros((6, 6))  # features: the floor only
        covariance = camera_covariance_to_ros(own, result.pose, T_map_base, v["covariance_scale"], floor)
        msg = matrix_to_pose_with_covariance(T_map_base, covariance, item.rgb.header.stamp, v["map_frame"])
        self.pose_pub.publish(msg)
        if reason == "recovery":
            self.set_pose_pub.publish(msg)
            with self._lock:
                self.stats.recoveries_sent += 1
            self._lost_run = 0  # frames PRISM lost before it got this pose must not trigger another one
            self.get_logger().info(f"recovery: sent {self.set_pose_pub.topic_name} for the image at "
                                   f"{header_ns(item.rgb) / 1e9:.6f} s ({result.inliers} inliers, base at "
                                   f"{np.round(T_map_base[:3, 3], 3).tolist()})")
        elif reason == "initial" and self._initial_pending:
            self._initial_pending = False
            self.initial_pose_pub.publish(msg)
            with self._lock:
                self.stats.initial_poses_sent += 1
            q = msg.pose.pose.orientation
            quaternion = " ".join(f"{value:.6f}" for value in (q.x, q.y, q.z, q.w))
            self.get_logger().info(f"initial localization: sent {self.initial_pose_pub.topic_name} for the image at "
                                   f"{header_ns(item.rgb) / 1e9:.6f} s ({result.inliers} inliers, base at "
                                   f"{np.round(T_map_base[:3, 3], 4).tolist()} quaternion {quaternion}): PRISM "
                                   "restarts in the map's frame")
        position = np.round(T_map_base[:3, 3], 3).tolist()
        checked = "depth-checked" if result.verified else "not depth-checked"
        return True, (f"base at {position} in {v['map_frame']}, {result.source} ({result.inliers} inliers, {checked}), "
                      f"{ms:.0f} ms ({reason})")

    # -- online mapping -------------------------------------------------------------------------
    def _map_in_background(self) -> None:
        from prism_ros.ace.mapping import get_recipe, map_views

        while not self._stop.wait(0.5):
            v = self.values
            with self._lock:
                ready = self._new_keyframes >= v["remap_after_keyframes"] and len(self._keyframes) >= 2
                views = [view for _, view in self._keyframes] if ready else []
                if ready:
                    self._new_keyframes = 0
            if not views:
                continue
            try:
                recipe = get_recipe(v["mapping_recipe"], steps=v["mapping_steps"] or None)
                first = views[0]
                K = first.K
                intrinsics = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                              int(first.grey.shape[1]), int(first.grey.shape[0]))
                started = time.perf_counter()
                ace_map = map_views(views, self.encoder, recipe, intrinsics, use_depth=True, device=self.device,
                                    progress=False, feature_step=1)  # keyframes are new viewpoints already
                seconds = time.perf_counter() - started
                with self._map_lock:
                    self.ace_map = ace_map
                saved = self._save(ace_map)
                with self._lock:  # counted once the file is in place: a client seeing mappings >= 1 can read it
                    self.stats.mappings += 1
                    self.stats.last_mapping_s = seconds
                self.get_logger().info(f"online mapping: {len(views)} keyframes mapped in {seconds:.1f} s; {saved}")
            except Exception as error:
                if self._stop.is_set():
                    return
                self._failure("mapping", f"online mapping failed: {type(error).__name__}: {error}")

    # -- services -------------------------------------------------------------------------------
    def _srv_relocalize(self, _request, response):
        done = {"event": threading.Event()}
        self._request(None, "request", done)
        if not done["event"].wait(60.0):
            response.success, response.message = False, "relocalization did not finish within 60 s"
        else:
            response.success, response.message = done["answer"]
        return response

    def _save(self, ace_map) -> str:
        from prism_ros.ace import save_map

        path = Path(self.values["map_path"]).expanduser()
        partial = path.with_name(path.name + ".partial")
        save_map(ace_map, partial)
        partial.replace(path)
        return f"map saved to {path}"

    def _srv_save_map(self, _request, response):
        with self._map_lock:
            ace_map = self.ace_map
        try:
            if ace_map is None:
                raise InputError("no ACE map to save", "load or build one first")
            response.success, response.message = True, self._save(ace_map)
        except (InputError, OSError, RuntimeError) as error:
            response.success = False
            response.message = f"cannot save the ACE map to {self.values['map_path']}: {error}"
            self._failure("save_map", response.message)
        return response

    def _srv_load_map(self, _request, response):
        path = Path(self.values["map_path"]).expanduser()
        try:
            loaded = self._read_map(path)
        except InputError as error:
            response.success, response.message = False, f"cannot load the ACE map: {error}"
            self._failure("load_map", response.message)
            return response
        with self._map_lock:
            self.ace_map = loaded
        self._initial_pending = self.values["initial_localization"]
        response.success, response.message = True, f"loaded {len(loaded.heads)} head(s) from {path}"
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        converted, refused = checked_changes(PARAMETERS, parameters, "config/ace.yaml")
        if refused:
            self._failure("rejected_parameter", f"rejected parameter change: {refused}")
            return SetParametersResult(successful=False, reason=refused)
        self.values.update(converted)
        return SetParametersResult(successful=True)

    # -- diagnostics ----------------------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, str]:
        with self._lock:
            s = self.stats
            values = {"map": "loaded" if self.ace_map is not None else "none", "attempts": s.attempts,
                      "accepted": s.accepted, "rejected": s.rejected, "recoveries_sent": s.recoveries_sent,
                      "initial_poses_sent": s.initial_poses_sent,
                      "last_inliers": s.last_inliers, "last_ms": f"{s.last_ms:.1f}", "keyframes": s.keyframes,
                      "answered_ace": s.answered["ace"], "answered_features": s.answered["features"],
                      "depth_checked": s.depth_checked, "last_source": s.last_source or "none",
                      "map_depth_check": "yes" if self.ace_map is not None and self.ace_map.cloud is not None
                      else "no",
                      "mappings": s.mappings, "last_mapping_s": f"{s.last_mapping_s:.1f}",
                      **self.health.values(), "device": self.device,
                      "prism_lost_run": self._lost_run}
        return {k: str(v) for k, v in values.items()}

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        ready = values["map"] == "loaded"
        self.diag_pub.publish(diagnostics_message(f"{NODE_NAME}: relocalization", ready, "ready" if ready else "no map",
                                                  values, self.get_clock().now().to_msg(), self.device))


def main(args: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 2 on invalid parameters."""
    return run_node(AceNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
