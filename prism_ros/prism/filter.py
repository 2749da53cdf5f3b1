"""The PRISM filter: one short step per frame, reading as the paper's four steps.

    predict   -> Gaussian prior over (pose, velocity) from the transition model
    render    -> ONE render of the map at the predicted camera pose
    (1)+(2)   -> pose MAP (ICP + photometric + prior) and its Laplace covariance
    (3)       -> velocity in closed form, conditioning the joint prior on the pose posterior
    (4)       -> closed-form Gaussian update of the SDF + colour map (never from a lost frame)

The state is the body pose (IMU frame, or the camera when there is no IMU); tracking works on the
camera pose ``T_body @ T_body_camera``. With the left perturbation convention the covariance is
the same for both (see :mod:`prism_ros.prism.state`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from prism_ros.dynamics.model import make_transition
from prism_ros.frame import Frame
from prism_ros.prism.config import FilterConfig
from prism_ros.prism.drift import MapDrift
from prism_ros.prism.kernels import set_cpu_threads as set_kernel_threads
from prism_ros.prism.kernels import warm_up
from prism_ros.prism.map import GaussianSdfMap
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import RenderResult, render
from prism_ros.prism.state import GaussianState, PoseEstimate
from prism_ros.prism.tracking import track
from prism_ros.prism.velocity import condition_on_pose
from prism_ros.threads import use_cpu_threads


@dataclass
class Estimate:
    """What one step produced: camera pose, covariances, velocity, tracking verdict, timings (ms)."""

    t: float
    T_world_camera: np.ndarray
    pose_covariance: np.ndarray
    velocity: np.ndarray
    velocity_covariance: np.ndarray
    tracking_ok: bool
    quality: dict = field(default_factory=dict)
    timings_ms: dict = field(default_factory=dict)
    render: RenderResult | None = None
    map_pose_covariance: np.ndarray | None = None  # pose_covariance without the map-drift term (against the map)
    # cov(this frame's map-relative pose error, the previous state's), left 6x6; None on a (re)started state
    map_cross_covariance: np.ndarray | None = None


class PrismFilter:
    """Dense probabilistic SLAM: a Gaussian SDF map and a Gaussian (pose, velocity) state."""

    def __init__(self, config: FilterConfig | None = None, initial_pose: np.ndarray | None = None):
        self.config = config or FilterConfig()
        self.device = torch.device(self.config.resolved_device())
        self.backend = self.config.resolved_backend()
        # every kernel compiled (first run on a machine) or loaded from Warp's cache now, not on the first frame
        self.kernel_load_s = warm_up(self.device) if self.backend == "fused" else {}
        set_kernel_threads(self.config.kernel_threads)
        if self.device.type == "cpu":
            use_cpu_threads(self.config.cpu_threads)
        self.map = GaussianSdfMap(self.config.map, device=self.device)
        self.transition = make_transition(self.config.dynamics)
        self.T_body_camera = torch.as_tensor(np.asarray(self.config.T_body_camera).reshape(4, 4),
                                             dtype=torch.float64, device=self.device)
        self.T_camera_body = torch.linalg.inv(self.T_body_camera)
        self.initial_pose = initial_pose
        if initial_pose is None and hasattr(self.transition, "align_gravity_first"):
            self.transition.align_gravity_first()  # the identity start is not gravity-aligned
        self.state: GaussianState | None = None
        self.drift = MapDrift(self.config.map_drift, self.device)
        self.last_control = None
        self.timings: dict[str, float] = {}
        self.map_level = 0  # the pyramid level this frame fuses at (config.map_level, "auto" resolved per frame)
        self.map_frozen = False  # localization: track against a loaded map and never change it
        self.initial_pose_covariance: np.ndarray | None = None  # left, 6x6, of initial_pose; default: the config's

    def step(self, frame: Frame) -> Estimate:
        """Process one frame; the filter's whole per-frame algorithm."""
        self.timings = {}
        self.map_level = self.config.map_level_for(frame.intrinsics.width, frame.intrinsics.height)
        with self.timed("observe"):
            obs = Observation.from_frame(frame, self.config.levels, self.device, self.config.max_depth,
                                         first_level=min(self.config.render_level, self.map_level),
                                         backend=self.backend)
        if self.state is None:
            if not self.map_frozen:
                return self.initialise(obs)
            self.state = self.initial_state(obs)  # a frozen map: this first frame is tracked against it
        with self.timed("predict"):
            prior = self.transition.predict(self.state, obs.t, imu=obs.imu, control=self.last_control)
        self.last_control = obs.control  # u_t drives t -> t+1 (p(z_t+1 | z_t, u_t))
        with self.timed("render"):
            rendered = self.render_at(prior, obs)
        with self.timed("track"):
            pose = self.track_pose(obs, rendered, prior)
        with self.timed("velocity"):
            self.state = condition_on_pose(prior, pose) if pose.ok else prior
        with self.timed("map"):
            if pose.ok and not self.map_frozen:
                self.integrate(obs, pose.T @ self.T_body_camera)  # the map is fused from the camera pose
                self.drift.update(pose.covariance, pose.quality["coverage"])
        return self.estimate(pose.ok, pose.quality, rendered)

    def warm_up(self) -> float:
        """Run a throwaway filter with this configuration (device, backend, transition model) over three frames of
        a small synthetic room corner, so that the first real frame pays no kernel load, lazy import or first-call
        set-up (while frames queue up on a live robot); returns the seconds it took."""
        start = time.perf_counter()
        scratch = PrismFilter(self.config, initial_pose=np.eye(4))
        for frame in warm_up_frames(self.config):
            scratch.step(frame)
        return time.perf_counter() - start

    def relocalize(self, T_world_camera: np.ndarray, t: float, pose_covariance: np.ndarray | None = None) -> None:
        """Put the camera at a pose found by relocalization (e.g. ACE) at time ``t``, keeping the map.

        The state restarts there with zero mean velocity of the initial uncertainty, so the next frame is
        predicted from ``t`` and tracked against the existing map. ``pose_covariance`` (left, 6x6, of the
        relocalization; default: the initial one) becomes the pose prior that the tracking refines. Before
        the first frame this sets the initial pose instead."""
        T_camera = torch.as_tensor(np.asarray(T_world_camera), dtype=torch.float64, device=self.device)
        if self.state is None:
            self.initial_pose = T_camera.cpu().numpy()
            return
        self.state = self.state_at(T_camera, t, pose_covariance)

    def state_at(self, T_world_camera: torch.Tensor, t: float, pose_covariance=None) -> GaussianState:
        """A fresh state with the camera at ``T_world_camera`` at time ``t``: zero mean velocity of the initial
        uncertainty, and ``pose_covariance`` (left, 6x6) as the pose's when given, else the initial one."""
        state = GaussianState.initial(T_world_camera @ self.T_camera_body, t=t, device=self.device,
                                      velocity_std=self.config.initial_velocity_std)
        if pose_covariance is not None:
            state.covariance[:6, :6] = torch.as_tensor(np.asarray(pose_covariance), dtype=torch.float64,
                                                       device=self.device)
        return state

    # -- the steps ---------------------------------------------------------------------------

    def initial_camera_pose(self) -> torch.Tensor:
        """T_world_camera of the first frame: the initial pose, the identity if none was given."""
        return torch.eye(4, dtype=torch.float64, device=self.device) if self.initial_pose is None else \
            torch.as_tensor(self.initial_pose, dtype=torch.float64, device=self.device)

    def initial_state(self, obs: Observation) -> GaussianState:
        """The state at the first frame: the initial pose with the initial uncertainty."""
        self.last_control = obs.control
        return self.state_at(self.initial_camera_pose(), obs.t, self.initial_pose_covariance)

    def initialise(self, obs: Observation) -> Estimate:
        """First frame: the state starts at the initial pose and the frame seeds the map."""
        self.state = self.initial_state(obs)
        with self.timed("map"):
            self.integrate(obs, self.initial_camera_pose())
        return self.estimate(True, {"initialised": True}, None)

    def render_at(self, prior: GaussianState, obs: Observation) -> RenderResult:
        """The one render of the frame, at the predicted camera pose and the render pyramid level."""
        camera = obs.levels[self.config.render_level].camera
        return render(self.map, prior.T @ self.T_body_camera, camera, self.config.render, backend=self.backend)

    def track_pose(self, obs: Observation, rendered: RenderResult, prior: GaussianState) -> PoseEstimate:
        """MAP camera pose + Laplace covariance, returned as the body pose (same left covariance)."""
        camera = track(obs, rendered, prior.T @ self.T_body_camera, prior.pose_covariance, self.config.tracking,
                       backend=self.backend)
        camera.T = camera.T @ self.T_camera_body
        return camera

    def integrate(self, obs: Observation, T_world_camera: torch.Tensor) -> None:
        self.map.integrate(obs.levels[self.map_level], obs.colour, T_world_camera, backend=self.backend)

    # -- helpers -----------------------------------------------------------------------------

    def estimate(self, ok: bool, quality: dict, rendered: RenderResult | None) -> Estimate:
        state = self.state
        T_camera = (state.T @ self.T_body_camera).cpu().numpy()
        pose_covariance = state.pose_covariance + self.drift.covariance  # against the world, not the map
        cross = None if state.previous_cross is None else state.previous_cross[:6, :6].cpu().numpy()
        return Estimate(state.t, T_camera, pose_covariance.cpu().numpy(), state.velocity.cpu().numpy(),
                        state.velocity_covariance.cpu().numpy(), ok, quality, dict(self.timings), rendered,
                        state.pose_covariance.cpu().numpy(), cross)

    @contextmanager
    def timed(self, stage: str):
        """Wall time of a stage in ms (synchronising CUDA so the figure is the stage's own)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] = self.timings.get(stage, 0.0) + 1e3 * (time.perf_counter() - start)


def warm_up_frames(config: FilterConfig, count: int = 3, width: int = 160, height: int = 120) -> list[Frame]:
    """A still camera at the identity looking into a room corner (a wall 2 m ahead, one 0.8 m to the right, the
    floor 0.6 m below), checker-textured, at 30 Hz, with the IMU samples (200 Hz, at rest) or the zero command its
    transition model needs."""
    from prism_ros.frame import ImuSamples, Intrinsics

    intrinsics = Intrinsics(125.0, 125.0, (width - 1) / 2, (height - 1) / 2, width, height)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = (u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy
    with np.errstate(divide="ignore"):
        depth = np.minimum.reduce([np.full_like(x, 2.0), np.where(x > 0, 0.8 / x, np.inf),
                                   np.where(y > 0, 0.6 / y, np.inf)])
    hit = np.stack((x * depth, y * depth, depth), -1)
    checker = (np.floor(hit * 5.0).sum(-1) % 2) * 120 + 60
    rgb = np.repeat(checker[..., None], 3, -1).astype(np.uint8)
    R_world_body = np.asarray(config.T_body_camera, dtype=np.float64).reshape(4, 4)[:3, :3].T  # camera at identity
    at_rest = R_world_body.T @ np.array([0.0, 0.0, config.dynamics.gravity])  # specific force, body frame
    frames = []
    for i in range(count):
        t = i / 30.0
        times = np.arange(t - 1 / 30.0, t, 1 / 200.0)[1:] if i else np.zeros(0)
        imu = ImuSamples(times, np.zeros((len(times), 3)), np.tile(at_rest, (len(times), 1)))
        frames.append(Frame(index=i, timestamp=t, rgb=rgb, depth=depth.astype(np.float32), intrinsics=intrinsics,
                            imu=imu, control=np.zeros(6)))
    return frames
