"""One frame as the filter sees it: device tensors, an image pyramid, colour registered to depth.

Geometry runs in the depth camera (its intrinsics when the dataset gives separate ones, e.g.
7-Scenes). When colour comes from another camera, it is resampled onto the depth pixels through the
depth (``T_color_depth``, identity when unknown), so every later stage sees ONE camera.
Level 0 is full resolution; level l is downsampled by 2**l (NaN-aware for depth, see
:mod:`prism_ros.geometry.pyramid`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient

from prism_ros.frame import Frame
from prism_ros.geometry import PinholeCamera, camera_pyramid, depth_pyramid, intensity_pyramid, transform_points


@dataclass
class ObservationLevel:
    """One pyramid level: depth (H,W) m NaN-invalid; points/normals (H,W,3) camera frame (NaN invalid);
    intensity (H,W) in [0,1]; gradient (2,H,W) d/du, d/dv of the intensity; camera at this level.
    points, normals and gradient are None on levels the filter does not use (``first_level``)."""

    camera: PinholeCamera
    depth: torch.Tensor
    points: torch.Tensor
    normals: torch.Tensor
    intensity: torch.Tensor
    gradient: torch.Tensor


@dataclass
class Observation:
    t: float
    levels: list[ObservationLevel]
    colour: torch.Tensor  # (H,W,3) float32 in [0,1] at level 0, registered to the depth camera
    imu: object = None  # ImuSamples since the previous frame (numpy), for the transition model
    control: np.ndarray | None = None

    @property
    def finest(self) -> ObservationLevel:
        return self.levels[0]

    @staticmethod
    def from_frame(frame: Frame, levels: int = 3, device="cpu", max_depth: float = 8.0,
                   first_level: int = 0, backend: str = "torch") -> "Observation":
        """The frame's pyramid; levels finer than ``first_level`` keep depth and intensity only (no points,
        normals or gradients: at VGA those cost ~30 ms a frame that nothing reads when the render, the
        tracking and the map update all work at coarser levels). ``backend`` 'fused' builds depth levels,
        points, normals and gradients with :mod:`prism_ros.prism.kernels.observe` (same values)."""
        if frame.depth is None:
            raise ValueError(f"frame {frame.index} has no depth; configure a stereo depth source")
        depth_intr = frame.depth_intrinsics or frame.intrinsics
        camera = PinholeCamera.from_intrinsics(depth_intr, device=device)
        depth = torch.as_tensor(np.asarray(frame.depth, dtype=np.float32), device=device)
        depth = torch.where((depth > 0) & (depth < max_depth), depth, torch.nan)
        colour = torch.as_tensor(frame.rgb, device=device).float() / 255.0
        fused = backend == "fused"
        if fused:
            from prism_ros.prism.kernels import observe as kernels
        if frame.depth_intrinsics is not None and frame.depth_intrinsics != frame.intrinsics:
            colour_camera = PinholeCamera.from_intrinsics(frame.intrinsics, device=device)
            registered = kernels.register_colour(colour, colour_camera, depth, camera.pixel_rays(),
                                                 frame.T_color_depth) if fused else None
            colour = registered if registered is not None else \
                register_colour(colour, colour_camera, camera.backproject(depth), frame.T_color_depth)
        intensity = colour @ torch.tensor([0.299, 0.587, 0.114], device=device)
        depths = depth_pyramid(depth, levels, downsample=kernels.downsample_depth) if fused else \
            depth_pyramid(depth, levels)
        intensities = kernels.intensity_pyramid(intensity, levels) if fused else \
            [i[0, 0] for i in intensity_pyramid(intensity[None, None], levels)]
        cameras = camera_pyramid(camera, levels)
        built = [make_level(c, d, i, geometry=k >= first_level, fused=fused)
                 for k, (c, d, i) in enumerate(zip(cameras, depths, intensities))]
        return Observation(frame.timestamp, built, colour, frame.imu, frame.control)


def make_level(camera: PinholeCamera, depth: torch.Tensor, intensity: torch.Tensor,
               geometry: bool = True, fused: bool = False) -> ObservationLevel:
    if not geometry:
        return ObservationLevel(camera, depth, None, None, intensity, None)
    if fused:
        from prism_ros.prism.kernels.observe import level_arrays

        points, normals, gradient = level_arrays(depth, camera.pixel_rays(), intensity)
        return ObservationLevel(camera, depth, points, normals, intensity, gradient)
    points = camera.backproject(depth)
    gradient = spatial_gradient(intensity[None, None], mode="diff", order=1, normalized=True)[0, 0]  # central diff
    return ObservationLevel(camera, depth, points, normals_from_points(points), intensity, gradient)


def normals_from_points(points: torch.Tensor) -> torch.Tensor:
    """Unit normals (H,W,3) from central differences of a vertex map, facing the camera; NaN at edges."""
    padded = F.pad(points.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")[0].permute(1, 2, 0)
    du = padded[1:-1, 2:] - padded[1:-1, :-2]
    dv = padded[2:, 1:-1] - padded[:-2, 1:-1]
    n = torch.linalg.cross(du, dv, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True)
    facing = torch.where((n * points).sum(-1, keepdim=True) > 0, -n, n)
    return facing


def register_colour(colour: torch.Tensor, colour_camera: PinholeCamera, points_depth: torch.Tensor,
                    T_color_depth: np.ndarray | None) -> torch.Tensor:
    """Colour (H,W,3) of each depth pixel: its 3D point (H,W,3) projected into the colour image (0 where unseen)."""
    h, w = points_depth.shape[:2]
    points = points_depth.reshape(-1, 3)
    if T_color_depth is not None:
        points = transform_points(torch.as_tensor(T_color_depth, dtype=points.dtype, device=points.device), points)
    uv, _ = colour_camera.project(points)
    scale = torch.tensor([2.0 / (colour_camera.width - 1), 2.0 / (colour_camera.height - 1)], device=uv.device)
    grid = torch.nan_to_num(uv * scale - 1.0, nan=-2.0).reshape(1, h, w, 2)  # NaN -> outside -> zeros
    sampled = F.grid_sample(colour.permute(2, 0, 1)[None], grid, align_corners=True, padding_mode="zeros")
    return sampled[0].permute(1, 2, 0)
