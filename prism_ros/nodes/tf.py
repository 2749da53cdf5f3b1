"""TF for the nodes: /tf and /tf_static out and in over tf2_msgs/TFMessage, and REP-105's map -> odom.

tf2_ros has no PyPI wheel and its Python buffer cannot be counted on, so the nodes publish TFMessage
themselves with tf2_ros's QoS (``/tf``: reliable, volatile, depth 100; ``/tf_static``: reliable,
transient local, every static transform of the node in one latched message) and listen through
:class:`prism_ros.geometry.transform_tree.TransformTree`. tf2_msgs itself comes with any ROS install, and
``make venv`` builds it from its message definition where only the PyPI wheels are installed
(``tools/build_tf2_msgs.py``). Without it nothing is sent (warned once) and lookups fail with that reason.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from prism_ros.errors import InputError
from prism_ros.geometry.lie import se3_inverse_np
from prism_ros.geometry.transform_tree import TransformError, TransformTree
from prism_ros.nodes.compat import has_ros_piece
from prism_ros.nodes.conversions import stamp_to_sec, transform_stamped_to_matrix

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_MISSING = ("tf2_msgs is not installed: nothing is sent on /tf and no transform can be looked up (poses are "
              "still published on topics); source a ROS 2 install, or run `make venv`, which builds it")


class TfBridge:
    """A node's TF: ``send`` / ``send_static`` publish, ``lookup`` answers from what /tf and /tf_static carried
    (the node's own transforms included)."""

    def __init__(self, node, listen: bool = True, cache_s: float = 10.0, warn: Callable[[str], None] | None = None,
                 guard: Callable[[str, Callable], Callable] | None = None):
        """``guard(name, callback)``: the node's callback guard (:meth:`prism_ros.nodes.health.Health.guard`)."""
        self.available = has_ros_piece("tf2_msgs")
        self.tree = TransformTree(cache_s)
        self._warn = warn or node.get_logger().warning
        self._warned = False
        self._static: dict[str, object] = {}  # child frame -> TransformStamped, all republished together
        self._tf_sub = None
        if not self.available:
            return
        from tf2_msgs.msg import TFMessage

        self._message = TFMessage
        self._tf_pub = node.create_publisher(TFMessage, "/tf", TF_QOS)
        self._static_pub = node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        if listen:
            static_in = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                   reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            guard = guard or (lambda _name, callback: callback)
            self._tf_sub = node.create_subscription(TFMessage, "/tf", guard("tf", lambda msg: self._on_tf(msg, False)),
                                                    TF_QOS)
            node.create_subscription(TFMessage, "/tf_static", guard("tf_static", lambda msg: self._on_tf(msg, True)),
                                     static_in)

    def send(self, transforms: list) -> None:
        """Publish TransformStamped messages on /tf."""
        if self._usable():
            self._tf_pub.publish(self._message(transforms=list(transforms)))

    def send_static(self, transforms: list) -> None:
        """Add (or replace, by child frame) static transforms and latch the node's whole set on /tf_static."""
        if self._usable():
            self._static.update({t.child_frame_id: t for t in transforms})
            self._static_pub.publish(self._message(transforms=list(self._static.values())))

    def peers(self) -> tuple[int, int]:
        """(/tf publishers matched with this node's /tf subscription, /tf subscribers matched with its publisher):
        transforms sent before a peer matched are lost to it, as with tf2_ros."""
        if not self.available:
            return 0, 0
        return (self._tf_sub.get_publisher_count() if self._tf_sub is not None else 0,
                self._tf_pub.get_subscription_count())

    def lookup(self, target: str, source: str, t: float | None = None, tolerance: float = 0.0) -> np.ndarray:
        """``T_target_source`` at ``t`` s (None: newest); TransformError naming what is missing."""
        if not self.available:
            raise TransformError(TF_MISSING)
        return self.tree.lookup(target, source, t, tolerance)

    def _usable(self) -> bool:
        if not self.available and not self._warned:
            self._warned = True
            self._warn(TF_MISSING)
        return self.available

    def _on_tf(self, msg, static: bool) -> None:
        for transform in msg.transforms:
            try:
                T = transform_stamped_to_matrix(transform)
                if np.isfinite(T).all():  # another node's malformed transform is not ours to judge: skipped
                    self.tree.set(transform.header.frame_id, transform.child_frame_id,
                                  stamp_to_sec(transform.header.stamp), T, static)
            except (ValueError, TypeError, InputError):
                continue


class MapOdom:
    """REP-105's map -> odom: odom is continuous, map is where PRISM says the base is.

    Owning odom (no other odometry): ``T_odom_base = inv(T_map_odom) T_map_base``. Each pose comes with the
    generation of PRISM's pose (the node counts relocalizations, /initialpose and resets under its map lock);
    a pose of a new generation is absorbed by ``T_map_odom``, so odom carries on from its last pose instead of
    jumping, and a pose of the old generation published late cannot use that up. With external odometry
    (another node owns odom -> base), ``T_map_odom = T_map_base inv(T_odom_base)`` of that odometry.
    """

    def __init__(self):
        self.T_map_odom = np.eye(4)
        self.T_odom_base: np.ndarray | None = None  # the last odom pose of the base
        self._generation = 0
        self.known = False  # a map -> odom has been computed (publish it)

    def owned(self, T_map_base: np.ndarray, generation: int = 0) -> np.ndarray:
        """The odom pose of the base for PRISM's ``T_map_base`` of ``generation`` when PRISM owns odom."""
        if generation != self._generation and self.T_odom_base is not None:
            self.T_map_odom = T_map_base @ se3_inverse_np(self.T_odom_base)
        self._generation, self.known = generation, True
        self.T_odom_base = se3_inverse_np(self.T_map_odom) @ T_map_base
        return self.T_odom_base

    def external(self, T_map_base: np.ndarray, T_odom_base: np.ndarray, generation: int = 0) -> np.ndarray:
        """map -> odom from PRISM's ``T_map_base`` and the external odometry's ``T_odom_base`` at the same stamp."""
        self.T_map_odom = T_map_base @ se3_inverse_np(T_odom_base)
        self.T_odom_base, self._generation, self.known = T_odom_base, generation, True
        return self.T_map_odom
