"""The Differentiable Mapping Network (Karkus et al., CoRL 2020) and the Table 1 baselines.

DMN: a *view-embedding map* (one CNN feature tensor per context image, kept with its pose) read by
*egocentric spatial attention* (context poses expressed in each particle's frame, concatenated with
the features as constant channels, give view keys; the query image gives the query key) inside a
*discriminative observation model* (attended map features + query features -> one log-likelihood
per particle) that weights the particles of a differentiable particle filter
(:mod:`prism_ros.dmn.particles`). Everything is batched over episodes (B), particles (K) and
contexts (Nc); only the time steps are a Python loop.

Baselines (paper appendix C.2), all with the same call (:class:`LocalizationMethod`) so one
training/evaluation loop serves them; pick them by name with :func:`build_method`:

    pf-dmn / regr-dmn        view-embedding map, particle filter / pose regression (ours)
    pf-image / regr-image    latent image map: mean over contexts of CNN([image, global pose])
    pf-vector / regr-vector  latent vector map: mean over contexts of conv-dense([image, global pose])
    closest-context          the context pose nearest the true pose (oracle; needs ``true_poses``)
    uninformed               the initial belief mean moved by odometry

Shapes: images (B, N, 3, S, S) float in [0, 1] or uint8, poses (B, N, 3) in normalised units (see
:mod:`~prism_ros.dmn.particles`), odometry (B, T, 3) with odometry[:, t] the motion t-1 -> t in the
frame at t-1 (odometry[:, 0] unused). Feature maps are (C, S/4, S/4), i.e. 8x8 for 32x32 images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prism_ros.dmn.particles import (
    TRACKING_STD,
    compose,
    egocentric,
    pose_features,
    pose_loss,
    run_particle_filter,
    uniform_log_weights,
    weighted_mean,
)

POSE_CHANNELS = 4  # a pose as network input: (x, y, cos yaw, sin yaw)


@dataclass(frozen=True)
class DmnConfig:
    """Sizes of the networks and settings of the filter; the defaults train on a CPU in minutes."""

    image_size: int = 32
    encoder_channels: tuple[int, int] = (16, 32)  # the two stride-2 convs of the image encoders
    feature_channels: int = 16  # C of a view embedding (C, S/4, S/4)
    key_channels: int = 16  # hidden channels of the key CNNs
    key_size: int = 16  # length of attention keys
    value_channels: int = 32  # first conv of [map features ; query features] in the observation head
    head_channels: int = 32
    head_hidden: int = 64
    vector_map_size: int = 16  # latent vector map length, sized to match the DMN's parameter count
    contexts: int = 4
    particles_train: int = 32
    particles_global_eval: int = 2048
    particles_tracking_eval: int = 256
    resample_alpha: float | None = 0.5  # soft resampling between steps; None: no resampling
    transition_noise: tuple[float, float, float] = (0.02, 0.02, 0.02)  # std of odometry noise (x, y, yaw)
    tracking_std: tuple[float, float, float] = TRACKING_STD
    loss_yaw_weight: float = 0.5  # alpha of the pose loss

    @property
    def feature_size(self) -> int:
        """Side of the feature grid: the image encoders halve the image twice."""
        return self.image_size // 4


def parameter_count(module: nn.Module) -> int:
    """Number of learnable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _he_init(module: nn.Module) -> None:
    """He (Kaiming-normal, ReLU gain) weights and zero biases for every conv and dense layer.

    PyTorch's default init shrinks activations about 1.7x per layer; through encoder, keys and head the
    log-likelihoods came out nearly equal for all particles (std ~0.002) and training stalled at the
    uniform-weights estimate. He init keeps activations, and so the initial likelihood spread, at O(1).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _over_leading(module: nn.Module, x: Tensor, item_dims: int = 3) -> Tensor:
    """``module`` applied to ``x`` with all but its last ``item_dims`` dimensions folded into one batch."""
    lead = x.shape[:-item_dims]
    y = module(x.reshape(-1, *x.shape[-item_dims:]))
    return y.reshape(*lead, *y.shape[1:])


def _centred_images(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 or [0, 1] float images as floats in [-1, 1]."""
    images = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
    return 2.0 * images - 1.0


# ------------------------------------------------------------------------------ building blocks

class BroadcastConv(nn.Module):
    """3x3 conv over [feature map ; a vector repeated over every grid cell], without materialising the repeat.

    A convolution is linear in its input, and a constant input channel has one fixed response map
    (position dependent only at the zero-padded border), so the vector's share is a product with V
    response maps. The feature share is computed once per feature map and broadcast: K particles x
    Nc contexts then cost one small matrix product each instead of one convolution each.
    Equal to ``conv(torch.cat([features, vector[..., None, None].expand(...)], channel))``.
    """

    def __init__(self, feature_channels: int, vector_channels: int, out_channels: int, grid_size: int,
                 *, stride: int = 1, bias: bool = True):
        super().__init__()
        self.feature_channels, self.vector_channels, self.grid_size = feature_channels, vector_channels, grid_size
        self.conv = nn.Conv2d(feature_channels + vector_channels, out_channels, 3, stride, padding=1, bias=bias)

    def features(self, features: Tensor) -> Tensor:
        """Feature share (..., C, H, W) -> (..., out, H', W'), bias included."""
        weight = self.conv.weight[:, :self.feature_channels]
        conv = lambda x: F.conv2d(x, weight, self.conv.bias, self.conv.stride, self.conv.padding)
        return _over_leading(conv, features)

    def vectors(self, vectors: Tensor) -> Tensor:
        """Vector share (..., V) -> (..., out, H', W')."""
        out_channels = self.conv.out_channels
        weight = self.conv.weight[:, self.feature_channels:].transpose(0, 1).reshape(-1, 1, 3, 3)
        ones = weight.new_ones(1, self.vector_channels, self.grid_size, self.grid_size)
        response = F.conv2d(ones, weight, None, self.conv.stride, self.conv.padding, groups=self.vector_channels)
        response = response.reshape(self.vector_channels, out_channels, *response.shape[-2:])
        return torch.einsum("...v,vohw->...ohw", vectors, response)

    def forward(self, features: Tensor, vectors: Tensor) -> Tensor:
        """Both shares summed; leading dimensions of ``features`` and ``vectors`` must match."""
        return self.features(features) + self.vectors(vectors)


class ViewEncoder(nn.Module):
    """Image (3, S, S), optionally with a pose vector as extra constant channels -> features (C, S/4, S/4).

    Three 3x3 convs (two of stride 2). Split into :meth:`image_part` (first conv's response to the
    image) and :meth:`finish`, so one image can be combined with many candidate poses cheaply.
    """

    def __init__(self, config: DmnConfig, pose_channels: int = 0):
        super().__init__()
        hidden1, hidden2 = config.encoder_channels
        self.first = BroadcastConv(3, pose_channels, hidden1, config.image_size, stride=2)
        self.rest = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden1, hidden2, 3, 2, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden2, config.feature_channels, 3, 1, padding=1))

    def image_part(self, images: Tensor) -> Tensor:
        return self.first.features(_centred_images(images, self.first.conv.weight.dtype))

    def finish(self, first_layer: Tensor) -> Tensor:
        return _over_leading(self.rest, first_layer)

    def forward(self, images: Tensor, poses: Tensor | None = None) -> Tensor:
        """images (..., 3, S, S), poses (..., 4) or None -> (..., C, S/4, S/4)."""
        first_layer = self.image_part(images)
        if poses is not None:
            first_layer = first_layer + self.first.vectors(poses)
        return self.finish(first_layer)


class ObservationHead(nn.Module):
    """The conv-dense part of the observation model.

    Input: the pre-activation of the first conv over [map features ; query features] (value_channels,
    g, g), assembled by each observation model; output ``out_dim`` numbers per item (1 log-likelihood
    for a particle filter, 3 pose coordinates for regression).
    """

    def __init__(self, config: DmnConfig, out_dim: int):
        super().__init__()
        side = (config.feature_size + 1) // 2
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(config.value_channels, config.head_channels, 3, 2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(config.head_channels * side * side, config.head_hidden), nn.ReLU(),
            nn.Linear(config.head_hidden, out_dim))

    def forward(self, first_layer: Tensor) -> Tensor:
        """(..., value_channels, g, g) -> (..., out_dim)."""
        return _over_leading(self.net, first_layer)


def _key_cnn(in_channels: int, config: DmnConfig) -> nn.Sequential:
    """Stride-2 conv, ReLU, flatten, dense: a (in_channels, g/2, g/2) map -> key vector."""
    side = (config.feature_size + 3) // 4
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, config.key_channels, 3, 2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(config.key_channels * side * side, config.key_size))


# --------------------------------------------------------------------------- observation models

class ViewEmbeddingMap(NamedTuple):
    """The DMN map: context poses and per-context shares of the key and value convs of their features."""

    poses: Tensor  # (B, Nc, 3)
    key_features: Tensor  # (B, Nc, key_channels, g/2, g/2)
    value_features: Tensor  # (B, Nc, value_channels, g, g)


class QueryEncoding(NamedTuple):
    """What the observation model needs from the query images, (B, T, ...) or one step (B, ...)."""

    key: Tensor  # attention query key (..., key_size); empty for maps without attention
    features: Tensor  # query share of the head's first layer, or first-layer response of the query encoder


class EgocentricAttentionObservation(nn.Module):
    """DMN observation model: view-embedding map read by egocentric spatial attention.

    For particle k and context i: view key = CNN([f_i ; ego_ki]) with ego_ki the context pose in the
    particle's frame (x, y, cos, sin) repeated over the grid; query key = CNN(query features);
    attention a_ki = softmax_i <query key, view key> / sqrt(d). The attended map feature
    sum_i a_ki [f_i ; ego_ki] (features and egocentric coordinates, so the head also sees where the
    attended views are) is concatenated with the query features and passed through the conv-dense
    head. The head's first conv is linear, so it is applied per context and the attention-weighted
    sum is taken afterwards: exactly the same function, with no per-particle copy of the map.
    """

    def __init__(self, config: DmnConfig, out_dim: int = 1):
        super().__init__()
        c, g = config.feature_channels, config.feature_size
        self.context_encoder = ViewEncoder(config)
        self.query_encoder = ViewEncoder(config)
        self.view_key_first = BroadcastConv(c, POSE_CHANNELS, config.key_channels, g, stride=2)
        self.view_key_rest = _key_cnn(config.key_channels, config)
        self.query_key = nn.Sequential(nn.Conv2d(c, config.key_channels, 3, 2, padding=1),
                                       _key_cnn(config.key_channels, config))
        self.map_value = BroadcastConv(c, POSE_CHANNELS, config.value_channels, g, bias=False)
        self.query_value = nn.Conv2d(c, config.value_channels, 3, 1, padding=1)
        self.head = ObservationHead(config, out_dim)
        self.key_scale = 1.0 / math.sqrt(config.key_size)
        _he_init(self)

    def build_map(self, context_images: Tensor, context_poses: Tensor) -> ViewEmbeddingMap:
        features = self.context_encoder(context_images)  # (B, Nc, C, g, g)
        return ViewEmbeddingMap(context_poses, self.view_key_first.features(features),
                                self.map_value.features(features))

    def encode_queries(self, query_images: Tensor) -> QueryEncoding:
        features = self.query_encoder(query_images)  # (B, T, C, g, g)
        return QueryEncoding(_over_leading(self.query_key, features), _over_leading(self.query_value, features))

    def attention(self, view_map: ViewEmbeddingMap, query_key: Tensor, particles: Tensor) -> tuple[Tensor, Tensor]:
        """Attention weights over contexts (B, K, Nc) and the egocentric context poses (B, K, Nc, 4)."""
        ego = egocentric(view_map.poses, particles)
        view_keys = _over_leading(self.view_key_rest,
                                  view_map.key_features[:, None] + self.view_key_first.vectors(ego))  # (B,K,Nc,D)
        logits = torch.einsum("bknd,bd->bkn", view_keys, query_key) * self.key_scale
        return torch.softmax(logits, dim=-1), ego

    def forward(self, view_map: ViewEmbeddingMap, query: QueryEncoding, particles: Tensor) -> Tensor:
        """One query step (B, ...) and particles (B, K, 3) -> (B, K, out_dim)."""
        weights, ego = self.attention(view_map, query.key, particles)
        attended = (torch.einsum("bkn,bnchw->bkchw", weights, view_map.value_features)
                    + self.map_value.vectors(torch.einsum("bkn,bknv->bkv", weights, ego)))
        return self.head(attended + query.features[:, None])


class _PoseConditionedQuery(nn.Module):
    """The query side of the unstructured (latent image / vector) maps: the query image's first conv once per
    step, then the candidate pose added as constant channels (no attention, no egocentric frame)."""

    query_encoder: ViewEncoder

    def encode_queries(self, query_images: Tensor) -> QueryEncoding:
        first_layer = self.query_encoder.image_part(query_images)
        return QueryEncoding(first_layer.new_zeros(first_layer.shape[:2] + (0,)), first_layer)

    def query_features(self, query: QueryEncoding, particles: Tensor) -> Tensor:
        """(B, K, C, g, g) features of the query image seen as if taken at each particle."""
        encoder = self.query_encoder
        return encoder.finish(query.features[:, None] + encoder.first.vectors(pose_features(particles)))


class LatentImageObservation(_PoseConditionedQuery):
    """Latent image map: the mean over contexts of CNN([image ; global pose channels]), (C, g, g).

    No attention and no egocentric frame: the candidate pose enters as constant channels of the
    query image, and [map ; query features] go through the same head as the DMN's.
    """

    def __init__(self, config: DmnConfig, out_dim: int = 1):
        super().__init__()
        c = config.feature_channels
        self.context_encoder = ViewEncoder(config, POSE_CHANNELS)
        self.query_encoder = ViewEncoder(config, POSE_CHANNELS)
        self.map_value = nn.Conv2d(c, config.value_channels, 3, 1, padding=1, bias=False)
        self.query_value = nn.Conv2d(c, config.value_channels, 3, 1, padding=1)
        self.head = ObservationHead(config, out_dim)
        _he_init(self)

    def build_map(self, context_images: Tensor, context_poses: Tensor) -> Tensor:
        """-> the map's share of the head's first conv (B, value_channels, g, g)."""
        latent_image = self.context_encoder(context_images, pose_features(context_poses)).mean(dim=1)
        return self.map_value(latent_image)

    def forward(self, map_value: Tensor, query: QueryEncoding, particles: Tensor) -> Tensor:
        features = self.query_features(query, particles)
        return self.head(map_value[:, None] + _over_leading(self.query_value, features))


class LatentVectorObservation(_PoseConditionedQuery):
    """Latent vector map: the mean over contexts of conv-dense([image ; global pose channels]), a flat vector.

    The candidate pose enters the query image as for the image map; the map vector is concatenated
    as constant channels with the query features before the head.
    """

    def __init__(self, config: DmnConfig, out_dim: int = 1):
        super().__init__()
        c, g = config.feature_channels, config.feature_size
        self.context_encoder = ViewEncoder(config, POSE_CHANNELS)
        self.context_dense = nn.Linear(c * g * g, config.vector_map_size)
        self.query_encoder = ViewEncoder(config, POSE_CHANNELS)
        self.head_first = BroadcastConv(c, config.vector_map_size, config.value_channels, g)
        self.head = ObservationHead(config, out_dim)
        _he_init(self)

    def build_map(self, context_images: Tensor, context_poses: Tensor) -> Tensor:
        """-> the map's share of the head's first conv (B, value_channels, g, g)."""
        features = self.context_encoder(context_images, pose_features(context_poses))
        latent_vector = self.context_dense(features.flatten(start_dim=-3)).mean(dim=1)
        return self.head_first.vectors(latent_vector)

    def forward(self, map_value: Tensor, query: QueryEncoding, particles: Tensor) -> Tensor:
        features = self.query_features(query, particles)
        return self.head(map_value[:, None] + self.head_first.features(features))


# ------------------------------------------------------------------------------------- localizers

@dataclass
class LocalizationOutput:
    """Per-step pose estimates (B, T, 3); the final particles (B, K, 3) and log weights (B, K) for filters."""

    estimates: Tensor
    particles: Tensor | None = None
    log_weights: Tensor | None = None


def query_step(query: QueryEncoding, t: int) -> QueryEncoding:
    """The encoding of query step ``t`` of a (B, T, ...) query encoding."""
    return QueryEncoding(*(x[:, t] for x in query))


def _belief_mean(particles: Tensor, log_weights: Tensor | None) -> Tensor:
    if log_weights is None:
        log_weights = uniform_log_weights(*particles.shape[:2], device=particles.device, dtype=particles.dtype)
    return weighted_mean(particles, log_weights)


class LocalizationMethod(nn.Module):
    """The call every method answers, so one training/evaluation loop treats them alike.

    ``forward(context_images (B,Nc,3,S,S), context_poses (B,Nc,3), query_images (B,T,3,S,S),
    odometry (B,T,3), initial_particles (B,K,3), initial_log_weights (B,K) | None, *,
    true_poses (B,T,3) | None, generator) -> LocalizationOutput``. Regression and the uninformed
    estimate use only the initial belief's weighted mean; only ``closest-context`` reads ``true_poses``.
    """

    uses_particles = False
    needs_true_poses = False

    def forward(self, context_images: Tensor, context_poses: Tensor, query_images: Tensor, odometry: Tensor,
                initial_particles: Tensor, initial_log_weights: Tensor | None = None, *,
                true_poses: Tensor | None = None, generator: torch.Generator | None = None) -> LocalizationOutput:
        raise NotImplementedError


class ParticleFilterLocalizer(LocalizationMethod):
    """Differentiable particle filter around a learned observation model (one log-likelihood per particle).

    ``resample_alpha`` and ``transition_noise`` start from the config and may be changed per instance
    (e.g. no resampling for one-step evaluation).
    """

    uses_particles = True

    def __init__(self, observation: nn.Module, config: DmnConfig):
        super().__init__()
        self.config = config
        self.observation = observation
        self.resample_alpha = config.resample_alpha
        self.transition_noise = config.transition_noise

    def forward(self, context_images, context_poses, query_images, odometry, initial_particles,
                initial_log_weights=None, *, true_poses=None, generator=None) -> LocalizationOutput:
        view_map = self.observation.build_map(context_images, context_poses)
        queries = self.observation.encode_queries(query_images)

        def log_likelihood(t: int, particles: Tensor) -> Tensor:
            return self.observation(view_map, query_step(queries, t), particles)[..., 0]

        estimates, particles, log_weights = run_particle_filter(
            log_likelihood, initial_particles, odometry, initial_log_weights=initial_log_weights,
            transition_noise=self.transition_noise, resample_alpha=self.resample_alpha, generator=generator)
        return LocalizationOutput(estimates, particles, log_weights)


class DmnParticleFilter(ParticleFilterLocalizer):
    """PF-DMN: the particle filter with the view-embedding map and egocentric spatial attention."""

    def __init__(self, config: DmnConfig = DmnConfig()):
        super().__init__(EgocentricAttentionObservation(config, out_dim=1), config)


class RegressionLocalizer(LocalizationMethod):
    """One "particle" at the belief mean; the head outputs the pose relative to it (in its frame).

    In a sequence the estimate at t, moved by the odometry, is the belief mean at t + 1.
    """

    def __init__(self, observation: nn.Module, config: DmnConfig):
        super().__init__()
        self.config = config
        self.observation = observation

    def forward(self, context_images, context_poses, query_images, odometry, initial_particles,
                initial_log_weights=None, *, true_poses=None, generator=None) -> LocalizationOutput:
        view_map = self.observation.build_map(context_images, context_poses)
        queries = self.observation.encode_queries(query_images)
        belief_mean = _belief_mean(initial_particles, initial_log_weights)
        estimates = []
        for t in range(odometry.shape[1]):
            if t > 0:
                belief_mean = compose(estimates[-1], odometry[:, t])
            offset = self.observation(view_map, query_step(queries, t), belief_mean[:, None])[:, 0]
            estimates.append(compose(belief_mean, offset))
        return LocalizationOutput(torch.stack(estimates, dim=1))


class ClosestContext(LocalizationMethod):
    """Oracle: at each step the context pose nearest (by the pose loss) the true pose."""

    needs_true_poses = True

    def __init__(self, config: DmnConfig = DmnConfig()):
        super().__init__()
        self.yaw_weight = config.loss_yaw_weight

    def forward(self, context_images, context_poses, query_images, odometry, initial_particles,
                initial_log_weights=None, *, true_poses=None, generator=None) -> LocalizationOutput:
        if true_poses is None:
            raise ValueError("closest-context needs true_poses (B, T, 3)")
        distance = pose_loss(context_poses[:, None, :, :], true_poses[:, :, None, :], self.yaw_weight)  # (B,T,Nc)
        nearest = distance.argmin(dim=-1)
        estimates = torch.gather(context_poses, 1, nearest[..., None].expand(-1, -1, 3))
        return LocalizationOutput(estimates)


class UninformedEstimate(LocalizationMethod):
    """The initial belief mean, moved by the odometry at every step; ignores all images."""

    def forward(self, context_images, context_poses, query_images, odometry, initial_particles,
                initial_log_weights=None, *, true_poses=None, generator=None) -> LocalizationOutput:
        estimate = _belief_mean(initial_particles, initial_log_weights)
        estimates = []
        for t in range(odometry.shape[1]):
            if t > 0:
                estimate = compose(estimate, odometry[:, t])
            estimates.append(estimate)
        return LocalizationOutput(torch.stack(estimates, dim=1))


_OBSERVATIONS = {"dmn": EgocentricAttentionObservation, "image": LatentImageObservation,
                 "vector": LatentVectorObservation}
METHOD_NAMES = ("pf-dmn", "regr-dmn", "pf-image", "regr-image", "pf-vector", "regr-vector",
                "closest-context", "uninformed")


def build_method(name: str, config: DmnConfig | None = None) -> LocalizationMethod:
    """A Table 1 method by name (see :data:`METHOD_NAMES`)."""
    config = config or DmnConfig()
    if name == "pf-dmn":
        return DmnParticleFilter(config)
    if name == "closest-context":
        return ClosestContext(config)
    if name == "uninformed":
        return UninformedEstimate()
    algorithm, _, map_kind = name.partition("-")
    if algorithm in ("pf", "regr") and map_kind in _OBSERVATIONS:
        observation = _OBSERVATIONS[map_kind](config, out_dim=1 if algorithm == "pf" else 3)
        return (ParticleFilterLocalizer if algorithm == "pf" else RegressionLocalizer)(observation, config)
    raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHOD_NAMES)}")
