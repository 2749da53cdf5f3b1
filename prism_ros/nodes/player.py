"""Bag player node: publishes a ROS 1 or ROS 2 bag on ROS 2 topics without a ROS install.

Reads with ``rosbags`` (``.bag``, rosbag2 folders, ``.db3``, ``.mcap``) and publishes each message's
CDR bytes as they are (ROS 2 bags: no deserialisation; ROS 1 bags: converted byte-wise with
``Typestore.ros1_to_cdr``), so the cost per message is a copy, not a Python message object.

Topics whose message type has no installed Python package (e.g. tf2_msgs/msg/TFMessage with the
PyPI wheels alone, before `make venv` builds it) are skipped with one warning per type. ``/clock``
carries bag time (at ``clock_hz`` while waiting between messages, and with the messages). Pacing
follows the bag's log time divided by ``rate``; ``rate=0`` publishes as fast as possible, still in order.

Reliable QoS (the default) never drops at the player: the publisher keeps ``depth`` messages and,
every ``depth // 2`` messages on a topic, waits (at most ``ack_timeout`` s) until matched readers
acknowledged everything, so even ``rate=0`` cannot overrun a reader's queue from this side.
Readers must still use a queue deep enough for their own processing delays.

Console script ``bag_player`` (also ``python -m prism_ros.nodes.player``); ``play_bag`` is the API
behind ``prism-ros play``. Bad input raises :class:`prism_ros.errors.InputError`; ``main`` prints
it on one line and returns 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from prism_ros.errors import InputError

CLOCK_TOPIC = "/clock"
DEFAULT_DEPTH = 100
SETTLE_S = 0.3  # subscribers must stay matched this long before playback starts


# ---------------------------------------------------------------------------------------------
# options (no ROS import needed: errors are reported before rclpy starts)
# ---------------------------------------------------------------------------------------------


@dataclass
class PlayOptions:
    """Everything that controls one playback; see :func:`play_bag` for the meaning of each."""

    bag: tuple[Path, ...]
    rate: float = 1.0
    loop: bool = False
    qos: str = "reliable"
    depth: int = DEFAULT_DEPTH
    remaps: dict[str, str] = field(default_factory=dict)
    topics: tuple[str, ...] = ()
    start_offset: float = 0.0
    wait_s: float = 2.0
    wait_for_subscribers: int = 0
    wait_timeout: float = 30.0
    clock: bool = True
    clock_hz: float = 100.0
    ack_timeout: float = 5.0
    quiet: bool = False


def parse_remaps(remaps: Iterable[str] | dict[str, str] | str | None) -> dict[str, str]:
    """{"/from": "/to"} from "from:=to" strings (a comma-separated string also works)."""
    if not remaps:
        return {}
    if isinstance(remaps, dict):
        items = [f"{k}:={v}" for k, v in remaps.items()]
    elif isinstance(remaps, str):
        items = [r for r in remaps.split(",") if r.strip()]
    else:
        items = list(remaps)
    parsed = {}
    for item in items:
        source, sep, target = item.strip().partition(":=")
        if not sep or not source or not target or ":=" in target:
            raise InputError(f"bad remap {item!r}", "write it as /old_topic:=/new_topic")
        parsed[_absolute(source)] = _absolute(target)
    return parsed


def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def _split_list(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(_absolute(t.strip()) for t in items if t.strip())


def make_options(bag, **kwargs) -> PlayOptions:
    """Validated :class:`PlayOptions`; raises InputError naming the bad value."""
    paths = tuple(Path(p).expanduser() for p in ([bag] if isinstance(bag, (str, Path)) else bag))
    if not paths or not str(paths[0]):
        raise InputError("no bag given", "pass a ROS 1 .bag file or a ROS 2 bag folder (.db3/.mcap)")
    options = PlayOptions(bag=paths)
    for name, value in kwargs.items():
        if value is None:
            continue
        if name == "remaps":
            value = parse_remaps(value)
        elif name == "topics":
            value = _split_list(value)
        setattr(options, name, value)
    _check_numbers(options)
    return options


def _check_numbers(options: PlayOptions) -> None:
    checks = [
        (options.rate >= 0, "rate must be >= 0 (0 = as fast as possible)"),
        (options.qos in ("reliable", "sensor"), "qos must be reliable or sensor"),
        (options.depth >= 1, "depth must be >= 1"),
        (options.start_offset >= 0, "start offset must be >= 0 seconds"),
        (options.wait_s >= 0 and options.wait_timeout >= 0, "waits must be >= 0 seconds"),
        (options.wait_for_subscribers >= 0, "wait-for-subscribers must be >= 0"),
        (options.clock_hz > 0, "clock rate must be > 0 Hz"),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(problem)


# ---------------------------------------------------------------------------------------------
# reading the bag and deciding what to publish
# ---------------------------------------------------------------------------------------------


def open_bag(paths: Sequence[Path]):
    """An opened rosbags AnyReader; InputError when missing or unreadable."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    for path in paths:
        if not path.exists():
            raise InputError("bag not found", "pass a ROS 1 .bag file or a ROS 2 bag folder", path)
    try:
        reader = AnyReader(list(paths), default_typestore=get_typestore(Stores.LATEST))
        reader.open()
    except Exception as err:
        raise InputError(f"cannot read bag: {err}".strip(),
                         "check it is a ROS 1 .bag or a ROS 2 bag folder/.db3/.mcap", paths[0]) from err
    return reader


def message_class(msgtype: str):
    """The installed Python class of ``pkg/msg/Name`` (or ``pkg/Name``), or None."""
    package, _, name = msgtype.partition("/msg/")
    if not name:
        package, _, name = msgtype.partition("/")
    try:
        module = importlib.import_module(f"{package}.msg")
    except Exception:
        return None
    cls = getattr(module, name, None)
    return cls if cls is not None and hasattr(type(cls), "_TYPE_SUPPORT") else None


@dataclass
class TopicPlan:
    """One bag topic to publish: where, with which class, from which connections."""

    topic: str  # in the bag
    output: str  # after remapping
    msgtype: str
    cls: type
    connections: list


def plan_topics(reader, options: PlayOptions) -> tuple[list[TopicPlan], dict[str, list[str]]]:
    """(topics to publish, {missing msgtype: [topics]}) for the selected topics of the bag."""
    by_topic: dict[str, list] = {}
    for connection in reader.connections:
        by_topic.setdefault(connection.topic, []).append(connection)
    unknown = [t for t in options.topics if t not in by_topic]
    if unknown:
        raise InputError(f"topics not in the bag: {', '.join(unknown)}",
                         f"choose from: {', '.join(sorted(by_topic))}")
    if not by_topic:
        raise InputError("the bag has no topics", "record some data first", options.bag[0])
    selected = options.topics or tuple(sorted(by_topic))
    plans, missing = [], {}
    for topic in selected:
        msgtype = by_topic[topic][0].msgtype
        cls = message_class(msgtype)
        if cls is None:
            missing.setdefault(msgtype, []).append(topic)
            continue
        same_type = [c for c in by_topic[topic] if c.msgtype == msgtype]  # one type per publisher
        plans.append(TopicPlan(topic, options.remaps.get(topic, topic), msgtype, cls, same_type))
    if not plans:
        raise InputError(f"nothing to play: no Python message package for {', '.join(sorted(missing))}",
                         "install the message packages (a sourced ROS 2 install provides them)")
    return plans, missing


def cdr_converter(reader) -> Callable[[bytes, str], bytes]:
    """Function (raw, msgtype) -> CDR bytes: identity for ROS 2 bags, ros1_to_cdr for ROS 1 bags."""
    if reader.is2:
        return lambda raw, _msgtype: raw if isinstance(raw, bytes) else bytes(raw)
    from rosbags.typesys import Stores, get_typestore

    # The bag's own definitions, except a ROS 2 Header (no seq): ros1_to_cdr then drops seq.
    store = get_typestore(Stores.EMPTY)
    ros2_header = get_typestore(Stores.ROS2_FOXY).fielddefs["std_msgs/msg/Header"]
    store.register({**reader.typestore.fielddefs, "std_msgs/msg/Header": ros2_header})
    return lambda raw, msgtype: bytes(store.ros1_to_cdr(raw, msgtype))


# ---------------------------------------------------------------------------------------------
# playback
# ---------------------------------------------------------------------------------------------


@dataclass
class PlayReport:
    """What a playback did."""

    published: dict[str, int]  # output topic -> messages
    skipped_types: dict[str, list[str]]  # msgtype without Python package -> bag topics
    rejected_topics: dict[str, str]  # topic -> why its data could not be published
    bad_messages: dict[str, int] = field(default_factory=dict)  # topic -> unreadable messages
    loops: int = 0
    clock_messages: int = 0
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.published.values())


class BagPlayback:
    """Publishes one opened bag through one rclpy node (see the module docstring for behaviour)."""

    def __init__(self, node, reader, plans: list[TopicPlan], missing: dict[str, list[str]],
                 options: PlayOptions):
        from rclpy.duration import Duration
        from rosgraph_msgs.msg import Clock

        from prism_ros.nodes.compat import qos_by_name, reliable_qos

        self.node, self.reader, self.options = node, reader, options
        self.plans = {p.topic: p for p in plans}
        self.to_cdr = cdr_converter(reader)
        qos = qos_by_name(options.qos, options.depth)
        self.publishers = {p.topic: node.create_publisher(p.cls, p.output, qos) for p in plans}
        # reliable /clock: matches both reliable readers and rclpy's best-effort TimeSource
        self.clock_pub = (node.create_publisher(Clock, CLOCK_TOPIC, reliable_qos(10))
                          if options.clock else None)
        self._clock_cls, self._ack_timeout = Clock, Duration(seconds=options.ack_timeout)
        self._verified: set[str] = set()
        self._since_ack = dict.fromkeys(self.plans, 0)
        self._last_clock_wall = -1.0
        self.report = PlayReport(published={p.output: 0 for p in plans}, skipped_types=missing,
                                 rejected_topics={})
        self._warn_missing_types(missing)

    # -- set-up ---------------------------------------------------------------------------------

    def _warn_missing_types(self, missing: dict[str, list[str]]) -> None:
        for msgtype, topics in missing.items():
            package = msgtype.split("/")[0]
            self.node.get_logger().warning(
                f"skipping {len(topics)} topic(s) of type {msgtype}: Python package '{package}' is "
                f"not installed: {', '.join(topics)}")

    def wait_for_readers(self) -> None:
        """Give discovery time: ``wait_s`` seconds, or until ``wait_for_subscribers`` are matched."""
        opts = self.options
        if opts.wait_for_subscribers <= 0:
            time.sleep(opts.wait_s)
            return
        deadline = time.monotonic() + opts.wait_timeout
        ready_since = None
        while True:  # ready = the condition held for SETTLE_S (a node's later endpoints show up)
            now = time.monotonic()
            if not self._subscribers_ready(opts.wait_for_subscribers):
                ready_since = None
            elif ready_since is None:
                ready_since = now
            elif now - ready_since >= SETTLE_S:
                return
            if now > deadline:
                self.node.get_logger().warning(
                    f"fewer than {opts.wait_for_subscribers} subscriber node(s) matched after "
                    f"{opts.wait_timeout} s; playing anyway")
                return
            time.sleep(0.02)

    def _subscribers_ready(self, wanted_nodes: int) -> bool:
        """True when >= ``wanted_nodes`` distinct nodes subscribe to our topics and all are matched."""
        nodes = set()
        for topic, publisher in self.publishers.items():
            infos = self.node.get_subscriptions_info_by_topic(self.plans[topic].output)
            nodes.update((i.node_namespace, i.node_name) for i in infos)
            if publisher.get_subscription_count() < len(infos):
                return False  # seen in the graph but not yet matched by DDS
        return len(nodes) >= wanted_nodes

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> PlayReport:
        """Wait for readers, then play once (or until interrupted with ``loop``)."""
        start = time.monotonic()
        try:
            self.wait_for_readers()
            start = time.monotonic()
            while True:
                self._play_once()
                self.report.loops += 1
                if not self.options.loop:
                    break
        except KeyboardInterrupt:
            self.report.interrupted = True
        finally:
            self.report.wall_s = time.monotonic() - start
        return self.report

    def _play_once(self) -> None:
        connections = [c for p in self.plans.values() for c in p.connections]
        start_ns = self.reader.start_time + int(round(self.options.start_offset * 1e9))
        count = sum(c.msgcount for c in connections)
        with _progress(count, self.options.quiet) as bar:
            t0_ns, wall0 = None, time.monotonic()
            for connection, t_ns, raw in self.reader.messages(connections=connections, start=start_ns):
                if t0_ns is None:
                    t0_ns = t_ns
                self._pace(t0_ns, wall0, t_ns)
                self._publish(connection.topic, connection.msgtype, raw, t_ns)
                bar.update(1)
            if t0_ns is not None:
                self._publish_clock(t_ns, force=True)  # end the pass at the last message's time

    def _pace(self, t0_ns: int, wall0: float, t_ns: int) -> None:
        """Sleep until the wall time of bag time ``t_ns``, publishing /clock meanwhile."""
        if self.options.rate <= 0:
            return
        target = wall0 + (t_ns - t0_ns) / 1e9 / self.options.rate
        period = 1.0 / self.options.clock_hz
        while (now := time.monotonic()) < target:
            self._idle(min(target - now, period))
            bag_now = t0_ns + int((time.monotonic() - wall0) * self.options.rate * 1e9)
            self._publish_clock(min(bag_now, t_ns), force=False)

    def _idle(self, seconds: float) -> None:
        """Spend waiting time collecting acknowledgements (reliable QoS), else sleep."""
        behind = [t for t, n in self._since_ack.items() if n >= max(1, self.options.depth // 4)]
        if self.options.qos != "reliable" or not behind:
            time.sleep(seconds)
            return
        from rclpy.duration import Duration

        topic = max(behind, key=self._since_ack.get)
        if self.publishers[topic].wait_for_all_acked(Duration(nanoseconds=int(seconds * 1e9))):
            self._since_ack[topic] = 0

    def _publish(self, topic: str, msgtype: str, raw, t_ns: int) -> None:
        if topic in self.report.rejected_topics:
            return
        try:
            cdr = self.to_cdr(raw, msgtype)
            if topic not in self._verified:
                self._verify_first(topic, cdr)
        except Exception as err:
            if topic in self._verified:
                self._skip_message(topic, str(err))
            else:  # the first message does not fit the installed type: the topic cannot be played
                self._reject(topic, str(err))
            return
        self._publish_clock(t_ns, force=False)
        self.publishers[topic].publish(cdr)
        self.report.published[self.plans[topic].output] += 1
        self._apply_backpressure(topic)

    def _verify_first(self, topic: str, cdr: bytes) -> None:
        """Deserialise the first message of a topic once: catches definitions that differ."""
        from rclpy.serialization import deserialize_message

        deserialize_message(cdr, self.plans[topic].cls)
        self._verified.add(topic)

    def _reject(self, topic: str, why: str) -> None:
        self.report.rejected_topics[topic] = why
        self.node.get_logger().warning(
            f"skipping {topic}: its {self.plans[topic].msgtype} data does not match the installed "
            f"message definition ({why})")

    def _skip_message(self, topic: str, why: str) -> None:
        """One corrupt message: skip it, warn on the first per topic."""
        self.report.bad_messages[topic] = self.report.bad_messages.get(topic, 0) + 1
        if self.report.bad_messages[topic] == 1:
            self.node.get_logger().warning(f"skipping unreadable message(s) on {topic}: {why}")

    def _apply_backpressure(self, topic: str) -> None:
        """Reliable QoS: block until readers acknowledged before the queue could overwrite.

        Paced playback collects acknowledgements while idle (:meth:`_idle`) and blocks only when
        3/4 of ``depth`` is unconfirmed; unpaced playback blocks every ``depth / 2`` messages.
        """
        if self.options.qos != "reliable":
            return
        self._since_ack[topic] += 1
        depth = self.options.depth
        limit = depth // 2 if self.options.rate <= 0 else depth * 3 // 4
        if self._since_ack[topic] >= max(1, limit):
            self.publishers[topic].wait_for_all_acked(self._ack_timeout)
            self._since_ack[topic] = 0

    def _publish_clock(self, t_ns: int, force: bool) -> None:
        """Publish /clock at most at ``clock_hz`` (wall time) unless forced."""
        if self.clock_pub is None:
            return
        now = time.monotonic()
        if not force and now - self._last_clock_wall < 1.0 / self.options.clock_hz:
            return
        self._last_clock_wall = now
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
        self.clock_pub.publish(msg)
        self.report.clock_messages += 1

    def finish(self) -> None:
        """Wait (bounded) until readers acknowledged the last messages, so exiting loses nothing."""
        if self.options.qos == "reliable":
            for publisher in self.publishers.values():
                publisher.wait_for_all_acked(self._ack_timeout)


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> bool:
        return False


def _progress(total: int, quiet: bool):
    """A tqdm bar on stderr, or a no-op when quiet or tqdm is missing."""
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="msg", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# API and console script
# ---------------------------------------------------------------------------------------------


def play_bag(bag: str | Path | Sequence[str | Path], *, rate: float = 1.0, loop: bool = False,
             qos: str = "reliable", depth: int = DEFAULT_DEPTH,
             remaps: Iterable[str] | dict[str, str] | None = None,
             topics: Iterable[str] | None = None, start_offset: float = 0.0, wait_s: float = 2.0,
             wait_for_subscribers: int = 0, wait_timeout: float = 30.0, clock: bool = True,
             clock_hz: float = 100.0, quiet: bool = False, node=None,
             ros_args: Sequence[str] | None = None) -> PlayReport:
    """Publish a bag on ROS 2 topics and return a :class:`PlayReport`.

    bag: ROS 1 ``.bag`` file(s) or a ROS 2 bag folder / ``.db3`` / ``.mcap``.
    rate: playback speed factor; 0 = as fast as possible (still in order).
    loop: start again at the end until interrupted (Ctrl-C); /clock restarts with each pass.
    qos: "reliable" (default; no drops, see module doc) or "sensor" (best effort).
    depth: publisher queue depth. remaps: "from:=to" topic renames. topics: only these bag topics.
    start_offset: seconds to skip from the bag start.
    wait_s: seconds to wait for discovery before publishing; wait_for_subscribers: instead wait
    until this many subscriber nodes are matched on our topics (at most wait_timeout seconds).
    clock / clock_hz: publish bag time on /clock. quiet: no progress bar.
    node: an rclpy node to publish from (else a private context and node "bag_player" are made,
    with ``ros_args``). Ctrl-C stops playback and returns with ``interrupted=True``.
    Raises InputError for a missing/unreadable bag, bad remaps, unknown topics or bad numbers.
    """
    options = make_options(bag, rate=rate, loop=loop, qos=qos, depth=depth, remaps=remaps,
                           topics=topics, start_offset=start_offset, wait_s=wait_s,
                           wait_for_subscribers=wait_for_subscribers, wait_timeout=wait_timeout,
                           clock=clock, clock_hz=clock_hz, quiet=quiet)
    return play_with_options(options, node=node, ros_args=ros_args)


def play_with_options(options: PlayOptions, node=None, ros_args: Sequence[str] | None = None) -> PlayReport:
    """:func:`play_bag` with ready :class:`PlayOptions`."""
    reader = open_bag(options.bag)
    try:
        plans, missing = plan_topics(reader, options)
        if node is not None:
            return _play_on(node, reader, plans, missing, options)
        with _private_node(ros_args) as own_node:
            return _play_on(own_node, reader, plans, missing, options)
    finally:
        reader.close()


def _play_on(node, reader, plans, missing, options) -> PlayReport:
    playback = BagPlayback(node, reader, plans, missing, options)
    report = playback.run()
    if not report.interrupted:
        playback.finish()
    return report


class _private_node:
    """A node "bag_player" in its own rclpy context (leaves the caller's default context alone)."""

    def __init__(self, ros_args: Sequence[str] | None):
        self.ros_args = list(ros_args or [])

    def __enter__(self):
        import rclpy
        from rclpy.context import Context
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        self.context = Context()
        rclpy.init(args=["bag_player", *self.ros_args], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node("bag_player", context=self.context)
        return self.node

    def __exit__(self, exc_type, *_exc) -> bool:
        try:
            self.node.destroy_node()
        except (ValueError, RuntimeError):
            # Ctrl-C inside rclpy's create_publisher leaves a half-registered publisher that destroy_node
            # cannot remove; the process is ending anyway, so let the interrupt (exit code 130) through
            if exc_type is None:
                raise
        self.context.try_shutdown()
        return False


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``bag_player`` / ``prism-ros play``."""
    p = argparse.ArgumentParser(prog="bag_player", description="Publish a ROS 1 or ROS 2 bag on "
                                "ROS 2 topics (raw CDR, /clock, wall-clock pacing).")
    p.add_argument("bag", nargs="*", help="ROS 1 .bag file(s) or ROS 2 bag folder/.db3/.mcap "
                   "(or the 'bag' ROS parameter)")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    p.add_argument("--as-fast-as-possible", action="store_true", help="same as --rate 0")
    p.add_argument("--loop", "-l", action="store_true", help="restart at the end until Ctrl-C")
    p.add_argument("--qos", choices=["reliable", "sensor"], default="reliable")
    p.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="publisher queue depth")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="rename a topic")
    p.add_argument("--topics", nargs="+", default=[], help="only these bag topics (after BAG)")
    p.add_argument("--start-offset", type=float, default=0.0, help="seconds to skip at the start")
    p.add_argument("--wait", type=float, default=2.0, dest="wait_s",
                   help="seconds to wait for discovery before publishing")
    p.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                   help="instead wait until N subscriber nodes are matched")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="limit for --wait-for-subscribers")
    p.add_argument("--no-clock", dest="clock", action="store_false", help="do not publish /clock")
    p.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate while waiting")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    return p


# ROS parameter name -> (PlayOptions field, converter); set with `--ros-args -p name:=value`.
_PARAMETERS: dict[str, tuple[str, Callable]] = {
    "bag": ("bag", str), "rate": ("rate", float), "loop": ("loop", None),
    "qos": ("qos", str), "depth": ("depth", int), "remaps": ("remaps", str),
    "topics": ("topics", str), "start_offset": ("start_offset", float), "wait_s": ("wait_s", float),
    "wait_for_subscribers": ("wait_for_subscribers", int), "wait_timeout": ("wait_timeout", float),
    "clock": ("clock", None), "clock_hz": ("clock_hz", float), "quiet": ("quiet", None),
}


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise InputError(f"expected true or false, got {value!r}")
    return bool(value)


def options_from_parameters(node, defaults: dict) -> PlayOptions:
    """Declare the player's parameters (CLI values as defaults) and build options from them.

    Dynamic typing lets launch files pass "1" for a float or "true" as a string.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for name, (key, convert) in _PARAMETERS.items():
        default = defaults[key]
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v) for v in default)
        elif isinstance(default, dict):
            default = ",".join(f"{k}:={v}" for k, v in default.items())
        value = node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value
        try:
            values[key] = _as_bool(value) if convert is None else convert(value)
        except (TypeError, ValueError) as err:
            raise InputError(f"parameter {name}={value!r} is not valid: {err}") from err
    bag = values.pop("bag")
    return make_options([b for b in bag.split(",") if b] if bag else [], **values)


def _cli_defaults(args: argparse.Namespace) -> dict:
    return {"bag": ",".join(args.bag), "rate": 0.0 if args.as_fast_as_possible else args.rate,
            "loop": args.loop, "qos": args.qos, "depth": args.depth, "remaps": args.remap,
            "topics": args.topics, "start_offset": args.start_offset, "wait_s": args.wait_s,
            "wait_for_subscribers": args.wait_for_subscribers, "wait_timeout": args.wait_timeout,
            "clock": args.clock, "clock_hz": args.clock_hz, "quiet": args.quiet}


def _print_summary(report: PlayReport, options: PlayOptions) -> None:
    rate = report.total / report.wall_s if report.wall_s > 0 else float("inf")
    state = "interrupted" if report.interrupted else "done"
    print(f"bag_player: {state}: {report.total} messages on {len(report.published)} topics "
          f"in {report.wall_s:.2f} s ({rate:.0f} msg/s), {report.loops} pass(es)", file=sys.stderr)
    if report.skipped_types:
        skipped = sorted(t for topics in report.skipped_types.values() for t in topics)
        print(f"bag_player: skipped (no Python message package): {', '.join(skipped)}", file=sys.stderr)


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the ``--ros-args ... [--]`` block).

    Not rclpy's remove_ros_args: rcl also strips bare ``a:=b`` words (deprecated remap syntax),
    which would eat the values of ``--remap``.
    """
    if "--ros-args" not in argv:
        return argv, []
    start = argv.index("--ros-args")
    block = argv[start:]
    if "--" in block:
        end = block.index("--")
        return argv[:start] + block[end + 1:], block[:end]
    return argv[:start], block


def main(argv: Sequence[str] | None = None) -> int:
    """Console script: 0 at the end of the bag, 2 for bad input, 130 when interrupted."""
    from prism_ros.nodes.runner import interruptible

    interruptible()
    cli, ros_args = split_ros_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(cli)
    defaults = _cli_defaults(args)
    try:
        if ros_args:  # started by launch (or by hand with -p): parameters override the CLI
            with _private_node(ros_args) as node:
                options = options_from_parameters(node, defaults)
                report = play_with_options(options, node=node)
        else:
            defaults.pop("bag")
            options = make_options(args.bag, **defaults)
            report = play_with_options(options)
    except InputError as err:
        print(f"bag_player: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not options.quiet:
        _print_summary(report, options)
    return 130 if report.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
