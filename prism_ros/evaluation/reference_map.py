"""A reference surface for map-error checks on real data, where no exact scene exists.

Open3D's TSDF fusion (a different method from ours: weighted averaging of projective distances, no
uncertainty) integrates every frame of the sequence at its ground-truth pose; marching cubes gives the
mesh. Points get their signed distance to that mesh from Open3D's raycasting scene: the distance to the
closest point, signed by the closest triangle's normal (Open3D orients TSDF triangles towards free space,
where our SDF is positive too). Open3D is used because both steps are maintained, fast C++ there.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from prism_ros.errors import InputError


def fuse_reference(dataset, voxel_size: float = 0.01, truncation_voxels: float = 4.0, max_depth: float = 4.0,
                   min_weight: float = 3.0, block_count: int = 100_000, progress: bool = True):
    """Open3D TSDF mesh (legacy ``TriangleMesh``) of every frame of ``dataset`` at its ground-truth pose, in the
    ground truth's world frame; surface seen by fewer than ``min_weight`` frames is left out. Depth comes in its
    own camera (``depth_intrinsics`` and ``T_color_depth`` when the frame has them)."""
    import open3d as o3d
    import open3d.core as o3c

    grid = o3d.t.geometry.VoxelBlockGrid(("tsdf", "weight"), (o3c.float32, o3c.float32), ((1), (1)), voxel_size, 8,
                                         block_count, o3c.Device("CPU:0"))
    for frame in tqdm(dataset, total=len(dataset), desc="reference", unit="frame", disable=not progress):
        if frame.pose is None or frame.depth is None:
            raise InputError(f"frame {frame.index} has no ground-truth pose or no depth",
                             "the reference map needs RGB-D frames with ground truth")
        camera = frame.depth_intrinsics or frame.intrinsics
        T_world_depth = frame.pose @ (frame.T_color_depth if frame.T_color_depth is not None else np.eye(4))
        depth = o3d.t.geometry.Image(o3c.Tensor(np.nan_to_num(frame.depth * 1000.0, nan=0.0).astype(np.uint16)))
        K = o3c.Tensor(np.array([[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1]]), o3c.float64)
        extrinsic = o3c.Tensor(np.ascontiguousarray(np.linalg.inv(T_world_depth)), o3c.float64)
        blocks = grid.compute_unique_block_coordinates(depth, K, extrinsic, 1000.0, max_depth, truncation_voxels)
        grid.integrate(blocks, depth, K, extrinsic, 1000.0, max_depth, truncation_voxels)
    mesh = grid.extract_triangle_mesh(weight_threshold=min_weight).to_legacy()
    if len(mesh.triangles) == 0:
        raise InputError("the reference TSDF has no surface", "check the depth and the ground-truth poses")
    return mesh


def signed_distance(mesh, points: np.ndarray) -> np.ndarray:
    """(N,) signed distance (m) of world points (N,3) to a legacy ``TriangleMesh``: positive on the side its
    triangle normals point to."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
    closest = scene.compute_closest_points(query)
    offset = np.asarray(points, dtype=np.float64) - closest["points"].numpy()
    distance = np.linalg.norm(offset, axis=1)
    side = np.einsum("ni,ni->n", offset, closest["primitive_normals"].numpy())
    return np.where(side < 0, -distance, distance)
