"""The PRISM filter as a long-running process runs it: frames arrive live, poses come in from outside, and the
map frame must stay meaningful for the rest of a robot. prism_node is a thin ROS adapter around this class.

- **Pose inputs at a stamp.** :meth:`PrismSession.relocalize` puts the filter at a base pose on the map it has;
  :meth:`PrismSession.reset_at_pose` wipes the map and restarts there, carrying the pose through PRISM's own
  tracking when it is the pose of an image already tracked (``E = T_reset inv(T_tracked)``), so the motion since
  that image is not lost. Frames stamped before a pose input are superseded, never stepped backwards.
- **A level map.** The map is the first base pose; with the imu model the filter estimates gravity first and
  the map restarts level (z up, same origin and heading) once, when the start was tilted.
- **Localization mode.** A frozen map that every filter tracks against and nothing changes.
- **Generations.** Every jump of PRISM's pose (relocalization, restart, reset) counts, so an odometry frame can
  absorb it and stay continuous (REP-105's map -> odom).

Every method that changes the filter takes :attr:`PrismSession.lock` (re-entrant: callers may hold it);
:meth:`PrismSession.new_filter` is called with it held. No ROS here.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from prism_ros.errors import InputError
from prism_ros.frame import Frame
from prism_ros.geometry.lie import so3_exp_np
from prism_ros.prism.config import FilterConfig

FIRST_FRAME_SMOOTHNESS = 0.8  # the first frame seeds the map: its depth must be clearly surfaces
TRACKED_KEPT = 300  # recent tracked poses kept for a restart at the pose of an image already tracked


@dataclass
class Stepped:
    """What :meth:`PrismSession.step` did with a frame: ``estimate`` (with the step's ms and the generation of
    PRISM's pose it belongs to), or ``skipped``: "superseded" (older than a pose input), or the bad-input cause
    that kept it out ("bad_depth": a first frame that is not surfaces; "filter_error": the filter refused it; for
    both ``problem`` and ``fix`` say why; "missing_imu", "missing_control": the caller names its topics)."""

    estimate: object = None
    step_ms: float = float("nan")
    generation: int = 0
    skipped: str | None = None
    problem: str = ""
    fix: str = ""


def usable_map(loaded, path: Path, config: FilterConfig):
    """``loaded`` when a filter of ``config`` can track against it; InputError when it is empty or made with
    another voxel size (its tracking and map settings assume their own)."""
    if loaded.num_blocks == 0:
        raise InputError(f"the map in {path} is empty", "save a map after some frames were tracked")
    voxel = config.map.voxel_size
    if not math.isclose(loaded.config.voxel_size, voxel, rel_tol=1e-6):
        raise InputError(f"the map in {path} has {loaded.config.voxel_size:g} m voxels, this node's filter "
                         f"{voxel:g} m", "load it with the filter_config it was made with")
    return loaded


class PrismSession:
    """One PRISM filter over a live stream. ``config``: the filter's configuration, whose T_body_camera is the
    left (colour) camera's; ``T_base_camera``: that camera on the robot's base; ``map_origin``: "base" (the
    map is the first base pose) or "camera" (the first camera pose); ``level_map`` / ``level_tolerance_deg``:
    restart the map level once gravity is estimated; ``frozen_map``: localization against that map;
    ``on_reset(reason)``: called under the lock after every wipe of the filter and map (the caller forgets what
    it published of the old one); ``log``: info lines; ``T_left_rect``: the rectified camera in the left one
    (stereo depth)."""

    def __init__(self, config: FilterConfig, T_base_camera: np.ndarray, map_origin: str = "base",
                 level_map: bool = True, level_tolerance_deg: float = 1.0, frozen_map=None,
                 on_reset: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None,
                 T_left_rect: np.ndarray | None = None):
        self.lock = threading.RLock()
        self.left_config = config
        self.map_origin, self.level_map, self.level_tolerance_deg = map_origin, level_map, level_tolerance_deg
        self.frozen_map = frozen_map
        self.on_reset = on_reset or (lambda _reason: None)
        self.log = log or (lambda _text: None)
        self.generation = 0  # +1 per jump of PRISM's pose
        self.last_processed_t: float | None = None
        self.start_after = 0.0  # frames stamped before a pose input are skipped (seconds; 0: none)
        self.tracked: deque = deque(maxlen=TRACKED_KEPT)  # (t, T_world_camera) of recent tracked frames
        self.restart: tuple | None = None  # (E, covariance, reason) of a reset at the pose of a tracked image
        self.default_start = True  # the filter started with the base at the map's origin (no pose was given)
        self.level_pending = False  # the map restarts level once the filter has estimated gravity
        self.map_level = "not levelled"
        self.map_dirty = False  # fused since the caller last took a snapshot
        self.T_left_rect = np.eye(4) if T_left_rect is None else np.asarray(T_left_rect, dtype=np.float64)
        self._T_base_left = np.asarray(T_base_camera, dtype=np.float64).reshape(4, 4)
        self.set_extrinsics(self._T_base_left, self.T_left_rect)
        self.filter = self.new_filter()

    def warm_up(self) -> str:
        """Run the filter's warm-up (kernel loads, lazy imports, first-call set-up) before any frame; what it
        took, in words."""
        seconds = self.filter.warm_up()
        loads = self.filter.kernel_load_s
        kernels = ", ".join(f"{name} {s:.1f}" for name, s in loads.items())
        return (f"filter warmed up in {seconds:.1f} s on {self.filter.device} ({self.filter.backend} backend"
                + (f"; kernels loaded in {sum(loads.values()):.1f} s: {kernels}, compiled once per machine, then read "
                   "from Warp's cache" if kernels else "") + ")")

    # -- the camera ------------------------------------------------------------------------------------
    def set_extrinsics(self, T_base_left: np.ndarray, T_left_rect: np.ndarray) -> None:
        """Place the filter's camera: the left camera at ``T_base_left`` on the base, rotated by ``T_left_rect``
        (the rectified camera with stereo depth, else the identity). The filter is not rebuilt here."""
        with self.lock:
            self._T_base_left = np.asarray(T_base_left, dtype=np.float64).reshape(4, 4)
            self.T_left_rect = np.asarray(T_left_rect, dtype=np.float64)
            self.T_base_camera = self._T_base_left @ self.T_left_rect
            self.T_camera_base = np.linalg.inv(self.T_base_camera)
            T_body_left = np.asarray(self.left_config.T_body_camera, dtype=np.float64).reshape(4, 4)
            T_body_camera = T_body_left @ self.T_left_rect
            self.config = self.left_config if np.array_equal(self.T_left_rect, np.eye(4)) else \
                replace(self.left_config, T_body_camera=tuple(T_body_camera.ravel().tolist()))
            self.T_camera_body = np.linalg.inv(T_body_camera)

    def move_camera(self, T_base_left: np.ndarray | None = None, T_left_rect: np.ndarray | None = None) -> bool:
        """New extrinsics (found on TF) or rectification (stereo): before the first frame the filter is rebuilt
        with them, keeping a given start pose of the base; later the filter and map restart (the map was fused in
        the old camera). True when it restarted."""
        with self.lock:
            T_base_left = self._T_base_left if T_base_left is None else T_base_left
            T_left_rect = self.T_left_rect if T_left_rect is None else T_left_rect
            T_base_before = self.T_base_camera
            self.set_extrinsics(T_base_left, T_left_rect)
            if self.filter.state is not None:
                self.reset("the camera moved on the base")
                return True
            initial = self.filter.initial_pose
            if not self.default_start and initial is not None:  # T_world_camera: same base pose, new camera
                initial = initial @ np.linalg.inv(T_base_before) @ self.T_base_camera
            self.filter = self.new_filter(None if self.default_start else initial,
                                          self.filter.initial_pose_covariance)
            return False

    # -- filters ------------------------------------------------------------------------------------------
    def new_filter(self, initial_pose: np.ndarray | None = None, initial_covariance: np.ndarray | None = None):
        """A filter starting at ``initial_pose`` (T_world_camera of the next frame), by default with the base at
        the map's origin (REP-103: the map is the first base pose, level when the base starts level). With the imu
        transition model the default start is not known to be level: the filter estimates gravity first, and with
        ``level_map`` the map then restarts level (:meth:`step`)."""
        from prism_ros.prism.filter import PrismFilter

        self.default_start = initial_pose is None
        if initial_pose is None and self.map_origin == "base":
            initial_pose = self.T_base_camera
        slam = PrismFilter(self.config, initial_pose=initial_pose)
        slam.initial_pose_covariance = initial_covariance
        if self.frozen_map is not None:  # localization: every filter tracks against the loaded map
            slam.map, slam.map_frozen = self.frozen_map, True
        if self.default_start and initial_pose is not None and hasattr(slam.transition, "align_gravity_first"):
            slam.transition.align_gravity_first()  # the first base pose is not known to be level (the filter does
            # this itself for the first camera pose)
        self.level_pending = (self.default_start and self.level_map and self.frozen_map is None
                              and getattr(slam.transition, "alignment", None) is not None)
        return slam

    def reset(self, reason: str, initial_pose: np.ndarray | None = None,
              initial_covariance: np.ndarray | None = None) -> None:
        """A fresh filter and empty map (``initial_pose``: T_world_camera of the next frame, with its left
        ``initial_covariance`` when given); ``on_reset(reason)`` follows under the lock."""
        with self.lock:
            self.filter = self.new_filter(initial_pose, initial_covariance)
            self.generation += 1
            self.last_processed_t = None
            self.start_after = 0.0
            self.tracked.clear()
            self.restart = None
            self.map_dirty = False
            self.on_reset(reason)

    # -- pose inputs ------------------------------------------------------------------------------------
    def relocalize(self, T_map_base: np.ndarray, covariance: np.ndarray | None, stamp: float | None) -> None:
        """The base is at ``T_map_base`` at ``stamp`` (None: at the next frame), on the map the filter has; before
        the first frame the filter starts there (frames stamped before it are skipped)."""
        with self.lock:
            t = stamp if stamp is not None else (self.last_processed_t or 0.0)
            if self.filter.state is None:  # before the first frame: the filter starts there (gravity included)
                self.filter = self.new_filter(T_map_base @ self.T_base_camera, covariance)
                self.start_after = stamp or 0.0
            else:
                self.filter.relocalize(T_map_base @ self.T_base_camera, t, covariance)
            self.level_pending = False  # the pose's frame is the map's now: no levelling restart
            self.restart = None  # a later pose wins over a pending reset at a pose
            self.generation += 1
            self.last_processed_t = t if self.last_processed_t is None else max(t, self.last_processed_t)

    def reset_at_pose(self, T_map_base: np.ndarray, covariance: np.ndarray | None, stamp: float | None,
                      reason: str) -> str:
        """Wipe the map and restart with the base at ``T_map_base`` at ``stamp``. "later": that image was tracked
        already, so the restart happens on the next frame, placed through PRISM's tracking since then; "now": the
        image is still queued and starts the new map; "behind": it was processed but not tracked, so the pose is
        applied to the next frame as it is."""
        with self.lock:
            T_camera = T_map_base @ self.T_base_camera
            tracked = next((T for t, T in reversed(self.tracked) if stamp is not None and abs(t - stamp) < 1e-6),
                           None)
            if tracked is not None:
                self.restart = (T_camera @ np.linalg.inv(tracked), covariance, reason)
                return "later"
            behind = stamp is not None and self.last_processed_t is not None and stamp <= self.last_processed_t
            self.reset(reason, initial_pose=T_camera, initial_covariance=covariance)
            self.start_after = stamp or 0.0
            return "behind" if behind else "now"

    def use_map(self, loaded) -> None:
        """Track against ``loaded`` from now on (from the current pose); in localization mode it is the frozen
        map."""
        with self.lock:
            self.filter.map = loaded
            if self.frozen_map is not None:
                self.frozen_map = loaded
            self.map_dirty = True

    # -- frames -------------------------------------------------------------------------------------------
    def step(self, frame: Frame, motion) -> Stepped:
        """``PrismFilter.step`` on the frame with the IMU samples and command of ``motion`` (``take_imu(t, after)``,
        ``control_at(t)``), then a pending restart or levelling."""
        with self.lock:
            if (self.filter.state is not None and frame.timestamp <= self.filter.state.t) or \
                    frame.timestamp < self.start_after:
                return Stepped(skipped="superseded")  # older than a pose input: it would predict backwards
            starts_map = self.filter.state is None and not self.filter.map_frozen
            smooth = frame.extras.get("smooth_fraction", 1.0)
            if starts_map and smooth < FIRST_FRAME_SMOOTHNESS:
                return Stepped(skipped="bad_depth", problem=f"the first frame of a map needs depth on surfaces "
                               f"({100 * FIRST_FRAME_SMOOTHNESS:.0f}% of neighbouring pixels agreeing), this one has "
                               f"{100 * smooth:.1f}%; frame skipped, the next may start it",
                               fix="point the camera at a scene it can see (check depth_topic and depth_scale)")
            frame.imu = motion.take_imu(frame.timestamp, after=self.last_processed_t)
            frame.control = motion.control_at(frame.timestamp)
            model = self.config.dynamics.model
            if model == "imu" and self.filter.state is not None and not len(frame.imu):
                return Stepped(skipped="missing_imu")
            if model == "control" and frame.control is None:
                return Stepped(skipped="missing_control")
            started = time.perf_counter()
            try:
                estimate = self.filter.step(frame)
            except InputError as error:
                return Stepped(skipped="filter_error", problem=f"the filter rejected the frame: {error}",
                               fix=error.fix or "check the input")
            if self.restart is not None:  # a reset at the pose of an image already tracked
                estimate = self._restart_with(frame, estimate)
            if self.level_pending and self.filter.transition.alignment is None:  # gravity just estimated
                estimate = self._level(frame, estimate)
            step_ms = 1e3 * (time.perf_counter() - started)
            self.last_processed_t = frame.timestamp
            if estimate.tracking_ok:
                self.tracked.append((frame.timestamp, np.asarray(estimate.T_world_camera, dtype=np.float64)))
            self.map_dirty = self.map_dirty or estimate.tracking_ok
            return Stepped(estimate, step_ms, self.generation)

    def _restart_with(self, frame: Frame, estimate):
        """Wipe the map and start a new one on this frame, at its tracked pose moved into the reset pose's frame:
        ``E = T_reset inv(T_tracked at that image)``."""
        E, covariance, reason = self.restart
        self.restart = None
        self.reset(reason, initial_pose=E @ np.asarray(estimate.T_world_camera, dtype=np.float64),
                   initial_covariance=covariance)
        self.log(f"{reason}: filter and map reset; the new map starts at the frame of {frame.timestamp:.6f} s, "
                 "placed through PRISM's tracking since that image")
        return self.filter.step(frame)

    def _level(self, frame: Frame, estimate):
        """Gravity is known in the start frame: restart the map level (z up, the same origin and heading) on this
        frame when it is tilted more than ``level_tolerance_deg``. Only the first moments of map are dropped."""
        self.level_pending = False
        gravity = np.asarray(self.filter.transition.gravity, dtype=np.float64)
        down = gravity / np.linalg.norm(gravity)
        tilt = float(np.degrees(np.arccos(np.clip(-down[2], -1.0, 1.0))))
        if tilt <= self.level_tolerance_deg:
            self.map_level = f"level (start frame {tilt:.2f} deg from gravity)"
            return estimate
        axis = np.cross(down, [0.0, 0.0, -1.0])
        axis = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 1e-12 else np.array([1.0, 0.0, 0.0])
        level = np.eye(4)
        level[:3, :3] = so3_exp_np(axis * np.radians(tilt))  # takes the estimated down to -z
        self.reset("map levelled", initial_pose=level @ np.asarray(estimate.T_world_camera, dtype=np.float64))
        self.map_level = f"levelled ({tilt:.2f} deg) at {frame.timestamp:.3f} s"
        self.log(f"gravity estimated: the start frame was {tilt:.2f} deg from level; the map restarts level (z up) "
                 f"at the frame of {frame.timestamp:.6f} s (odom stays continuous)")
        return self.filter.step(frame)

    # -- map files ----------------------------------------------------------------------------------------
    def save_map(self, path: Path) -> str:
        """Write a snapshot of the map to ``path`` (through ``<path>.partial``, so a failure never leaves half a
        file) and its mesh beside it (``.ply``); the summary. InputError when there is nothing to save or the
        file cannot be written. Frames keep flowing while the file and the mesh are written."""
        path = Path(path)
        if self.frozen_map is not None:
            raise InputError(f"localization mode: the map from {path} is never changed, so there is nothing to save",
                             "run in mode slam to build and save a map")
        with self.lock:
            sdf_map = self.filter.map.clone()
        if sdf_map.num_blocks == 0:
            raise InputError(f"cannot save the map to {path}: the map is empty", "save after some frames were "
                             "processed")
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sdf_map.save(partial)
            partial.replace(path)
            mesh_note = _save_mesh(sdf_map, path.with_suffix(".ply"))
        except (OSError, RuntimeError) as error:  # torch.save reports unwritable files as RuntimeError
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass
            reason = getattr(error, "strerror", None) or str(error)
            raise InputError(f"cannot save the map to {path}: {reason}", "set map_path to a writable file, e.g. "
                             "ros2 param set /prism_node map_path /tmp/prism_map.pt") from None
        return f"saved {sdf_map.num_blocks} blocks to {path}; {mesh_note}"


def _save_mesh(sdf_map, mesh_path: Path) -> str:
    """The map's mesh beside the map file; without scikit-image (marching cubes) the map file alone is saved."""
    from prism_ros.prism.mesh import extract_mesh, write_ply

    try:
        mesh = extract_mesh(sdf_map)
    except ImportError as error:
        return f"mesh not written ({error}) -> install scikit-image (rosdep key python3-skimage)"
    write_ply(mesh, mesh_path)
    return f"the mesh ({len(mesh.faces)} faces) to {mesh_path}"
