"""Online DMN localization for a robot: a context map of (image, planar pose) pairs, a particle filter driven
by odometry and camera images, in metres and radians at the interface.

The networks work in normalised units (x, y in [-1, 1] over a square area, yaw / pi); ``area`` (x0, y0, side
in metres) says which square of the world is mapped to [-1, 1]. This module has no ROS import: ``dmn_node``
converts messages and calls :meth:`DmnLocalizer.step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prism_ros.dmn.model import LocalizationMethod, query_step
from prism_ros.dmn.particles import (
    TRACKING_STD,
    effective_sample_size,
    gaussian_particles,
    transition,
    uniform_log_weights,
    uniform_particles,
    update,
    weighted_covariance,
    weighted_mean,
)
from prism_ros.errors import InputError, check_number, check_tensor, file_kind, read_torch_file

MAX_EXTENT_M = 1e4  # context poses and the area: no mapped floor reaches 10 km from its origin


@dataclass(frozen=True)
class Area:
    """The square of the world (metres) that normalised [-1, 1] covers: lower-left corner and side."""

    x0: float
    y0: float
    side: float

    def normalise(self, pose: np.ndarray) -> torch.Tensor:
        """(..., 3) [x m, y m, yaw rad] -> normalised float32 tensor."""
        pose = np.asarray(pose, dtype=np.float64)
        xy = 2.0 * (pose[..., :2] - [self.x0, self.y0]) / self.side - 1.0
        yaw = np.remainder(pose[..., 2] + math.pi, 2 * math.pi) / math.pi - 1.0
        return torch.as_tensor(np.concatenate([xy, yaw[..., None]], -1), dtype=torch.float32)

    def metric(self, pose: torch.Tensor) -> np.ndarray:
        """Normalised (..., 3) -> [x m, y m, yaw rad]."""
        p = pose.detach().double().cpu().numpy()
        xy = (p[..., :2] + 1.0) * 0.5 * self.side + [self.x0, self.y0]
        return np.concatenate([xy, p[..., 2:] * math.pi], -1)

    def metric_delta(self, delta: np.ndarray) -> torch.Tensor:
        """Odometry (dx m, dy m, dyaw rad) in the robot frame -> normalised units."""
        delta = np.asarray(delta, dtype=np.float64)
        return torch.as_tensor([2.0 * delta[0] / self.side, 2.0 * delta[1] / self.side, delta[2] / math.pi],
                               dtype=torch.float32)


def planar_pose(T: np.ndarray) -> np.ndarray:
    """(x, y, yaw) of a 4x4 pose whose x axis is the heading (REP-103 base_link: x forward, z up)."""
    return np.array([T[0, 3], T[1, 3], math.atan2(T[1, 0], T[0, 0])])


def planar_delta(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Motion (dx, dy, dyaw) from planar pose ``previous`` to ``current`` in the frame of ``previous``."""
    c, s = math.cos(previous[2]), math.sin(previous[2])
    dx, dy = current[0] - previous[0], current[1] - previous[1]
    dyaw = (current[2] - previous[2] + math.pi) % (2 * math.pi) - math.pi
    return np.array([c * dx + s * dy, -s * dx + c * dy, dyaw])


def prepare_image(rgb: np.ndarray, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> (3, size, size) float in [0, 1] (area-averaged resize, as the training images)."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"expected an HxWx3 colour image, got shape {rgb.shape}", "publish rgb8 or bgr8 images")
    small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).float() / 255.0


def save_contexts(path: Path, images: np.ndarray, poses: np.ndarray, area: Area) -> Path:
    """A context file: images (N,H,W,3) uint8, metric planar poses (N,3), and the area they are in."""
    path = Path(path)
    torch.save({"kind": "prism_ros.dmn.contexts", "images": torch.as_tensor(np.asarray(images, dtype=np.uint8)),
                "poses": torch.as_tensor(np.asarray(poses, dtype=np.float64)),
                "area": [area.x0, area.y0, area.side]}, path)
    return path


def load_contexts(path: Path) -> tuple[np.ndarray, np.ndarray, Area]:
    """Images (N,H,W,3) uint8, metric planar poses (N,3) and the area of a :func:`save_contexts` file; a file
    that is unreadable, of another kind, misshapen or with non-finite poses is an InputError."""
    fix = "give a file written by prism_ros.dmn.localizer.save_contexts (images + planar poses + area)"
    blob = read_torch_file(path, "cannot read the DMN context file", fix)
    if not isinstance(blob, dict) or blob.get("kind") != "prism_ros.dmn.contexts":
        raise InputError(f"not a DMN context file{file_kind(blob)}", fix, path)
    images = check_tensor(blob.get("images"), "context images", (None, None, None, 3), fix, path, (torch.uint8,))
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"the context file holds no image (images of shape {tuple(images.shape)})", fix, path)
    poses = check_tensor(blob.get("poses"), "context poses", (len(images), 3), fix, path, limit=MAX_EXTENT_M)
    area = blob.get("area")
    if not isinstance(area, (list, tuple)) or len(area) != 3:
        raise InputError(f"area must be [x0, y0, side] in metres, got {area!r:.80}", fix, path)
    x0, y0 = (check_number(v, f"area {name}", -MAX_EXTENT_M, MAX_EXTENT_M, fix, path)
              for v, name in zip(area, ("x0", "y0")))
    side = check_number(area[2], "area side", 1e-3, MAX_EXTENT_M, fix, path)
    return images.numpy(), poses.numpy(), Area(x0, y0, side)


class DmnLocalizer:
    """A particle filter over planar poses with a learned observation model and a fixed context map."""

    def __init__(self, method: LocalizationMethod, area: Area, particles: int = 2048, image_size: int = 32,
                 transition_noise: tuple[float, float, float] = (0.02, 0.02, 0.02), seed: int = 0):
        if not getattr(method, "uses_particles", False):
            raise InputError("the DMN node needs a particle-filter method (pf-dmn, pf-image or pf-vector)",
                             "give weights of a PF method")
        self.method, self.area, self.image_size = method.eval(), area, image_size
        self.count, self.noise = particles, transition_noise
        self.generator = torch.Generator().manual_seed(seed)
        self.view_map = None
        self.particles = self.log_weights = None

    def set_contexts(self, images: list[np.ndarray], poses: np.ndarray) -> None:
        """The map: context images (HxWx3 uint8) and their metric planar poses."""
        stacked = torch.stack([prepare_image(image, self.image_size) for image in images])[None]
        with torch.no_grad():
            self.view_map = self.method.observation.build_map(stacked, self.area.normalise(poses)[None])

    def global_localization(self) -> None:
        """Uniform belief over the whole area."""
        self.particles = uniform_particles(1, self.count, generator=self.generator)
        self.log_weights = uniform_log_weights(1, self.count)

    def track_from(self, pose: np.ndarray, std: tuple[float, float, float] = TRACKING_STD) -> None:
        """Gaussian belief around a metric planar pose (std in normalised units, the paper's by default)."""
        self.particles = gaussian_particles(self.area.normalise(pose)[None], self.count, std, generator=self.generator)
        self.log_weights = uniform_log_weights(1, self.count)

    def step(self, rgb: np.ndarray, odometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move the particles by ``odometry`` (dx m, dy m, dyaw rad, robot frame), weigh them with ``rgb``;
        returns the metric estimate (x, y, yaw) and its 3x3 covariance (m, m, rad)."""
        if self.view_map is None:
            raise InputError("no context map yet", "load a context file or wait for PRISM keyframes")
        if self.particles is None:
            self.global_localization()
        observation = self.method.observation
        with torch.no_grad():
            moved = transition(self.particles, self.area.metric_delta(odometry)[None], self.noise, self.generator)
            query = query_step(observation.encode_queries(prepare_image(rgb, self.image_size)[None, None]), 0)
            self.log_weights = update(self.log_weights, observation(self.view_map, query, moved)[..., 0])
            self.particles = moved
            if float(effective_sample_size(self.log_weights)[0]) < 0.5 * self.count:
                self._resample()
        return self.estimate()

    def _resample(self) -> None:
        index = torch.multinomial(self.log_weights.exp(), self.count, replacement=True, generator=self.generator)
        self.particles = torch.gather(self.particles, 1, index[..., None].expand(-1, -1, 3))
        self.log_weights = uniform_log_weights(1, self.count)

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        mean = weighted_mean(self.particles, self.log_weights)[0]
        covariance = weighted_covariance(self.particles, self.log_weights)[0].double().numpy()
        scale = np.diag([0.5 * self.area.side, 0.5 * self.area.side, math.pi])
        return self.area.metric(mean), scale @ covariance @ scale

    def metric_particles(self) -> np.ndarray:
        """(K, 3) metric particles."""
        return self.area.metric(self.particles[0])
