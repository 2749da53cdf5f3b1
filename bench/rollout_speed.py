"""Time of :func:`prism_ros.dynamics.rollout.sample_rollouts` (warm, one CPU thread) per transition model.

    PYTHONPATH=. python bench/rollout_speed.py [--samples 64 --steps 20 --repeats 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from prism_ros.dynamics.model import DynamicsConfig, ImuEuler, ResidualMLP, make_transition
from prism_ros.dynamics.rollout import sample_rollouts
from prism_ros.frame import ImuSamples
from prism_ros.prism.state import GaussianState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    at_rest = ImuSamples(np.zeros(1), np.zeros((1, 3)), np.array([[0.0, 0.0, 9.81]]))
    cases = {"constant_velocity": (make_transition(DynamicsConfig()), None),
             "control": (make_transition(DynamicsConfig(model="control")), [0.5, 0, 0, 0, 0, 0.2]),
             "imu": (make_transition(DynamicsConfig(model="imu")), at_rest),
             "imu + residual MLP (64x2)": (ImuEuler(DynamicsConfig(model="imu"), ResidualMLP()), at_rest)}
    state = GaussianState.initial(torch.eye(4, dtype=torch.float64), velocity=[0.5, 0, 0, 0, 0, 0],
                                  velocity_std=(0.05,) * 6)
    horizon = args.steps * args.step
    for name, (model, controls) in cases.items():
        sample_rollouts(model, state, controls, horizon, args.step, args.samples)  # warm-up (one-time set-up)
        started = time.perf_counter()
        for seed in range(args.repeats):
            generator = torch.Generator().manual_seed(seed)
            sample_rollouts(model, state, controls, horizon, args.step, args.samples, generator)
        ms = (time.perf_counter() - started) / args.repeats * 1e3
        print(f"{name:<28} {args.samples} samples x {args.steps} steps: {ms:6.1f} ms")


if __name__ == "__main__":
    main()
