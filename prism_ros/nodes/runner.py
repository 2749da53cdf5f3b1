"""The process around a prism_ros node: set-up with exit code 2 on invalid parameters, a multi-threaded
executor, a clean stop on SIGINT/SIGTERM, and :class:`Periodic` for the work that must not wait on the executor.

The nodes' own worker threads are stopped before the context goes down (rclpy's default signal handlers
would invalidate publishers under a running step), so this installs its own handlers.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from prism_ros.errors import InputError
from prism_ros.launch_graph.launcher import LAUNCHER_PID_VARIABLE

ENTITY_KINDS = ("subscriptions", "publishers", "services", "clients", "timers")


class ManagedNode(LifecycleNode):
    """A lifecycle node whose :meth:`configure` reads its parameters and builds everything else.

    configure: runs it; an InputError (invalid parameters) is FAILURE, kept as ``configure_error`` (and logged
    unless ``autostart``, where :func:`run_node` reports it and exits with 2); a defect is ERROR, logged with
    its traceback; either way what it built is torn down. cleanup: tears down what configure created (the
    subscriptions, publishers, services, clients and timers made since, after :meth:`stop`, then
    :meth:`release`). shutdown: :meth:`stop`."""

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.configure_error: InputError | None = None  # why the last configure failed
        self._own_entities: dict[str, set[int]] = {}  # ids of the entities that existed before configure

    def configure(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the threads configure or activate started."""

    def release(self) -> None:
        """Drop what configure built beside its ROS entities."""

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._own_entities = {kind: {id(e) for e in getattr(self, kind)} for kind in ENTITY_KINDS}
        self.configure_error = None
        try:
            self.configure()
        except InputError as error:
            self.configure_error = error
            if not self.get_parameter("autostart").value:
                self.get_logger().error(f"configure failed, invalid parameters: {error}")
            self.teardown()
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # a defect: said with its traceback, the node stays unconfigured and clean
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}\n{traceback.format_exc()}")
            self.teardown()
            return TransitionCallbackReturn.ERROR
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self.get_logger().info("cleaned up: what configure built is released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return TransitionCallbackReturn.SUCCESS

    def teardown(self) -> None:
        """Undo configure: stop the threads, destroy the entities it created, release the rest."""
        self.stop()
        destroy = {"subscriptions": self.destroy_subscription, "publishers": self.destroy_publisher,
                   "services": self.destroy_service, "clients": self.destroy_client, "timers": self.destroy_timer}
        for kind in ENTITY_KINDS:
            for entity in [e for e in getattr(self, kind) if id(e) not in self._own_entities.get(kind, set())]:
                destroy[kind](entity)
        self.release()


def die_with_launcher() -> None:
    """In a node the launcher started (:data:`LAUNCHER_PID_VARIABLE` set): SIGTERM when the launcher dies, even by
    SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``), so no node outlives a killed replay, bench or test; SIGTERM
    now if it is gone already. Elsewhere (``ros2 launch``, a shell, not Linux) nothing changes."""
    expected = os.environ.pop(LAUNCHER_PID_VARIABLE, "")  # not inherited by this node's own children
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(expected):  # the launcher ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def interruptible() -> None:
    """Make Ctrl-C raise KeyboardInterrupt in this process even if it was started with SIGINT ignored.

    A process whose parent ignores SIGINT inherits the ignore across exec, and Python then installs no
    handler: a player or recorder started that way never stops on Ctrl-C (seen: the launcher's player hung
    in full test runs, where the parent process had SIGINT ignored). Main thread only; elsewhere a no-op."""
    die_with_launcher()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Periodic:
    """Calls ``callback`` every ``period`` seconds on its own daemon thread, from ``start()`` to ``stop()``.

    The nodes' diagnostics and watchdogs run here, not on executor timers: under load the steady-clock
    timers of a MultiThreadedExecutor were seen to stop firing (prism_node's /diagnostics stayed frozen for
    over 15 s while its worker went on processing; compare rclpy#1223), and a node that looks dead to
    monitoring is worse than a slow one. Publishing from a plain thread is safe in rclpy. An exception is
    passed to ``on_error`` and the loop goes on."""

    def __init__(self, period: float, callback, name: str, on_error):
        self.period, self.callback, self.on_error = period, callback, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.callback()
            except Exception as error:
                if not self._stop.is_set():
                    self.on_error(error)


def counted(health, name: str):
    """An ``on_error`` for :class:`Periodic`: the defect counted in /diagnostics as ``callback_errors.<name>``
    and logged once with its traceback (:meth:`prism_ros.nodes.health.Health.callback_failed`)."""
    return lambda error: health.callback_failed(name, error)


def events_executor():
    """rclpy's EventsExecutor (its wait and dispatch in C++; rclpy >= Jazzy), else a SingleThreadedExecutor.

    For a node whose callbacks only hand messages to its own threads. rclpy's Python executors rebuild the wait
    set in Python for every callback: at camera and IMU rates that costs a core, and the GIL that the node's
    filter thread needs. The MultiThreadedExecutor also spins while a ready callback waits for its mutually
    exclusive group."""
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor()
    return EventsExecutor()


def run_node(node_class, name: str, args: list[str] | None = None, threads: int = 3, single: bool = False) -> int:
    """Construct ``node_class()``, ``configure()`` it (InputError: one line on stderr, exit code 2), ``start()``
    it and spin until SIGINT/SIGTERM; then ``stop()`` it and shut down. A lifecycle node is configured and
    activated through its transitions when its ``autostart`` parameter is true (a failed configure: exit code
    2 as above), else left unconfigured for a lifecycle manager. 0 on a clean stop. ``single``: one
    executor thread (:func:`events_executor`), else a MultiThreadedExecutor of ``threads`` (for nodes whose
    service callbacks wait for other callbacks)."""
    stop = threading.Event()  # handlers first: a Ctrl-C during set-up (interfaces already visible) stops cleanly
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    die_with_launcher()
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = node_class()
    lifecycle = isinstance(node, LifecycleNode)
    autostart = not lifecycle or node.get_parameter("autostart").value
    try:
        if not lifecycle:
            node.configure()
        elif autostart and node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if node.configure_error is None:  # a defect, logged with its traceback
                print(f"{name}: configure failed (the log above says why)", file=sys.stderr, flush=True)
                node.destroy_node()
                rclpy.try_shutdown()
                return 1
            raise node.configure_error
    except InputError as error:
        print(f"{name}: invalid parameters: {error}", file=sys.stderr, flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    executor = events_executor() if single else MultiThreadedExecutor(num_threads=threads)
    executor.add_node(node)
    code = 0
    if not lifecycle:
        node.start()
    elif not autostart:
        node.get_logger().info("unconfigured (autostart false): waiting for configure and activate from a "
                               "lifecycle manager or `ros2 lifecycle set`")
    elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        print(f"{name}: activate failed (the log above says why)", file=sys.stderr, flush=True)
        code = 1
        stop.set()
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.get_logger().info("shutting down")
        node.stop()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code
