"""Frame-to-model tracking: the pose MAP against ONE render of the map, and its Laplace covariance.

PRISM steps 1 and 2. The camera pose ``T`` = T_world_camera minimises

    -log p(T | obs, map) = 1/2 kappa sum_i w_i r_i^2 + 1/2 e^T P^-1 e + const,   e = log(T T_prior^-1)

- ``r_i`` are dense residuals in units of their noise std: point-to-plane ICP against the rendered
  vertex/normal maps (projective data association) and photometric alignment against the rendered
  intensity; ``w_i`` are the IRLS weights of a robust loss (Huber or Tukey).
- ``kappa`` <= 1 tempers the data. Dense residuals are spatially correlated (the depth sensor's matching
  window, normals from neighbours, map fusion), so N pixels hold the information of about
  N (spacing / correlation_pixels)^2 independent ones; the raw Gauss-Newton Hessian would be
  over-confident by the inverse of that factor. The MAP and the Laplace Hessian use the same tempered
  objective, so the two stay consistent.
- The prior term's Jacobian is the SE(3) left-Jacobian inverse d e / d delta = J_l(e)^-1, in closed form.
- The prior is Student-t with ``prior_dof`` degrees of freedom where that is set: hand-held motion jerks, so
  under a constant-velocity prediction its tails are heavier than a Gaussian's, and a Gaussian prior that fits
  the typical frame pulls the MAP of a jerk towards the prediction with a covariance too small to admit it.
  Student-t's IRLS weight ``w = (nu + 6) / (nu + e^T P^-1 e)`` scales the prior information (capped at one:
  the prediction is never trusted more than its Gaussian says), re-evaluated at every iteration; the Laplace
  covariance uses the final weight, and the filter conditions the velocity on the prior scaled by ``1 / w``
  (:attr:`PoseEstimate.prior_scale`).

Gauss-Newton runs on the left (world-frame) perturbation ``T <- exp(delta^) T`` coarse to fine over
observation pyramid levels, always against the same render (each point's render pixel follows from
the render's camera, whatever the level). At the MAP the covariance is
(kappa H_data + J_l^-T P^-1 J_l^-1)^-1, H_data the Gauss-Newton Hessian under the final robust weights.

Per-pixel work is batched torch in float32 on the inputs' device, with no compaction inside the
iterations (invalid pixels get zero weight). The 6-DoF bookkeeping (normal equations 6x6, solve, pose
update, prior error) is float64 numpy on the host: one 6x6 transfer per iteration, which the
convergence test needs anyway, instead of dozens of tiny device kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from prism_ros.errors import InputError
from prism_ros.geometry import camera_pyramid, downsample_depth
from prism_ros.geometry.lie import se3_exp_np, se3_inverse_np, se3_left_jacobian_inverse_np, se3_log_np
from prism_ros.prism.kernels import resolve_backend
from prism_ros.prism.observation import Observation, ObservationLevel, make_level
from prism_ros.prism.render import RenderResult
from prism_ros.prism.state import PoseEstimate

__all__ = ["TrackingConfig", "track"]


@dataclass
class TrackingConfig:
    """Settings of the pose MAP and its Laplace covariance (defaults: Kinect-class RGB-D, QVGA render)."""

    # coarse to fine: pyramid levels relative to the render's resolution (0 = the observation level of
    # the render's size, k = 2^k times coarser; coarse levels the observation lacks are built here)
    levels: tuple[int, ...] = (3, 2, 1, 0)
    iterations: tuple[int, ...] = (10, 10, 5, 3)
    # pixel subsampling per level: every 2nd pixel at the render resolution keeps CPU tracking near 30 ms at
    # QVGA; with residuals correlated over ~correlation_pixels it loses little (kappa keeps the covariance)
    strides: tuple[int, ...] = (1, 1, 1, 2)
    convergence: float = 1e-5  # a level stops when |delta| (m, rad) falls below this (x 2 per coarser level)
    # likelihood terms (relative weights multiply the information; 0 disables a term)
    icp_weight: float = 1.0
    photometric_weight: float = 1.0  # 0 where colour is not registered to depth (7-Scenes)
    depth_sigma_a: float = 0.0012  # depth noise std a + b z^2 in m (Kinect v1, Khoshelham & Elberink 2012)
    depth_sigma_b: float = 0.0019
    map_uncertainty: bool = True  # add the render's sdf_std^2 to the point-to-plane variance
    intensity_sigma: float = 0.03  # intensity std, [0, 1] units (sensor noise, exposure, shading model)
    pixel_sigma: float = 0.5  # std (level pixels) of where intensities are compared, times |grad I|
    robust_loss: str = "huber"  # huber | tukey | none
    robust_scale: float = 2.0  # in sigmas (Tukey: about 4.7)
    # projective data association gates
    max_point_distance: float = 0.1  # m at the render resolution; doubles per coarser level (reach the prediction)
    max_normal_angle_deg: float = 30.0
    # Laplace calibration: correlation length of the residuals in render pixels (see the module doc)
    correlation_pixels: float = 4.0
    # lost criteria, at the MAP (finest level)
    inlier_sigmas: float = 3.0  # an associated point is an inlier when |r_icp| is below this
    # inliers / observed points that land on the rendered map: points in unmapped space are exploration,
    # not failure (counting them made every turn towards new space "lost", and lost frames never grow the map)
    min_inlier_ratio: float = 0.3
    min_valid_pixels: int = 500  # associated points
    max_mean_residual: float = 3.0  # mean |r| of the active terms, in sigmas
    max_condition: float = 1e6  # of the tempered data Hessian
    min_eigenvalue: float = 1e2  # of the tempered data Hessian: data alone pin each direction to ~0.1
    # not converged: the last iteration's |delta| (m, rad) exceeds max_final_update AND it moved the pose by more
    # than max_final_update_sigmas posterior standard deviations (sqrt(delta^T Sigma^-1 delta), Sigma the Laplace
    # covariance). Where the data pin the pose less tightly than a millimetre (low resolution, few points),
    # Gauss-Newton wanders by that much as projective associations switch pixels: within the posterior's spread,
    # the estimate has converged for every use of it
    max_final_update: float = 1e-3
    max_final_update_sigmas: float = 1.0
    # e^T P^-1 e of the MAP from the prior mean: a gross-inconsistency gate. Real hand motion is heavy-tailed
    # under the constant-velocity prior: on 7-Scenes redkitchen, frames with inlier ratio > 0.9 and a
    # well-conditioned Hessian reach 30-72 (a gate at 30 discarded 33 of 400 good frames). Kidnaps are
    # caught by the inlier ratio and convergence checks (the prior holds their MAP near it: 32-88).
    max_prior_distance: float = 100.0
    # degrees of freedom of the Student-t prior (see the module doc); 0 = Gaussian. `prism-ros calibrate` fits it
    prior_dof: float = 0.0

    def __post_init__(self):
        if not self.prior_dof >= 0:  # NaN too
            raise InputError(f"tracking.prior_dof must be >= 0, got {self.prior_dof}",
                             "use 0 for a Gaussian prior or the degrees of freedom of a Student-t one (e.g. 4)")


# ----------------------------------------------------------------------------- the tracking step
def track(obs: Observation, render: RenderResult, prior_T: torch.Tensor, prior_cov: torch.Tensor,
          config: TrackingConfig | None = None, init_T: torch.Tensor | None = None,
          backend: str = "torch") -> PoseEstimate:
    """MAP camera pose T_world_camera and its 6x6 Laplace covariance (left perturbation) for one frame.

    ``obs``: the frame at its pyramid levels; ``render``: the one render of the map at the predicted pose;
    ``prior_T`` (4,4), ``prior_cov`` (6,6): the dynamics prediction; ``init_T``: where Gauss-Newton starts
    (default: the prior mean). The Laplace Hessian is the one of the last linearisation, which is less than
    ``convergence`` from the returned pose when tracking converged. ``quality``: inlier_ratio, valid_pixels
    (associated points), icp_rmse (m), photometric_rmse (intensity), mean_residual (sigmas), condition and
    min_eigenvalue of the tempered data Hessian, iterations, update_norm (last |delta|), update_sigmas (the last
    delta in posterior standard deviations), prior_distance (e^T P^-1 e), prior_weight (the Student-t prior's
    weight at the MAP, one for a Gaussian), points, and ``reasons``: the lost criteria that failed (``ok`` = none
    failed).
    Degenerate input (no valid depth, an empty render) returns the prior with ``ok=False``.
    ``backend``: 'torch' (:func:`linearise`), 'fused' (:mod:`prism_ros.prism.kernels.track`) or 'auto'.
    """
    config = config or TrackingConfig()
    backend = resolve_backend(backend)
    prior = make_prior(prior_T, prior_cov, config.prior_dof)
    reference = make_reference(render, config)
    levels = make_levels(obs, render, config, fused=backend == "fused")
    if not levels or reference is None:
        return prior_estimate(prior, render.depth.device, "no valid depth" if not levels else "empty render")
    T = prior.T.copy() if init_T is None else as_numpy(init_T)
    system, iterations, update, delta = None, 0, float("nan"), np.zeros(6)
    for level in levels:
        linearise_at = lineariser(level, reference, config, backend)
        for _ in range(level.iterations):
            system = linearise_at(T)
            delta = gauss_newton_step(system, T, prior)
            T, iterations, update = se3_exp_np(delta) @ T, iterations + 1, float(np.linalg.norm(delta))
            if update < config.convergence * 2.0 ** max(level.offset, 0):
                break
    if system is None:
        return prior_estimate(prior, render.depth.device, "no iterations configured")
    covariance = laplace_covariance(system.H, T, prior)
    distance = prior_distance(T, prior)
    quality = assess(system, iterations, update, distance, config,
                     update_sigmas=float(np.sqrt(max(delta @ np.linalg.solve(covariance, delta), 0.0))))
    quality["prior_weight"] = weight = student_weight(distance, prior.dof)
    as_torch = lambda x: torch.as_tensor(x, dtype=torch.float64, device=render.depth.device)
    return PoseEstimate(as_torch(T), as_torch(covariance), not quality["reasons"], quality, prior_scale=1.0 / weight)


class Term(NamedTuple):
    """One residual type at every observed point, components first; rows outside ``mask`` get zero weight."""

    A: torch.Tensor  # (7,N): d r / d delta (6 rows), then r = residual / sigma
    mask: torch.Tensor  # (N,) bool
    error: torch.Tensor  # (N,) residual in its own unit (m, intensity)
    covered: torch.Tensor | None = None  # (N,) bool: the point lands on a valid render pixel (ICP term)

    @property
    def r(self) -> torch.Tensor:
        return self.A[6]


class Sums(NamedTuple):
    """Totals over one linearisation's points that the quality numbers (:func:`assess`) are made of."""

    covered: float  # points landing on a valid render pixel
    associated: float  # points passing the ICP gates
    inliers: float  # associated with |r_icp| < inlier_sigmas
    icp_squared: float  # sum of squared point-to-plane errors (m^2) of the associated points
    photometric_count: float  # points in the photometric term
    photometric_squared: float  # sum of their squared intensity errors
    abs_residual: float  # sum of |r| (sigmas) over the rows of the active terms
    rows: float  # rows of the active terms


class Linearisation(NamedTuple):
    """The tempered data term at one pose: 1/2 delta^T H delta + g^T delta, and the terms behind it (torch
    path) or their :class:`Sums` (fused path, which keeps no per-point data)."""

    H: np.ndarray  # (6,6) float64, kappa and term weights included
    g: np.ndarray  # (6,)
    icp: Term | None
    photometric: Term | None
    points: int
    sums: Sums | None = None


def lineariser(level: "Level", ref: "Reference", config: TrackingConfig, backend: str):
    """``linearise_at(T) -> Linearisation`` for one level with the resolved backend ('torch' or 'fused')."""
    if backend == "fused":
        from prism_ros.prism.kernels.track import lineariser as fused_lineariser

        return fused_lineariser(level, ref, config)
    return lambda T: linearise(T, level, ref, config)


def linearise(T: np.ndarray, level: "Level", ref: "Reference", config: TrackingConfig) -> Linearisation:
    """Residuals, Jacobians and robust weights of all observed points at pose T -> tempered normal equations."""
    poses = torch.as_tensor(np.concatenate((T[:3], (ref.T_render_world @ T)[:3])), dtype=torch.float32)
    poses = poses.to(level.points.device)  # rows: [R | t] of T_world_camera, then of T_render_camera
    q, q_render = torch.addmm(poses[:, 3:], poses[:, :3], level.points).split(3)
    uv, inv_z = project(ref, q_render)
    icp = point_to_plane(poses[:3, :3], q, uv, level, ref, config)
    photometric = photometric_term(q, q_render, uv, inv_z, level, ref, icp.mask) \
        if config.photometric_weight > 0 else None
    H, g = normal_equations([(icp, config.icp_weight), (photometric, config.photometric_weight)], level.kappa,
                            config)
    return Linearisation(H, g, icp, photometric, q.shape[1])


def gauss_newton_step(system: Linearisation, T: np.ndarray, prior: "Prior") -> np.ndarray:
    """The delta of T <- exp(delta^) T minimising the linearised data + prior objective."""
    e = se3_log_np(T @ prior.T_inverse)
    J = se3_left_jacobian_inverse_np(e)
    information = prior_weight(e, prior) * prior.information
    return -np.linalg.solve(system.H + J.T @ information @ J, system.g + J.T @ information @ e)


def laplace_covariance(H_data: np.ndarray, T: np.ndarray, prior: "Prior") -> np.ndarray:
    """Laplace approximation at the MAP: (tempered data Hessian + weighted prior information at T)^-1."""
    e = se3_log_np(T @ prior.T_inverse)
    J = se3_left_jacobian_inverse_np(e)
    covariance = np.linalg.inv(H_data + J.T @ (prior_weight(e, prior) * prior.information) @ J)
    return 0.5 * (covariance + covariance.T)


def student_weight(distance: float, dof: float, dim: int = 6) -> float:
    """IRLS weight ``(nu + dim) / (nu + d)`` of a Student-t at squared Mahalanobis distance ``d``, capped at one;
    one for ``dof`` 0 (Gaussian)."""
    return 1.0 if dof <= 0 else min(1.0, (dof + dim) / (dof + distance))


def prior_weight(e: np.ndarray, prior: "Prior") -> float:
    """The Student-t prior's weight on its information at the error ``e = log(T T_prior^-1)`` (module doc)."""
    return student_weight(float(e @ prior.information @ e), prior.dof)


# ----------------------------------------------------------------------------- residual terms
# Per-point tensors are laid out components first ((3,N) points, (7,N) Jacobian rows): on the CPU
# reductions over 3 components and (7,N) @ (N,7) products are several times faster that way.
def point_to_plane(R, q, uv, level: "Level", ref: "Reference", config: TrackingConfig) -> Term:
    """r = n_r . (T p - v_r) / sigma at the render pixel each point projects to, gated by distance and normal.

    sigma^2 = (a + b z^2)^2 (+ sdf_std^2 of the map), see :func:`residual_variance`: the sensor's depth
    noise, conservatively not shrunk by the incidence angle.
    """
    surfel = lookup_surfels(uv, ref)
    vertex, normal, variance, valid = surfel[:3], surfel[3:6], surfel[6], surfel[7] > 0
    difference = q - vertex
    normal_obs = R @ level.normals
    mask = (valid & (difference.square().sum(0) < (config.max_point_distance * 2.0 ** max(level.offset, 0)) ** 2)
            & ((normal_obs * normal).sum(0) > level.normal_gate))
    error = (difference * normal).sum(0)
    inv_sigma = variance.rsqrt()
    return Term(jacobian_rows(q, normal * inv_sigma, error * inv_sigma), mask, error, valid)


def photometric_term(q, q_render, uv, inv_z, level: "Level", ref: "Reference", associated) -> Term:
    """r = (I_render(pi(T_render^-1 T p)) - I_obs) / sigma, bilinear in the render image of the level's scale.

    The render image holds I / sigma, f d(I / sigma) / d(u, v) and 1 / sigma (see :func:`photometric_image`).
    Only depth-consistent points (those passing the ICP gates) take part, so occluded surfaces are never
    compared. The Jacobian is the pinhole one.
    """
    scaled_intensity, du, dv, inv_sigma, valid = sample_image(ref.images[max(level.offset, 0)], uv)
    du, dv = du * inv_z, dv * inv_z
    dz = torch.addcmul(du * q_render[0], dv, q_render[1]).mul_(-inv_z)
    gradient_world = ref.R_world_render @ torch.stack((du, dv, dz))  # d r / d q in the world frame
    r = torch.addcmul(scaled_intensity, level.intensity, inv_sigma, value=-1.0)
    return Term(jacobian_rows(q, gradient_world, r), associated & (valid > 0.999), r / inv_sigma)


def jacobian_rows(q: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(7,N) [d r / d delta; r] of r = a . exp(delta^) q + const: d r / d delta = [a, q x a], delta = [rho, phi].

    Written row by row into one buffer (no temporaries: this is the innermost per-pixel work).
    """
    A = torch.empty((7, q.shape[1]), dtype=q.dtype, device=q.device)
    A[:3], A[6] = a, r
    for row, (i, j) in enumerate(((1, 2), (2, 0), (0, 1)), start=3):  # (q x a)_k = q_i a_j - q_j a_i
        torch.mul(q[i], a[j], out=A[row])
        A[row].addcmul_(q[j], a[i], value=-1.0)
    return A


def normal_equations(terms: list, kappa: float, config: TrackingConfig) -> tuple[np.ndarray, np.ndarray]:
    """sum over the active terms of kappa weight (J^T W J, J^T W r), W the robust (IRLS) weights."""
    system = 0.0  # [[J^T W J, J^T W r], [., r^T W r]]
    for term, weight in terms:
        if term is not None and weight > 0:
            w = robust_weights(term.r, config) * term.mask
            system = system + (kappa * weight) * ((term.A * w) @ term.A.T)
    if not torch.is_tensor(system):
        return np.zeros((6, 6)), np.zeros(6)
    system = system.double().cpu().numpy()
    return 0.5 * (system[:6, :6] + system[:6, :6].T), system[:6, 6]


def robust_weights(r: torch.Tensor, config: TrackingConfig) -> torch.Tensor:
    """IRLS weights rho'(r) / r of the robust loss on normalised residuals."""
    k = config.robust_scale
    if config.robust_loss == "huber":
        return (k / r.abs().clamp_min(1e-12)).clamp_max(1.0)
    if config.robust_loss == "tukey":
        return (1 - (r / k).square()).clamp_min(0).square()
    if config.robust_loss == "none":
        return torch.ones_like(r)
    raise ValueError(f"unknown robust_loss {config.robust_loss!r}: use huber, tukey or none")


# ----------------------------------------------------------------------------- the render
class RenderImage(NamedTuple):
    image: torch.Tensor  # (1,5,h,w), see photometric_image
    gain: torch.Tensor  # (2,) and offset (2,): render pixel uv -> grid_sample coordinate gain uv + offset
    offset: torch.Tensor


class Reference(NamedTuple):
    """The render prepared for lookups: a surfel table and its intensity at each level's scale."""

    camera: object  # PinholeCamera of the render
    focal: torch.Tensor  # (2,1) fx, fy
    centre: torch.Tensor  # (2,1) cx, cy
    T_render_world: np.ndarray  # (4,4)
    R_world_render: torch.Tensor  # (3,3) float32 on the device
    surfels: torch.Tensor  # (8, H*W + 1): world vertex, world normal, residual variance, valid; last one invalid
    images: dict  # level offset (>= 0) -> RenderImage


def make_reference(render: RenderResult, config: TrackingConfig) -> Reference | None:
    """Surfel table (NaN-free: invalid pixels are zeros flagged invalid) and photometric images; None if empty."""
    valid = render.valid & torch.isfinite(render.vertex[..., 2]) & torch.isfinite(render.normal[..., 2])
    if not bool(valid.any()):
        return None
    variance = residual_variance(render, config).reshape(1, -1)
    fields = torch.cat((render.vertex.reshape(-1, 3).T.float(), render.normal.reshape(-1, 3).T.float(), variance,
                        torch.ones_like(variance)))
    invalid = fields.new_tensor([0.0] * 6 + [1.0, 0.0])[:, None]  # finite: zero weights keep sums finite
    surfels = torch.cat((torch.where(valid.reshape(1, -1), fields, invalid), invalid), 1)
    images = render_images(render, valid, sorted({max(o, 0) for o in config.levels}), config) \
        if config.photometric_weight > 0 else {}
    T = as_numpy(render.T_world_camera)
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=render.depth.device)
    focal, centre = (torch.stack(c).float()[:, None] for c in ((render.camera.fx, render.camera.fy),
                                                                 (render.camera.cx, render.camera.cy)))
    return Reference(render.camera, focal, centre, se3_inverse_np(T), R, surfels, images)


def residual_variance(render: RenderResult, config: TrackingConfig) -> torch.Tensor:
    """(H,W) point-to-plane variance at each render pixel: depth noise (a + b z^2)^2 at the RENDERED depth
    (+ sdf_std^2 of the map). Taking z from the noise-free render rather than from the measured point
    keeps the weights independent of the noise: weights that grow with the sign of the noise (nearer =
    smaller sigma) bias the estimate, by many standard errors with tens of thousands of pixels."""
    depth = torch.nan_to_num(render.depth.float(), nan=0.0)
    variance = (config.depth_sigma_a + config.depth_sigma_b * depth.square()).square()
    if config.map_uncertainty:
        variance = variance + torch.nan_to_num(render.sdf_std.float().square(), nan=0.0)
    return variance


def render_images(render: RenderResult, valid: torch.Tensor, offsets: list[int],
                  config: TrackingConfig) -> dict[int, RenderImage]:
    """The render's photometric images at 2^k coarser scales (NaN-aware 2x2 means, as :func:`box_pyramid`,
    and central-difference gradients); scale 0 uses the render's own intensity and gradient."""
    mask = valid.float()
    intensity = torch.where(valid, render.intensity.float(), 0.0)
    images = {0: photometric_image(intensity, render.gradient.float(), mask, 1, render.camera, config)}
    weighted = torch.stack((intensity, mask))[None]  # (sum of I v, sum of v) / count: normalised averaging
    for k in range(1, max(offsets) + 1):
        weighted = F.avg_pool2d(weighted, 2)
        level_valid = weighted[0, 1] > 0.999
        level_intensity = torch.where(level_valid, weighted[0, 0] / weighted[0, 1].clamp_min(1e-6), 0.0)
        gradient = central_gradient(level_intensity, level_valid)
        images[k] = photometric_image(level_intensity, gradient, level_valid.float(), 2**k, render.camera, config)
    return images


def photometric_image(intensity, gradient, valid, scale: int, camera, config: TrackingConfig) -> RenderImage:
    """Channels I / sigma, fx dI/du / sigma, fy dI/dv / sigma (per RENDER pixel), 1 / sigma and valid, so
    that a residual and its Jacobian cost a few products per point.

    sigma^2 = intensity_sigma^2 + (pixel_sigma |grad I|)^2 (gradient per image pixel): an error in where
    the two images are compared (interpolating a point-sampled render, aliasing, colour-depth registration)
    costs |grad I| per pixel, so edges claim no better than pixel_sigma accuracy. sigma is fixed per render
    pixel, which keeps the weights independent of the pose.
    """
    inv_sigma = (config.intensity_sigma**2 + config.pixel_sigma**2 * gradient.square().sum(0)).rsqrt()
    factors = inv_sigma / scale
    channels = (intensity * inv_sigma, gradient[0] * (camera.fx * factors), gradient[1] * (camera.fy * factors),
                inv_sigma, valid)
    # level pixel x = (u + 0.5) / scale - 0.5 (pixel-centre pyramids); grid_sample wants x * 2 / (size - 1) - 1
    size = intensity.new_tensor([intensity.shape[1] - 1.0, intensity.shape[0] - 1.0])
    gain = 2.0 / (scale * size)
    return RenderImage(torch.stack(channels)[None], gain, (0.5 / scale - 0.5) * 2.0 / size - 1.0)


def central_gradient(intensity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(2,H,W) (I(u+1) - I(u-1)) / 2 and the same along v; zero unless both neighbours are valid."""
    image = F.pad(intensity[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    ok = F.pad(valid[None, None].float(), (1, 1, 1, 1))[0, 0] > 0
    du = torch.where(ok[1:-1, 2:] & ok[1:-1, :-2], 0.5 * (image[1:-1, 2:] - image[1:-1, :-2]), 0.0)
    dv = torch.where(ok[2:, 1:-1] & ok[:-2, 1:-1], 0.5 * (image[2:, 1:-1] - image[:-2, 1:-1]), 0.0)
    return torch.stack((du, dv))


def project(ref: "Reference", q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Render-camera points (3,N) -> pixels (2,N) and 1/z (N,); points behind the camera (or where a distorted
    projection folds back) land far outside the image, so every later lookup reads them as invalid."""
    z = q[2]
    inv_z = 1.0 / z.clamp_min(1e-6)
    if ref.camera.has_distortion:
        uv = torch.nan_to_num(ref.camera.project(q.T)[0].T, nan=OUTSIDE)
    else:
        uv = torch.addcmul(ref.centre, q[:2] * inv_z, ref.focal)
    return torch.where(z > 0, uv, OUTSIDE), inv_z


OUTSIDE = -1.0e4  # pixel coordinate of points that cannot be seen


def lookup_surfels(uv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Projective association: the render surfel (8,N) at the pixel nearest each projection (invalid outside)."""
    w, h = ref.camera.width, ref.camera.height
    col, row = torch.floor(uv + 0.5)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    index = torch.where(inside, row * w + col, float(w * h)).long()
    return ref.surfels.index_select(1, index)


def sample_image(render_image: RenderImage, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (5,N) of a photometric image at render pixels uv (2,N) (channels: photometric_image).

    Outside the image everything reads 0, so ``valid`` is 1 only when all four neighbours are valid.
    """
    grid = torch.addcmul(render_image.offset, uv.T, render_image.gain)  # (N,2), contiguous
    return F.grid_sample(render_image.image, grid[None, None], mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0, :, 0]


# ----------------------------------------------------------------------------- the observation
class Level(NamedTuple):
    """The valid observed points of one pyramid level and how to iterate on them."""

    points: torch.Tensor  # (3,N) camera frame, float32
    normals: torch.Tensor  # (3,N) camera frame
    intensity: torch.Tensor  # (N,) 2x2-mean pyramid of the render-resolution intensity
    normal_gate: torch.Tensor  # (N,) least cos(angle) between observed and rendered normal
    offset: int  # level relative to the render resolution
    kappa: float  # effective-sample-size factor
    iterations: int


def make_levels(obs: Observation, render: RenderResult, config: TrackingConfig, fused: bool = False) -> list[Level]:
    """The observed points per tracking level, coarse to fine; levels without valid points are dropped.

    Intensities come from 2x2 means of the render-resolution level, filtered exactly like the render's
    (identical filtering of both images is what the photometric comparison needs). ``fused``: levels the
    observation lacks are built by :mod:`prism_ros.prism.kernels.observe`.
    """
    if not len(config.levels) == len(config.iterations) == len(config.strides):
        raise ValueError("TrackingConfig: levels, iterations and strides need one entry per level")
    base = render_level_index(obs, render)
    intensities = box_pyramid(obs.levels[base].intensity, max(max(config.levels), 0))
    pyramid = observation_levels(obs, max(base + max(config.levels), 0), fused)
    levels = []
    for offset, iterations, stride in zip(config.levels, config.iterations, config.strides):
        index = max(base + offset, 0)
        level = pyramid[index]
        intensity = intensities[index - base] if index >= base else level.intensity
        points, normals, intensity = (x[::stride, ::stride] for x in (level.points, level.normals, intensity))
        keep = (torch.isfinite(points[..., 2]) & torch.isfinite(normals[..., 2])).reshape(-1).nonzero()[:, 0]
        if len(keep) == 0:
            continue
        points, normals = (x.reshape(-1, 3).index_select(0, keep).T.float().contiguous() for x in (points, normals))
        intensity = intensity.reshape(-1).index_select(0, keep).float()
        depth_sigma = config.depth_sigma_a + config.depth_sigma_b * points[2].square()
        kappa = min(1.0, (stride * 2.0 ** (index - base) / config.correlation_pixels) ** 2)
        levels.append(Level(points, normals, intensity,
                            normal_gate(points, depth_sigma, level.camera, index, config),
                            index - base, kappa, iterations))
    return levels


def normal_gate(points, depth_sigma, camera, index: int, config: TrackingConfig) -> torch.Tensor:
    """cos of the largest accepted angle between observed and rendered normals: max_normal_angle_deg
    widened by twice the observed normal's expected noise, so noisy far normals are not rejected wholesale.

    Central differences over 2 pixels of depth with noise sigma / 2^index (2x2 means per pyramid level)
    tilt a normal by about atan(sigma f / (sqrt(2) z 2^index)) (f of the level).
    """
    noise = torch.atan(depth_sigma * camera.fx / (math.sqrt(2.0) * points[2] * 2.0 ** index))
    return torch.cos((math.radians(config.max_normal_angle_deg) + 2.0 * noise).clamp_max(math.pi))


def render_level_index(obs: Observation, render: RenderResult) -> int:
    """The observation pyramid level of the render's resolution (the closest one)."""
    widths = [level.camera.width for level in obs.levels]
    return min(range(len(widths)), key=lambda i: abs(math.log2(widths[i] / render.camera.width)))


def observation_levels(obs: Observation, last: int, fused: bool = False) -> list[ObservationLevel]:
    """The observation's pyramid levels up to ``last``, halving its coarsest level as often as needed."""
    levels = list(obs.levels)
    while len(levels) <= last:
        coarsest = levels[-1]
        camera = camera_pyramid(coarsest.camera, 2)[1]
        intensity = box_pyramid(coarsest.intensity, 1)[1]
        if fused:
            from prism_ros.prism.kernels.observe import downsample_depth as halve
        depth = halve(coarsest.depth) if fused else downsample_depth(coarsest.depth)
        levels.append(make_level(camera, depth, intensity, fused=fused))
    return levels


def box_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(H,W) image and ``levels`` 2x2-mean reductions (sizes floored, as the depth and camera pyramids)."""
    pyramid = [image]
    for _ in range(levels):
        pyramid.append(F.avg_pool2d(pyramid[-1][None, None], 2)[0, 0])
    return pyramid


# ----------------------------------------------------------------------------- prior and poses (host, float64)
class Prior(NamedTuple):
    T: np.ndarray  # (4,4)
    T_inverse: np.ndarray
    covariance: np.ndarray  # (6,6)
    information: np.ndarray
    dof: float = 0.0  # Student-t degrees of freedom; 0 = Gaussian


def make_prior(T, covariance, dof: float = 0.0) -> Prior:
    T, covariance = as_numpy(T), as_numpy(covariance)
    information = np.linalg.inv(covariance)
    return Prior(T, se3_inverse_np(T), covariance, 0.5 * (information + information.T), float(dof))


def prior_estimate(prior: Prior, device, reason: str) -> PoseEstimate:
    """Nothing to track against: the posterior is the prior, and the frame counts as lost."""
    quality = dict(inlier_ratio=0.0, coverage=0.0, valid_pixels=0, icp_rmse=float("nan"), photometric_rmse=float("nan"),
                   mean_residual=float("nan"), condition=float("inf"), min_eigenvalue=0.0, iterations=0,
                   update_norm=float("nan"), update_sigmas=float("nan"), prior_distance=0.0, prior_weight=1.0, points=0,
                   reasons=[reason])
    as_torch = lambda x: torch.as_tensor(x, dtype=torch.float64, device=device)
    return PoseEstimate(as_torch(prior.T), as_torch(prior.covariance), False, quality)


def as_numpy(x) -> np.ndarray:
    return np.array(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)


# ----------------------------------------------------------------------------- tracking quality
def prior_distance(T: np.ndarray, prior: Prior) -> float:
    """Squared Mahalanobis distance e^T P^-1 e of the pose from the prior mean (the innovation test)."""
    e = se3_log_np(T @ prior.T_inverse)
    return float(e @ prior.information @ e)


def term_sums(system: Linearisation, config: TrackingConfig) -> Sums:
    """The :class:`Sums` of a linearisation's per-point terms (one device readback)."""
    icp, photometric = system.icp, system.photometric
    active = [t for t, w in ((icp, config.icp_weight), (photometric, config.photometric_weight)) if t is not None
              and w > 0]
    sums = torch.stack([icp.covered.sum(), icp.mask.sum(), (icp.mask & (icp.r.abs() < config.inlier_sigmas)).sum(),
                        (icp.error.square() * icp.mask).sum(),
                        *((photometric.mask.sum(), torch.where(photometric.mask, photometric.error.square(), 0.0).sum())
                          if photometric is not None else (icp.r.new_zeros(()), icp.r.new_zeros(()))),
                        sum(((t.r.abs() * t.mask).sum() for t in active), icp.r.new_zeros(())),
                        sum((t.mask.sum() for t in active), icp.r.new_zeros(()))]).double().tolist()
    return Sums(*sums)


def assess(system: Linearisation, iterations: int, update: float, distance: float, config: TrackingConfig,
           update_sigmas: float = float("nan")) -> dict:
    """Quality numbers at the MAP (finest level, final weights) and the lost criteria that failed;
    ``update_sigmas``: the last update in posterior standard deviations."""
    sums = system.sums if system.sums is not None else term_sums(system, config)
    covered, associated, inliers, icp_sq, ph_count, ph_sq, abs_r, rows = sums
    eigenvalues = np.linalg.eigvalsh(system.H)
    quality = dict(
        inlier_ratio=inliers / max(covered, 1),
        coverage=covered / max(system.points, 1),
        valid_pixels=int(associated),
        icp_rmse=math.sqrt(icp_sq / associated) if associated else float("nan"),
        photometric_rmse=math.sqrt(ph_sq / ph_count) if ph_count else float("nan"),
        mean_residual=abs_r / rows if rows else float("nan"),
        condition=float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] > 0 else float("inf"),
        min_eigenvalue=float(eigenvalues[0]),
        iterations=iterations,
        update_norm=update,
        update_sigmas=update_sigmas,
        prior_distance=distance,
        points=system.points,
    )
    quality["reasons"] = lost_reasons(quality, config)
    return quality


def lost_reasons(quality: dict, config: TrackingConfig) -> list[str]:
    """The lost criteria this frame fails (none: tracking is ok). NaN counts as failing."""
    q = quality
    checks = {
        f"inlier ratio {q['inlier_ratio']:.2f} < {config.min_inlier_ratio}":
            q["inlier_ratio"] >= config.min_inlier_ratio,
        f"{q['valid_pixels']} associated pixels < {config.min_valid_pixels}":
            q["valid_pixels"] >= config.min_valid_pixels,
        f"mean residual {q['mean_residual']:.2f} sigma > {config.max_mean_residual}":
            q["mean_residual"] <= config.max_mean_residual,
        f"data Hessian condition {q['condition']:.3g} > {config.max_condition:.3g}":
            q["condition"] <= config.max_condition,
        f"data Hessian min eigenvalue {q['min_eigenvalue']:.3g} < {config.min_eigenvalue:.3g}":
            q["min_eigenvalue"] >= config.min_eigenvalue,
        f"not converged: last update {q['update_norm']:.2g} > {config.max_final_update:.2g} and "
        f"{q['update_sigmas']:.2g} > {config.max_final_update_sigmas:g} sigma":
            q["update_norm"] <= config.max_final_update or q["update_sigmas"] <= config.max_final_update_sigmas,
        f"MAP {q['prior_distance']:.3g} (Mahalanobis^2) from the prior > {config.max_prior_distance:.3g}":
            q["prior_distance"] <= config.max_prior_distance,
    }
    return [reason for reason, passed in checks.items() if not passed]
