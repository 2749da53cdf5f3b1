"""trajectory_recorder: writes pose topics to TUM files so any estimator can be scored with `prism-ros eval`.

Each ``topics`` entry is ``TOPIC=FILE``; the message type is discovered from the ROS graph
(PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped), so the recorder can be
started before the publisher. Files are rewritten every ``flush_period_s`` so a crash loses at most
that much; with ``idle_timeout_s`` > 0 the node exits once every topic has gone quiet (used by the
demo and tests to end a replay).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from prism_ros.errors import InputError
from prism_ros.evaluation.trajectory_io import write_tum
from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import (
    odometry_to_matrix,
    pose_stamped_to_matrix,
    pose_with_covariance_to_matrix,
    stamp_to_sec,
    transform_stamped_to_matrix,
)
from prism_ros.nodes.runner import interruptible

#: graph type name -> (message class, message -> 4x4 pose)
POSE_TYPES = {
    "geometry_msgs/msg/PoseStamped": (PoseStamped, pose_stamped_to_matrix),
    "geometry_msgs/msg/PoseWithCovarianceStamped":
        (PoseWithCovarianceStamped, lambda msg: pose_with_covariance_to_matrix(msg)[0]),
    "geometry_msgs/msg/TransformStamped": (TransformStamped, transform_stamped_to_matrix),
    "nav_msgs/msg/Odometry": (Odometry, lambda msg: odometry_to_matrix(msg)[0]),
}


def parse_topic_files(entries: list[str], output_dir: Path) -> dict[str, Path]:
    """``["/a=a.txt", ...]`` -> {"/a": output_dir/"a.txt"}; a bare topic gets ``<topic>.txt``."""
    mapping = {}
    for entry in entries:
        topic, _, name = entry.partition("=")
        name = name or topic.strip("/").replace("/", "_") + ".txt"
        mapping[topic] = output_dir / name
    return mapping


class TrajectoryRecorder(Node):
    """Subscribes to pose-like topics and keeps TUM files of what arrived."""

    def __init__(self):
        super().__init__("trajectory_recorder")
        topics = self.declare_parameter("topics", ["/ground_truth=ground_truth.txt"]).value
        output_dir = Path(self.declare_parameter("output_dir", ".").value)
        self.idle_timeout = float(self.declare_parameter("idle_timeout_s", 0.0).value)
        flush_period = float(self.declare_parameter("flush_period_s", 1.0).value)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.files = parse_topic_files(list(topics), output_dir)
        self.samples: dict[str, list[tuple[float, np.ndarray]]] = {t: [] for t in self.files}
        self.subscriptions_by_topic: dict[str, object] = {}
        self.last_message_time: float | None = None
        self.done = False
        self.create_timer(0.2, self.subscribe_to_new_topics)
        self.create_timer(flush_period, self.flush)
        self.create_timer(0.2, self.check_idle)
        self.get_logger().info(f"recording {', '.join(f'{t} -> {p}' for t, p in self.files.items())}")

    def subscribe_to_new_topics(self) -> None:
        """Subscribe to each wanted topic once its type is visible in the graph."""
        for topic, types in self.get_topic_names_and_types():
            if topic not in self.files or topic in self.subscriptions_by_topic:
                continue
            known = next((POSE_TYPES[t] for t in types if t in POSE_TYPES), None)
            if known is None:
                self.get_logger().error(f"{topic} has type {types}; expected one of {sorted(POSE_TYPES)}")
                self.subscriptions_by_topic[topic] = None  # say it once
                continue
            msg_type, to_matrix = known
            self.subscriptions_by_topic[topic] = self.create_subscription(
                msg_type, topic, lambda msg, topic=topic, f=to_matrix: self.on_pose(topic, msg, f),
                reliable_qos(1000))

    def on_pose(self, topic: str, msg, to_matrix) -> None:
        try:
            pose = to_matrix(msg)
        except InputError:  # not a rotation, or not finite: nothing to record
            return
        self.samples[topic].append((stamp_to_sec(msg.header.stamp), pose))
        self.last_message_time = time.monotonic()

    def flush(self) -> None:
        """Rewrite each file with all poses received so far (sorted by stamp, duplicates dropped)."""
        for topic, samples in self.samples.items():
            if not samples:
                continue
            stamps = np.array([s for s, _ in samples])
            order = np.argsort(stamps, kind="stable")
            keep = np.concatenate([[True], np.diff(stamps[order]) > 0])
            poses = np.stack([samples[i][1] for i in order[keep]])
            write_tum(self.files[topic], stamps[order][keep], poses)

    def check_idle(self) -> None:
        if self.idle_timeout <= 0 or self.last_message_time is None:
            return
        if time.monotonic() - self.last_message_time > self.idle_timeout:
            counts = ", ".join(f"{t}: {len(s)}" for t, s in self.samples.items())
            self.get_logger().info(f"no messages for {self.idle_timeout:.1f} s, finishing ({counts})")
            self.done = True


def main(args: list[str] | None = None) -> int:
    interruptible()
    rclpy.init(args=args if args is not None else sys.argv)
    node = TrajectoryRecorder()
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C/SIGTERM, also when it lands mid-wait
        pass
    finally:
        node.flush()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
