"""Predictive rollouts and the collision costmap of the PRISM node, as ROS messages.

The node samples :func:`prism_ros.dynamics.rollout.sample_rollouts` with the filter's own transition model from its
latest state, holding the current input (the newest IMU sample, the newest command, or nothing for the
constant-velocity model; while the IMU model still aligns gravity, its constant-velocity fallback, as the
filter predicts then), and slices the map with :func:`prism_ros.dynamics.costmap.build_costmap`. This module holds the
parameters and turns the results into messages; the node owns the threads and the locking.

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

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import MapMetaData, OccupancyGrid
from nav_msgs.msg import Path as PathMsg
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from prism_ros.dynamics.costmap import UNKNOWN, UP_AXES, Costmap, CostmapConfig
from prism_ros.nodes.conversions import make_header, matrix_to_pose, sec_to_stamp
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
