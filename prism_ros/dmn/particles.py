"""Planar poses and the differentiable particle filter of the DMN (Karkus et al., CoRL 2020).

Units. A pose is ``(x, y, yaw)`` in the environment's *normalised* units: ``x, y`` in [-1, 1]
(the environment scaled to that square) and ``yaw`` = radians / pi in [-1, 1). Yaw 0 looks along
+x and yaw grows counter-clockwise, so the heading in radians is ``pi * yaw`` and translations are
rotated by that angle. A *delta* (odometry, relative pose) has the same units and is expressed in
the frame of the pose it starts from.

Nothing here learns; every function is batched over leading dimensions, differentiable where the
maths is (sampling indices is not, soft resampling keeps the weights' gradients) and draws its
randomness from an optional ``torch.Generator`` so runs can be repeated.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: Standard deviations (x, y, yaw) of the tracking belief around the true first pose: 0.3, 0.3, 30 deg.
TRACKING_STD: tuple[float, float, float] = (0.3, 0.3, 30.0 / 180.0)


def wrap_yaw(yaw: Tensor) -> Tensor:
    """Normalised yaw wrapped to [-1, 1) (i.e. radians to [-pi, pi)); gradient 1 almost everywhere."""
    return torch.remainder(yaw + 1.0, 2.0) - 1.0


def _rotate(x: Tensor, y: Tensor, yaw: Tensor) -> tuple[Tensor, Tensor]:
    """(x, y) rotated counter-clockwise by ``pi * yaw`` radians."""
    c, s = torch.cos(math.pi * yaw), torch.sin(math.pi * yaw)
    return c * x - s * y, s * x + c * y


def compose(pose: Tensor, delta: Tensor) -> Tensor:
    """``pose ⊕ delta``: the pose reached by moving ``delta`` (expressed in ``pose``'s frame) from ``pose``.

    Shapes (..., 3), broadcast against each other; yaw of the result wrapped to [-1, 1).
    """
    dx, dy = _rotate(delta[..., 0], delta[..., 1], pose[..., 2])
    return torch.stack((pose[..., 0] + dx, pose[..., 1] + dy, wrap_yaw(pose[..., 2] + delta[..., 2])), dim=-1)


def relative(origin: Tensor, pose: Tensor) -> Tensor:
    """``origin ⊖ pose``: ``pose`` expressed in the frame of ``origin``, so
    ``compose(origin, relative(origin, pose)) == pose``.

    Also the odometry between consecutive poses: ``relative(s[t-1], s[t])``. Shapes (..., 3), broadcast.
    """
    x, y = _rotate(pose[..., 0] - origin[..., 0], pose[..., 1] - origin[..., 1], -origin[..., 2])
    return torch.stack((x, y, wrap_yaw(pose[..., 2] - origin[..., 2])), dim=-1)


def egocentric(context_poses: Tensor, particles: Tensor) -> Tensor:
    """Every context pose in every particle's frame as ``(x, y, cos, sin)`` of the relative yaw.

    context_poses (B, Nc, 3), particles (B, K, 3) -> (B, K, Nc, 4). The cos/sin pair keeps the yaw
    continuous across the +-pi seam, which is what a network consuming it needs.
    """
    rel = relative(particles[:, :, None, :], context_poses[:, None, :, :])
    yaw = math.pi * rel[..., 2]
    return torch.cat((rel[..., :2], torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]), dim=-1)


def pose_features(poses: Tensor) -> Tensor:
    """Global pose (..., 3) as network input (..., 4): ``(x, y, cos, sin)`` of the yaw."""
    yaw = math.pi * poses[..., 2]
    return torch.cat((poses[..., :2], torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]), dim=-1)


# ----------------------------------------------------------------------------------------- beliefs

def _as_std(std: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(std, dtype=like.dtype, device=like.device).expand(3)


def uniform_log_weights(batch_size: int, num_particles: int, *, device=None, dtype=torch.float32) -> Tensor:
    """Equal, normalised log weights (B, K)."""
    return torch.full((batch_size, num_particles), -math.log(num_particles), device=device, dtype=dtype)


def uniform_particles(batch_size: int, num_particles: int, *, low: float = -1.0, high: float = 1.0,
                      generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
    """Particles (B, K, 3) uniform over [low, high)^3: the global-localization belief (yaw wrapped)."""
    u = torch.rand((batch_size, num_particles, 3), generator=generator, device=device, dtype=dtype)
    particles = low + (high - low) * u
    return torch.cat((particles[..., :2], wrap_yaw(particles[..., 2:])), dim=-1)


def gaussian_particles(mean: Tensor, num_particles: int, std: float | Sequence[float] | Tensor = TRACKING_STD,
                       *, generator: torch.Generator | None = None) -> Tensor:
    """Particles (B, K, 3) from an axis-aligned Gaussian around ``mean`` (B, 3): the tracking belief."""
    noise = torch.randn((mean.shape[0], num_particles, 3), generator=generator, device=mean.device, dtype=mean.dtype)
    particles = mean[:, None, :] + noise * _as_std(std, mean)
    return torch.cat((particles[..., :2], wrap_yaw(particles[..., 2:])), dim=-1)


def initial_belief(mode: str, first_pose: Tensor, num_particles: int, *,
                   tracking_std: float | Sequence[float] | Tensor = TRACKING_STD,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Initial particles and log weights for ``mode`` "global" (uniform over [-1, 1]^3, ``first_pose``
    only gives batch size and device) or "tracking": a Gaussian of std ``tracking_std`` whose centre is itself
    drawn from that Gaussian around the true ``first_pose`` (B, 3). A belief centred exactly on the truth would
    give its mean for free (error about std / sqrt(K)): nothing to learn or to measure."""
    batch_size = first_pose.shape[0]
    if mode == "global":
        particles = uniform_particles(batch_size, num_particles, generator=generator,
                                      device=first_pose.device, dtype=first_pose.dtype)
    elif mode == "tracking":
        centre = gaussian_particles(first_pose, 1, tracking_std, generator=generator)[:, 0]
        particles = gaussian_particles(centre, num_particles, tracking_std, generator=generator)
    else:
        raise ValueError(f"unknown belief mode {mode!r}: expected 'global' or 'tracking'")
    return particles, uniform_log_weights(batch_size, num_particles, device=first_pose.device, dtype=first_pose.dtype)


# ------------------------------------------------------------------------------------ filter steps

def transition(particles: Tensor, odometry: Tensor, noise_std: float | Sequence[float] | Tensor = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
    """Analytic motion model: each particle moved by ``odometry`` (B, 3) plus Gaussian noise on that
    motion, drawn per particle in its own frame (std per (dx, dy, dyaw)). particles (B, K, 3)."""
    delta = odometry[:, None, :].expand_as(particles)
    std = _as_std(noise_std, particles)
    if bool((std > 0).any()):
        noise = torch.randn(particles.shape, generator=generator, device=particles.device, dtype=particles.dtype)
        delta = delta + noise * std
    return compose(particles, delta)


def update(log_weights: Tensor, log_likelihoods: Tensor) -> Tensor:
    """Bayes update in log space, normalised: ``log w + log l - logsumexp``. Shapes (B, K)."""
    return torch.log_softmax(log_weights + log_likelihoods, dim=-1)


def soft_resample(particles: Tensor, log_weights: Tensor, alpha: float,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Soft resampling (Karkus et al., CoRL 2018): draw K indices from ``q = alpha w + (1 - alpha) / K``
    and give each drawn particle the importance weight ``w / q`` (renormalised).

    alpha = 1 is ordinary resampling (uniform weights, no gradient to the weights); alpha < 1 keeps a
    gradient from the new weights to the old ones. Sampling is unbiased for any alpha in [0, 1].
    particles (B, K, 3), log_weights (B, K) -> same shapes.
    """
    log_weights = torch.log_softmax(log_weights, dim=-1)
    num_particles = log_weights.shape[-1]
    if alpha >= 1.0:
        log_q = log_weights
    elif alpha <= 0.0:
        log_q = torch.full_like(log_weights, -math.log(num_particles))
    else:  # log(alpha w + (1 - alpha) / K), in log space so tiny weights stay finite
        log_q = torch.logaddexp(log_weights + math.log(alpha),
                                torch.full_like(log_weights, math.log(1.0 - alpha) - math.log(num_particles)))
    indices = torch.multinomial(log_q.detach().exp(), num_particles, replacement=True, generator=generator)
    new_particles = torch.gather(particles, 1, indices[..., None].expand(-1, -1, particles.shape[-1]))
    new_log_weights = torch.gather(log_weights - log_q, 1, indices)
    return new_particles, torch.log_softmax(new_log_weights, dim=-1)


def weighted_mean(particles: Tensor, log_weights: Tensor) -> Tensor:
    """Weighted mean pose (B, 3): arithmetic for x, y, circular (atan2 of mean cos/sin) for yaw."""
    weights = torch.softmax(log_weights, dim=-1)[..., None]
    xy = (weights * particles[..., :2]).sum(dim=-2)
    yaw = math.pi * particles[..., 2:]
    mean_cos, mean_sin = (weights * torch.cos(yaw)).sum(dim=-2), (weights * torch.sin(yaw)).sum(dim=-2)
    return torch.cat((xy, wrap_yaw(torch.atan2(mean_sin, mean_cos) / math.pi)), dim=-1)


def weighted_covariance(particles: Tensor, log_weights: Tensor) -> Tensor:
    """Weighted covariance (B, 3, 3) around :func:`weighted_mean`, yaw deviations wrapped."""
    weights = torch.softmax(log_weights, dim=-1)[..., None]
    deviation = particles - weighted_mean(particles, log_weights)[..., None, :]
    deviation = torch.cat((deviation[..., :2], wrap_yaw(deviation[..., 2:])), dim=-1)
    return (weights * deviation).transpose(-1, -2) @ deviation


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / sum w^2`` (B,), between 1 and K."""
    log_weights = torch.log_softmax(log_weights, dim=-1)
    return torch.exp(-torch.logsumexp(2.0 * log_weights, dim=-1))


def run_particle_filter(log_likelihood: Callable[[int, Tensor], Tensor], initial_particles: Tensor,
                        odometry: Tensor, *, initial_log_weights: Tensor | None = None,
                        transition_noise: float | Sequence[float] | Tensor = 0.0,
                        resample_alpha: float | None = None,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The particle filter loop over T steps: (t > 0) move by odometry, weight by ``log_likelihood(t,
    particles) -> (B, K)``, estimate by the weighted mean, then soft-resample before the next step
    (``resample_alpha`` None: never).

    initial_particles (B, K, 3), odometry (B, T, 3) with odometry[:, t] the motion from t-1 to t
    (odometry[:, 0] is ignored). Returns estimates (B, T, 3) and the last particles (B, K, 3) and
    log weights (B, K), not resampled.
    """
    particles = initial_particles
    log_weights = initial_log_weights if initial_log_weights is not None else uniform_log_weights(
        *particles.shape[:2], device=particles.device, dtype=particles.dtype)
    estimates = []
    steps = odometry.shape[1]
    for t in range(steps):
        if t > 0:
            if resample_alpha is not None:
                particles, log_weights = soft_resample(particles, log_weights, resample_alpha, generator)
            particles = transition(particles, odometry[:, t], transition_noise, generator)
        log_weights = update(log_weights, log_likelihood(t, particles))
        estimates.append(weighted_mean(particles, log_weights))
    return torch.stack(estimates, dim=1), particles, log_weights


# ---------------------------------------------------------------------------------------- metrics

def pose_loss(estimate: Tensor, truth: Tensor, alpha: float = 0.5) -> Tensor:
    """The DMN training loss per pose: ``(x - x*)^2 + (y - y*)^2 + alpha * wrap(yaw - yaw*)^2`` (...,)."""
    error = estimate - truth
    return error[..., 0] ** 2 + error[..., 1] ** 2 + alpha * wrap_yaw(error[..., 2]) ** 2


def pose_squared_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """Squared x-y error plus half the squared yaw error in radians per pose (...,): the success measure that
    also asks for the heading. With it the uninformed and closest-context rows come near the paper's (on
    Rooms, 2.4 % / 2.3 % and 8.7 % / 8.4 % one-step / sequential against its 2.9 % / 1.7 % and 11.4 % /
    11.0 %; x-y alone gives 17.6 % / 10.7 % and 43 %), so the paper likely scores this."""
    return xy_squared_error(estimate, truth) + 0.5 * (math.pi * wrap_yaw(estimate[..., 2] - truth[..., 2])) ** 2


def xy_squared_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """Squared x-y error per pose (...,): the tracking metric."""
    return ((estimate[..., :2] - truth[..., :2]) ** 2).sum(dim=-1)
