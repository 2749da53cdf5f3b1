"""Time of one IMU prediction (:meth:`TransitionModel.predict`, warm, one CPU thread) against the window's
length, with the closed-form linearisation of the strapdown models and with autodiff.

    PYTHONPATH=. python bench/predict_speed.py [--samples 7 50 200 600] [--repeats 30] [--method euler]

Prints the median and the spread (min-max) of ``--repeats`` predictions per case (wall clock, this machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from prism_ros.dynamics.model import DynamicsConfig, TransitionModel, make_transition
from prism_ros.frame import ImuSamples
from prism_ros.prism.state import GaussianState

RATE = 200.0


def timings(model, state: GaussianState, t1: float, imu: ImuSamples, repeats: int) -> list[float]:
    model.predict(state, t1, imu=imu)  # warm-up
    out = []
    for _ in range(repeats):
        model.previous = None  # each prediction sees the same window
        started = time.perf_counter()
        model.predict(state, t1, imu=imu)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[7, 50, 200, 600])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--method", default="euler", choices=["euler", "midpoint"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = np.random.default_rng(0)
    state = GaussianState.initial(torch.eye(4, dtype=torch.float64), t=0.0021, velocity=[0.5, 0, 0, 0, 0, 0.2])
    print(f"{'samples':>8} {'closed form ms':>22} {'autodiff ms':>22} {'speed-up':>9}")
    for n in args.samples:
        t = np.arange(n) / RATE
        imu = ImuSamples(t, generator.normal(0, 0.5, (n, 3)), generator.normal(0, 1, (n, 3)) + [0, 0, 9.81])
        t1 = t[-1] - 0.3 / RATE if n > 2 else state.t + 1 / RATE
        closed = make_transition(DynamicsConfig(model="imu", imu_method=args.method))
        autodiff = make_transition(DynamicsConfig(model="imu", imu_method=args.method))
        autodiff.linearise = lambda T, v, window, m=autodiff: TransitionModel.linearise(m, T, v, window)
        a, b = (timings(m, state, t1, imu, args.repeats) for m in (closed, autodiff))
        show = lambda x: f"{1e3 * statistics.median(x):7.2f} ({1e3 * min(x):.2f}-{1e3 * max(x):.2f})"
        print(f"{n:>8} {show(a):>22} {show(b):>22} {statistics.median(b) / statistics.median(a):>8.1f}x")


if __name__ == "__main__":
    main()
