"""What the prism_node tests use in the test process: a probe node that listens to every output of a
prism_node, publishes crafted sensor messages, calls its services and sets its parameters over DDS.

It wraps the ``ros_node`` fixture's node (its own rclpy context, loopback settings) and spins it on a
private executor only while a test waits, so nothing runs in the background.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import intrinsics_to_camera_info, ns_to_stamp, numpy_to_image

NODE = "/prism_node"
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class PrismProbe:
    """Subscribes to ``/prism_node/{pose,odometry,path,mesh,map_cloud}`` and ``/diagnostics``; publishes
    colour, depth, CameraInfo and IMU on the given topics (and right images with ``right_topic``, for a node
    with stereo depth); calls services; sets parameters."""

    def __init__(self, node, rgb_topic="/probe/rgb", depth_topic="/probe/depth", info_topic="/probe/camera_info",
                 imu_topic="/probe/imu", right_topic: str | None = None):
        self.node = node
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.got: dict[str, list] = defaultdict(list)
        self.diagnostics: list[dict[str, str]] = []
        outputs = {"pose": PoseWithCovarianceStamped, "odometry": Odometry, "path": Path}
        self.subscriptions = {name: node.create_subscription(msg_type, f"{NODE}/{name}",
                                                             lambda m, n=name: self.got[n].append(m),
                                                             reliable_qos(1000))
                              for name, msg_type in outputs.items()}
        node.create_subscription(MarkerArray, f"{NODE}/mesh", lambda m: self.got["mesh"].append(m), LATCHED)
        node.create_subscription(PointCloud2, f"{NODE}/map_cloud", lambda m: self.got["map_cloud"].append(m), LATCHED)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable_qos(100))
        self.rgb_pub = node.create_publisher(Image, rgb_topic, reliable_qos(50))
        self.depth_pub = node.create_publisher(Image, depth_topic, reliable_qos(50))
        self.info_pub = node.create_publisher(CameraInfo, info_topic, reliable_qos(50))
        self.imu_pub = node.create_publisher(Imu, imu_topic, reliable_qos(50))
        self.right_pub = node.create_publisher(Image, right_topic, reliable_qos(50)) if right_topic else None
        self.initial_pose_pub = node.create_publisher(PoseWithCovarianceStamped, "/initialpose", reliable_qos(10))
        self.reset_pose_pub = node.create_publisher(PoseWithCovarianceStamped, "/prism_node/reset_at_pose",
                                                    reliable_qos(10))
        self.clients: dict[str, object] = {}

    # -- waiting ------------------------------------------------------------------------------------
    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def spin_until(self, condition, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return condition()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("prism_node"):
                values = {kv.key: kv.value for kv in status.values}
                values["_level"], values["_message"] = str(int.from_bytes(status.level, "little")
                                                          if isinstance(status.level, bytes) else status.level), \
                    status.message
                self.diagnostics.append(values)

    def diag(self) -> dict[str, str]:
        """The latest prism_node diagnostics values ({} before the first)."""
        return self.diagnostics[-1] if self.diagnostics else {}

    def value(self, key: str, default: int = -1) -> int:
        found = self.diag().get(key)
        return default if found is None else int(found)

    def wait_diag(self, condition, timeout: float = 15.0) -> dict[str, str]:
        """Spin until a diagnostics message satisfies ``condition(values)``; that message (AssertionError if none)."""
        start = len(self.diagnostics)
        ok = self.spin_until(lambda: any(condition(d) for d in self.diagnostics[start:]), timeout)
        assert ok, f"diagnostics never satisfied the condition; last: {self.diag()}"
        return next(d for d in self.diagnostics[start:] if condition(d))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The node publishes diagnostics and our output subscriptions are matched."""
        ok = self.spin_until(lambda: self.diagnostics and all(
            s.get_publisher_count() >= 1 for s in self.subscriptions.values()), timeout)
        assert ok, "prism_node did not come up (no diagnostics or outputs not matched)"
        inputs = (self.rgb_pub, self.right_pub if self.right_pub is not None else self.depth_pub)
        ok = self.spin_until(lambda: all(p.get_subscription_count() >= 1 for p in inputs), 5.0)

    # -- services and parameters ---------------------------------------------------------------------
    def call(self, service: str, timeout: float = 20.0) -> Trigger.Response:
        client = self.clients.get(service) or self.node.create_client(Trigger, f"{NODE}/{service}")
        self.clients[service] = client
        assert self.spin_until(client.service_is_ready, 10.0), f"service {service} not available"
        future = client.call_async(Trigger.Request())
        assert self.spin_until(future.done, timeout), f"service {service} did not answer"
        return future.result()

    def set_parameter(self, name: str, value) -> tuple[bool, str]:
        client = self.clients.get("set_parameters") or self.node.create_client(SetParameters,
                                                                               f"{NODE}/set_parameters")
        self.clients["set_parameters"] = client
        assert self.spin_until(client.service_is_ready, 10.0), "set_parameters not available"
        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        elif isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, (list, tuple)):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[float(v) for v in value])
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
        future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=pv)]))
        assert self.spin_until(future.done, 10.0), "set_parameters did not answer"
        result = future.result().results[0]
        return result.successful, result.reason

    # -- publishing ----------------------------------------------------------------------------------
    def publish_frame(self, rgb: np.ndarray, depth: np.ndarray, intrinsics, stamp_ns: int, *,
                      rgb_stamp_ns: int | None = None, info: bool = True, rgb_encoding: str = "rgb8",
                      depth_encoding: str = "32FC1", camera_info: CameraInfo | None = None,
                      frame_id: str = "camera_rgb_optical_frame", gap_s: float = 0.0) -> None:
        """One colour/depth(/CameraInfo) set; ``rgb_stamp_ns`` shifts the colour stamp (unsynchronised);
        ``gap_s`` seconds pass between the colour image and the rest (a publisher that stalls mid-set)."""
        stamp = ns_to_stamp(stamp_ns)
        rgb_msg = numpy_to_image(rgb, rgb_encoding, frame_id=frame_id)
        rgb_msg.header.stamp = ns_to_stamp(stamp_ns if rgb_stamp_ns is None else rgb_stamp_ns)
        depth_msg = numpy_to_image(depth, depth_encoding, frame_id=frame_id)
        depth_msg.header.stamp = stamp
        self.rgb_pub.publish(rgb_msg)
        if gap_s:
            self.spin(gap_s)
        self.depth_pub.publish(depth_msg)
        if info:
            msg = camera_info or intrinsics_to_camera_info(intrinsics, frame_id=frame_id)
            msg.header.stamp = stamp
            self.info_pub.publish(msg)

    def publish_stereo(self, left: np.ndarray, right: np.ndarray | None, stamp_ns: int, *, encoding: str = "mono8",
                       right_encoding: str | None = None, frame_id: str = "cam0") -> None:
        """One left/right pair with the same stamp (needs ``right_topic``); ``right=None``: the left image only."""
        pairs = ((self.rgb_pub, left, encoding), (self.right_pub, right, right_encoding or encoding))
        for publisher, pixels, pixel_encoding in pairs:
            if pixels is None:
                continue
            msg = numpy_to_image(pixels, pixel_encoding, frame_id=frame_id)
            msg.header.stamp = ns_to_stamp(stamp_ns)
            publisher.publish(msg)
