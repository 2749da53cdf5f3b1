"""PRISM with the learned prior against the engineered IMU prior: the same synthetic drone sequence, filtered twice.

Why: the filter's figures with VSSM-LM's learned residual (:mod:`prism_ros.dynamics.learning`) against the
engineered prior alone show what learning the dynamics buys. The IMU carries an injected accelerometer bias
(and optionally a gyro bias)
that the engineered model is not told about (zero biases in the config, as for an uncalibrated IMU). Its
prediction is then off by ``0.5 b dt^2`` plus the velocity error the bias leaves in the filter. The residual is
trained on ANOTHER drone trajectory (``--train-seed``) with the same IMU biases. The filter then runs the test
trajectory (``--seed``) once with ``dynamics: {model: imu}`` and once with ``residual_model`` set to the saved
file (the config switch a user sets). Both runs start at the true pose and velocity.

Settings: every frame (20 Hz), and every ``--stride``-th frame with the IMU integrated over the whole gap, where
the prior carries more of the estimate. One residual, trained at the 50 ms frame interval, serves both: over a
longer interval it is read at its trained step and scaled like a bias (``ResidualMLP.trained_step``). The strided
setting also runs a residual trained at its own interval, for comparison. Two reference rows: the residual with
the engineered accelerometer-bias std set to 0 (the learned std head alone), and the engineered model given the
true biases (what the residual should approach).

``--euroc ../shared/data/euroc_V1_01_micro`` adds real rows: V1_01's 40 stereo frames, with a residual trained
on V1_02's IMU and ground truth (another flight of the same rig). The vehicle is still (about 6 mm of ground-truth
motion), so only the prior columns mean something there. ATE and NEES are the stereo tracking's, whatever the prior.

Printed per setting and prior:
- the prior's error: the camera pose predicted before the update against ground truth (median / p95, cm and deg);
- the prior's NEES median (6-DoF, against the predicted pose covariance);
- ATE RMSE (evo, SE(3)-aligned);
- the posterior pose NEES median and the fraction of frames in the two-sided 95 % chi-square band, scored as
  ``prism-ros run`` scores them;
- lost frames, and the median ms per frame and per prediction (one CPU thread).

    PYTHONPATH=. python bench/learned_prior.py [--frames 200 --stride 3 --seed 1 --train-seed 2 --size 160x120]
        [--accel-bias 0.3 -0.25 0.2 --gyro-bias 0 0 0] [--euroc ../shared/data/euroc_V1_01_micro] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from prism_ros.dynamics.learning import MotionData, TrainingConfig, save_residual, train_residual
from prism_ros.dynamics.model import DynamicsConfig
from prism_ros.evaluation.calibration import pose_nees
from prism_ros.frame import Frame, ImuSamples
from prism_ros.prism.config import FilterConfig
from prism_ros.prism.filter import PrismFilter
from prism_ros.prism.pipeline import score
from prism_ros.synthetic import ImuModel, make_sequence, make_trajectory, synthesize_imu

FPS, IMU_RATE = 20.0, 200.0  # 10 IMU periods per frame: training steps must be whole IMU periods
DYNAMICS = DynamicsConfig(model="imu", imu_method="midpoint", residual_hidden=32)  # engineered: zero biases
HEADER = (f"{'prior':<30} {'prior cm med/p95':>15}  {'prior deg med/p95':>13}  {'pr.NEES':>7}  {'ATE cm':>6}  "
          f"{'NEES':>6}  {'band':>6}  {'lost':>4}  {'ms/fr':>6}  {'pred':>5}")


def biased_imu(trajectory, seconds: float, seed: int, bias_accel, bias_gyro) -> ImuSamples:
    """200 Hz IMU of a trajectory: ADIS16448 white noise (no drawn biases) plus the given constant biases."""
    t = np.arange(int(seconds * IMU_RATE) + 1) / IMU_RATE
    imu = synthesize_imu(trajectory, t, IMU_RATE, ImuModel(gyro_bias_sigma=0.0, accel_bias_sigma=0.0), seed)
    return ImuSamples(t, imu.gyro + bias_gyro, imu.accel + bias_accel)


def drone_data(seed: int, seconds: float, args) -> MotionData:
    """Training data: drone trajectory ``seed``, its biased IMU and exact poses and velocities at 20 Hz."""
    trajectory = make_trajectory("drone", seed)
    imu = biased_imu(trajectory, seconds, seed, args.accel_bias, args.gyro_bias)
    t_gt = imu.t[::10]
    k = trajectory.kinematics(torch.as_tensor(t_gt))
    return MotionData(imu, t_gt, k.poses().numpy(), k.v.numpy(), f"drone seed {seed}")


def train(data: MotionData, dynamics: DynamicsConfig, step: float, steps: int, path: Path) -> str:
    """A residual fit on ``data`` with prediction step ``step`` s (the filter's frame interval), saved to ``path``."""
    config = TrainingConfig(step=step, horizon=max(0.5, 4 * step), stride=0.1, eval_stride=0.1, steps=steps,
                            batch=128, learning_rate=1e-2)
    result = train_residual(data, dataclasses.replace(dynamics, residual_mlp=True), config)
    print(f"trained residual on {data.source}, step {step:.2f} s: held-out NLL {result.held_out_before:.1f} -> "
          f"{result.held_out_after:.1f} ({result.seconds:.1f} s)", flush=True)
    save_residual(path, result.residual, dynamics, config)
    return str(path)


def subsample(frames: list[Frame], imu: ImuSamples, stride: int) -> list[Frame]:
    """Every ``stride``-th frame, each with the IMU samples since the previous kept frame."""
    kept = frames[::stride]
    return kept[:1] + [dataclasses.replace(f, imu=imu.between(previous.timestamp, f.timestamp))
                       for previous, f in zip(kept, kept[1:])]


def run(frames: list[Frame], config: FilterConfig, velocity: torch.Tensor, out: Path) -> dict:
    """Filter the frames from the true first pose and ``velocity``. The filter keeps only the posterior, so the
    prior of every step is recorded by wrapping the transition's ``predict``."""
    slam = PrismFilter(config, initial_pose=frames[0].pose)
    priors, predict = [], slam.transition.predict

    def recording(*args, **kwargs):
        priors.append(predict(*args, **kwargs))
        return priors[-1]

    slam.transition.predict = recording
    estimates = [dataclasses.replace(slam.step(frames[0]), render=None)]
    slam.state.velocity = velocity.to(slam.state.velocity)
    estimates += [dataclasses.replace(slam.step(frame), render=None) for frame in frames[1:]]
    truth = np.stack([f.pose for f in frames])
    T_body_camera = slam.T_body_camera.cpu()
    prior = np.stack([estimates[0].T_world_camera] + [(p.T.cpu() @ T_body_camera).numpy() for p in priors])
    prior_cov = np.stack([estimates[0].pose_covariance] + [p.pose_covariance.cpu().numpy() for p in priors])
    translation = np.linalg.norm(prior[1:, :3, 3] - truth[1:, :3, 3], axis=-1)
    cos = (np.einsum("nij,nij->n", prior[1:, :3, :3], truth[1:, :3, :3]) - 1) / 2
    rotation = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    scores = score(out, estimates, list(truth))
    ok = np.array([e.tracking_ok for e in estimates])
    return {"prior_cm": 100 * np.percentile(translation, [50, 95]), "prior_deg": np.percentile(rotation, [50, 95]),
            "prior_nees": float(np.median(pose_nees(prior, truth, prior_cov)[1:])),
            "ate_cm": 100 * scores["ate_rmse_m"], "nees": scores["nees_median"],
            "in_band": scores["nees_fraction_in_95_band"], "lost": [f.index for f, o in zip(frames, ok) if not o],
            "ms": float(np.median([sum(e.timings_ms.values()) for e in estimates[1:]])),
            "predict_ms": float(np.median([e.timings_ms["predict"] for e in estimates[1:]]))}


def table(frames: list[Frame], stride: int, period: float, cases: dict, base: FilterConfig,
          velocity: torch.Tensor, out: Path) -> None:
    """One setting (every ``stride``-th frame): a row per case (name -> changes to ``base.dynamics``)."""
    print(f"\nevery {stride} frame(s): {len(frames)} frames, {stride * period * 1e3:.0f} ms apart\n{HEADER}")
    for case, (name, changes) in enumerate(cases.items()):
        config = dataclasses.replace(base, dynamics=dataclasses.replace(base.dynamics, **changes))
        r = run(frames, config, velocity, out / f"stride{stride}_case{case}")
        print(f"{name:<30} {r['prior_cm'][0]:5.2f} / {r['prior_cm'][1]:5.2f}  {r['prior_deg'][0]:5.2f} / "
              f"{r['prior_deg'][1]:5.2f}  {r['prior_nees']:7.1f}  {r['ate_cm']:6.2f}  {r['nees']:6.1f}  "
              f"{100 * r['in_band']:5.0f}%  {len(r['lost']):4d}  {r['ms']:6.1f}  {r['predict_ms']:5.1f}"
              + (f"  (lost: frames {', '.join(map(str, r['lost']))})" if r["lost"] else ""), flush=True)


def synthetic(args) -> None:
    """The drone rows: train on ``--train-seed``, filter ``--seed`` with four priors (five when strided)."""
    width, height = (int(x) for x in args.size.split("x"))
    seq = make_sequence(frames=args.frames, seed=args.seed, motion="drone", width=width, height=height, fps=FPS)
    imu = biased_imu(seq.trajectory, seq.frame_us[-1] / 1e6, args.seed, args.accel_bias, args.gyro_bias)
    frames = [Frame(index=i, timestamp=seq.frame_us[i] / 1e6, rgb=rgb, depth=depth, intrinsics=seq.intrinsics,
                    pose=seq.poses[i]) for i, (rgb, depth) in enumerate(map(seq.frame, range(len(seq))))]
    base = FilterConfig(dynamics=DYNAMICS, device="cpu", max_depth=4.0, levels=2, render_level=0,
                        T_body_camera=tuple(seq.T_imu_camera.ravel()))
    base.tracking.photometric_weight = 1.0  # the synthetic preset (config/prism_synthetic.yaml)
    k = seq.trajectory.kinematics(torch.zeros(1, dtype=torch.float64))
    velocity = torch.cat([k.v[0], k.omega[0]])
    data = drone_data(args.train_seed, args.train_seconds, args)
    residuals = {s: train(data, DYNAMICS, s / FPS, args.steps, args.out / f"residual_step{s}.pt")
                 for s in sorted({1, args.stride})}  # the 50 ms one serves every setting
    print(f"\ntest: drone seed {args.seed}, {args.frames} frames at {FPS:g} Hz, {width}x{height}; IMU biases "
          f"accel {args.accel_bias} m/s^2, gyro {args.gyro_bias} rad/s (engineered model: zero); "
          f"residual trained on seed {args.train_seed}")
    for stride in sorted({1, args.stride}):
        cases = {"engineered (zero biases)": {},
                 "engineered + residual": {"residual_model": residuals[1]},
                 "  same, accel_bias_std 0": {"residual_model": residuals[1], "accel_bias_std": 0.0},
                 "true biases (reference)": {"bias_accel": tuple(args.accel_bias),
                                             "bias_gyro": tuple(args.gyro_bias)}}
        if stride != 1:  # a residual trained at this setting's interval, for comparison
            cases[f"+ residual trained at {stride * 1e3 / FPS:.0f} ms"] = {"residual_model": residuals[stride]}
        table(subsample(frames, imu, stride), stride, 1 / FPS, cases, base, velocity, args.out)


def euroc(path: Path, args) -> None:
    """Real rows: V1_01's still stereo frames (stereo depth) and a residual trained on V1_02's IMU and ground truth
    (``V1_02_imu_gt_subset``); zero engineered biases, start velocity zero (the vehicle is still)."""
    from prism_ros.datasets import open_dataset
    from prism_ros.dynamics.learning import load_motion_data
    from prism_ros.prism.stereo import StereoDepthDataset

    dataset = StereoDepthDataset(open_dataset(path))
    frames = [dataset[i] for i in range(len(dataset))]
    period = float(np.median(np.diff(dataset.timestamps)))
    dynamics = DynamicsConfig(model="imu")
    base = FilterConfig(dynamics=dynamics, device="cpu", T_body_camera=tuple(dataset.T_imu_camera.ravel()))
    data = dataclasses.replace(load_motion_data(path / "V1_02_imu_gt_subset"), source="EuRoC V1_02")
    motion = np.linalg.norm(np.diff([f.pose[:3, 3] for f in frames], axis=0), axis=1).sum()
    print(f"\nEuRoC {path.name}: {len(frames)} frames, ground-truth path length {motion * 1e3:.1f} mm")
    for stride in sorted({1, args.euroc_stride}):
        model = train(data, dynamics, round(stride * period, 3), args.steps, args.out / f"euroc_step{stride}.pt")
        cases = {"engineered (zero biases)": {}, "engineered + residual": {"residual_model": model}}
        table(subsample(frames, dataset.imu, stride), stride, period, cases, base, torch.zeros(6), args.out / "euroc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="test frames at 20 Hz")
    parser.add_argument("--stride", type=int, default=3, help="the second setting keeps every Nth frame")
    parser.add_argument("--seed", type=int, default=1, help="test trajectory and scene")
    parser.add_argument("--train-seed", type=int, default=2, help="training trajectory (another seed)")
    parser.add_argument("--train-seconds", type=float, default=40.0)
    parser.add_argument("--steps", type=int, default=150, help="Adam steps per residual")
    parser.add_argument("--accel-bias", type=float, nargs=3, default=[0.3, -0.25, 0.2], help="m/s^2, body")
    parser.add_argument("--gyro-bias", type=float, nargs=3, default=[0.0, 0.0, 0.0], help="rad/s, body")
    parser.add_argument("--size", default="160x120", help="image WxH")
    parser.add_argument("--euroc", type=Path, default=None, help="also the EuRoC micro folder (real, still)")
    parser.add_argument("--euroc-stride", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("out/bench/learned_prior"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    synthetic(args)
    print(f"\nsynthetic rows: {time.perf_counter() - started:.0f} s")
    if args.euroc is not None:
        euroc(args.euroc, args)
        print(f"\ntotal: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
