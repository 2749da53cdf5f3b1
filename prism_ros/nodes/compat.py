"""Optional ROS 2 pieces and explicit fallbacks for when they are not installed.

The PyPI ROS 2 wheels ship rclpy and the message packages but not message_filters, tf2_msgs,
cv_bridge, launch or rosbag2_py. Each use of those goes through this module, which uses the real piece
when importable and otherwise a tested pure-Python equivalent, and reports which one is in use. TF
needs only tf2_msgs (:mod:`prism_ros.nodes.tf` publishes and looks up transforms itself).
"""
from __future__ import annotations

import importlib
import itertools
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# name -> (module to import, attribute that must exist, what prism_ros does without it).
# The attribute check matters: a folder called "launch" on sys.path (this repository has one)
# imports as an empty namespace package.
ROS_PIECES: dict[str, tuple[str, str, str]] = {
    "message_filters": ("message_filters", "ApproximateTimeSynchronizer",
                        "pure-Python ApproximateTimeSynchronizer (same matching rules)"),
    "tf2_msgs": ("tf2_msgs.msg", "TFMessage", "no TF is sent or looked up (one warning; poses still go out on "
                 "topics) and the player skips /tf topics in bags; `make venv` builds it"),
    "cv_bridge": ("cv_bridge", "CvBridge", "numpy image conversion (same arrays)"),
    "launch": ("launch", "LaunchDescription",
               "`python -m prism_ros.launch_graph.launcher` runs the same node graph as subprocesses"),
    "launch_ros": ("launch_ros.actions", "Node", "as for launch"),
    "rosbag2_py": ("rosbag2_py", "SequentialReader", "bags are read with rosbags (pure Python)"),
    "rosidl_runtime_py": ("rosidl_runtime_py", "message_to_ordereddict",
                          "messages are converted field by field"),
}


@dataclass(frozen=True)
class RosPiece:
    """One optional ROS piece: whether it is importable and what is used when it is not."""

    name: str
    present: bool
    fallback: str


@lru_cache(maxsize=None)
def has_ros_piece(name: str) -> bool:
    """True when the optional ROS piece ``name`` (a key of ROS_PIECES) is really importable."""
    if name not in ROS_PIECES:
        raise KeyError(f"unknown ROS piece {name!r}; known: {', '.join(ROS_PIECES)}")
    module_name, attribute, _ = ROS_PIECES[name]
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return False
    return hasattr(module, attribute)


def ros_pieces_summary() -> list[RosPiece]:
    """Every optional ROS piece with its presence and fallback (for a doctor-style report)."""
    return [RosPiece(name, has_ros_piece(name), fallback)
            for name, (_, _, fallback) in ROS_PIECES.items()]


def format_ros_pieces() -> str:
    """The summary as aligned text lines."""
    width = max(len(name) for name in ROS_PIECES)
    return "\n".join(f"{p.name:<{width}}  {'present' if p.present else 'absent '}"
                     + ("" if p.present else f"  -> {p.fallback}") for p in ros_pieces_summary())


# ---------------------------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------------------------


def sensor_qos(depth: int = 5) -> QoSProfile:
    """Sensor data QoS: best effort, volatile, keep last ``depth`` (drops rather than lags)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile, keep last ``depth``; compatible with both reliable and best-effort readers."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def system_default_qos(depth: int = 10) -> QoSProfile:
    """Keep last ``depth`` with the middleware's default reliability and durability."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.SYSTEM_DEFAULT,
                      durability=DurabilityPolicy.SYSTEM_DEFAULT)


QOS_PROFILES = {"sensor": sensor_qos, "sensor_data": sensor_qos, "reliable": reliable_qos,
                "system_default": system_default_qos}


def qos_by_name(name: str, depth: int) -> QoSProfile:
    """"sensor" (or ROS's "sensor_data"), "reliable" or "system_default" -> the profile above."""
    if name not in QOS_PROFILES:
        raise ValueError(f"QoS must be sensor or reliable (or ROS's sensor_data, system_default), not {name!r}")
    return QOS_PROFILES[name](depth)


# ---------------------------------------------------------------------------------------------
# approximate-time synchronisation
# ---------------------------------------------------------------------------------------------


def _stamp_ns(msg) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class ApproximateTimeSynchronizer:
    """Pure-Python approximate-time matching of N message streams by header stamp.

    Same rules as message_filters' Python ApproximateTimeSynchronizer: each input keeps at most
    ``queue_size`` messages (the oldest is dropped first); when a message arrives, the set made of
    it and one queued message per other input whose stamps all lie within ``slop`` seconds is
    passed to ``callback(*msgs)`` (inputs in order) and removed. When several sets qualify the
    one with the smallest spread wins. After a match, queued messages older than the matched
    ones are dropped too (as message_filters' C++ policy does): they can only pair with data that
    should already have arrived.
    Feed it with :meth:`add` from subscription callbacks; it is thread-safe.
    """

    def __init__(self, n_inputs: int, queue_size: int, slop: float, callback: Callable | None = None):
        if n_inputs < 2 or queue_size < 1 or slop < 0:
            raise ValueError("need n_inputs >= 2, queue_size >= 1 and slop >= 0")
        self.queue_size = queue_size
        self.slop_ns = int(round(slop * 1e9))
        self._queues: list[dict[int, object]] = [{} for _ in range(n_inputs)]
        self._callbacks: list[Callable] = [callback] if callback else []
        self._lock = threading.Lock()

    def registerCallback(self, callback: Callable) -> None:
        """Add a callback called with one message per input for each matched set."""
        self._callbacks.append(callback)

    def add(self, index: int, msg) -> None:
        """Queue ``msg`` on input ``index`` and emit a matched set if one is now complete."""
        stamp = _stamp_ns(msg)
        with self._lock:
            queue = self._queues[index]
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            stamps = self._best_set(index, stamp)
            if stamps is None:
                return
            matched = [q.pop(s) for q, s in zip(self._queues, stamps)]
            self._drop_older(stamps)
        for callback in self._callbacks:
            callback(*matched)

    def _best_set(self, index: int, stamp: int) -> list[int] | None:
        """Stamps (one per input) of the tightest set containing ``stamp`` on ``index``, or None."""
        choices = []
        for i, queue in enumerate(self._queues):
            near = [stamp] if i == index else [s for s in queue if abs(s - stamp) <= self.slop_ns]
            if not near:
                return None
            choices.append(sorted(near, key=lambda s: abs(s - stamp)))
        best, best_spread = None, None
        for candidate in itertools.product(*choices):
            spread = max(candidate) - min(candidate)
            if spread <= self.slop_ns and (best_spread is None or spread < best_spread):
                best, best_spread = list(candidate), spread
        return best

    def _drop_older(self, stamps: Sequence[int]) -> None:
        for queue, matched in zip(self._queues, stamps):
            for stale in [s for s in queue if s < matched]:
                del queue[stale]

    def pending(self) -> list[int]:
        """Queued message count per input (for diagnostics and tests)."""
        with self._lock:
            return [len(q) for q in self._queues]


@dataclass
class Synchronizer:
    """What :func:`make_synchronizer` built; keep a reference so nothing is garbage collected."""

    implementation: str  # "message_filters" or "pure-python"
    synchronizer: object
    subscriptions: list

    def set_slop(self, slop: float) -> None:
        """Change the matching tolerance (seconds) of the running synchroniser."""
        if isinstance(self.synchronizer, ApproximateTimeSynchronizer):
            self.synchronizer.slop_ns = int(round(slop * 1e9))
        else:
            from rclpy.duration import Duration

            self.synchronizer.slop = Duration(seconds=slop)


def make_synchronizer(node, inputs: Sequence[tuple[type, str, QoSProfile]], queue_size: int,
                      slop: float, callback: Callable, prefer: str = "auto",
                      guard: Callable[[str, Callable], Callable] | None = None,
                      on_arrival: Callable[[int, object], None] | None = None) -> Synchronizer:
    """Subscribe to ``inputs`` [(msg_type, topic, qos)] and call ``callback(*msgs)`` per matched set.

    ``prefer``: "auto" (message_filters when importable), "message_filters" or "pure-python". ``guard(name,
    callback)``: wraps each subscription's callback ("input"), so that a message the synchroniser itself chokes
    on (message_filters raises on a negative stamp) cannot end the node. ``on_arrival(index, msg)``: called
    with every input message before the synchroniser takes it, under the same guard (e.g. to tell a missing
    stream from unsynchronised ones). Logs which implementation is in use.
    """
    if prefer not in ("auto", "message_filters", "pure-python"):
        raise ValueError(f"prefer must be auto, message_filters or pure-python, not {prefer!r}")
    use_mf = prefer == "message_filters" or (prefer == "auto" and has_ros_piece("message_filters"))
    guard = guard or (lambda _name, function: function)
    on_arrival = on_arrival or (lambda _index, _msg: None)
    if use_mf:
        result = _message_filters_synchronizer(node, inputs, queue_size, slop, callback, guard, on_arrival)
    else:
        result = _python_synchronizer(node, inputs, queue_size, slop, callback, guard, on_arrival)
    node.get_logger().info(f"approximate-time sync of {', '.join(t for _, t, _ in inputs)} "
                           f"(queue {queue_size}, slop {slop} s) uses {result.implementation}")
    return result


def _message_filters_synchronizer(node, inputs, queue_size, slop, callback, guard, on_arrival) -> Synchronizer:
    import message_filters

    class GuardedSubscriber(message_filters.Subscriber):
        """message_filters' subscriber whose subscription callback (the synchroniser's input) is guarded."""

        guarded = None

        def callback(self, msg):
            (self.guarded or super().callback)(msg)

    subscribers = [GuardedSubscriber(node, msg_type, topic, qos_profile=qos) for msg_type, topic, qos in inputs]
    for index, subscriber in enumerate(subscribers):
        subscriber.registerCallback(lambda msg, i=index: on_arrival(i, msg))  # ahead of the synchroniser's
        subscriber.guarded = guard("input", lambda msg, s=subscriber: message_filters.Subscriber.callback(s, msg))
    sync = message_filters.ApproximateTimeSynchronizer(subscribers, queue_size, slop)
    sync.registerCallback(callback)
    return Synchronizer("message_filters", sync, subscribers)


def _python_synchronizer(node, inputs, queue_size, slop, callback, guard, on_arrival) -> Synchronizer:
    sync = ApproximateTimeSynchronizer(len(inputs), queue_size, slop, callback)

    def take(index: int, msg) -> None:
        on_arrival(index, msg)
        sync.add(index, msg)
    subscriptions = [node.create_subscription(msg_type, topic, guard("input", lambda msg, i=i: take(i, msg)), qos)
                     for i, (msg_type, topic, qos) in enumerate(inputs)]
    return Synchronizer("pure-python", sync, subscriptions)
