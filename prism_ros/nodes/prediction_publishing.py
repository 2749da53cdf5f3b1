"""Predictive rollouts and the collision costmap of the PRISM node, as ROS messages.

The node samples :func:`prism_ros.dynamics.rollout.sample_rollouts` with the filter's own transition model from its
latest state, holding the current input (the newest IMU sample, the newest command, or nothing for the
constant-velocity model; while the IMU model still aligns gravity, its constant-velocity fallback, as the
filter predicts then), and slices the map with :func:`prism_ros.dynamics.costmap.build_costmap`. This module holds the
parameters, turns the results into messages and runs the threads (:class:`PredictionPublisher`), which take the
node's map lock to read its state (handed over as a :class:`PredictionSource`).

Topics (``~/``; all in ``map_frame``):
- ``rollouts`` (visualization_msgs/MarkerArray, ns ``prism_rollouts``): one thin LINE_STRIP per sampled
  trajectory of the base origin (ids 0..N-1) and a thick one for the mean (id N).
- ``predicted_path`` (nav_msgs/Path): the mean future base poses, each stamped at its future time.
- ``predicted_depth`` (sensor_msgs/Image 32FC1, metres, NaN = no surface): the depth the map predicts at the
  horizon's mean camera pose, at the filter's render resolution, stamped at the horizon's end.
- ``costmap`` (nav_msgs/OccupancyGrid, transient local): the collision cost of the slice, 0..99 inflation,
  100 lethal, -1 unknown (:meth:`Costmap.to_occupancy_values`).
- ``cost_cloud`` (sensor_msgs/PointCloud2, organised rows x cols like the grid): x, y, z of every cell centre
  and float32 fields ``cost`` (0..1), ``clearance`` (m) and ``cost_to_go`` (to ``costmap_goal``; inf where
  unreachable, NaN without a goal): the exact values a planner needs, which the grid's 0..100 rounds.
"""
from __future__ import annotations

import array
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import MapMetaData, OccupancyGrid
from nav_msgs.msg import Path as PathMsg
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from prism_ros.dynamics.costmap import UNKNOWN, UP_AXES, Costmap, CostmapConfig
from prism_ros.errors import InputError
from prism_ros.frame import ImuSamples
from prism_ros.nodes.conversions import make_header, matrix_to_pose, numpy_to_image, sec_to_stamp
from prism_ros.nodes.parameters import Param, non_negative, one_of, positive

ROLLOUT_NS = "prism_rollouts"


def _goal(values):
    if len(values) in (0, 2) and all(math.isfinite(v) for v in values):
        return None
    return f"needs 2 finite numbers (u, v in metres on the slice) or none, got {len(values)}"


#: the node's prediction parameters (merged into prism_node's table)
PARAMETERS = {
    "rollout_samples": Param(0, "int", "sampled future trajectories on ~/rollouts (+ ~/predicted_path, "
                             "~/predicted_depth) every rollout_period s; 0 = off", dynamic=True, check=non_negative),
    "rollout_horizon": Param(1.0, "float", "seconds the rollouts look ahead", dynamic=True, check=positive),
    "rollout_step": Param(0.05, "float", "transition step of the rollouts (s; must not exceed the horizon)",
                          dynamic=True, check=positive),
    "rollout_period": Param(0.5, "float", "seconds between rollouts (steady clock); read at start-up", check=positive),
    "predicted_depth": Param(True, "bool", "with rollouts: ~/predicted_depth, the map's depth at the horizon's "
                             "mean camera pose", dynamic=True),
    "costmap_period": Param(0.0, "float", "seconds between ~/costmap and ~/cost_cloud slices of the map; 0 = off "
                            "(read at start-up)", check=non_negative),
    "costmap_height": Param(0.0, "float", "height of the slice along costmap_up (m, map_frame)", dynamic=True),
    "costmap_up": Param("z", "str", "signed map_frame axis the height is measured along (z; -y when the world is "
                        "the first camera's, as in 7-Scenes/TUM)", dynamic=True, check=one_of(UP_AXES)),
    "costmap_resolution": Param(0.05, "float", "costmap cell size (m)", dynamic=True, check=positive),
    "robot_radius": Param(0.2, "float", "lethal within this clearance (m)", dynamic=True, check=positive),
    "inflation_scale": Param(0.3, "float", "e-folding distance of the cost beyond robot_radius (m)", dynamic=True,
                             check=positive),
    "costmap_unknown": Param("free", "str", "unobserved cells: free (ignored, as costmap_2d without "
                             "track_unknown_space) or obstacle (lethal)", dynamic=True, check=one_of(UNKNOWN)),
    "costmap_goal": Param([], "floats", "goal (u, v) on the slice for ~/cost_cloud's cost_to_go (m, grid axes: "
                          "x, y for up z); empty = none", dynamic=True, check=_goal),
}


def mismatch(values: dict) -> str:
    """The problem with the prediction parameters taken together ('' when none)."""
    if values["rollout_step"] > values["rollout_horizon"]:
        return f"rollout_step {values['rollout_step']} s is longer than rollout_horizon {values['rollout_horizon']} s"
    return ""


def costmap_config(values: dict) -> CostmapConfig:
    return CostmapConfig(resolution=values["costmap_resolution"], robot_radius=values["robot_radius"],
                         inflation_scale=values["inflation_scale"], unknown=values["costmap_unknown"],
                         up=values["costmap_up"])


# ----------------------------------------------------------------------------- rollouts
def rollout_messages(base_poses: np.ndarray, mean_base_poses: np.ndarray, times: np.ndarray, frame: str
                     ) -> tuple[MarkerArray, PathMsg]:
    """Markers (one strip per sample (N, K+1, 4, 4) and the mean (K+1, 4, 4)) and the mean Path, stamped with
    the rollout's start ``times[0]`` (the path's poses with their own future times)."""
    header = make_header(frame, sec_to_stamp(float(times[0])))
    strips = [_strip(i, base_poses[i, :, :3, 3], header, 0.004, ColorRGBA(r=0.2, g=0.5, b=1.0, a=0.35))
              for i in range(len(base_poses))]
    strips.append(_strip(len(base_poses), mean_base_poses[:, :3, 3], header, 0.015, ColorRGBA(r=1.0, g=0.5, a=1.0)))
    path = PathMsg(header=header, poses=[PoseStamped(header=make_header(frame, sec_to_stamp(float(t))),
                                                     pose=matrix_to_pose(T)) for t, T in zip(times, mean_base_poses)])
    return MarkerArray(markers=strips), path


def _strip(marker_id: int, positions: np.ndarray, header, width: float, colour: ColorRGBA) -> Marker:
    marker = Marker(header=header, ns=ROLLOUT_NS, id=marker_id, type=Marker.LINE_STRIP, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale.x = width
    marker.color = colour
    marker.points = [Point(x=x, y=y, z=z) for x, y, z in positions.astype(float).tolist()]
    return marker


# ----------------------------------------------------------------------------- costmap
_CELL_DTYPE = np.dtype([(name, "<f4") for name in ("x", "y", "z", "cost", "clearance", "cost_to_go")])
_CELL_FIELDS = [PointField(name=name, offset=_CELL_DTYPE.fields[name][1], datatype=PointField.FLOAT32, count=1)
                for name in _CELL_DTYPE.names]


def occupancy_grid(costmap: Costmap, frame: str, stamp) -> OccupancyGrid:
    """The slice's collision cost as a nav_msgs/OccupancyGrid (cell [0, 0] at ``info.origin``)."""
    position, quaternion = costmap.origin_pose()
    rows, cols = costmap.shape
    origin = Pose(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
                  orientation=Quaternion(x=float(quaternion[0]), y=float(quaternion[1]), z=float(quaternion[2]),
                                         w=float(quaternion[3])))
    info = MapMetaData(map_load_time=stamp, resolution=float(costmap.resolution), width=cols, height=rows,
                       origin=origin)
    return OccupancyGrid(header=make_header(frame, stamp), info=info,
                         data=array.array("b", costmap.to_occupancy_values().tobytes()))


def cost_cloud(costmap: Costmap, frame: str, stamp) -> PointCloud2:
    """Every cell centre with its exact cost, clearance and cost-to-go (organised: height rows, width cols)."""
    rows, cols = costmap.shape
    cells = np.empty((rows, cols), _CELL_DTYPE)
    points = costmap.world_points()
    for axis, name in enumerate("xyz"):
        cells[name] = points[..., axis]
    cells["cost"], cells["clearance"] = costmap.cost, costmap.clearance
    cells["cost_to_go"] = np.nan if costmap.cost_to_go is None else costmap.cost_to_go
    return PointCloud2(header=make_header(frame, stamp), height=rows, width=cols, fields=_CELL_FIELDS,
                       is_bigendian=False, point_step=_CELL_DTYPE.itemsize, row_step=_CELL_DTYPE.itemsize * cols,
                       is_dense=False, data=cells.tobytes())


@dataclass
class PredictionSource:
    """What the prediction threads read from the node (under its map lock): the filter, its held inputs, the
    camera on the base, the last frame's render camera, camera frame and stamp."""

    filter: Any
    imu: tuple | None  # the newest IMU sample (t, gyro, accel)
    command: np.ndarray | None  # the newest command
    T_camera_base: np.ndarray
    render_camera: Any
    camera_frame: str
    stamp: Any


class PredictionPublisher:
    """Rollouts and the costmap on their own threads (:class:`prism_ros.nodes.runner.Periodic`): the rollout
    thread always runs (``rollout_samples`` may be raised from 0 at runtime), the costmap's with
    ``costmap_period > 0``. ``source()`` (called with ``map_lock`` held) gives the node's state, None while
    there is none to predict from; ``report(kind, ms)`` counts what was published; ``bad_input`` reports an
    unusable costmap goal."""

    def __init__(self, node, values: dict, map_lock, source: Callable[[], PredictionSource | None],
                 report: Callable[[str, float], None], bad_input: Callable[[str, str, str], None]):
        import torch

        from prism_ros.nodes.compat import qos_by_name, reliable_qos
        from prism_ros.nodes.map_publishing import latched_qos

        self.values, self._map_lock, self._source, self._report, self._bad_input = \
            values, map_lock, source, report, bad_input
        self._generator = torch.Generator().manual_seed(0)
        self.rollout_pubs = (node.create_publisher(MarkerArray, "~/rollouts", reliable_qos(1)),
                             node.create_publisher(PathMsg, "~/predicted_path", reliable_qos(1)),
                             node.create_publisher(Image, "~/predicted_depth", qos_by_name("sensor_data", 1)))
        self.costmap_pubs = (node.create_publisher(OccupancyGrid, "~/costmap", latched_qos(1)),
                             node.create_publisher(PointCloud2, "~/cost_cloud", latched_qos(1))) \
            if values["costmap_period"] > 0 else None

    def periodic(self, health) -> list:
        """The threads to start with the node."""
        from prism_ros.nodes.runner import Periodic, counted

        threads = [Periodic(self.values["rollout_period"], self.publish_rollouts, "prism_rollouts",
                            counted(health, "rollouts"))]
        if self.costmap_pubs is not None:
            threads.append(Periodic(self.values["costmap_period"], self.publish_costmap, "prism_costmap",
                                    counted(health, "costmap")))
        return threads

    @staticmethod
    def _model_and_input(source: PredictionSource):
        """The model to roll out and its held input: the newest IMU sample or command, as the filter would get
        it (an IMU model still aligning gravity predicts with its constant-velocity fallback); None when the
        model needs an input that has not arrived."""
        transition = source.filter.transition
        alignment = getattr(transition, "alignment", None)
        if alignment is not None:
            return alignment.fallback, None
        model = source.filter.config.dynamics.model
        if model == "imu":
            if source.imu is None:
                return None
            _, gyro, accel = source.imu
            return transition, ImuSamples(np.array([source.filter.state.t]), gyro[None], accel[None])
        if model == "control":
            return None if source.command is None else (transition, source.command)
        return transition, None

    def publish_rollouts(self) -> None:
        """``rollout_samples`` futures of the latest state (filter's model, current input held) and the depth
        the map predicts at the horizon's mean camera pose. Sampling and rendering hold the map lock: they read
        the model and map the worker changes (tens of ms for 64 x 20 at 160 x 120, once a period)."""
        from prism_ros.dynamics.rollout import predicted_depth, sample_rollouts

        v = self.values
        if v["rollout_samples"] <= 0:
            return
        started = time.perf_counter()
        with self._map_lock:
            source = self._source()
            if source is None or source.filter.state is None:
                return
            model_and_input = self._model_and_input(source)
            if model_and_input is None:
                return
            model, controls = model_and_input
            slam = source.filter
            rollouts = sample_rollouts(model, slam.state, controls, v["rollout_horizon"], v["rollout_step"],
                                       v["rollout_samples"], self._generator)
            T_body_camera = slam.T_body_camera
            depth = None
            if v["predicted_depth"] and source.render_camera is not None:
                depth = predicted_depth(slam.map, rollouts.mean_poses[-1], T_body_camera, source.render_camera,
                                        slam.config.render)[0].cpu().numpy()
        T_body_base = T_body_camera.cpu().numpy() @ source.T_camera_base
        times = rollouts.times.numpy()
        markers, path = rollout_messages(rollouts.poses.cpu().numpy() @ T_body_base,
                                         rollouts.mean_poses.cpu().numpy() @ T_body_base, times, v["map_frame"])
        marker_pub, path_pub, depth_pub = self.rollout_pubs
        marker_pub.publish(markers)
        path_pub.publish(path)
        if depth is not None:
            depth_pub.publish(numpy_to_image(depth, "32FC1", float(times[-1]), source.camera_frame))
        self._report("rollouts", 1e3 * (time.perf_counter() - started))

    def publish_costmap(self) -> None:
        """The collision cost of the slice at ``costmap_height`` (and the cost-to-go to ``costmap_goal``) from
        a snapshot of the map: only the clone holds the map lock."""
        from prism_ros.dynamics.costmap import cost_to_go, slice_grid

        v = self.values
        started = time.perf_counter()
        with self._map_lock:
            source = self._source()
            if source is None or source.filter.map.num_blocks == 0:
                return
            snapshot, stamp = source.filter.map.clone(), source.stamp
        config = costmap_config(v)
        costmap = slice_grid(snapshot, v["costmap_height"], config)
        if v["costmap_goal"]:
            try:
                cost_to_go(costmap, tuple(v["costmap_goal"]), config.cost_weight)
            except InputError as error:  # the slice is published without it
                self._bad_input("bad_costmap_goal", f"costmap_goal gives no cost-to-go: {error.problem}",
                                "set costmap_goal to a free cell of ~/costmap (or costmap_unknown:=free, or [] "
                                "for none)")
        grid_pub, cloud_pub = self.costmap_pubs
        grid_pub.publish(occupancy_grid(costmap, v["map_frame"], stamp))
        cloud_pub.publish(cost_cloud(costmap, v["map_frame"], stamp))
        self._report("costmap", 1e3 * (time.perf_counter() - started))
