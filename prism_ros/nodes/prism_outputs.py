"""prism_node's per-frame outputs: the base pose (``~/pose``), odometry and path, the tracking verdict
(``~/tracking_ok``, ``~/tracking_lost``, ``~/tracking_status``), the stage times (``~/frame_timing``) and TF per
REP-105 (:mod:`prism_ros.nodes.tf`): filter estimates in, messages out."""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from std_msgs.msg import Bool, Header

from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import (
    base_twist,
    diagnostics_message,
    left_covariance_to_ros,
    make_header,
    matrix_to_odometry,
    matrix_to_pose_with_covariance,
    matrix_to_transform_stamped,
    stamp_to_sec,
)
from prism_ros.nodes.prism_inputs import BadInput
from prism_ros.nodes.tf import MapOdom, TfBridge, TransformError


class EstimatePublisher:
    """The outputs of each processed frame. ``values`` are the node's parameters (read live); ``warn`` logs a
    problem once (a missing tf2_msgs)."""

    def __init__(self, node, values: dict, warn: Callable[[str], None], guard: Callable | None = None):
        self.node, self.values = node, values
        self.tracking_pub = node.create_publisher(Bool, "~/tracking_ok", reliable_qos(10))
        self.lost_pub = node.create_publisher(Header, "~/tracking_lost", reliable_qos(10))
        self.status_pub = node.create_publisher(DiagnosticArray, "~/tracking_status", reliable_qos(10))
        self.pose_pub = node.create_publisher(PoseWithCovarianceStamped, "~/pose", reliable_qos(10))
        self.odom_pub = node.create_publisher(Odometry, "~/odometry", reliable_qos(10))
        self.path_pub = node.create_publisher(PathMsg, "~/path", reliable_qos(10))
        self.timing_pub = node.create_publisher(DiagnosticArray, "~/frame_timing", reliable_qos(10))
        self.tf = TfBridge(node, cache_s=60.0, warn=warn, guard=guard)
        self.map_odom = MapOdom()
        self.path: deque = deque()
        self._path_lock = threading.Lock()  # the worker appends, a reset (executor) clears

    def pose(self, estimate, stamp, T_camera_base: np.ndarray, T_camera_body: np.ndarray, generation: int = 0) -> None:
        """``~/pose`` (base in map_frame), ``~/odometry``, ``~/path`` and TF of one estimate of PRISM's pose
        ``generation`` (:class:`MapOdom`); BadInput (missing_tf) after publishing when the external odometry has
        no transform at the frame's stamp."""
        v = self.values
        T_world_camera = np.asarray(estimate.T_world_camera, dtype=np.float64)
        T_map_base = T_world_camera @ T_camera_base
        covariance = left_covariance_to_ros(estimate.pose_covariance, T_map_base[:3, 3])
        pose = matrix_to_pose_with_covariance(T_map_base, covariance, stamp, v["map_frame"])
        self.pose_pub.publish(pose)
        T_world_body = T_world_camera @ T_camera_body
        twist, twist_covariance = base_twist(estimate.velocity, estimate.velocity_covariance, T_world_body, T_map_base)
        missing = None
        try:
            T_frame_base, frame = self._odometry(T_map_base, stamp, generation)
        except BadInput as bad:
            (T_frame_base, frame), missing = (T_map_base, v["map_frame"]), bad
        rotate = np.kron(np.eye(2), T_frame_base[:3, :3] @ T_map_base[:3, :3].T)  # map -> odom axes
        self.odom_pub.publish(matrix_to_odometry(T_frame_base, stamp, frame, v["base_frame"],
                                                 rotate @ covariance @ rotate.T, twist, twist_covariance))
        with self._path_lock:
            self.path.append(PoseStamped(header=make_header(v["map_frame"], stamp), pose=pose.pose.pose))
            while len(self.path) > v["path_max_length"]:
                self.path.popleft()
            poses = list(self.path)
        self.path_pub.publish(PathMsg(header=make_header(v["map_frame"], stamp), poses=poses))
        if missing is not None:
            raise missing

    def clear_path(self) -> None:
        """Forget ~/path (the map frame restarted)."""
        with self._path_lock:
            self.path.clear()

    def _odometry(self, T_map_base: np.ndarray, stamp, generation: int) -> tuple[np.ndarray, str]:
        """REP-105 for one pose: the base pose for ~/odometry and its frame, odom -> base_frame on /tf when PRISM
        owns odom, and map -> odom (from PRISM's odom, or from the external odometry at the frame's stamp)."""
        v = self.values
        if v["publish_odom_tf"]:
            T_odom_base = self.map_odom.owned(T_map_base, generation)
            self.tf.send([matrix_to_transform_stamped(T_odom_base, stamp, v["odom_frame"], v["base_frame"])])
            self.send_map_odom(stamp_to_sec(stamp))
            return T_odom_base, v["odom_frame"]
        t = stamp_to_sec(stamp)
        try:
            T_odom_base = self.tf.lookup(v["odom_frame"], v["base_frame"], t, v["transform_tolerance"])
        except TransformError as error:
            raise BadInput("missing_tf", f"no external odometry at the frame's stamp {t:.6f} s ({error}); map -> "
                           "odom kept", f"start the node that broadcasts {v['odom_frame']} -> {v['base_frame']}, or "
                           "publish_odom_tf:=true (PRISM is the odometry)") from None
        self.map_odom.external(T_map_base, T_odom_base, generation)
        self.send_map_odom(t)
        return T_map_base, v["map_frame"]

    def send_map_odom(self, t: float | None = None) -> None:
        """map -> odom, stamped ``transform_tolerance`` ahead of ``t`` (a frame's stamp; default: the clock)."""
        v = self.values
        if not (v["publish_map_odom_tf"] and self.map_odom.known):
            return
        if t is None:
            t = self.node.get_clock().now().nanoseconds / 1e9
        self.tf.send([matrix_to_transform_stamped(self.map_odom.T_map_odom, t + v["transform_tolerance"],
                                                  v["map_frame"], v["odom_frame"])])

    def verdict(self, estimate, stamp, camera_frame: str, lost_for: float) -> None:
        """Whether the frame was tracked: ``~/tracking_lost`` (a lost frame's stamp, first, so that a relocalizer
        counting lost frames knows which), ``~/tracking_ok`` and the stamped ``~/tracking_status``."""
        if not estimate.tracking_ok:
            self.lost_pub.publish(Header(stamp=stamp, frame_id=camera_frame))
        self.tracking_pub.publish(Bool(data=bool(estimate.tracking_ok)))
        quality = estimate.quality or {}
        values = {"tracking_ok": str(bool(estimate.tracking_ok)).lower(), "lost_for_s": f"{lost_for:.3f}",
                  **{key: f"{float(quality[key]):.4g}" for key in ("inlier_ratio", "coverage", "icp_rmse")
                     if key in quality},
                  "reasons": "; ".join(map(str, quality.get("reasons", [])))}
        self.status_pub.publish(diagnostics_message(
            f"{self.node.get_name()}: tracking", bool(estimate.tracking_ok),
            "tracking" if estimate.tracking_ok else "lost", values, stamp, frame_id=camera_frame,
            level=self.loss_level(not estimate.tracking_ok, lost_for)))

    def loss_level(self, lost: bool, lost_for: float):
        """ERROR once tracking has been lost for ``lost_error_after`` seconds of frame stamps, else None (the
        status's own OK / WARN)."""
        return DiagnosticStatus.ERROR if lost and lost_for >= self.values["lost_error_after"] else None

    def timing(self, estimate, stamp, step_ms: float, latency_ms: float, stereo_ms: float | None = None) -> None:
        """``~/frame_timing``: per processed frame, the filter's stage times, the whole step and the latency
        (set complete -> outputs published), all in ms, stamped with the frame (profiling, `prism-ros replay`);
        with stereo depth also ``stereo_ms`` (decoding, rectification and SGBM, before the step)."""
        values = {**{f"{stage}_ms": ms for stage, ms in estimate.timings_ms.items()}, "step_ms": step_ms,
                  "latency_ms": latency_ms}
        if stereo_ms is not None:
            values["stereo_ms"] = stereo_ms
        self.timing_pub.publish(diagnostics_message(
            f"{self.node.get_name()}: frame", estimate.tracking_ok, "tracking" if estimate.tracking_ok else "lost",
            {k: f"{ms:.3f}" for k, ms in values.items()}, stamp, frame_id=self.values["map_frame"]))
