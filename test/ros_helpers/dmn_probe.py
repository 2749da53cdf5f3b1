"""The test's side of a live dmn_node: its diagnostics, particles and estimates, a camera (and odometry and
/initialpose) to publish, and spinning until a condition holds."""
from __future__ import annotations

import subprocess
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from prism_ros.nodes.compat import reliable_qos
from ros_helpers.ros_args import ros_args


class DmnProbe:
    def __init__(self, node, rgb_topic: str = "/probe/rgb", odometry_topic: str = "/probe/odom"):
        self.node, self.rgb_topic = node, rgb_topic
        self.diag: list[dict[str, str]] = []
        self.particles: list[PoseArray] = []
        self.pose: list[PoseWithCovarianceStamped] = []
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diag.extend(
            {kv.key: kv.value for kv in s.values} for s in m.status if s.name.startswith("dmn_node")),
            reliable_qos(50))
        node.create_subscription(PoseArray, "/dmn_node/particles", self.particles.append, reliable_qos(20))
        node.create_subscription(PoseWithCovarianceStamped, "/dmn_node/pose", self.pose.append, reliable_qos(20))
        self.images = node.create_publisher(Image, rgb_topic, reliable_qos(10))
        self.odometry = node.create_publisher(Odometry, odometry_topic, reliable_qos(50))
        self.initial = node.create_publisher(PoseWithCovarianceStamped, "/initialpose", reliable_qos(10))
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)

    def spin_until(self, condition, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
        return bool(condition())

    def start(self, spawn_python, log, weights, contexts, env: dict | None = None, **params):
        """dmn_node on the probe's camera (reliable), its output in ``log``, once it is ready."""
        node = spawn_python(["-m", "prism_ros.nodes.dmn_node"], "--ros-args", *ros_args(
            weights_path=weights, context_path=contexts, rgb_topic=self.rgb_topic, image_qos="reliable", **params),
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.wait_ready(log)
        return node

    def wait_ready(self, log, contexts: int = 6) -> None:
        """dmn_node reports its contexts and subscribes to the camera."""
        assert self.spin_until(lambda: self.diag and self.diag[-1]["contexts"] == str(contexts), 60), log.read_text()
        assert self.spin_until(lambda: self.images.get_subscription_count() > 0, 10)

    def last(self) -> dict[str, str]:
        return self.diag[-1] if self.diag else {}
