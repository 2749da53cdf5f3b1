"""prism_node: the PRISM filter as a ROS 2 node, a thin adapter around
:class:`prism_ros.prism.session.PrismSession` (messages <-> core types, parameters, threads, publishing).

The frame path reads assemble -> step -> count -> publish (:meth:`PrismNode._process`). Executor callbacks only
check stamps and queue: a synchronised set (colour, depth or the right image, CameraInfo) goes into a mailbox
of ``frame_queue`` slots; a worker thread decodes and checks it (:mod:`prism_ros.nodes.prism_inputs`), steps
the session with the IMU samples and command of its window, and publishes pose, odometry, path, TF, the
tracking verdict and stage times (:mod:`prism_ros.nodes.prism_outputs`). The map thread
(:class:`prism_ros.nodes.map_publishing.MapStream`) and the prediction threads
(:mod:`prism_ros.nodes.prediction_publishing`) work from snapshots taken under the session's lock, so a pose
never waits behind a mesh. Every callback is guarded (:class:`prism_ros.nodes.health.Health`): bad input is
logged once per cause and counted, a defect is counted and answered, and the node keeps running. A lifecycle
node: configure reads the parameters (:data:`PARAMETERS`) and builds the session and interfaces.

Topics, services, TF, frames, covariance conventions and parameters: docs/node.md.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import AccelStamped, PoseWithCovarianceStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu
from std_srvs.srv import Trigger

from prism_ros.errors import InputError
from prism_ros.frame import Frame
from prism_ros.nodes import prediction_publishing
from prism_ros.nodes.compat import make_synchronizer, qos_by_name, reliable_qos
from prism_ros.nodes.conversions import (
    diagnostics_message,
    header_ns,
    stamp_to_sec,
)
from prism_ros.nodes.health import Health, failed_trigger, refused_parameters
from prism_ros.nodes.map_publishing import MapPublisher, MapStream
from prism_ros.nodes.parameters import (
    checked_changes,
    declare,
    read_all,
)
from prism_ros.nodes.prism_inputs import (
    BadInput,
    CameraPlacement,
    FrameDecoder,
    Mailbox,
    MotionBuffer,
    PendingFrame,
    StampOrder,
    SyncWatch,
    read_pose_input,
)
from prism_ros.nodes.prism_outputs import EstimatePublisher
from prism_ros.nodes.prism_parameters import (
    PARAMETERS,
    build_filter_config,
    check_inputs,
    check_stereo_parameters,
    describe_inputs,
    stereo_config,
)
from prism_ros.nodes.prism_status import CAUSES, FAILURES, Stats, refusal, state, status_level, status_values
from prism_ros.nodes.runner import ManagedNode, Periodic, counted, run_node
from prism_ros.prism.session import PrismSession, usable_map

NODE_NAME = "prism_node"
MAP_GROUPS_PER_MESSAGE = 4  # mesh block groups per ~/mesh message (see MapStream)

# ---------------------------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------------------------


class PrismNode(ManagedNode):
    """See the module docstring. A lifecycle (managed) node: configure reads the parameters and builds the filter
    and the ROS interfaces, activate starts processing (the worker and its threads at the first activation),
    deactivate skips frames, cleanup tears the interfaces and the map down, shutdown stops the threads.
    :func:`prism_ros.nodes.runner.run_node` drives configure and activate itself with ``autostart``."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare(self, PARAMETERS)
        self.values: dict[str, Any] = {}
        self.stats = Stats()
        self.health = Health(self.get_logger(), CAUSES, FAILURES)
        self._order_lock = threading.Lock()
        self._mailbox = Mailbox()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._paused = False
        self._inactive = True  # lifecycle: frames are processed only while active
        self._parameter_callback = None
        self.order = StampOrder({})  # the stamps of the sets accepted into the mailbox
        self._last_stamp_msg = None
        self._render_camera = None  # the filter's render camera of the last frame (predicted depth)
        self._camera_frame = ""
        self.motion = MotionBuffer({}, self._stop)
        self.decoder: FrameDecoder | None = None
        self.map_stream: MapStream | None = None  # the map thread
        self._periodic: list[Periodic] = []  # diagnostics and the input watchdog
        self.sync_watch: SyncWatch | None = None  # tells a missing stream from unsynchronised ones
        self.session: PrismSession | None = None  # the filter and its map, pose inputs, levelling
        self.map_publisher = None
        self.outputs: EstimatePublisher | None = None
        self.camera: CameraPlacement | None = None  # the camera on the base (parameter or TF)

    # -- set-up ---------------------------------------------------------------------------------

    def configure(self) -> None:
        """Read and check every parameter, build the filter and the ROS interfaces; InputError if invalid."""
        self._stop = threading.Event()
        self.values = read_all(self, PARAMETERS, "config/prism.yaml")
        v = self.values
        check_inputs(v)
        self._mailbox = Mailbox(v["frame_queue"])
        self._paused = False
        stereo = v["depth_source"] == "stereo"
        T_left_rect = check_stereo_parameters(v) if stereo else np.eye(4)
        config = build_filter_config(v)  # T_body_camera: the left (colour) camera's
        self.motion = MotionBuffer(v, self._stop)
        self.order = StampOrder(v)
        self.decoder = FrameDecoder(v, config.max_depth, stereo_config(v) if stereo else None,
                                    np.asarray(v["T_left_right"], dtype=np.float64).reshape(4, 4) if stereo else None,
                                    on_rectification=self._adopt_rectification)
        frozen = self._localization_map(config) if v["mode"] == "localization" else None
        try:
            self.session = PrismSession(config, np.asarray(v["T_base_camera"], dtype=np.float64).reshape(4, 4),
                                        v["map_origin"], v["level_map"], v["level_tolerance_deg"], frozen,
                                        on_reset=self._forget_old_map, log=self.get_logger().info,
                                        T_left_rect=T_left_rect)
            self.get_logger().info(self.session.warm_up())
        except (ValueError, RuntimeError) as error:  # e.g. a transition or map setting the filter refuses
            raise InputError(f"the filter rejects this configuration: {error}", "fix filter_config or the "
                             "overrides (transition_model, device, T_body_camera)") from None
        self.device = str(self.filter.device)
        self._create_interfaces()
        self._parameter_callback = self.health.guard("parameters", self._on_set_parameters, refused_parameters)
        self.add_on_set_parameters_callback(self._parameter_callback)
        self.get_logger().info(f"PRISM on {self.device}, transition model {config.dynamics.model}, "
                               + describe_inputs(v))

    @property
    def filter(self):
        return None if self.session is None else self.session.filter

    def _localization_map(self, config):
        """The map of localization mode, read from map_path at start (a bad file stops the start-up)."""
        from prism_ros.prism.config import resolve_device
        from prism_ros.prism.map import GaussianSdfMap

        path = self._map_file()
        if not path.is_file():
            raise InputError(f"mode is localization but map_path {path} is not a file",
                             "save a map with ~/save_map in slam mode (or prism-ros run), then set map_path to it")
        loaded = usable_map(GaussianSdfMap.load(path, resolve_device(config.device)), path, config)
        self.get_logger().info(f"localization mode: {loaded.num_blocks} blocks from {path}, frozen")
        return loaded

    def _create_interfaces(self) -> None:
        v = self.values
        depth = v["queue_size"]
        rgb_type = CompressedImage if v["rgb_compressed"] else Image
        inputs = [(rgb_type, v["rgb_topic"], qos_by_name(v["rgb_qos"], depth))]
        if v["depth_source"] == "stereo":
            inputs.append((Image, v["right_topic"], qos_by_name(v["right_qos"], depth)))
            roles = ["rgb", "right"]
        else:
            inputs.append((Image, v["depth_topic"], qos_by_name(v["depth_qos"], depth)))
            roles = ["rgb", "depth"]
        if v["intrinsics_source"] == "camera_info":
            inputs.append((CameraInfo, v["camera_info_topic"], qos_by_name(v["camera_info_qos"], depth)))
            roles.append("camera_info")
        self.sync_watch = SyncWatch(roles, {role: v[f"{role}_topic"] for role in roles})
        guard = self.health.guard
        self.sync = make_synchronizer(self, inputs, depth, v["sync_slop"], guard("frames", self._on_synchronised),
                                      guard=guard, on_arrival=self._arrived)
        if v["imu_topic"]:
            self.create_subscription(Imu, v["imu_topic"], guard("imu", self._on_imu),
                                     qos_by_name(v["imu_qos"], 100 * depth))
        if v["control_topic"]:
            control_type = AccelStamped if v["control_type"] == "accel" else TwistStamped
            self.create_subscription(control_type, v["control_topic"], guard("control", self._on_control),
                                     qos_by_name(v["control_qos"], 10 * depth))
        for topic, callback in (("initialpose", self._on_initial_pose), ("~/set_pose", self._on_set_pose),
                                ("~/reset_at_pose", self._on_reset_at_pose)):
            self.create_subscription(PoseWithCovarianceStamped, topic, guard(topic.lstrip("~/"), callback),
                                     reliable_qos(10))
        self.outputs = EstimatePublisher(self, v, warn=lambda text: self.health.log_once("tf", text), guard=guard)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable_qos(10))
        self.camera = CameraPlacement(v, self.outputs.tf, lambda T: self.session.move_camera(T_base_left=T),
                                      self.get_logger().info)
        self.map_publisher = MapPublisher(self, v["map_frame"], colouring=v["map_colouring"], qos_depth=1,
                                          max_groups=MAP_GROUPS_PER_MESSAGE)
        self.map_stream = MapStream(self.map_publisher, lambda: self.values["map_publish_period"], self._map_snapshot,
                                    counted(self.health, "map_publishing"))
        services = MutuallyExclusiveCallbackGroup()
        for name, callback in (("reset", self._srv_reset), ("pause", self._srv_pause), ("resume", self._srv_resume),
                               ("save_map", self._srv_save_map), ("load_map", self._srv_load_map)):
            self.create_service(Trigger, f"~/{name}", guard(name, callback, failed_trigger), callback_group=services)
        self._periodic = [Periodic(v["diagnostics_period"], self._publish_diagnostics, "prism_diagnostics",
                                   counted(self.health, "diagnostics")),
                          Periodic(min(0.25, v["input_timeout"] / 2), self._watchdog, "prism_watchdog",
                                   counted(self.health, "input_watchdog")),
                          Periodic(v["transform_publish_period"], self.outputs.send_map_odom, "prism_tf",
                                   counted(self.health, "map_odom_broadcast"))]
        self.prediction = prediction_publishing.PredictionPublisher(
            self, v, self.session.lock, self._prediction_source, self.stats.predicted, self.health.bad_input)
        self._periodic += self.prediction.periodic(self.health)

    # -- lifecycle ------------------------------------------------------------------------------------

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._worker is None:
            self.start()
        self._inactive = False
        self.get_logger().info("active: processing frames")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._inactive = True
        self._mailbox.clear()
        self.get_logger().info("inactive: frames are skipped")
        return super().on_deactivate(state)

    def release(self) -> None:
        """After cleanup or a failed configure: no parameter callback, filter, map or publishers."""
        if self._parameter_callback is not None:
            self.remove_on_set_parameters_callback(self._parameter_callback)
            self._parameter_callback = None
        self.session = self.map_publisher = self.map_stream = self.outputs = None
        self._worker = None
        self._periodic = []
        self._inactive = True

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, args=(self._stop,), name="prism_worker", daemon=True)
        self._worker.start()
        self.map_stream.start(self._stop, name="prism_map")
        for periodic in self._periodic:
            periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._mailbox.wake()
        self.motion.wake()
        for periodic in self._periodic:
            periodic.stop()
        if self._worker is not None:
            self._worker.join(timeout)
        if self.map_stream is not None:
            self.map_stream.join(timeout)

    # -- executor side: inputs ------------------------------------------------------------------

    def _arrived(self, index: int, msg) -> None:
        self.sync_watch.arrived(index, header_ns(msg))

    def _on_synchronised(self, rgb, depth_or_right, info=None) -> None:
        now = time.monotonic()
        self.sync_watch.matched()
        self.stats.arrived()
        if self._paused or self._inactive:
            self.stats.add(skipped_paused=1)
            return
        stamp = header_ns(rgb)
        try:
            with self._order_lock:
                reset = self.order.accept(stamp)
        except BadInput as bad:
            self.health.bad_input(bad.cause, bad.problem, bad.fix)
            return
        if self.values["depth_source"] == "stereo":
            item = PendingFrame(rgb, None, info, stamp, now, reset, right=depth_or_right)
        else:
            item = PendingFrame(rgb, depth_or_right, info, stamp, now, reset)
        dropped = self._mailbox.put(item)
        if dropped is not None:
            self.stats.add(dropped=1)
            self.health.log_once("dropped", "processing falls behind the input: the oldest waiting frame is "
                                 f"dropped (frame_queue={self.values['frame_queue']}; counted in /diagnostics as "
                                 "frames_dropped; logged once) -> lower the input rate, use device:=cuda or smaller "
                                 "images (bag replays: a longer frame_queue)")

    def _on_imu(self, msg: Imu) -> None:
        try:
            self.motion.add_imu(msg)
        except BadInput as bad:
            self.health.bad_input(bad.cause, bad.problem, bad.fix)

    def _on_control(self, msg) -> None:
        try:
            self.motion.add_control(msg)
        except BadInput as bad:
            self.health.bad_input(bad.cause, bad.problem, bad.fix)

    def _pose_input(self, msg: PoseWithCovarianceStamped, topic: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """T_map_base of a pose input and the filter's covariance of it (:func:`read_pose_input`), or None (counted
        as bad_initial_pose)."""
        try:
            return read_pose_input(msg, topic, self.values["map_frame"], self.outputs.tf.lookup,
                                   self.values["transform_tolerance"])
        except BadInput as bad:
            self.health.bad_input(bad.cause, bad.problem, bad.fix)
            return None

    def _pose_time(self, msg: PoseWithCovarianceStamped) -> float | None:
        """The time a pose input applies at: its stamp when that is the stamp of an image already received
        (queued older frames are then skipped); None when unstamped or stamped ahead of the input (RViz on
        another clock; a future stamp would supersede every frame): the next frame's pose."""
        stamp = stamp_to_sec(msg.header.stamp)  # as frames' stamp_ns / 1e9: equal stamps compare equal
        with self._order_lock:
            newest = self.order.newest
        return stamp if newest is not None and 0 < stamp <= newest / 1e9 else None

    def _on_set_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """A relocalized base pose (e.g. from ace_node): the filter continues from it on the map it has."""
        self._relocalize(msg, "~/set_pose")

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """RViz's "2D Pose Estimate" (or any pose hint): as ~/set_pose, the map is kept (~/reset wipes it)."""
        self._relocalize(msg, "/initialpose")

    def _relocalize(self, msg: PoseWithCovarianceStamped, topic: str) -> None:
        pose = self._pose_input(msg, topic)
        if pose is None:
            return
        T_map_base, covariance = pose
        self.session.relocalize(T_map_base, covariance, self._pose_time(msg))
        self.stats.restarted("relocalizations")
        self.get_logger().info(f"pose set on {topic}: base at {np.round(T_map_base[:3, 3], 3).tolist()} in "
                               f"{self.values['map_frame']}; tracking continues on the kept map")

    def _on_reset_at_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """Wipe the map and restart at this base pose: an initial localization in a prior map's frame (ace_node),
        whose frame PRISM's map so far does not share."""
        pose = self._pose_input(msg, "~/reset_at_pose")
        if pose is None:
            return
        T_map_base, covariance = pose
        stamp = self._pose_time(msg)
        reason = (f"pose received on ~/reset_at_pose: base at {np.round(T_map_base[:3, 3], 3).tolist()} in "
                  f"{self.values['map_frame']}")
        when = self.session.reset_at_pose(T_map_base, covariance, stamp, reason)
        if when == "later":  # that image is behind us: the restart follows PRISM's tracking since then
            return
        self._after_requested_reset(reason)
        if when == "behind":
            self.get_logger().warning(f"~/reset_at_pose: the image at {stamp:.6f} s was processed but not tracked "
                                      "(lost, or before a restart): its pose is applied to the next frame as it is")

    def _watchdog(self) -> None:
        """Images arrive but no set is complete: name the missing stream, or the stamps that disagree."""
        if self._paused:
            return
        found = self.sync_watch.check(self.values["input_timeout"], self.values["sync_slop"])
        if found is not None:
            bad, count = found
            self.health.bad_input(bad.cause, bad.problem, bad.fix, count)

    # -- worker side ----------------------------------------------------------------------------

    def _work(self, stop: threading.Event) -> None:
        mailbox = self._mailbox
        while not stop.is_set():
            item = mailbox.take(timeout=0.1)
            if item is None:
                continue
            try:
                self._process(item)
            except Exception as error:  # a defect: counted and logged once with its traceback; the next frame goes on
                if stop.is_set():
                    return  # shutting down: the context may already be gone
                self.health.callback_failed("worker", error)

    def _process(self, item: PendingFrame) -> None:
        """One synchronised set: assemble the frame, step the filter, publish."""
        if item.reset_reason:
            self._time_jump(item.reset_reason)
        frame = self._assemble(item)
        if frame is None:
            return
        stepped = self._step(frame)
        if stepped is None:
            return
        estimate, step_ms, generation = stepped
        self._count(frame, estimate, step_ms)
        self._publish(item, frame, estimate, step_ms, generation)

    def _time_jump(self, reason: str) -> None:
        self.stats.add(time_jumps=1)
        self.health.log_once("time_jump", f"{reason}: filter and map reset (counted in /diagnostics as "
                             "time_jumps; logged once)", level="info")
        self.session.reset(reason)  # the stamp order moved on already

    def _assemble(self, item: PendingFrame) -> Frame | None:
        """The set as a checked Frame (None: bad input, counted), once its IMU window has arrived."""
        try:
            self.camera.place(item.rgb.header.frame_id.lstrip("/"))
            frame = self.decoder.frame(item)
        except BadInput as bad:
            self.health.bad_input(bad.cause, bad.problem, bad.fix)
            frame = None
        if self.decoder.stereo_figures is not None:  # the pair was matched, its depth kept or not
            stereo_ms, valid = self.decoder.stereo_figures
            self.stats.set(stereo_ms=stereo_ms, stereo_valid_fraction=valid)
        if frame is not None:
            self.motion.wait_for_imu(frame.timestamp)
        return frame

    def _step(self, frame: Frame):
        """The session's step on the frame with its IMU samples and command: (estimate, step ms, generation of
        PRISM's pose), or None when the frame is skipped (paused, older than a pose input, missing input the
        model needs, refused), counted."""
        if self._paused:
            self.stats.add(skipped_paused=1)
            return None
        stepped = self.session.step(frame, self.motion)
        if stepped.skipped is None:
            return stepped.estimate, stepped.step_ms, stepped.generation
        if stepped.skipped == "superseded":
            self.stats.add(superseded=1)
        else:
            self.health.bad_input(*refusal(stepped, self.values, frame.timestamp))
        return None

    def _count(self, frame: Frame, estimate, step_ms: float) -> None:
        self.stats.stepped(frame.timestamp, estimate.tracking_ok, step_ms)
        if not estimate.tracking_ok:
            reasons = ", ".join(map(str, estimate.quality.get("reasons", []))) or "see the tracking quality"
            self.health.log_once("lost", f"tracking lost at {frame.timestamp:.6f} s ({reasons}): the frame is not "
                                 "fused (counted in /diagnostics as frames_lost; logged once)")

    def _publish(self, item: PendingFrame, frame: Frame, estimate, step_ms: float, generation: int) -> None:
        """The frame's outputs, stamped like its colour image: pose, odometry, path and TF (when tracked, or with
        publish_when_lost; ``generation`` of PRISM's pose, for odom's continuity), the tracking verdict, the render
        and the stage times."""
        stamp = item.rgb.header.stamp
        self._last_stamp_msg = stamp
        camera_frame = self._camera_frame = item.rgb.header.frame_id
        if estimate.render is not None:
            self._render_camera = estimate.render.camera
        if estimate.tracking_ok or self.values["publish_when_lost"]:
            try:
                self.outputs.pose(estimate, stamp, self.session.T_camera_base, self.session.T_camera_body,
                                  generation)
            except BadInput as bad:
                self.health.bad_input(bad.cause, bad.problem, bad.fix)
        self.outputs.verdict(estimate, stamp, camera_frame, self.stats.copy().lost_for)
        if estimate.render is not None and self.map_publisher is not None:
            self.map_publisher.publish_render(estimate.render, stamp, camera_frame)
        latency_ms = 1e3 * (time.monotonic() - item.received)
        self.stats.set(latency_ms=latency_ms)
        self.outputs.timing(estimate, stamp, step_ms, latency_ms, frame.extras.get("stereo_ms"))

    def _adopt_rectification(self, T_left_rect: np.ndarray) -> None:
        """Make the rectified left camera of ``T_left_rect`` the filter's camera (before the first frame the filter
        is rebuilt with it; later the filter and map restart: the map was fused in the old camera)."""
        if np.allclose(T_left_rect, self.session.T_left_rect, atol=1e-9):
            return
        if self.session.move_camera(T_left_rect=T_left_rect):
            self.get_logger().info("the stereo rectification changed (new calibration or image size): filter and map "
                                   "reset")

    def _reset(self, reason: str) -> None:
        """A requested reset (~/reset, a time jump): a fresh filter and empty map."""
        self.session.reset(reason)
        self._after_requested_reset(reason)

    def _after_requested_reset(self, reason: str) -> None:
        """After a reset someone asked for: any stamp is welcome next, and it is said."""
        with self._order_lock:
            self.order.reset()
        self.get_logger().info(f"{reason}: filter and map reset")

    def _forget_old_map(self, _reason: str) -> None:
        """The session wiped the filter and map (its lock held): forget the path and mesh of the old one."""
        self.outputs.clear_path()
        self._clear_map_display()
        self.stats.restarted("resets")

    def _map_snapshot(self, force: bool = False):
        """(map copy, stamp, generation) for the map thread when frames were fused since the last one or
        ``force``, else None."""
        with self.session.lock:
            if not (self.session.map_dirty or force):
                return None
            self.session.map_dirty = False
            return self.filter.map.clone(), self._last_stamp_msg, self.map_stream.generation

    def _clear_map_display(self) -> None:
        """After a reset or load (map lock held): forget the published mesh; the next publish sends all."""
        if self.map_stream is not None:
            self.map_stream.forget()

    # -- prediction: rollouts and costmap (own threads) --------------------------------------------

    def _prediction_source(self) -> prediction_publishing.PredictionSource | None:
        """The node's state for the prediction threads (map lock held); None while paused."""
        if self._paused or self.filter is None:
            return None
        imu, command = self.motion.newest()
        return prediction_publishing.PredictionSource(self.filter, imu, command, self.session.T_camera_base,
                                                      self._render_camera, self._camera_frame, self._last_stamp_msg)

    # -- diagnostics ----------------------------------------------------------------------------

    def diagnostics_values(self) -> dict[str, str]:
        stats = self.stats.copy()
        sdf_map = self.filter.map  # read without the map lock: a step may hold it for a while
        tf = self.outputs.tf
        return status_values(stats, state(stats, self._inactive, self._paused), self.values, self.health.values(), {
            "map_blocks": sdf_map.num_blocks, "map_memory_mb": f"{sdf_map.memory_bytes() / 1e6:.2f}",
            "device": self.device, "mode": self.values["mode"], "map_level": self.session.map_level,
            "transition_model": self.session.config.dynamics.model, "synchroniser": self.sync.implementation,
            "tf": ("not available (tf2_msgs missing)" if not tf.available else
                   "odom from /tf" if not self.values["publish_odom_tf"] else "broadcast"),
            "imu_buffered": len(self.motion.imu)})

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        level, message = status_level(values, self.values, self.outputs.loss_level)
        self.diag_pub.publish(diagnostics_message(f"{self.get_name()}: PRISM SLAM", values["state"] == "tracking",
                                                  message, values, self.get_clock().now().to_msg(), self.device,
                                                  level=level))

    # -- parameters at runtime -------------------------------------------------------------------

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        converted, refused = checked_changes(PARAMETERS, parameters, "config/prism.yaml")
        refused = refused or prediction_publishing.mismatch({**self.values, **converted})
        if refused:
            self.health.failure("rejected_parameter", f"rejected parameter change: {refused}")
            return SetParametersResult(successful=False, reason=refused)
        self.values.update(converted)
        if "sync_slop" in converted:
            self.sync.set_slop(converted["sync_slop"])
        if "map_frame" in converted and self.map_publisher is not None:
            self.map_publisher.map_frame = converted["map_frame"]
        return SetParametersResult(successful=True)

    # -- services -------------------------------------------------------------------------------

    def _srv_reset(self, _request, response):
        self._reset("reset requested (~/reset)")
        response.success, response.message = True, "filter and map reset"
        return response

    def _srv_pause(self, _request, response):
        was = self._paused
        self._paused = True
        self._mailbox.clear()
        response.success = True
        response.message = "already paused" if was else "paused: incoming frames are skipped"
        if not was:
            self.get_logger().info("paused (~/pause)")
        return response

    def _srv_resume(self, _request, response):
        was = self._paused
        self._paused = False
        response.success = True
        response.message = "resumed" if was else "was not paused"
        if was:
            self.get_logger().info("resumed (~/resume)")
        return response

    def _map_file(self) -> Path:
        return Path(self.values["map_path"]).expanduser()

    def _srv_save_map(self, _request, response):
        try:
            response.message = self.session.save_map(self._map_file())
        except InputError as error:
            response.success, response.message = False, str(error)
            self.health.failure("save_map", response.message)
            return response
        response.success = True
        self.get_logger().info(response.message)
        return response

    def _srv_load_map(self, _request, response):
        from prism_ros.prism.map import GaussianSdfMap

        path = self._map_file()
        try:
            loaded = usable_map(GaussianSdfMap.load(path, self.filter.device), path, self.session.config)
            with self.session.lock:  # loaded before taking it
                self._clear_map_display()
                self.session.use_map(loaded)
        except InputError as error:
            response.success, response.message = False, f"cannot load the map: {error}"
            self.health.failure("load_map", response.message)
            return response
        response.success = True
        response.message = (f"loaded {loaded.num_blocks} blocks from {path}; tracking continues from the current "
                            "pose in the loaded map")
        self.get_logger().info(response.message)
        return response


def main(args: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 2 on invalid parameters."""
    return run_node(PrismNode, NODE_NAME, args, single=True)  # callbacks only queue: the worker does the work


if __name__ == "__main__":
    sys.exit(main())
