"""The filter's Gaussian state and the conventions every PRISM module shares.

- Pose: ``T`` = T_world_body, 4x4 float64. The body is the IMU frame when there is an IMU, else the
  camera optical frame (``T_body_camera`` = identity). Camera pose = ``T @ T_body_camera``.
- Pose uncertainty is a LEFT (world-frame) perturbation: ``T = exp(delta^) @ T_mean`` with
  ``delta = [rho, phi]`` ordered as :func:`prism_ros.geometry.lie.se3_exp`. A left perturbation of the
  body is the same left perturbation of the camera (T_body_camera multiplies on the right), so
  tracking can work on the camera pose and hand its covariance to the state unchanged.
- Velocity: ``v = [linear velocity in the world frame (3), angular velocity in the body frame (3)]``.
- State covariance: 12x12 over ``[delta (6), delta_v (6)]``.
- ``previous_cross``: 12x12 covariance of this state's error with the previous frame's state error
  (``F P`` after a prediction, carried through the pose update), so that frame-to-frame motion can be
  given its own covariance: consecutive errors share the prior and are far from independent.
Small state tensors are float64 (on the filter's device); images and the map are float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class GaussianState:
    """Gaussian over (pose, velocity) at time ``t``: mean ``T`` (4,4), ``velocity`` (6,), ``covariance`` (12,12)."""

    t: float
    T: torch.Tensor
    velocity: torch.Tensor
    covariance: torch.Tensor
    previous_cross: torch.Tensor | None = None  # cov(error now, error at the previous state), 12x12

    @property
    def pose_covariance(self) -> torch.Tensor:
        return self.covariance[:6, :6]

    @property
    def velocity_covariance(self) -> torch.Tensor:
        return self.covariance[6:, 6:]

    def to(self, device) -> "GaussianState":
        return replace(self, T=self.T.to(device), velocity=self.velocity.to(device),
                       covariance=self.covariance.to(device),
                       previous_cross=None if self.previous_cross is None else self.previous_cross.to(device))

    @staticmethod
    def initial(T, t: float = 0.0, pose_std=(1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4),
                velocity_std=(0.5, 0.5, 0.5, 0.5, 0.5, 0.5), velocity=None, device="cpu") -> "GaussianState":
        """A state at a known pose (tight pose covariance) with an uncertain velocity (zero mean)."""
        options = dict(dtype=torch.float64, device=device)
        std = torch.tensor(list(pose_std) + list(velocity_std), **options)
        v = torch.zeros(6, **options) if velocity is None else torch.as_tensor(velocity, **options)
        return GaussianState(t, torch.as_tensor(T, **options), v, torch.diag(std**2))


@dataclass
class PoseEstimate:
    """Result of the pose MAP + Laplace step (step 1 and 2 of the filter).

    ``T``: MAP T_world_body; ``covariance``: 6x6 Laplace covariance (left perturbation); ``ok``: the
    tracking-quality verdict (a lost frame is never fused); ``quality``: the numbers behind it;
    ``prior_scale``: the factor (>= 1) on the prior's covariance that the MAP was found with (a Student-t prior's
    inverse weight, :mod:`prism_ros.prism.tracking`), which the velocity step conditions on too.
    """

    T: torch.Tensor
    covariance: torch.Tensor
    ok: bool
    quality: dict = field(default_factory=dict)
    prior_scale: float = 1.0
