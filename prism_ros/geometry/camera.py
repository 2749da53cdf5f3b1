"""Pinhole camera with OpenCV lens distortion: project points, back-project depth images.

Pixel convention (OpenCV): integer pixel coordinates are pixel centres, u to the right, v down; the
camera looks along +z (x right, y down).
Distortion uses kornia.geometry.calibration (``distort_points`` / ``undistort_points``): it implements
OpenCV's full model (k1, k2, p1, p2[, k3[, k4..k6[, s1..s4[, tx, ty]]]]) and matches ``cv2.projectPoints``
and ``cv2.undistortPoints`` to 1e-12 px in float64 (see test/test_geometry.py). The per-pixel rays of a
distorted camera are undistorted once (20 fixed-point steps, not OpenCV's 5: fr1's corners need 10 for
1e-3 px) and cached; pixels where the iteration does not converge get NaN rays, so their depth is treated
as invalid.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from kornia.geometry.calibration import distort_points, undistort_points

from prism_ros.frame import Intrinsics

_UNDISTORT_ITERS = 20
_RAYS: OrderedDict = OrderedDict()  # pixel rays of recent intrinsics (pyramid levels of a few cameras)
_UNDISTORT_MAX_RESIDUAL_PX = 1e-3


@dataclass(eq=False)
class PinholeCamera:
    """Intrinsics as 0-dim tensors on one device/dtype; width/height are ints (they are image shapes)."""

    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: int
    height: int
    distortion: torch.Tensor = field(default_factory=lambda: torch.zeros(5))  # OpenCV order
    _rays: torch.Tensor | None = field(default=None, init=False, repr=False)
    _max_radius_sq: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        like = self.fx if torch.is_tensor(self.fx) else torch.zeros((), dtype=torch.float32)
        as_t = lambda x: torch.as_tensor(x, dtype=like.dtype, device=like.device)
        self.fx, self.fy, self.cx, self.cy = (as_t(v).reshape(()) for v in (self.fx, self.fy, self.cx, self.cy))
        self.width, self.height = int(self.width), int(self.height)
        self.distortion = as_t(self.distortion).reshape(-1)
        if self.distortion.numel() < 5:  # OpenCV accepts 4, 5, 8, 12 or 14 coefficients
            self.distortion = torch.nn.functional.pad(self.distortion, (0, 5 - self.distortion.numel()))
        if self.distortion.numel() not in (5, 8, 12, 14):
            raise ValueError(f"distortion needs 4, 5, 8, 12 or 14 OpenCV coefficients, got {self.distortion.numel()}")
        self.has_distortion = bool((self.distortion != 0).any())  # once, not a device sync per call

    @classmethod
    def from_intrinsics(cls, intr: Intrinsics, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "PinholeCamera":
        """Camera from a dataset's :class:`Intrinsics`."""
        fx = torch.tensor(intr.fx, dtype=dtype, device=device)
        return cls(fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height, tuple(intr.distortion))

    @property
    def device(self) -> torch.device:
        return self.fx.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fx.dtype

    @property
    def K(self) -> torch.Tensor:
        """(3, 3) camera matrix."""
        o, one = torch.zeros_like(self.fx), torch.ones_like(self.fx)
        return torch.stack((self.fx, o, self.cx, o, self.fy, self.cy, o, o, one)).reshape(3, 3)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PinholeCamera":
        """Copy on another device and/or dtype (the ray cache is rebuilt lazily)."""
        fx = self.fx.to(device=device or self.device, dtype=dtype or self.dtype)
        return PinholeCamera(fx, self.fy, self.cx, self.cy, self.width, self.height, self.distortion)

    def scaled(self, factor: float) -> "PinholeCamera":
        """Camera of the image resized by ``factor``, pixel-centre convention: c' = (c + 0.5) f - 0.5.

        Distortion acts on normalised coordinates, so it is unchanged.
        """
        return PinholeCamera(self.fx * factor, self.fy * factor, (self.cx + 0.5) * factor - 0.5,
                             (self.cy + 0.5) * factor - 0.5, int(round(self.width * factor)),
                             int(round(self.height * factor)), self.distortion)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points (..., N, 3) -> distorted pixels uv (..., N, 2) and depth z (..., N).

        uv is NaN for points with z <= 0 (behind the camera) and, for distorted cameras, for points far outside
        the field of view, where the distortion polynomial folds back into the image. Gradients stay finite.
        """
        z = points[..., 2]
        valid = z > 0
        xy = points[..., :2] / torch.where(valid, z, torch.ones_like(z))[..., None]
        if self.has_distortion:
            valid = valid & ((xy * xy).sum(-1) <= self._valid_radius_sq())
        uv = self.normalized_to_pixels(xy)
        return torch.where(valid[..., None], uv, torch.full_like(uv, float("nan"))), z

    def _valid_radius_sq(self) -> float:
        """Squared normalised radius where the radial distortion r (1 + k1 r^2 + ...) stops growing.

        Beyond it the polynomial folds back, so far-off points would land inside the image. Searched up to
        4x the image corners' radius; inf when monotonic there. Computed once, on the CPU.
        """
        if self._max_radius_sq is None:
            corners_u = torch.tensor([-0.5, self.width - 0.5], dtype=torch.float64)
            corners_v = torch.tensor([-0.5, self.height - 0.5], dtype=torch.float64)
            x = (corners_u - float(self.cx)) / float(self.fx)
            y = (corners_v - float(self.cy)) / float(self.fy)
            r_image = float((x.abs().max() ** 2 + y.abs().max() ** 2).sqrt())
            k = torch.nn.functional.pad(self.distortion.double().cpu(), (0, 8))
            r = torch.linspace(0.0, 4.0 * r_image, 4001, dtype=torch.float64)
            r2 = r * r
            radial = (1 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]))) / (1 + r2 * (k[5] + r2 * (k[6] + r2 * k[7])))
            folds = torch.nonzero(torch.diff(r * radial) <= 0)
            self._max_radius_sq = float(r[folds[0, 0]] ** 2) if len(folds) else float("inf")
        return self._max_radius_sq

    def normalized_to_pixels(self, xy: torch.Tensor) -> torch.Tensor:
        """Undistorted normalised coordinates (x/z, y/z) (..., 2) -> distorted pixels (..., 2)."""
        if not self.has_distortion:
            return xy * torch.stack((self.fx, self.fy)) + torch.stack((self.cx, self.cy))
        eye = torch.eye(3, dtype=xy.dtype, device=xy.device)
        flat = xy.reshape(-1, xy.shape[-1]) if xy.dim() < 2 else xy  # kornia wants (..., N, 2)
        return distort_points(flat, self.K.to(xy.dtype), self.distortion.to(xy.dtype), new_K=eye).reshape(xy.shape)

    def pixel_rays(self) -> torch.Tensor:
        """(H, W, 3) rays with z = 1 through each pixel centre, undistorted; computed once per intrinsics and
        cached (every frame brings a new, equal camera object: the rays are shared by all of them)."""
        if self._rays is None:
            intrinsics = torch.cat((torch.stack((self.fx, self.fy, self.cx, self.cy)), self.distortion)).tolist()
            key = (self.width, self.height, str(self.device), self.dtype, *intrinsics)
            if key not in _RAYS:
                _RAYS[key] = self._compute_rays()
                while len(_RAYS) > 16:
                    _RAYS.popitem(last=False)
            _RAYS.move_to_end(key)
            self._rays = _RAYS[key]
        return self._rays

    def _compute_rays(self) -> torch.Tensor:
        v, u = torch.meshgrid(torch.arange(self.height, device=self.device, dtype=self.dtype),
                              torch.arange(self.width, device=self.device, dtype=self.dtype), indexing="ij")
        uv = torch.stack((u, v), -1).reshape(-1, 2)
        if self.has_distortion:
            eye = torch.eye(3, dtype=self.dtype, device=self.device)
            xy = undistort_points(uv, self.K, self.distortion, new_K=eye, num_iters=_UNDISTORT_ITERS)
            residual = (self.normalized_to_pixels(xy) - uv).norm(dim=-1)  # the fixed point may diverge at the rim
            xy = torch.where((residual < _UNDISTORT_MAX_RESIDUAL_PX)[:, None], xy, float("nan"))
        else:
            xy = (uv - torch.stack((self.cx, self.cy))) / torch.stack((self.fx, self.fy))
        return torch.cat((xy, torch.ones_like(xy[:, :1])), -1).reshape(self.height, self.width, 3)

    def backproject(self, depth: torch.Tensor) -> torch.Tensor:
        """Depth images (..., H, W) in metres (z, not range) -> camera-frame points (..., H, W, 3); NaN stays NaN."""
        if tuple(depth.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"depth is {tuple(depth.shape[-2:])}, camera is {(self.height, self.width)} (H, W)")
        return depth[..., None] * self.pixel_rays().to(depth.dtype)

    def inside(self, uv: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """(..., 2) pixels -> bool mask of those within [margin, size - 1 - margin] (NaN -> False)."""
        u, v = uv[..., 0], uv[..., 1]
        return (u >= margin) & (u <= self.width - 1 - margin) & (v >= margin) & (v <= self.height - 1 - margin)
