"""DMN particle filter and model (prism_ros.dmn.particles / prism_ros.dmn.model): pose algebra against
hand cases, filter steps, a filter with a perfect likelihood, gradients and every Table 1 method."""
from __future__ import annotations

import pytest
import torch

from prism_ros.dmn.model import METHOD_NAMES, BroadcastConv, DmnConfig, DmnParticleFilter, build_method, parameter_count
from prism_ros.dmn.particles import (
    compose,
    effective_sample_size,
    egocentric,
    gaussian_particles,
    initial_belief,
    pose_loss,
    relative,
    run_particle_filter,
    soft_resample,
    transition,
    uniform_log_weights,
    uniform_particles,
    weighted_covariance,
    weighted_mean,
    wrap_yaw,
    xy_squared_error,
)


def close(a, b, atol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=atol)


def same_pose(a, b, atol=1e-5):
    """Poses equal, yaw compared modulo a full turn."""
    yaw_difference = wrap_yaw(a[..., 2] - b[..., 2] + 0.5) - 0.5
    return close(a[..., :2], b[..., :2], atol) and close(yaw_difference, torch.zeros_like(yaw_difference), atol)


def episode_batch(batch=2, contexts=4, steps=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(context_images=torch.rand(batch, contexts, 3, size, size, generator=g),
                context_poses=torch.rand(batch, contexts, 3, generator=g) * 2 - 1,
                query_images=torch.rand(batch, steps, 3, size, size, generator=g),
                true_poses=torch.rand(batch, steps, 3, generator=g) * 2 - 1)


# ---------------------------------------------------------------------------------- pose algebra

def test_wrap_yaw_to_half_open_interval():
    assert close(wrap_yaw(torch.tensor([1.0, -1.0, 1.5, -1.5, 0.25, 3.0])), [-1.0, -1.0, -0.5, 0.5, 0.25, -1.0])


def test_compose_rotates_translation_by_yaw_in_radians_times_pi():
    # facing +y (yaw 0.5 = 90 deg), one unit forward goes to +y, one unit left to -x
    assert close(compose(torch.tensor([0.0, 0.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])), [0.0, 1.0, 0.5])
    assert close(compose(torch.tensor([0.2, 0.1, 0.5]), torch.tensor([0.0, 1.0, 0.75])), [-0.8, 0.1, -0.75])


def test_compose_relative_round_trip():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(50, 3, generator=g) * 2 - 1, torch.rand(50, 3, generator=g) * 2 - 1
    assert same_pose(compose(a, relative(a, b)), b)
    assert same_pose(relative(a, compose(a, b)), b)
    assert same_pose(relative(a, a), torch.zeros(50, 3))


def test_egocentric_hand_cases():
    contexts = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.5, -1.0]]])  # (1, 3, 3)
    particles = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.5, 0.5, 1.0]]])  # (1, 3, 3)
    ego = egocentric(contexts, particles)
    assert ego.shape == (1, 3, 3, 4)
    # particle facing +y (90 deg): a context at (1, 0) looking along +x is on its right, turned -90 deg
    assert close(ego[0, 0, 0], [0.0, -1.0, 0.0, -1.0])
    # a context at the particle's pose is the origin, relative yaw 0
    assert close(ego[0, 0, 1], [0.0, 0.0, 1.0, 0.0])
    assert close(ego[0, 1, 0], [1.0, 0.0, 1.0, 0.0])
    # particle at (0.5, 0.5) facing -x (yaw 1 = -1): a context at (0, 0.5) facing -x is 0.5 ahead, same heading
    assert close(ego[0, 2, 2], [0.5, 0.0, 1.0, 0.0])


# ----------------------------------------------------------------------------------- filter steps

def test_transition_moves_particles_by_odometry_in_their_frame():
    particles = torch.tensor([[[0.1, 0.2, 0.5], [0.0, 0.0, 0.0]]])
    moved = transition(particles, torch.tensor([[0.1, 0.0, 0.25]]))
    assert close(moved, [[[0.1, 0.3, 0.75], [0.1, 0.0, 0.25]]])
    g = torch.Generator().manual_seed(0)
    noisy = transition(particles[:, :1].expand(1, 20000, 3), torch.tensor([[0.1, 0.0, 0.25]]), (0.05, 0.05, 0.1), g)
    log_weights = uniform_log_weights(1, 20000)
    assert same_pose(weighted_mean(noisy, log_weights), torch.tensor([[0.1, 0.3, 0.75]]), atol=3e-3)
    # noise is drawn in the particle's frame: facing +y, forward noise (0.05) shows on y, lateral on x
    std = weighted_covariance(noisy, log_weights).diagonal(dim1=-2, dim2=-1).sqrt()
    assert close(std, [[0.05, 0.05, 0.1]], atol=3e-3)


def test_beliefs_update_and_statistics():
    g = torch.Generator().manual_seed(0)
    uniform = uniform_particles(3, 1000, generator=g)
    assert uniform.shape == (3, 1000, 3) and uniform.min() >= -1 and uniform.max() < 1
    mean = torch.tensor([[0.2, -0.3, 0.9]])
    tracking = gaussian_particles(mean, 20000, generator=g)
    log_weights = uniform_log_weights(1, 20000)
    assert same_pose(weighted_mean(tracking, log_weights), mean, atol=1e-2)
    std = weighted_covariance(tracking, log_weights).diagonal(dim1=-2, dim2=-1).sqrt()
    assert close(std, [[0.3, 0.3, 30 / 180]], atol=1e-2)  # yaw deviations wrapped across the +-1 seam
    assert close(effective_sample_size(log_weights), [20000.0], atol=1e-1)
    assert close(effective_sample_size(torch.tensor([[0.0, -1e4, -1e4]])), [1.0])
    particles, log_weights = initial_belief("tracking", mean, 8, generator=g)
    assert particles.shape == (1, 8, 3) and close(log_weights.exp().sum(), 1.0)
    # the tracking belief's centre is drawn around the truth: its mean misses by about the std, not std/sqrt(K)
    truth = torch.zeros(4000, 3)
    particles, log_weights = initial_belief("tracking", truth, 64, generator=g)
    miss = weighted_mean(particles, log_weights)[:, :2].pow(2).sum(-1).mean()
    assert 0.15 < float(miss) < 0.21, miss  # 2 * (0.09 + 0.09 / 64)
    with pytest.raises(ValueError):
        initial_belief("somewhere", mean, 8)


def test_weighted_mean_yaw_is_circular():
    particles = torch.tensor([[[0.0, 0.0, 0.95], [1.0, 2.0, -0.95]]])
    mean = weighted_mean(particles, torch.log(torch.tensor([[0.5, 0.5]])))
    assert close(mean[0, :2], [0.5, 1.0]) and close(abs(float(mean[0, 2])), 1.0)


def test_soft_resampling_is_unbiased_and_passes_gradients_to_weights():
    g = torch.Generator().manual_seed(0)
    particles = uniform_particles(1, 8192, generator=g)
    log_weights = (-((particles[..., :2] - 0.3) ** 2).sum(-1) / 0.5).detach().requires_grad_(True)
    before = weighted_mean(particles, log_weights)
    for alpha in (0.0, 0.5, 1.0):
        new_particles, new_log_weights = soft_resample(particles, log_weights, alpha, g)
        assert new_particles.shape == particles.shape and close(new_log_weights.exp().sum(), 1.0)
        assert close(weighted_mean(new_particles, new_log_weights)[..., :2], before[..., :2], atol=0.02)
    assert close(new_log_weights, uniform_log_weights(1, 8192))  # alpha = 1: plain resampling
    new_particles, new_log_weights = soft_resample(particles, log_weights, 0.5, g)
    weighted_mean(new_particles, new_log_weights)[..., :2].sum().backward()
    assert torch.isfinite(log_weights.grad).all() and log_weights.grad.abs().sum() > 0


def test_pose_loss_wraps_yaw():
    estimate, truth = torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.0, 0.0, -0.9])
    assert close(pose_loss(estimate, truth), 0.01 + 0.04 + 0.5 * 0.04)
    assert close(xy_squared_error(estimate, truth), 0.05)


def random_trajectories(batch, steps, generator, forward=0.1, turn=(-0.1, 0.1)):
    """True poses (B, T, 3) starting in [-0.6, 0.6]^2 with any yaw, and their odometry (B, T, 3)."""
    truth = [torch.cat((torch.rand(batch, 2, generator=generator) * 1.2 - 0.6,
                        torch.rand(batch, 1, generator=generator) * 2 - 1), dim=1)]
    odometry = [torch.zeros(batch, 3)]
    for _ in range(steps - 1):
        turns = turn[0] + (turn[1] - turn[0]) * torch.rand(batch, 1, generator=generator)
        odometry.append(torch.cat((torch.full((batch, 1), forward), torch.zeros(batch, 1), turns), dim=1))
        truth.append(compose(truth[-1], odometry[-1]))
    return torch.stack(truth, 1), torch.stack(odometry, 1)


def test_particle_filter_with_perfect_likelihood_localizes_globally():
    g = torch.Generator().manual_seed(0)
    batch, steps, sigma = 8, 5, 0.1
    truth, odometry = random_trajectories(batch, steps, g)

    def log_likelihood(t, particles):
        return -pose_loss(particles, truth[:, t, None, :]) / sigma ** 2

    particles, _ = initial_belief("global", truth[:, 0], 2048, generator=g)
    estimates, particles, log_weights = run_particle_filter(
        log_likelihood, particles, odometry, transition_noise=(0.02, 0.02, 0.02), resample_alpha=0.5, generator=g)
    assert estimates.shape == (batch, steps, 3) and particles.shape == (batch, 2048, 3)
    assert float(xy_squared_error(estimates, truth).max()) < 0.01
    assert float(pose_loss(estimates[:, -1], truth[:, -1]).max()) < 0.01
    spread = weighted_covariance(particles, log_weights).diagonal(dim1=-2, dim2=-1).sum(-1)
    assert float(spread.max()) < 0.05  # from 1 (uniform over [-1, 1]^3)


def test_particle_filter_resolves_an_ambiguous_likelihood_over_steps():
    """Ranges to two beacons leave a mirror ambiguity and no yaw; turning motion resolves both."""
    g = torch.Generator().manual_seed(0)
    batch, steps, sigma = 16, 6, 0.1
    truth, odometry = random_trajectories(batch, steps, g, turn=(0.1, 0.5))
    beacons = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])

    def ranges(poses):
        return (poses[..., None, :2] - beacons).norm(dim=-1)

    def log_likelihood(t, particles):
        return -((ranges(particles) - ranges(truth[:, t, None, :])) ** 2).sum(-1) / sigma ** 2

    particles, _ = initial_belief("global", truth[:, 0], 2048, generator=g)
    estimates, _, _ = run_particle_filter(log_likelihood, particles, odometry, transition_noise=(0.02, 0.02, 0.02),
                                          resample_alpha=0.5, generator=g)
    loss = pose_loss(estimates, truth)
    assert float(loss[:, 0].mean()) > 0.1  # one step cannot tell the mirror images or the yaw apart
    assert float(loss[:, -1].mean()) < 0.02 and float((loss[:, -1] < 0.05).float().mean()) >= 0.9


# ------------------------------------------------------------------------------------------ model

def test_broadcast_conv_equals_conv_over_concatenated_channels():
    torch.manual_seed(0)
    for stride in (1, 2):
        layer = BroadcastConv(5, 4, 7, 8, stride=stride)
        features, vectors = torch.randn(3, 5, 8, 8), torch.randn(3, 4)
        explicit = layer.conv(torch.cat((features, vectors[:, :, None, None].expand(-1, -1, 8, 8)), dim=1))
        assert close(layer(features, vectors), explicit, atol=1e-5)


def test_every_method_runs_with_the_common_call():
    batch, steps, particles = 2, 3, 16
    data = episode_batch(batch=batch, steps=steps)
    odometry = torch.randn(batch, steps, 3) * 0.05
    odometry[:, 0] = 0
    initial_particles, initial_log_weights = initial_belief("tracking", data["true_poses"][:, 0], particles)
    for name in METHOD_NAMES:
        method = build_method(name, DmnConfig())
        out = method(data["context_images"], data["context_poses"], data["query_images"], odometry,
                     initial_particles, initial_log_weights, true_poses=data["true_poses"])
        assert out.estimates.shape == (batch, steps, 3), name
        assert torch.isfinite(out.estimates).all() and out.estimates[..., 2].abs().max() <= 1, name
        if method.uses_particles:
            assert out.particles.shape == (batch, particles, 3) and out.log_weights.shape == (batch, particles)
    uint8 = (data["context_images"] * 255).to(torch.uint8), (data["query_images"] * 255).to(torch.uint8)
    out = build_method("pf-dmn")(uint8[0], data["context_poses"], uint8[1], odometry, initial_particles)
    assert out.estimates.shape == (batch, steps, 3)
    with pytest.raises(ValueError):
        build_method("closest-context")(uint8[0], data["context_poses"], uint8[1], odometry, initial_particles)
    with pytest.raises(ValueError):
        build_method("pf-octree")


def test_oracle_and_uninformed_estimates():
    data = episode_batch(batch=1, contexts=3, steps=2)
    poses = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [-0.5, 0.2, -0.5]]])
    truth = torch.tensor([[[0.45, 0.6, 0.4], [-0.4, 0.2, -0.6]]])
    odometry = torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.0, 0.5]]])
    start = torch.tensor([[[0.1, 0.0, 0.0]]]).expand(1, 4, 3)
    out = build_method("closest-context")(data["context_images"], poses, data["query_images"], odometry, start,
                                          true_poses=truth)
    assert close(out.estimates, poses[:, [1, 2]])
    out = build_method("uninformed")(data["context_images"], poses, data["query_images"], odometry, start)
    assert close(out.estimates, [[[0.1, 0.0, 0.0], [0.3, 0.0, 0.5]]])


def test_dmn_likelihood_is_invariant_to_moving_the_whole_world_and_to_context_order():
    """The view-embedding map is a set, read in each particle's own frame."""
    torch.manual_seed(0)
    observation = DmnParticleFilter(DmnConfig()).observation
    data = episode_batch(batch=2, steps=1)
    particles = torch.rand(2, 5, 3) * 2 - 1
    shift = torch.tensor([[0.3, -0.2, 0.7]])
    with torch.no_grad():
        query = observation.encode_queries(data["query_images"])
        query = type(query)(*(x[:, 0] for x in query))
        reference = observation(observation.build_map(data["context_images"], data["context_poses"]), query, particles)
        moved_map = observation.build_map(data["context_images"], compose(shift[:, None], data["context_poses"]))
        moved = observation(moved_map, query, compose(shift[:, None], particles))
        order = torch.tensor([2, 0, 3, 1])
        shuffled = observation(observation.build_map(data["context_images"][:, order], data["context_poses"][:, order]),
                               query, particles)
    assert reference.shape == (2, 5, 1)
    assert close(moved, reference, atol=1e-4) and close(shuffled, reference, atol=1e-4)


def test_pose_loss_gradients_reach_the_view_encoder_also_through_the_attention():
    torch.manual_seed(0)
    model = build_method("pf-dmn")
    data = episode_batch(batch=2, steps=1)
    odometry = torch.zeros(2, 1, 3)
    particles, log_weights = initial_belief("tracking", data["true_poses"][:, 0], 32)
    out = model(data["context_images"], data["context_poses"], data["query_images"], odometry, particles, log_weights)
    pose_loss(out.estimates, data["true_poses"]).mean().backward()
    observation = model.observation
    for encoder in (observation.context_encoder, observation.query_encoder):
        assert encoder.first.conv.weight.grad.abs().sum() > 0

    model.zero_grad()
    view_map = observation.build_map(data["context_images"], data["context_poses"])
    query_key = observation.encode_queries(data["query_images"]).key[:, 0]
    weights, _ = observation.attention(view_map, query_key, particles)
    assert weights.shape == (2, 32, 4) and close(weights.sum(-1), torch.ones(2, 32))
    (weights * torch.randn_like(weights)).sum().backward()
    for encoder in (observation.context_encoder, observation.query_encoder):
        assert encoder.first.conv.weight.grad.abs().sum() > 0


def test_learned_methods_have_matched_parameter_counts():
    counts = {name: parameter_count(build_method(name)) for name in METHOD_NAMES}
    print("parameter counts:", counts)
    reference = counts["pf-dmn"]
    for name in METHOD_NAMES[:6]:
        assert reference / 1.5 <= counts[name] <= reference * 1.5, counts
    assert counts["closest-context"] == counts["uninformed"] == 0
