"""Time of one tracking linearisation and one whole :func:`prism_ros.prism.tracking.track` call per backend (torch,
fused), warm, one CPU thread, on 7-Scenes redkitchen: a map fused from a few frames, rendered at QVGA (render
level 1 of the 640x480 frame) at a pose 1 cm / 0.5 deg off the next frame's.

    PYTHONPATH=. python bench/track_backends.py [--data ../shared/data/7scenes_redkitchen_seq_0000_0399]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from prism_ros.datasets import open_dataset
from prism_ros.geometry import se3_exp
from prism_ros.prism import tracking
from prism_ros.prism.kernels import warm_up
from prism_ros.prism.kernels.track import lineariser
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import render


def median_ms(function, repeats: int) -> str:
    """Median wall and thread CPU time: on a shared machine the CPU time is the steadier of the two."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(), time.thread_time()
        function()
        times.append((time.perf_counter() - start[0], time.thread_time() - start[1]))
    wall, cpu = 1e3 * np.median(times, axis=0)
    return f"{wall:.2f} ms (CPU {cpu:.2f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/7scenes_redkitchen_seq_0000_0399")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up()
    frames = open_dataset(args.data, frames="0:11:2")
    field = GaussianSdfMap(MapConfig())
    for frame in list(frames)[:-1]:
        obs = Observation.from_frame(frame)
        field.integrate(obs.levels[0], obs.colour, torch.as_tensor(frame.pose))
    obs = Observation.from_frame(frames[len(frames) - 1])
    offset = torch.tensor([0.006, -0.006, 0.005, 0.005, -0.004, 0.004], dtype=torch.float64)
    prior_T = se3_exp(offset) @ torch.as_tensor(frames[len(frames) - 1].pose)
    prior_cov = torch.diag(torch.tensor([0.02] * 3 + [0.02] * 3, dtype=torch.float64) ** 2)
    rendered = render(field, prior_T, obs.levels[1].camera)
    config = tracking.TrackingConfig()
    reference = tracking.make_reference(rendered, config)
    level = tracking.make_levels(obs, rendered, config)[-1]  # the finest: render resolution, stride 2
    T = prior_T.numpy()
    fused = lineariser(level, reference, config)
    print(f"render {rendered.camera.width}x{rendered.camera.height}, finest level {level.points.shape[1]} points")
    for backend, linearise in (("torch", lambda: tracking.linearise(T, level, reference, config)),
                               ("fused", lambda: fused(T))):
        estimate = tracking.track(obs, rendered, prior_T, prior_cov, config, backend=backend)
        whole = median_ms(lambda backend=backend: tracking.track(obs, rendered, prior_T, prior_cov, config,
                                                                 backend=backend),
                          args.repeats)
        print(f"{backend}: linearisation {median_ms(linearise, args.repeats)}, track() {whole} "
              f"({estimate.quality['iterations']} iterations, ok={estimate.ok})")


if __name__ == "__main__":
    main()
