"""Geometric verification of a relocalization: does the query's own depth agree with the map at the pose?

A relocalizer (ACE or local features) can return a confident pose that is 15-40 cm off when a repeated
structure fools it; the inlier count cannot tell, because the inliers are self-consistent. The query's depth
is an independent witness: placed at the right pose it lies on the mapped surfaces.

1. The map's surfaces are a point cloud with normals (:func:`build_map_cloud`): the depth of the mapping
   frames, registered to colour, back-projected with their poses and voxel-downsampled.
2. :func:`verify` back-projects the query's depth (voxel-downsampled), refines the candidate pose by
   point-to-plane ICP against the map cloud (coarse then fine correspondence distance) and measures the
   *fitness*: the share of query points within ``inlier_m`` of the map after refinement.
3. The pose is accepted when the fitness reaches ``min_fitness`` and the refinement moved it less than
   ``max_correction_m`` / ``max_correction_deg`` (a larger move means the candidate was wrong and ICP found
   some other alignment, which nothing else vouches for). The refined pose is the answer: for a correct
   candidate it is also the more accurate one.

Open3D does the nearest-neighbour search, ICP and voxel grid (maintained, multi-threaded C++); nothing here
loops over points in Python. Without query depth there is nothing to verify and :func:`verify` is not called.
No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import open3d as o3d

from prism_ros.ace.buffer import register_depth
from prism_ros.ace.relocalize import pose_errors
from prism_ros.errors import InputError
from prism_ros.frame import Frame, Intrinsics


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of the depth check; distances in metres, the rotation in degrees."""

    voxel_m: float = 0.04  # map cloud and query cloud resolution
    pixel_stride: int = 8  # every k-th pixel of the query's depth (rows and columns) is checked
    map_pixel_stride: int = 2  # ... of the mapping frames' depth: the map's surfaces need dense normals
    max_depth_m: float = 6.0  # farther depths are too noisy to check against
    coarse_m: float = 0.15  # first ICP correspondence distance (reaches candidates a few cm off)
    inlier_m: float = 0.05  # final ICP correspondence distance and the fitness's inlier distance
    iterations: int = 15  # per ICP stage
    min_fitness: float = 0.5  # share of query points on the map at the refined pose
    max_correction_m: float = 0.20
    max_correction_deg: float = 10.0
    min_points: int = 200  # fewer valid query points: nothing to verify with

    def __post_init__(self):
        for name in ("voxel_m", "max_depth_m", "coarse_m", "inlier_m", "max_correction_m", "max_correction_deg"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"verification {name} must be a positive number, got {value!r}",
                                 f"set {name} > 0")
        if not 0.0 <= self.min_fitness <= 1.0:
            raise InputError(f"verification min_fitness must lie in [0, 1], got {self.min_fitness!r}",
                             "give a share, e.g. 0.5")
        if min(self.pixel_stride, self.map_pixel_stride, self.iterations, self.min_points) < 1:
            raise InputError("verification pixel_stride, map_pixel_stride, iterations and min_points must be >= 1",
                             "give positive integers")


@dataclass
class Verification:
    """``pose`` the refined T_world_camera (None when rejected), ``fitness`` at the refined pose,
    ``rmse`` of its inliers (m), ``correction`` (m, deg) applied by the refinement, ``reason`` if rejected."""

    pose: np.ndarray | None
    fitness: float
    rmse: float
    correction: tuple[float, float]
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.pose is not None


@dataclass
class MapCloud:
    """World points (N,3) and unit normals (N,3) of the mapped surfaces, float32, with an Open3D view."""

    points: np.ndarray
    normals: np.ndarray

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(-1, 3)
        if len(self.points) == 0 or self.points.shape != self.normals.shape:
            raise InputError("the map cloud is empty or its normals do not match its points",
                             "build it from posed RGB-D frames with valid depth")
        self._cloud = None

    @property
    def cloud(self) -> o3d.geometry.PointCloud:
        if self._cloud is None:
            self._cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(self.points.astype(np.float64)))
            self._cloud.normals = o3d.utility.Vector3dVector(self.normals.astype(np.float64))
        return self._cloud

    def __len__(self) -> int:
        return len(self.points)


def depth_points(depth: np.ndarray, intrinsics: Intrinsics, config: VerifyConfig, stride: int) -> np.ndarray:
    """Camera-frame points (N,3) of every ``stride``-th valid pixel of a depth image (m, NaN/0 invalid)
    registered to the pinhole ``intrinsics``."""
    s = stride
    z = depth[::s, ::s].astype(np.float64)
    v, u = np.nonzero(np.isfinite(z) & (z > 0.1) & (z < config.max_depth_m))
    z = z[v, u]
    u, v = u * s, v * s
    return np.stack([(u - intrinsics.cx) / intrinsics.fx * z, (v - intrinsics.cy) / intrinsics.fy * z, z], -1)


def _downsampled(points: np.ndarray, voxel: float) -> o3d.geometry.PointCloud:
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(voxel)


def frame_points(frame: Frame, config: VerifyConfig, stride: int | None = None) -> np.ndarray:
    """Camera-frame points (N,3) of an RGB-D frame's depth, registered to its colour camera, every ``stride``-th
    pixel (default: the query's ``pixel_stride``)."""
    if frame.depth is None:
        raise InputError("the frame has no depth", "give RGB-D frames to build or verify against a map cloud")
    return depth_points(register_depth(frame, frame.intrinsics), frame.intrinsics, config,
                        stride or config.pixel_stride)


def build_map_cloud(frames: Iterable[Frame], config: VerifyConfig = VerifyConfig()) -> MapCloud:
    """The map cloud of posed RGB-D frames (frames without a pose or depth are skipped)."""
    chunks = []
    for frame in frames:
        if frame.pose is None or frame.depth is None or not np.all(np.isfinite(frame.pose)):
            continue
        points = np.asarray(_downsampled(frame_points(frame, config, config.map_pixel_stride), config.voxel_m).points)
        chunks.append(points @ frame.pose[:3, :3].T + frame.pose[:3, 3])
    if not chunks:
        raise InputError("no posed RGB-D frame to build the map cloud from", "give frames with depth and poses")
    cloud = _downsampled(np.concatenate(chunks), config.voxel_m)
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * config.voxel_m, max_nn=30))
    return MapCloud(np.asarray(cloud.points), np.asarray(cloud.normals))


def verify(candidate: np.ndarray, query_points: np.ndarray, cloud: MapCloud,
           config: VerifyConfig = VerifyConfig()) -> Verification:
    """Refine a candidate T_world_camera by ICP of the query's camera-frame points (N,3) against the map
    cloud and accept or reject it (see the module doc)."""
    if candidate is None or not np.all(np.isfinite(candidate)):
        return Verification(None, 0.0, float("nan"), (float("nan"), float("nan")), "no candidate pose")
    query = _downsampled(np.asarray(query_points, dtype=np.float64).reshape(-1, 3), config.voxel_m)
    if len(query.points) < config.min_points:
        return Verification(None, 0.0, float("nan"), (float("nan"), float("nan")),
                            f"only {len(query.points)} query depth points (< {config.min_points})")
    reg = o3d.pipelines.registration
    criteria = reg.ICPConvergenceCriteria(max_iteration=config.iterations)
    pose = np.asarray(candidate, dtype=np.float64)
    for distance in (config.coarse_m, config.inlier_m):
        pose = reg.registration_icp(query, cloud.cloud, distance, pose,
                                    reg.TransformationEstimationPointToPlane(), criteria).transformation
    result = reg.evaluate_registration(query, cloud.cloud, config.inlier_m, pose)
    moved, turned = pose_errors(np.asarray(candidate, dtype=np.float64), pose)
    correction = (float(moved[0]), float(turned[0]))
    fitness, rmse = float(result.fitness), float(result.inlier_rmse)
    if fitness < config.min_fitness:
        return Verification(None, fitness, rmse, correction,
                            f"{100 * fitness:.0f} % of the query depth on the map (< {100 * config.min_fitness:.0f} %)")
    if correction[0] > config.max_correction_m or correction[1] > config.max_correction_deg:
        return Verification(None, fitness, rmse, correction,
                            f"the depth alignment moved the pose {100 * correction[0]:.0f} cm / "
                            f"{correction[1]:.1f} deg")
    return Verification(np.array(pose), fitness, rmse, correction)
