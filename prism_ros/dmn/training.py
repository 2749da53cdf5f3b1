"""Episodes, end-to-end training and evaluation of the DMN methods (Karkus et al. 2020, appendix C.4).

An episode is one environment: ``Nc`` context views (image + pose) and a query trajectory of ``T`` views in
random order, with the odometry between consecutive queries (the exact relative pose). Episodes come from a
stored data set (``prism-ros dmn generate``) or are rendered on the fly from fresh environments of a seed
split (the ray caster makes thousands of views per second, so training never sees an environment twice and
train/test never share one).

Training follows the paper: the tracking setting (Gaussian initial belief around the true pose, σx = σy =
0.3, σψ = 30°), one step (T = 1), Nc = 4 contexts, K = 32 particles, Adam on
L = (x−x*)² + (y−y*)² + 0.5 (ψ−ψ*)², early stopping on a fixed validation set; particle filters add terms that
score the truth against alternatives (:func:`discrimination_loss`, :func:`ranking_loss`). Evaluation: global
localization (uniform initial belief, K = 2048) one-step (T = 1) and sequential (T = 5), success = squared
x-y error below 0.2 at the last step (and, reported beside it, with half the squared yaw error added); tracking
(K = 256, T = 5): mean squared x-y error at the last step.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from prism_ros.dmn.environments import DOMAINS, domain_config, make_environments, render, sample_poses, split_seeds
from prism_ros.dmn.model import (
    METHOD_NAMES,
    DmnConfig,
    LocalizationMethod,
    build_method,
    parameter_count,
    query_step,
)
from prism_ros.dmn.particles import (
    initial_belief,
    pose_loss,
    pose_squared_error,
    relative,
    uniform_particles,
    wrap_yaw,
    xy_squared_error,
)
from prism_ros.errors import InputError, check_int, check_number, check_weights, file_kind, read_torch_file

SUCCESS_MSE = 0.2  # the paper's success threshold (squared normalised units)


@dataclass
class Episode:
    """A batch of episodes: contexts (B,Nc,3,S,S) float in [0,1] + poses (B,Nc,3); queries (B,T,3,S,S) + true
    poses (B,T,3); odometry (B,T,3), the motion from query t-1 to t in the frame of t-1 (zero at t = 0)."""

    context_images: Tensor
    context_poses: Tensor
    query_images: Tensor
    query_poses: Tensor
    odometry: Tensor

    def to(self, device) -> "Episode":
        """The batch on ``device`` (episodes are rendered on the CPU; a GPU trains and evaluates)."""
        return Episode(*(getattr(self, f.name).to(device) for f in fields(self)))


def odometry_of(poses: Tensor) -> Tensor:
    """(B,T,3) relative motions between consecutive poses, zero for the first."""
    steps = relative(poses[:, :-1], poses[:, 1:])
    return torch.cat((torch.zeros_like(poses[:, :1]), steps), dim=1)


def episode_from_views(images: Tensor, poses: Tensor, contexts: int) -> Episode:
    """Split views (B,V,...) in the order given into ``contexts`` contexts and V - contexts queries."""
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images
    queries = poses[:, contexts:]
    return Episode(images[:, :contexts], poses[:, :contexts], images[:, contexts:], queries, odometry_of(queries))


class StreamedEpisodes:
    """Episodes from fresh environments of a seed ``split``, rendered on demand: only the Nc + T views an
    episode needs. Seeds are consumed in order from ``start``, so a source is reproducible."""

    def __init__(self, domain: str, split: str, image_size: int = 32, start: int = 0):
        self.config = domain_config(domain, image_size)
        self.split, self.next_seed = split, start

    def sample(self, batch: int, contexts: int, steps: int) -> Episode:
        seeds = split_seeds(self.split, batch, self.next_seed)
        self.next_seed += batch
        envs = make_environments(self.config, seeds)
        poses = sample_poses(envs, contexts + steps)
        return episode_from_views(render(envs, poses), poses, contexts)


class StoredEpisodes:
    """Episodes from a data set file of ``prism-ros dmn generate``: random environments and random distinct
    views of each (a random order makes the query trajectory, as in the paper)."""

    def __init__(self, data: dict, seed: int = 0):
        self.images, self.poses = data["images"], data["poses"]
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int, contexts: int, steps: int) -> Episode:
        environments, views = self.poses.shape[:2]
        if contexts + steps > views:
            raise InputError(f"an episode needs {contexts + steps} views but the data set has {views} per "
                             "environment", "use fewer contexts/steps or generate more views per environment")
        env = torch.randint(environments, (batch,), generator=self.generator)
        order = torch.rand(batch, views, generator=self.generator).argsort(dim=1)[:, :contexts + steps]
        return episode_from_views(self.images[env[:, None], order], self.poses[env[:, None], order], contexts)


def localize(method: LocalizationMethod, episode: Episode, mode: str, particles: int,
             generator: torch.Generator | None = None):
    """Run ``method`` on a batch of episodes from the initial belief ``mode`` ("global" or "tracking")."""
    start, log_weights = initial_belief(mode, episode.query_poses[:, 0], particles, generator=generator)
    return method(episode.context_images, episode.context_poses, episode.query_images, episode.odometry, start,
                  log_weights, true_poses=episode.query_poses, generator=generator)


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainConfig:
    """The paper's training setting, scaled to a CPU budget (``minutes``)."""

    steps: int = 20000
    batch: int = 32
    learning_rate: float = 1e-3
    contexts: int = 4
    query_steps: int = 1
    pose_weight: float = 1.0  # the paper's pose loss in the tracking setting (0: not computed)
    discrimination_weight: float = 1.0  # the auxiliary loss of particle filters (see discrimination_loss)
    discrimination_candidates: int = 64  # the true pose and uniform alternatives scored per query
    ranking_weight: float = 0.0  # the truth against its quarter turns and uniform poses (see ranking_loss)
    ranking_uniform: int = 12
    ranking_near: int = 0  # ranking negatives near the truth (see near_poses)
    validate_every: int = 250
    validation_episodes: int = 256
    validation_particles: int = 256
    patience: int = 12  # validations without improvement before stopping; 0 = never stop early
    minutes: float = 0.0  # wall-clock budget; 0 = none
    seed: int = 0


@dataclass
class TrainResult:
    method: LocalizationMethod
    steps: int = 0
    seconds: float = 0.0
    best_validation: float = float("nan")
    # (step, train loss, validation loss[, rotation accuracy, share of uniform poses the truth beats]) per validation
    history: list = field(default_factory=list)


def discrimination_loss(method: LocalizationMethod, episode: Episode, generator: torch.Generator | None = None,
                        candidates: int = 64) -> Tensor:
    """Cross-entropy of the true pose among ``candidates - 1`` alternatives drawn uniformly over the state space
    (the global-localization belief), under the observation model's log-likelihoods.

    An addition to the paper's end-to-end pose loss: at initialisation the likelihood is nearly flat, and the
    pose loss of a 32-particle weighted mean gives it a weak, noisy signal (no progress in 3,400 CPU steps on
    Rooms). Scoring the truth against alternatives trains the same network directly; the pose loss stays.
    The alternatives are independent of the truth, so the minimiser is log p(o | s) up to a constant (the
    InfoNCE optimum is the log ratio of the likelihood to the alternatives' density); alternatives drawn near
    the truth (half of them, before) make that density peak at the truth and so flatten the learned likelihood
    exactly where global localization needs its contrast."""
    truth = episode.query_poses[:, 0]
    others = uniform_particles(len(truth), candidates - 1, generator=generator, device=truth.device, dtype=truth.dtype)
    logits = first_query_log_likelihoods(method, episode, torch.cat((truth[:, None], others), dim=1))
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(truth), dtype=torch.long, device=logits.device))


def first_query_log_likelihoods(method: LocalizationMethod, episode: Episode, poses: Tensor) -> Tensor:
    """(B,K) observation log-likelihoods of each episode's first query at poses (B,K,3), against its contexts."""
    observation = method.observation
    view_map = observation.build_map(episode.context_images, episode.context_poses)
    query = query_step(observation.encode_queries(episode.query_images[:, :1]), 0)
    return observation(view_map, query, poses)[..., 0]


def quarter_turns(poses: Tensor) -> Tensor:
    """(B,3,3) the poses (B,3) turned by 90, 180 and 270 degrees about the environment's centre (the origin of the
    normalised frame): where a square room looks the same but for its wall textures and objects."""
    turns = torch.arange(1, 4, device=poses.device, dtype=poses.dtype)[None, :]  # quarter turns, in pi units / 2
    x, y, yaw = poses[:, None, 0], poses[:, None, 1], poses[:, None, 2]
    c, s = torch.cos(0.5 * math.pi * turns), torch.sin(0.5 * math.pi * turns)
    return torch.stack((c * x - s * y, s * x + c * y, wrap_yaw(yaw + 0.5 * turns)), dim=-1)


def near_poses(truth: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """(B,count,3) poses near the truths (B,3) but outside the success radius, where a sequential filter's
    belief concentrates once the quarter turns are ruled out: half moved 0.45-1.0 (x-y, normalised units;
    success is MSE < 0.2, 0.45 away) with the heading turned up to 45 degrees, half in place but turned 45-180
    degrees."""
    shape = (truth.shape[0], count)
    u = torch.rand((*shape, 3), generator=generator, device=truth.device, dtype=truth.dtype)
    moved = torch.arange(count, device=truth.device) < (count + 1) // 2
    radius = torch.where(moved, 0.45 + 0.55 * u[..., 0], torch.zeros_like(u[..., 0]))
    angle = 2 * math.pi * u[..., 1]
    sign = torch.where(u[..., 2] < 0.5, -1.0, 1.0).to(truth.dtype)
    turn = torch.where(moved, 0.25 * (2 * u[..., 2] - 1), sign * (0.25 + 0.75 * (2 * u[..., 2] % 1)))
    offset = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), -1)
    xy = truth[:, None, :2] + offset
    xy = torch.where(xy.abs() > 1, truth[:, None, :2] - offset, xy)  # mirrored into the room, same distance
    return torch.cat((xy, wrap_yaw(truth[:, None, 2:] + turn[..., None])), dim=-1)


def ranking_logits(method: LocalizationMethod, episode: Episode, generator: torch.Generator | None = None,
                   uniform: int = 12, near: int = 0) -> Tensor:
    """(B, 4 + uniform + near) observation log-likelihoods of the first query at: the true pose, its three
    quarter turns about the environment's centre (:func:`quarter_turns`), ``uniform`` poses uniform over the
    state space, then ``near`` poses near the truth (:func:`near_poses`)."""
    truth = episode.query_poses[:, 0]
    others = uniform_particles(len(truth), uniform, generator=generator, device=truth.device, dtype=truth.dtype)
    poses = [truth[:, None], quarter_turns(truth), others] + ([near_poses(truth, near, generator)] if near else [])
    return first_query_log_likelihoods(method, episode, torch.cat(poses, 1))


def ranking_loss(method: LocalizationMethod, episode: Episode, generator: torch.Generator | None = None,
                 uniform: int = 12, near: int = 0) -> Tensor:
    """Cross-entropy of the true pose against its quarter turns, ``uniform`` uniform poses and ``near`` poses
    near it.

    The room's rotational symmetry is what global localization must break, and the truth's quarter turns are
    almost never among a tracking belief's particles nor among a few dozen uniform alternatives, so neither the
    pose loss nor :func:`discrimination_loss` asks for it. Scoring the truth against them does. The near poses
    ask for the sharpness a sequential filter needs once the right quarter is found."""
    logits = ranking_logits(method, episode, generator, uniform, near)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def ranking_scores(method: LocalizationMethod, episodes: list[Episode], seed: int = 0, uniform: int = 12) -> dict:
    """On fixed episodes: ``rotation_accuracy``, the share whose truth outscores its three quarter turns (chance
    25 %), and ``beats_uniform``, the share of uniform alternatives the truth outscores (chance 50 %)."""
    generator = torch.Generator(device=episodes[0].query_poses.device).manual_seed(seed)
    method.eval()
    wins, beats = [], []
    with torch.no_grad():
        for e in episodes:
            logits = ranking_logits(method, e, generator, uniform)
            wins.append(logits[:, 0] > logits[:, 1:4].amax(-1))
            beats.append((logits[:, :1] > logits[:, 4:]).float().mean(-1))
    method.train()
    return {"rotation_accuracy": float(torch.cat(wins).float().mean()), "beats_uniform": float(torch.cat(beats).mean())}


def validation_loss(method: LocalizationMethod, episodes: list[Episode], particles: int, seed: int) -> float:
    """Expected failure rate of one-step global localization (uniform belief) on fixed episodes with a fixed
    belief draw: the posterior mass farther than the success radius from the truth (for a filter; a point
    estimate's belief is the estimate itself, so its score is its failure rate). The quantity Table 1 scores,
    made smooth: the squared error of the weighted mean (used before) stays at the uninformed ~0.64 until the
    likelihood is sharp, so it picked the weights of step 250 and early stopping ended training at step 3250
    while the likelihood was still improving. (The tracking pose loss is a poor guide too: the uniform-weight
    mean of 32 particles around the truth already scores 0.006.)"""
    generator = torch.Generator(device=episodes[0].query_poses.device).manual_seed(seed)
    method.eval()
    failures = []
    with torch.no_grad():
        for e in episodes:
            output = localize(method, e, "global", particles, generator)
            truth = e.query_poses[:, -1, None, :2]
            if output.log_weights is None:  # a point estimate: its own belief
                output.particles = output.estimates[:, -1:]
                output.log_weights = output.estimates.new_zeros(len(truth), 1)
            far = ((output.particles[..., :2] - truth) ** 2).sum(-1) >= SUCCESS_MSE
            failures.append((torch.softmax(output.log_weights, -1) * far).sum(-1))
    method.train()
    return float(torch.cat(failures).mean())


def train(name: str, domain: str, train_config: TrainConfig = TrainConfig(), dmn_config: DmnConfig = DmnConfig(),
          source=None, progress: bool = True, device: str | torch.device = "cpu",
          init: dict | None = None) -> TrainResult:
    """Train one method on ``device`` (episodes are rendered on the CPU and moved there) on the terms of
    :func:`training_loss`; returns the weights of the best one-step validation (on ``device``), with the ranking
    scores of every validation in the history. ``init``: a state dict to start from (an earlier stage's weights).
    """
    from tqdm import tqdm

    torch.manual_seed(train_config.seed)
    method = build_method(name, dmn_config).to(device)
    if init is not None:
        method.load_state_dict(init)  # fp16 weights are copied into the float parameters
    if parameter_count(method) == 0:
        return TrainResult(method)
    if train_config.pose_weight <= 0 and not (method.uses_particles and (train_config.discrimination_weight > 0 or
                                                                      train_config.ranking_weight > 0)):
        raise InputError(f"nothing to train {name} on: its pose loss weight is 0 and it has no other term",
                         "give --pose-weight > 0 (ranking and discrimination apply to particle filters only)")
    source = source or StreamedEpisodes(domain, "train", dmn_config.image_size)
    validation = StreamedEpisodes(domain, "val", dmn_config.image_size)
    chunk = min(128, train_config.validation_episodes)
    val_episodes = [validation.sample(chunk, train_config.contexts, train_config.query_steps).to(device)
                    for _ in range(max(1, train_config.validation_episodes // chunk))]
    optimiser = torch.optim.Adam(method.parameters(), lr=train_config.learning_rate)
    generator = torch.Generator(device=device).manual_seed(train_config.seed)
    result = TrainResult(method)
    best_state, best, waited, running = None, float("inf"), 0, []
    started = time.perf_counter()
    bar = tqdm(range(1, train_config.steps + 1), desc=f"train {name} ({domain})", unit="step", disable=not progress)
    for step in bar:
        episode = source.sample(train_config.batch, train_config.contexts, train_config.query_steps).to(device)
        loss = training_loss(method, episode, train_config, dmn_config, generator)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 10.0)
        optimiser.step()
        running.append(float(loss.detach()))
        out_of_time = train_config.minutes > 0 and time.perf_counter() - started > 60 * train_config.minutes
        if step % train_config.validate_every and step != train_config.steps and not out_of_time:
            continue
        score = validation_loss(method, val_episodes, train_config.validation_particles, train_config.seed)
        ranks = ranking_scores(method, val_episodes, train_config.seed) if method.uses_particles else {}
        result.history.append((step, sum(running) / len(running), score, *ranks.values()))
        running = []
        bar.set_postfix(val=f"{score:.3f}", best=f"{min(best, score):.3f}",
                        **({"rot": f"{ranks['rotation_accuracy']:.2f}"} if ranks else {}), refresh=False)
        if score < best:
            best, best_state, waited = score, copy.deepcopy(method.state_dict()), 0
        else:
            waited += 1
        if (train_config.patience and waited >= train_config.patience) or out_of_time:
            break
    bar.close()
    method.load_state_dict(best_state)
    result.steps, result.seconds, result.best_validation = step, time.perf_counter() - started, best
    return result


def training_loss(method: LocalizationMethod, episode: Episode, train_config: TrainConfig, dmn_config: DmnConfig,
                  generator: torch.Generator | None = None) -> Tensor:
    """The weighted sum of the training terms of one batch: the paper's pose loss (tracking setting) and, for the
    particle filters, the discrimination and ranking terms."""
    loss = torch.zeros((), device=episode.query_poses.device)
    if train_config.pose_weight > 0:
        output = localize(method, episode, "tracking", dmn_config.particles_train, generator)
        loss = loss + train_config.pose_weight * pose_loss(output.estimates, episode.query_poses,
                                                           dmn_config.loss_yaw_weight).mean()
    if method.uses_particles and train_config.discrimination_weight > 0:
        loss = loss + train_config.discrimination_weight * discrimination_loss(
            method, episode, generator, train_config.discrimination_candidates)
    if method.uses_particles and train_config.ranking_weight > 0:
        loss = loss + train_config.ranking_weight * ranking_loss(
            method, episode, generator, train_config.ranking_uniform, train_config.ranking_near)
    return loss


# ---------------------------------------------------------------------------------------- evaluation
SETTINGS = {  # name: (initial belief, query steps, particles attribute of DmnConfig)
    "sequential": ("global", 5, "particles_global_eval"),
    "one_step": ("global", 1, "particles_global_eval"),
    "tracking": ("tracking", 5, "particles_tracking_eval"),
}


def evaluate(method: LocalizationMethod, domain: str, setting: str, episodes: int = 1000, contexts: int = 4,
             dmn_config: DmnConfig = DmnConfig(), batch: int = 50, seed: int = 0, progress: bool = False,
             device: str | torch.device = "cpu") -> dict:
    """Success rate (squared x-y error < 0.2 at the last step; ``success_rate_pose``: with half the squared yaw
    error in radians added, :func:`~prism_ros.dmn.particles.pose_squared_error`) and mean squared x-y error of
    ``method`` on held-out test environments, run on ``device``. Every method sees the same episodes and belief draws
    (seeded; a CUDA generator draws other numbers than the CPU one)."""
    from tqdm import tqdm

    mode, steps, particles_field = SETTINGS[setting]
    particles = getattr(dmn_config, particles_field)
    source = StreamedEpisodes(domain, "test", dmn_config.image_size, start=seed * episodes)
    generator = torch.Generator(device=device).manual_seed(seed)
    errors, pose_errors, batch = [], [], min(batch, episodes)
    method.to(device).eval()
    with torch.no_grad():
        for _ in tqdm(range(0, episodes, batch), desc=f"eval {setting}", disable=not progress):
            episode = source.sample(batch, contexts, steps).to(device)
            final = localize(method, episode, mode, particles, generator).estimates[:, -1]
            errors.append(xy_squared_error(final, episode.query_poses[:, -1]).cpu())
            pose_errors.append(pose_squared_error(final, episode.query_poses[:, -1]).cpu())
    errors, pose_errors = torch.cat(errors)[:episodes], torch.cat(pose_errors)[:episodes]
    return {"setting": setting, "episodes": len(errors), "success_rate": float((errors < SUCCESS_MSE).float().mean()),
            "success_rate_pose": float((pose_errors < SUCCESS_MSE).float().mean()), "mse_xy": float(errors.mean()),
            "particles": particles, "steps": steps, "contexts": contexts}


# ------------------------------------------------------------------------------------------- weights
def save_method(result: TrainResult, name: str, domain: str, dmn_config: DmnConfig, train_config: TrainConfig,
                path: Path, command: str = "", init: dict | None = None) -> Path:
    """Weights (fp16) with how they were made: method, domain, configs, steps, time, validation loss; ``init``:
    the record of the weights this training started from, whose steps and seconds count into the totals."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in result.method.state_dict().items()}
    before = init or {}
    torch.save({"kind": "prism_ros.dmn", "method": name, "domain": domain, "dmn_config": asdict(dmn_config),
                "train_config": asdict(train_config), "steps": result.steps, "seconds": result.seconds,
                "best_validation": result.best_validation, "history": result.history, "command": command,
                "total_steps": result.steps + before.get("total_steps", before.get("steps", 0)),
                "total_seconds": result.seconds + before.get("total_seconds", before.get("seconds", 0.0)),
                "init_command": before.get("command"), "state": state}, path)
    return path


def load_method(path: Path) -> tuple[LocalizationMethod, dict]:
    """(method with its weights, the file's record); a missing, corrupt, foreign or inconsistent file (absurd
    configuration, weights of the wrong shape or not finite) is an InputError. The configuration is checked
    before any network is built with it."""
    fix = "give a file written by `prism-ros dmn train`"
    blob = read_torch_file(path, "cannot read the DMN weights", fix)
    if not isinstance(blob, dict) or blob.get("kind") != "prism_ros.dmn":
        raise InputError(f"not a DMN weights file{file_kind(blob)}", fix, path)
    fix = "train them again with `prism-ros dmn train`"
    if blob.get("method") not in METHOD_NAMES:
        raise InputError(f"unknown method {blob.get('method')!r:.80} in the weights file", fix, path)
    if blob.get("domain") not in DOMAINS:
        raise InputError(f"unknown domain {blob.get('domain')!r:.80} in the weights file", fix, path)
    config = _dmn_config(blob.get("dmn_config"), fix, path)
    state = check_weights(lambda: build_method(blob["method"], config), blob.get("state"),
                          f"the weights of {blob['method']}", fix, path)
    method = build_method(blob["method"], config)
    method.load_state_dict(state)
    return method, blob


_DMN_LIMITS = {"image_size": (4, 1024), "contexts": (1, 1000), "particles_train": (1, 10**6),
               "particles_global_eval": (1, 10**6), "particles_tracking_eval": (1, 10**6),
               "resample_alpha": (0.0, 1.0), "transition_noise": (0.0, 10.0), "tracking_std": (0.0, 10.0),
               "loss_yaw_weight": (0.0, 100.0)}  # any other size: 1..4096 (the defaults are 4-64)


def _dmn_config(raw, fix: str, path: Path) -> DmnConfig:
    """The DmnConfig of a weights file, each value of the type of its default and within its limits."""
    names = {f.name for f in fields(DmnConfig)}
    if not isinstance(raw, dict) or set(raw) != names:
        differ = sorted(set(map(str, raw)) ^ names) if isinstance(raw, dict) else type(raw).__name__
        raise InputError(f"dmn_config differs from DmnConfig ({differ!s:.120})", fix, path)
    values = {}
    for f in fields(DmnConfig):
        default, value, name = f.default, raw[f.name], f"dmn_config {f.name}"
        low, high = _DMN_LIMITS.get(f.name, (1, 4096))
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise InputError(f"{name} must have {len(default)} values, got {value!r:.80}", fix, path)
            check = check_int if isinstance(default[0], int) else check_number
            values[f.name] = tuple(check(v, f"{name}[{i}]", low, high, fix, path) for i, v in enumerate(value))
        elif isinstance(default, int):
            values[f.name] = check_int(value, name, low, high, fix, path)
        elif value is None and f.name == "resample_alpha":  # None: no resampling
            values[f.name] = None
        else:
            values[f.name] = check_number(value, name, low, high, fix, path)
    return DmnConfig(**values)
