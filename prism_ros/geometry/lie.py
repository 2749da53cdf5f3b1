"""SO(3) / SE(3) on plain rotation and 4x4 matrices, batched over leading dims, any float dtype and device.

Conventions: ``xi = [rho, phi]`` (translation part first, then rotation), ``exp(xi) = [[R, J_l(phi) rho],
[0, 1]]``, left/right Jacobians as in Barfoot, "State Estimation for Robotics", and
``T exp(xi) T^-1 = exp(se3_adjoint(T) xi)``.

Library choice. Tracking, rendering and the map all work on 4x4 matrices, so poses stay plain tensors:
- kornia's functional conversions do the SO(3) maps: ``axis_angle_to_rotation_matrix`` for exp and
  ``rotation_matrix_to_axis_angle`` (Shepperd quaternion + atan2) for log. Measured against scipy on 1000
  rotations each (random, 1e-9..1e-2 rad, pi - 1e-7..pi - 0.1 rad): at most 5e-7 (float32) and 1e-15 (float64)
  away, relative accuracy held for tiny angles and finite gradients at the identity.
- kornia's ``liegroup.Se3`` is an ``nn.Module`` that stores a translation which requires no grad as an
  ``nn.Parameter``, so its outputs suddenly require grad; its ``So3`` Jacobians take (B, 3) only; pypose
  would put a ``LieTensor`` subclass into every module and is not a dependency. The SE(3) parts (V = J_l,
  its inverse, Jacobians, adjoint) are therefore written here, a few lines each.
Small angles use Taylor series in theta^2 (terms through theta^10, relative error < 1e-16 below
theta = 0.3), evaluated on theta^2 so that gradients stay finite at zero; float32 and float64 are checked
against scipy, matrix_exp and finite differences in test/test_geometry.py.
"""
from __future__ import annotations

import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

_SERIES_BELOW_THETA_SQ = 0.09  # theta < 0.3 rad: series; above, the closed forms' cancellation costs < 1e-6 (f32)


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix: skew(a) @ b = a x b."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), -1).reshape(*v.shape[:-1], 3, 3)


def _series(theta_sq: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum_k coefficients[k] * theta_sq**k by Horner."""
    out = torch.full_like(theta_sq, coefficients[-1])
    for c in coefficients[-2::-1]:
        out = out * theta_sq + c
    return out


def _jacobian_coefficients(phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a = (1 - cos t)/t^2, b = (t - sin t)/t^3, c = (1 - (t/2) cot(t/2))/t^2 for t = |phi|, shape (..., 1, 1).

    Each closed form is 0/0 at t = 0: below the switch the series is used, and each branch sees an argument
    that keeps it finite (torch.where back-propagates through both).
    """
    theta_sq = (phi * phi).sum(-1)[..., None, None]
    small = theta_sq < _SERIES_BELOW_THETA_SQ
    t2 = torch.where(small, theta_sq, torch.zeros_like(theta_sq))
    t = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt()
    a_series = _series(t2, (1 / 2, -1 / 24, 1 / 720, -1 / 40320, 1 / 3628800, -1 / 479001600))
    b_series = _series(t2, (1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800, -1 / 6227020800))
    c_series = _series(t2, (1 / 12, 1 / 720, 1 / 30240, 1 / 1209600, 1 / 47900160, 691 / 1307674368000))
    half = 0.5 * t
    a = torch.where(small, a_series, (1 - torch.cos(t)) / (t * t))
    b = torch.where(small, b_series, (t - torch.sin(t)) / (t * t * t))
    c = torch.where(small, c_series, (1 - half * torch.cos(half) / torch.sin(half)) / (t * t))
    return a, b, c


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def so3_exp(phi: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vector -> (..., 3, 3) rotation matrix."""
    return axis_angle_to_rotation_matrix(phi)


def so3_log(R: torch.Tensor) -> torch.Tensor:  # noqa: N803 - the usual name
    """(..., 3, 3) rotation -> (..., 3) rotation vector with |phi| <= pi (accurate near 0 and near pi)."""
    return rotation_matrix_to_axis_angle(R)


def so3_left_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """J_l(phi) (..., 3, 3): exp(phi + d) ~= exp(J_l d) exp(phi); also the V matrix of se3_exp."""
    a, b, _ = _jacobian_coefficients(phi)
    K = skew(phi)
    return _eye(3, phi) + a * K + b * (K @ K)


def so3_right_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """J_r(phi) = J_l(-phi) (..., 3, 3): exp(phi + d) ~= exp(phi) exp(J_r d) (IMU preintegration)."""
    a, b, _ = _jacobian_coefficients(phi)
    K = skew(phi)
    return _eye(3, phi) - a * K + b * (K @ K)


def so3_left_jacobian_inverse(phi: torch.Tensor) -> torch.Tensor:
    """J_l(phi)^-1 (..., 3, 3), in closed form (|phi| < 2 pi)."""
    _, _, c = _jacobian_coefficients(phi)
    K = skew(phi)
    return _eye(3, phi) - 0.5 * K + c * (K @ K)


def so3_right_jacobian_inverse(phi: torch.Tensor) -> torch.Tensor:
    """J_r(phi)^-1 = J_l(-phi)^-1 (..., 3, 3)."""
    _, _, c = _jacobian_coefficients(phi)
    K = skew(phi)
    return _eye(3, phi) + 0.5 * K + c * (K @ K)


def se3_from_rt(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """Stack (..., 3, 3) rotations and (..., 3) translations (broadcast) into (..., 4, 4) transforms. (numpy's
    broadcast_shapes: torch's imports its symbolic-shape machinery and sympy on first use.)"""
    shape = np.broadcast_shapes(tuple(R.shape[:-2]), tuple(t.shape[:-1]))
    top = torch.cat((R.expand(*shape, 3, 3), t.expand(*shape, 3)[..., None]), -1)
    bottom = torch.zeros(*shape, 1, 4, dtype=top.dtype, device=top.device)
    bottom[..., 0, 3] = 1
    return torch.cat((top, bottom), -2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """(..., 6) twist [rho, phi] -> (..., 4, 4) transform [[exp(phi), J_l(phi) rho], [0, 1]]."""
    rho, phi = xi[..., :3], xi[..., 3:]
    t = (so3_left_jacobian(phi) @ rho[..., None])[..., 0]
    return se3_from_rt(so3_exp(phi), t)


def se3_log(T: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """(..., 4, 4) transform -> (..., 6) twist [rho, phi], the inverse of se3_exp (|phi| <= pi)."""
    phi = so3_log(T[..., :3, :3])
    rho = (so3_left_jacobian_inverse(phi) @ T[..., :3, 3:])[..., 0]
    return torch.cat((rho, phi), -1)


def se3_inverse(T: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """Closed-form inverse [[R^T, -R^T t], [0, 1]] of (..., 4, 4) rigid transforms."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return se3_from_rt(Rt, -(Rt @ T[..., :3, 3:])[..., 0])


def se3_compose(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """A @ B with broadcasting over leading dims (T_a_c = T_a_b @ T_b_c)."""
    return A @ B


def se3_adjoint(T: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """(..., 6, 6) adjoint [[R, [t]x R], [0, R]] for the [rho, phi] order: T exp(xi) T^-1 = exp(Ad_T xi)."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    top = torch.cat((R, skew(t) @ R), -1)
    bottom = torch.cat((torch.zeros_like(R), R), -1)
    return torch.cat((top, bottom), -2)


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """Apply (..., 4, 4) transforms to (..., N, 3) points (leading dims broadcast): R p + t."""
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]
