"""SO(3) / SE(3): the project's one implementation of the Lie-group maths.

Conventions: ``xi = [rho, phi]`` (translation part first, then rotation), ``exp(xi) = [[R, J_l(phi) rho],
[0, 1]]``, Jacobians as in Barfoot, "State Estimation for Robotics": ``exp(xi + d) ~= exp(J_l(xi) d) exp(xi)``,
``J_r(xi) = J_l(-xi)``; ``ad(xi) = [[phi^, rho^], [0, phi^]]`` and ``T exp(xi) T^-1 = exp(se3_adjoint(T) xi)``.

Two flavours:
- torch (plain names): batched over leading dims, any float dtype and device, differentiable, no host syncs.
  Poses stay plain 4x4 tensors (tracking, rendering and the map all use them). The SO(3) exp and log are
  kornia's functional conversions (log by Shepperd's quaternion + atan2: within 5e-7 (float32) and 1e-15
  (float64) of scipy from 1e-9 rad to pi, finite gradients at the identity); kornia's ``liegroup`` classes are
  not used because ``Se3`` is an ``nn.Module`` whose outputs require grad and ``So3``'s Jacobians take (B, 3) only.
- numpy (``*_np``): one float64 vector or matrix at a time, for tracking's host-side 6-DoF bookkeeping, where a
  torch call costs more than its arithmetic (``skew_np`` also batches).

Both evaluate one table of coefficients of theta = |phi| (``_COEFFICIENTS``): closed forms, and below a switch
Taylor series in theta^2 (relative error < 1e-16), on theta^2 so that gradients stay finite at zero. The
Jacobians and their inverses are exact closed forms; test/test_lie.py checks them against scipy, matrix_exp,
autodiff and finite differences in float32 and float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

_NEAR_PI = math.pi - 1e-3  # so3_log_np: above this angle the skew part is too small to give the axis
_I3 = np.eye(3)
_I3.flags.writeable = False

# Each coefficient of t = |phi|: its Taylor coefficients in t^2, its closed form (t, sin, cos) -> value, and the
# t^2 below which the series is used. The series switch at t = 0.3 (relative error < 1e-16 there), where the
# closed forms' cancellation costs < 1e-6 in float32; d and e cancel more (their numerators are O(t^4), O(t^5)),
# so theirs switch at t = 1.
_COEFFICIENTS = {
    # sin t / t (numpy Rodrigues; torch's so3_exp is kornia's)
    "sinc": ((1.0, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800),
             lambda t, sin, cos: sin(t) / t, 0.09),
    # (1 - cos t) / t^2
    "a": ((1 / 2, -1 / 24, 1 / 720, -1 / 40320, 1 / 3628800, -1 / 479001600),
          lambda t, sin, cos: (1 - cos(t)) / (t * t), 0.09),
    # (t - sin t) / t^3
    "b": ((1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800, -1 / 6227020800),
          lambda t, sin, cos: (t - sin(t)) / (t * t * t), 0.09),
    # (1 - (t/2) cot(t/2)) / t^2
    "c": ((1 / 12, 1 / 720, 1 / 30240, 1 / 1209600, 1 / 47900160, 691 / 1307674368000),
          lambda t, sin, cos: (1 - 0.5 * t * cos(0.5 * t) / sin(0.5 * t)) / (t * t), 0.09),
    # (t^2 + 2 cos t - 2) / (2 t^4)
    "d": ((1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600, -1 / 87178291200, 1 / 20922789888000,
           -1 / 6402373705728000, 1 / 2432902008176640000),
          lambda t, sin, cos: (t * t + 2 * cos(t) - 2) / (2 * t ** 4), 1.0),
    # (2 t - 3 sin t + t cos t) / (2 t^5)
    "e": ((1 / 120, -1 / 2520, 1 / 120960, -1 / 9979200, 1 / 1245404160, -1 / 217945728000, 1 / 50812489728000,
           -1 / 15205637551104000, 1 / 5676771352412160000, -1 / 2585201673888497664000),
          lambda t, sin, cos: (2 * t - 3 * sin(t) + t * cos(t)) / (2 * t ** 5), 1.0),
}


def _horner(theta_sq, coefficients: tuple[float, ...]):
    """sum_k coefficients[k] * theta_sq**k (tensor or float)."""
    out = coefficients[-1]
    for c in coefficients[-2::-1]:
        out = out * theta_sq + c
    return out


def _coefficients(phi: torch.Tensor, *names: str) -> list[torch.Tensor]:
    """The named coefficients of t = |phi| for (..., 3) phi, each of shape (..., 1, 1).

    Each closed form is 0/0 at t = 0: below the switch the series is used, and each branch sees an argument
    that keeps it finite (torch.where back-propagates through both).
    """
    theta_sq = (phi * phi).sum(-1)[..., None, None]
    branches = {}  # switch -> (mask, series argument, closed-form argument)
    out = []
    for name in names:
        series, closed, switch = _COEFFICIENTS[name]
        if switch not in branches:
            small = theta_sq < switch
            branches[switch] = (small, torch.where(small, theta_sq, torch.zeros_like(theta_sq)),
                                torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt())
        small, t2, t = branches[switch]
        out.append(torch.where(small, _horner(t2, series), closed(t, torch.sin, torch.cos)))
    return out


def _coefficients_np(phi: np.ndarray, *names: str) -> list[float]:
    """The named coefficients of t = |phi| for one 3-vector, as floats."""
    theta_sq = float(phi @ phi)
    t = math.sqrt(theta_sq)
    return [_horner(theta_sq, series) if theta_sq < switch else closed(t, math.sin, math.cos)
            for series, closed, switch in (_COEFFICIENTS[n] for n in names)]


# The formulas below are shared by both flavours: they only use @, * and + on matrices and coefficients.
def _rotation(K, K2, a, b, eye):
    """I + a K + b K^2 with K = phi^, K2 = K @ K: exp(phi) for coefficients (sinc, a), J_l(phi) for (a, b)."""
    return eye + a * K + b * K2


def _left_jacobian_inverse(K, K2, c, eye):
    """J_l(phi)^-1 = I - K/2 + c K^2 in closed form (|phi| < 2 pi)."""
    return eye - 0.5 * K + c * K2


def _q(P, PP, Rh, b, d, e):
    """Barfoot's Q_l(rho, phi), the top-right block of the SE(3) J_l (P = phi^, PP = P @ P, Rh = rho^)."""
    PR, RP = P @ Rh, Rh @ P
    PRP = PR @ P
    return 0.5 * Rh + b * (PR + RP + PRP) + d * (PP @ Rh + Rh @ PP - 3 * PRP) + e * (PR @ PP + PP @ RP)


# ----------------------------------------------------------------------------- torch: hat / vee
def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix (the so(3) hat): skew(a) @ b = a x b."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), -1).reshape(*v.shape[:-1], 3, 3)


def vee(S: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3): the vector of S's skew part (S - S^T) / 2; the inverse of :func:`skew`."""
    return 0.5 * torch.stack([S[..., 2, 1] - S[..., 1, 2], S[..., 0, 2] - S[..., 2, 0],
                              S[..., 1, 0] - S[..., 0, 1]], -1)


def se3_hat(xi: torch.Tensor) -> torch.Tensor:
    """(..., 6) twist [rho, phi] -> (..., 4, 4) matrix [[phi^, rho], [0, 0]] of se(3)."""
    top = torch.cat([skew(xi[..., 3:]), xi[..., :3, None]], -1)
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], -2)


def se3_ad(xi: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 6, 6) adjoint of the algebra, ad(xi) = [[phi^, rho^], [0, phi^]]: [a^, b^] = (ad(a) b)^."""
    rho, phi = skew(xi[..., :3]), skew(xi[..., 3:])
    return torch.cat([torch.cat([phi, rho], -1), torch.cat([torch.zeros_like(phi), phi], -1)], -2)


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _blocks(top_left: torch.Tensor, top_right: torch.Tensor, bottom_right: torch.Tensor) -> torch.Tensor:
    """(..., 6, 6) [[top_left, top_right], [0, bottom_right]] from (..., 3, 3) blocks."""
    top = torch.cat((top_left, top_right), -1)
    return torch.cat((top, torch.cat((torch.zeros_like(bottom_right), bottom_right), -1)), -2)


# ----------------------------------------------------------------------------- torch: SO(3)
def so3_exp(phi: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vector -> (..., 3, 3) rotation matrix."""
    return axis_angle_to_rotation_matrix(phi)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 3) rotation vector with |phi| <= pi (accurate near 0 and near pi)."""
    return rotation_matrix_to_axis_angle(R)


def so3_left_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """J_l(phi) (..., 3, 3): exp(phi + d) ~= exp(J_l d) exp(phi); also the V matrix of se3_exp."""
    a, b = _coefficients(phi, "a", "b")
    K = skew(phi)
    return _rotation(K, K @ K, a, b, _eye(3, phi))


def so3_right_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """J_r(phi) = J_l(-phi) (..., 3, 3): exp(phi + d) ~= exp(phi) exp(J_r d) (IMU preintegration)."""
    a, b = _coefficients(phi, "a", "b")
    K = skew(phi)
    return _rotation(-K, K @ K, a, b, _eye(3, phi))


def so3_left_jacobian_inverse(phi: torch.Tensor) -> torch.Tensor:
    """J_l(phi)^-1 (..., 3, 3), in closed form (|phi| < 2 pi)."""
    (c,) = _coefficients(phi, "c")
    K = skew(phi)
    return _left_jacobian_inverse(K, K @ K, c, _eye(3, phi))


def so3_right_jacobian_inverse(phi: torch.Tensor) -> torch.Tensor:
    """J_r(phi)^-1 = J_l(-phi)^-1 (..., 3, 3)."""
    (c,) = _coefficients(phi, "c")
    K = skew(phi)
    return _left_jacobian_inverse(-K, K @ K, c, _eye(3, phi))


# ----------------------------------------------------------------------------- torch: SE(3)
def se3_from_rt(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) transform -> (..., 6) twist [rho, phi], the inverse of se3_exp (|phi| <= pi)."""
    phi = so3_log(T[..., :3, :3])
    rho = (so3_left_jacobian_inverse(phi) @ T[..., :3, 3:])[..., 0]
    return torch.cat((rho, phi), -1)


def se3_inverse(T: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse [[R^T, -R^T t], [0, 1]] of (..., 4, 4) rigid transforms."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return se3_from_rt(Rt, -(Rt @ T[..., :3, 3:])[..., 0])


def se3_compose(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B with broadcasting over leading dims (T_a_c = T_a_b @ T_b_c)."""
    return A @ B


def se3_adjoint(T: torch.Tensor) -> torch.Tensor:
    """(..., 6, 6) adjoint [[R, [t]x R], [0, R]] for the [rho, phi] order: T exp(xi) T^-1 = exp(Ad_T xi)."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    return _blocks(R, skew(t) @ R, R)


def se3_left_jacobian(xi: torch.Tensor) -> torch.Tensor:
    """SE(3) J_l(xi) (..., 6, 6) = [[J_l(phi), Q_l], [0, J_l(phi)]]: exp(xi + d) ~= exp(J_l d) exp(xi)."""
    phi = xi[..., 3:]
    a, b, d, e = _coefficients(phi, "a", "b", "d", "e")
    P = skew(phi)
    PP = P @ P
    J = _rotation(P, PP, a, b, _eye(3, xi))
    return _blocks(J, _q(P, PP, skew(xi[..., :3]), b, d, e), J)


def se3_right_jacobian(xi: torch.Tensor) -> torch.Tensor:
    """SE(3) J_r(xi) = J_l(-xi) (..., 6, 6): exp(xi + d) ~= exp(xi) exp(J_r d)."""
    return se3_left_jacobian(-xi)


def se3_left_jacobian_inverse(xi: torch.Tensor) -> torch.Tensor:
    """SE(3) J_l(xi)^-1 (..., 6, 6) = [[J^-1, -J^-1 Q_l J^-1], [0, J^-1]], J = J_l(phi), in closed form:
    log(exp(d) exp(xi)) ~= xi + J_l(xi)^-1 d (|phi| < 2 pi)."""
    phi = xi[..., 3:]
    b, c, d, e = _coefficients(phi, "b", "c", "d", "e")
    P = skew(phi)
    PP = P @ P
    J_inv = _left_jacobian_inverse(P, PP, c, _eye(3, xi))
    return _blocks(J_inv, -J_inv @ _q(P, PP, skew(xi[..., :3]), b, d, e) @ J_inv, J_inv)


def se3_right_jacobian_inverse(xi: torch.Tensor) -> torch.Tensor:
    """SE(3) J_r(xi)^-1 = J_l(-xi)^-1 (..., 6, 6): log(exp(xi) exp(d)) ~= xi + J_r(xi)^-1 d."""
    return se3_left_jacobian_inverse(-xi)


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (..., 4, 4) transforms to (..., N, 3) points (leading dims broadcast): R p + t."""
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


# ----------------------------------------------------------------------------- numpy (host, float64)
def skew_np(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrix, numpy (float input keeps its dtype, other input -> float64)."""
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    if v.ndim == 1:  # the common case, several times faster than the batched stack
        x, y, z = v
        return np.array(((0.0, -z, y), (z, 0.0, -x), (-y, x, 0.0)), dtype=v.dtype)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = np.zeros_like(x)
    return np.stack((o, -z, y, z, o, -x, -y, x, o), -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp_np(phi: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) -> rotation (3, 3) by Rodrigues' formula."""
    sinc, a = _coefficients_np(phi, "sinc", "a")
    K = skew_np(phi)
    return _rotation(K, K @ K, sinc, a, _I3)


def so3_log_np(R: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) -> rotation vector (3,), |phi| <= pi; near pi, where the skew part no longer gives the
    axis, scipy's quaternion path."""
    s = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])  # sin(t) * axis
    sin = math.sqrt(s @ s)
    t = math.atan2(sin, 0.5 * (R[0, 0] + R[1, 1] + R[2, 2] - 1.0))
    if t > _NEAR_PI:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(R).as_rotvec()
    return s * (t / sin) if sin > 0.0 else s


def so3_left_jacobian_np(phi: np.ndarray) -> np.ndarray:
    """J_l(phi) (3, 3)."""
    a, b = _coefficients_np(phi, "a", "b")
    K = skew_np(phi)
    return _rotation(K, K @ K, a, b, _I3)


def so3_left_jacobian_inverse_np(phi: np.ndarray) -> np.ndarray:
    """J_l(phi)^-1 (3, 3), in closed form."""
    (c,) = _coefficients_np(phi, "c")
    K = skew_np(phi)
    return _left_jacobian_inverse(K, K @ K, c, _I3)


def se3_exp_np(xi: np.ndarray) -> np.ndarray:
    """Twist [rho, phi] (6,) -> transform (4, 4), as :func:`se3_exp`."""
    sinc, a, b = _coefficients_np(xi[3:], "sinc", "a", "b")
    K = skew_np(xi[3:])
    K2 = K @ K
    T = np.eye(4)
    T[:3, :3] = _rotation(K, K2, sinc, a, _I3)
    T[:3, 3] = _rotation(K, K2, a, b, _I3) @ xi[:3]
    return T


def se3_log_np(T: np.ndarray) -> np.ndarray:
    """Transform (4, 4) -> twist [rho, phi] (6,), the inverse of :func:`se3_exp_np`."""
    phi = so3_log_np(T[:3, :3])
    return np.concatenate((so3_left_jacobian_inverse_np(phi) @ T[:3, 3], phi))


def se3_inverse_np(T: np.ndarray) -> np.ndarray:
    """Inverse [[R^T, -R^T t], [0, 1]] of a (4, 4) rigid transform."""
    inverse = np.eye(4)
    inverse[:3, :3] = T[:3, :3].T
    inverse[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inverse


def se3_left_jacobian_inverse_np(xi: np.ndarray) -> np.ndarray:
    """SE(3) J_l(xi)^-1 (6, 6), in closed form, as :func:`se3_left_jacobian_inverse`."""
    b, c, d, e = _coefficients_np(xi[3:], "b", "c", "d", "e")
    P = skew_np(xi[3:])
    PP = P @ P
    J_inv = _left_jacobian_inverse(P, PP, c, _I3)
    out = np.zeros((6, 6))
    out[:3, :3] = out[3:, 3:] = J_inv
    out[:3, 3:] = -J_inv @ _q(P, PP, skew_np(xi[:3]), b, d, e) @ J_inv
    return out
