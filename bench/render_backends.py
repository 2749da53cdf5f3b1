"""Render time of the torch reference and the fused kernel (one CPU thread) on a map of real 7-Scenes frames,
at each pyramid level (1: QVGA, the filter's render level; 0: VGA), and how far the two renders differ.

    PYTHONPATH=. python bench/render_backends.py [--frames 50 --repeats 10 --device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from prism_ros.datasets import open_dataset
from prism_ros.geometry import camera_pyramid
from prism_ros.prism.kernels import warm_up
from prism_ros.prism.map import GaussianSdfMap
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import render

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_seq_0000_0399"


def timed(function, repeats: int, device) -> tuple[float, float, object]:
    """Median wall-clock and calling-thread CPU ms of ``repeats`` calls (after one warm-up call), and the last
    result. CPU time is the steadier figure on a shared machine (both backends work on the calling thread)."""
    result, wall, cpu = function(), [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    start = time.perf_counter()
    print("kernel load (compile on a first run, else the disk cache):", warm_up(device),
          f"{time.perf_counter() - start:.1f} s")
    dataset = open_dataset(args.dataset, frames=f":{args.frames + 1}")
    field = GaussianSdfMap(device=device)
    for frame in list(dataset)[:-1]:
        obs = Observation.from_frame(frame, levels=2, device=device)
        field.integrate(obs.finest, obs.colour, torch.as_tensor(frame.pose))
    held = dataset[len(dataset) - 1]  # rendered from the next frame's pose
    T = torch.as_tensor(held.pose, device=device)
    print(f"map: {args.frames} frames, {field.num_blocks} blocks; rendered from frame {held.index}")
    base = Observation.from_frame(held, levels=1, device=device).finest.camera
    for level, camera in reversed(list(enumerate(camera_pyramid(base, 2)))):
        torch_ms, torch_cpu, reference = timed(lambda camera=camera: render(field, T, camera), args.repeats, device)
        fused_ms, fused_cpu, fused = timed(lambda camera=camera: render(field, T, camera, backend="fused"),
                                           args.repeats, device)
        both = reference.valid & fused.valid
        depth = (reference.depth - fused.depth)[both].abs()
        print(f"level {level} ({camera.width}x{camera.height}): wall torch {torch_ms:.1f} ms, fused {fused_ms:.1f} "
              f"ms ({torch_ms / fused_ms:.1f}x); CPU torch {torch_cpu:.1f} ms, fused {fused_cpu:.1f} ms "
              f"({torch_cpu / fused_cpu:.1f}x); valid {int(reference.valid.sum())} / {int(fused.valid.sum())}, "
              f"masks differ at {float((reference.valid ^ fused.valid).float().mean()) * 100:.3f} % of pixels, "
              f"depth |diff| p99 {float(depth.quantile(0.99)) * 1e3:.4f} mm max {float(depth.max()) * 1e3:.4f} mm")


if __name__ == "__main__":
    main()
