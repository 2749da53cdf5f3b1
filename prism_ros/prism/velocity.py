"""PRISM step 3: the velocity in closed form, by conditioning the joint prior on the pose posterior.

The transition model's prediction is a joint Gaussian over the tangent ``[xi, v]`` at the prior mean
(``xi`` the left pose perturbation, see :mod:`prism_ros.prism.state`). Tracking only looks at the pose, so its
likelihood is a function of ``xi`` alone and the posterior factorises as ``q(xi) p(v | xi)``: the pose
posterior ``N(xi*, S*)`` from the MAP + Laplace step times the prior conditional
``p(v | xi) = N(v_bar + K xi, S_vv - K S_xv)`` with ``K = S_vx S_xx^-1``. Marginalising ``xi`` gives
    ``v ~ N(v_bar + K xi*, S_vv - K S_xv + K S* K^T)``,  ``cov(v, xi) = K S*``,
which is exactly the Kalman update of the whole state with a pose-only measurement, whatever the
measurement was (the velocity is never observed directly).

Tangent spaces: ``xi* = log(T* T_bar^-1)`` is the pose posterior's mean in the prior's tangent, while
``PoseEstimate.covariance`` lives at ``T*`` (``T = exp(eps) T*``). Since ``exp(eps) exp(xi*) =
exp(xi* + J_l(xi*)^-1 eps)`` to first order, a perturbation at ``T*`` is ``A eps`` at the prior mean with
``A = J_l(xi*)^-1``. The posterior is expressed at ``T*`` (the new state mean), so its pose block stays
``S*`` and ``K`` acts on the pose noise as ``K A``. For per-frame corrections (mm, mrad) ``A`` differs from
the identity by ~1e-3; it is kept because it is cheap and makes the result exact for larger ones.

The posterior error is a linear map of the prior error plus the measurement's own, independent noise:
pose ``S* A^T S_xx^-1 e_x`` (at ``T*``), velocity ``e_v - K e_x + K A`` (pose part), so the prior's
``previous_cross`` (covariance with the previous frame's error) goes through that map; the frame-to-frame
motion's covariance needs it (:func:`prism_ros.evaluation.calibration.relative_pose_nees`).

A Student-t prior (``PoseEstimate.prior_scale`` > 1, :mod:`prism_ros.prism.tracking`) is a Gaussian scale
mixture: given the scale the tracking settled on, the prediction is Gaussian with its covariance times that
scale, and this step conditions that Gaussian. The extra spread is new noise of this step, so the
covariance with the previous frame's error is unchanged (it enters through ``S_xx``).
"""
from __future__ import annotations

import torch

from prism_ros.dynamics.model import symmetrise
from prism_ros.geometry.lie import se3_inverse, se3_left_jacobian_inverse, se3_log
from prism_ros.prism.state import GaussianState, PoseEstimate


def condition_on_pose(prior: GaussianState, pose: PoseEstimate) -> GaussianState:
    """The state at the pose posterior: mean ``(pose.T, v_bar + K xi*)``, the full 12x12 covariance
    (pose block ``pose.covariance``, cross ``K A S*``, velocity ``S_vv - K S_xv + K A S* A^T K^T``, with ``S`` the
    prior's times ``pose.prior_scale``) and the covariance with the previous frame's error."""
    options = dict(dtype=prior.T.dtype, device=prior.T.device)
    T_post, S_post = torch.as_tensor(pose.T, **options), symmetrise(torch.as_tensor(pose.covariance, **options))
    xi = se3_log(T_post @ se3_inverse(prior.T))
    S = prior.covariance * pose.prior_scale
    S_xx, S_xv, S_vv = S[:6, :6], S[:6, 6:], S[6:, 6:]
    K = torch.linalg.solve(S_xx, S_xv).T  # S_vx S_xx^-1, by a solve (S_xx is symmetric)
    A = se3_left_jacobian_inverse(xi)
    KA = K @ A
    cross = KA @ S_post
    S_vv_post = S_vv - K @ S_xv + cross @ KA.T
    covariance = torch.cat([torch.cat([S_post, cross.T], -1), torch.cat([cross, S_vv_post], -1)], -2)
    return GaussianState(prior.t, T_post, prior.velocity + K @ xi, symmetrise(covariance),
                         None if prior.previous_cross is None else error_map(S_post, A, S_xx, K) @ prior.previous_cross)


def error_map(S_post: torch.Tensor, A: torch.Tensor, S_xx: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """12x12 ``M``: the posterior error is ``M`` times the prior error plus noise independent of the past."""
    B = torch.linalg.solve(S_xx, A @ S_post).T  # S* A^T S_xx^-1 (S_xx and S* symmetric)
    top = torch.cat([B, torch.zeros_like(B)], -1)
    bottom = torch.cat([K @ A @ B - K, torch.eye(6, dtype=B.dtype, device=B.device)], -1)
    return torch.cat([top, bottom], -2)
