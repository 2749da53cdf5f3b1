"""What prism_node reports: its frame counters (:class:`Stats`, shared by the executor, the worker and the
prediction threads), the /diagnostics status built from them (values, level, message), and the words for
frames the session refused."""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus

#: bad-input causes counted in /diagnostics (``bad_input.<cause>``), each logged once with its fix
CAUSES = ("missing_camera_info", "missing_depth", "missing_rgb", "missing_right", "unsynchronised", "bad_encoding",
          "bad_image", "size_mismatch", "bad_depth", "bad_camera_info", "out_of_order", "missing_imu", "bad_imu",
          "missing_control", "bad_control", "bad_initial_pose", "filter_error", "bad_costmap_goal", "missing_tf",
          "bad_stamp")
#: failed requests counted in /diagnostics (``failures.<name>``), logged each time
FAILURES = ("rejected_parameter", "save_map", "load_map")


@dataclass
class Stats:
    """The node's counters; every change goes through a method (one lock), readers take a :meth:`copy`."""

    received: int = 0  # synchronised sets
    processed: int = 0  # frames the filter stepped
    lost: int = 0  # of those, tracking lost (not fused)
    dropped: int = 0  # replaced in the mailbox (processing behind)
    skipped_paused: int = 0
    superseded: int = 0  # frames stamped before a pose input (already behind the relocalization or restart)
    resets: int = 0
    time_jumps: int = 0
    relocalizations: int = 0  # poses taken from ~/set_pose and /initialpose
    latency_ms: float = float("nan")  # set complete -> outputs published
    step_ms: float = float("nan")  # PrismFilter.step
    stereo_ms: float = float("nan")  # decoding, rectification and SGBM of the last stereo pair
    stereo_valid_fraction: float = float("nan")  # of the last pair matched (before the valid-depth check)
    rollouts: int = 0  # rollout sets published
    rollout_ms: float = float("nan")  # sampling (+ predicted depth) of the last set
    costmaps: int = 0  # costmap slices published
    costmap_ms: float = float("nan")  # snapshot, slice and cost-to-go of the last one
    tracking_ok: bool | None = None
    lost_since: float | None = None  # stamp of the first frame of the current run of lost frames
    lost_for: float = 0.0  # seconds (frame stamps) from that frame to the latest processed one
    last_set_at: float | None = None  # time.monotonic() of the last synchronised set
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters, e.g. ``add(dropped=1)``."""
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def set(self, **values) -> None:
        """Set figures, e.g. ``set(latency_ms=12.0)``."""
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def arrived(self) -> None:
        """A synchronised set arrived now."""
        with self._lock:
            self.received += 1
            self.last_set_at = time.monotonic()

    def stepped(self, timestamp: float, tracking_ok: bool, step_ms: float) -> None:
        """A frame went through the filter: tracked, or lost (the run of lost frames grows)."""
        with self._lock:
            self.processed += 1
            self.lost += int(not tracking_ok)
            self.tracking_ok, self.step_ms = bool(tracking_ok), step_ms
            if tracking_ok:
                self.lost_since, self.lost_for = None, 0.0
            else:
                if self.lost_since is None:
                    self.lost_since = timestamp
                self.lost_for = timestamp - self.lost_since

    def restarted(self, counter: str) -> None:
        """The pose restarted (``counter``: relocalizations or resets): no verdict yet, no loss running."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            self.tracking_ok, self.lost_since, self.lost_for = None, None, 0.0

    def predicted(self, kind: str, ms: float) -> None:
        """A rollout set (``kind`` "rollouts") or a costmap slice went out, taking ``ms``."""
        with self._lock:
            if kind == "rollouts":
                self.rollouts, self.rollout_ms = self.rollouts + 1, ms
            else:
                self.costmaps, self.costmap_ms = self.costmaps + 1, ms

    def copy(self) -> Stats:
        with self._lock:
            copied = copy.copy(self)
        copied._lock = threading.Lock()
        return copied


def refusal(stepped, values: dict, timestamp: float) -> tuple[str, str, str]:
    """(cause, problem, fix) of a frame the session refused (:class:`prism_ros.prism.session.Stepped`), in the
    node's words: its topics and parameters."""
    if stepped.skipped == "missing_imu":
        return ("missing_imu", f"no IMU sample on {values['imu_topic']} between the previous frame and "
                f"{timestamp:.6f} s; frame skipped (the imu model cannot predict)",
                "check imu_topic and imu_qos, or use transition_model:=constant_velocity")
    if stepped.skipped == "missing_control":
        return ("missing_control", f"no command on {values['control_topic']} at or before {timestamp:.6f} s; frame "
                "skipped (the control model cannot predict)",
                "check control_topic and control_type, or use transition_model:=constant_velocity")
    return stepped.skipped, stepped.problem, stepped.fix


def state(stats: Stats, inactive: bool, paused: bool) -> str:
    if inactive:
        return "inactive"
    if paused:
        return "paused"
    if stats.tracking_ok is None:
        return "waiting for frames" if stats.processed == 0 else "initialising"
    return "tracking" if stats.tracking_ok else "lost"


def no_input_for(stats: Stats, input_timeout: float) -> float | None:
    """Seconds since the last synchronised set once that is more than ``input_timeout`` (a camera that
    stopped), else None."""
    since = None if stats.last_set_at is None else time.monotonic() - stats.last_set_at
    return since if since is not None and since > input_timeout else None


def status_values(stats: Stats, state_text: str, parameters: dict, health_values: dict, node_values: dict) -> dict:
    """The /diagnostics key-values (strings): counters, figures, ``health_values`` (bad input, failures,
    callback errors) and ``node_values`` (device, map, TF, ...)."""
    s = stats
    silent = no_input_for(s, parameters["input_timeout"])
    values = {
        "state": state_text, "frames_received": s.received, "frames_processed": s.processed,
        "frames_lost": s.lost, "frames_dropped": s.dropped, "frames_skipped_paused": s.skipped_paused,
        "frames_superseded": s.superseded, "resets": s.resets, "time_jumps": s.time_jumps,
        "relocalizations": s.relocalizations, **health_values,
        "latency_ms": f"{s.latency_ms:.1f}", "step_ms": f"{s.step_ms:.1f}", "lost_for_s": f"{s.lost_for:.3f}",
        "input": "stopped" if silent is not None else "live", "no_input_s": f"{silent or 0.0:.1f}",
    }
    if parameters["rollout_samples"] > 0 or s.rollouts:
        values.update(rollouts_published=s.rollouts, rollout_ms=f"{s.rollout_ms:.1f}")
    if parameters["costmap_period"] > 0:
        values.update(costmaps_published=s.costmaps, costmap_ms=f"{s.costmap_ms:.1f}")
    if parameters["depth_source"] == "stereo":
        values.update(stereo_ms=f"{s.stereo_ms:.1f}", stereo_valid_fraction=f"{s.stereo_valid_fraction:.3f}")
    values.update(node_values)
    return {k: str(v) for k, v in values.items()}


def status_level(values: dict, parameters: dict, loss_level) -> tuple[int | None, str]:
    """(level, message) of the status: ``loss_level(lost, lost_for)`` (None while tracking: OK, else WARN
    and ERROR after ``lost_error_after``); an input stopped for ``input_timeout`` warns, and is an ERROR
    ``lost_error_after`` later."""
    bad, errors = int(values["bad_input_total"]), int(values["callback_errors_total"])
    message = values["state"] + (f", {bad} bad inputs" if bad else "") + \
        (f", {errors} callback errors (see the log)" if errors else "")
    lost_for = float(values["lost_for_s"])
    level = loss_level(values["state"] == "lost", lost_for)
    if level is not None:
        message = f"{message} for {lost_for:.1f} s"
    if values["input"] == "stopped" and values["state"] not in ("inactive", "paused"):
        silent = float(values["no_input_s"])
        message = f"{message}, no synchronised set for {silent:.1f} s"
        stopped_long = silent >= parameters["input_timeout"] + parameters["lost_error_after"]
        level = DiagnosticStatus.ERROR if stopped_long else (level or DiagnosticStatus.WARN)
    return level, message
