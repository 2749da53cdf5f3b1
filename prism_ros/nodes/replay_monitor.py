"""The replay's ROS side: a monitor node that collects what prism_node publishes and calls its services, and
the conversion of the received odometry back to the filter's estimates (used by
:mod:`prism_ros.launch_graph.replay`)."""
from __future__ import annotations

import time

import numpy as np

NODE = "/prism_node"
NOT_STAGES = {"step_ms", "latency_ms"}  # ~/frame_timing keys that are not filter stages

class ReplayMonitor:
    """The replay's own node (this process): collects what prism_node publishes and calls its services."""

    def __init__(self, domain_id: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        from prism_ros.nodes.compat import reliable_qos

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("prism_replay", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.odometry: list = []
        self.poses: dict[int, object] = {}  # ~/pose by stamp (ns): the map-frame pose of each odometry message
        self.timing: dict[int, dict[str, float]] = {}
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.node.create_subscription(Odometry, f"{NODE}/odometry", self.odometry.append, reliable_qos(10000))
        self.node.create_subscription(PoseWithCovarianceStamped, f"{NODE}/pose", self._on_pose, reliable_qos(10000))
        self.node.create_subscription(DiagnosticArray, f"{NODE}/frame_timing", self._on_timing, reliable_qos(10000))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable_qos(100))

    def _on_pose(self, msg) -> None:
        from prism_ros.nodes.conversions import header_ns

        self.poses[header_ns(msg)] = msg

    def _on_timing(self, msg) -> None:
        from prism_ros.nodes.conversions import header_ns

        for status in msg.status:
            values = {kv.key: float(kv.value) for kv in status.values}
            self.timing[header_ns(msg)] = values | {"tracking_ok": float(status.message == "tracking")}

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("prism_node"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics_at = time.monotonic()

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def node_ready(self) -> bool:
        """prism_node's odometry and timing publishers are discovered and matched to ours."""
        return all(self.node.count_publishers(f"{NODE}/{topic}") > 0 for topic in ("odometry", "frame_timing"))

    def count(self, key: str) -> int:
        return int(self.diagnostics.get(key, 0))

    def call(self, service: str, timeout: float) -> tuple[bool, str]:
        """Call a std_srvs/Trigger service of prism_node; (success, message)."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, f"{NODE}/{service}")
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                return False, f"{NODE}/{service} is not available"
            future = client.call_async(Trigger.Request())
            end = time.monotonic() + timeout
            while not future.done() and time.monotonic() < end:
                self.executor.spin_once(timeout_sec=0.05)
            if not future.done():
                return False, f"{NODE}/{service} did not answer within {timeout:.0f} s"
            return future.result().success, future.result().message
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def estimates_from_messages(odometry: list, timing: dict[int, dict[str, float]], values: dict,
                            poses: dict[int, object] | None = None) -> list:
    """The node's odometry messages back in the filter's terms (:class:`prism_ros.prism.filter.Estimate`):
    camera pose ``T_map_base @ T_base_camera``, the left se(3) covariance (undoing the ROS lever arm), and
    the velocity [world velocity of the body origin, body rates] (undoing :func:`base_twist`). The pose and its
    covariance come from ``poses`` (~/pose by stamp, in the map frame) when given: the odometry is in the odom
    frame, which a relocalization separates from the map; a stamp without its pose is left out."""
    from prism_ros.nodes.conversions import (
        base_twist,
        covariance_from_msg,
        header_ns,
        odometry_to_matrix,
        pose_to_matrix,
        ros_covariance_to_left,
    )
    from prism_ros.nodes.prism_parameters import build_filter_config
    from prism_ros.prism.filter import Estimate

    T_base_camera = np.asarray(values["T_base_camera"], dtype=np.float64).reshape(4, 4)
    T_body_camera = np.asarray(build_filter_config(values).T_body_camera, dtype=np.float64).reshape(4, 4)
    estimates = []
    for msg in sorted(odometry, key=header_ns):
        T_map_base, covariance = odometry_to_matrix(msg)
        if poses is not None:
            if header_ns(msg) not in poses:
                continue
            pose = poses[header_ns(msg)].pose
            T_map_base, covariance = pose_to_matrix(pose.pose), covariance_from_msg(pose.covariance)
        T_world_camera = T_map_base @ T_base_camera
        T_world_body = T_world_camera @ np.linalg.inv(T_body_camera)
        twist_jacobian, _ = base_twist(np.eye(6), np.eye(6), T_world_body, T_map_base)  # J @ I = J
        tw = msg.twist.twist
        twist = np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z])
        K = np.linalg.inv(twist_jacobian)
        stamp = header_ns(msg)
        stages = timing.get(stamp, {})
        estimates.append(Estimate(
            t=stamp / 1e9, T_world_camera=T_world_camera,
            pose_covariance=ros_covariance_to_left(covariance, T_map_base[:3, 3]),
            velocity=K @ twist, velocity_covariance=K @ covariance_from_msg(msg.twist.covariance) @ K.T,
            tracking_ok=stages.get("tracking_ok", 1.0) == 1.0,
            timings_ms={k[:-3]: v for k, v in stages.items() if k.endswith("_ms") and k not in NOT_STAGES}))
    return estimates
