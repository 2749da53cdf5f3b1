"""Time of :meth:`prism_ros.prism.map.GaussianSdfMap.integrate` per frame, torch reference vs fused kernels, on 7-Scenes
redkitchen at full resolution (one CPU thread), and the share of each stage of the update.

    PYTHONPATH=. python bench/map_update_speed.py [--warm 30 --frames 15 --device cpu]

Wall-clock and thread CPU time are both printed: on a shared machine the CPU time is the steadier figure
(Warp's CPU kernels run in the calling thread, so it counts them).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from prism_ros.datasets import open_dataset
from prism_ros.prism import kernels
from prism_ros.prism.map import GaussianSdfMap
from prism_ros.prism.observation import Observation

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_seq_0000_0399"


def median_ms(function, repeats: int = 9) -> float:
    """Median thread CPU time of ``function()`` in ms."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        function()
        times.append(time.thread_time() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--warm", type=int, default=30, help="frames integrated before timing")
    parser.add_argument("--frames", type=int, default=15, help="frames timed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"kernel load (compile on first run): {kernels.warm_up(args.device)} in {time.perf_counter() - start:.1f} s")
    dataset = open_dataset(args.data)
    frames = [dataset[i] for i in range(args.warm + args.frames)]
    observations = [Observation.from_frame(frame, levels=1, device=args.device) for frame in frames]
    maps = {backend: GaussianSdfMap(device=args.device) for backend in ("torch", "fused")}
    times = {backend: [] for backend in maps}
    for i, (frame, obs) in enumerate(zip(frames, observations)):
        for backend, sdf_map in maps.items():
            cpu = time.thread_time()
            stats = sdf_map.integrate(obs.finest, obs.colour, frame.pose, backend=backend)
            if i >= args.warm:
                times[backend].append((stats["ms"], (time.thread_time() - cpu) * 1e3))
    for backend, rows in times.items():
        print(f"{backend}: median {statistics.median(r[0] for r in rows):.1f} ms wall, "
              f"{statistics.median(r[1] for r in rows):.1f} ms thread CPU per frame")
    sdf_map, level, colour = maps["fused"], observations[-1].finest, observations[-1].colour
    T = torch.as_tensor(frames[-1].pose, dtype=torch.float64, device=args.device)
    keys = sdf_map._band_block_keys(level, T)
    _, slots = sdf_map._allocate(keys)
    table, fused_table = sdf_map._pixel_table(level, colour), sdf_map._fused_pixel_table(level, colour)
    copy = sdf_map.clone()
    print(f"stages (thread CPU ms, last frame, {len(slots)} blocks touched): "
          f"pixel table torch {median_ms(lambda: sdf_map._pixel_table(level, colour)):.1f} "
          f"fused {median_ms(lambda: sdf_map._fused_pixel_table(level, colour)):.1f} | "
          f"band keys {median_ms(lambda: sdf_map._band_block_keys(level, T)):.1f} "
          f"allocate {median_ms(lambda: sdf_map._allocate(keys)):.2f} | "
          f"voxel update torch {median_ms(lambda: copy._update_blocks(slots, table, level.camera, T)):.1f} "
          f"fused {median_ms(lambda: copy._fused_update_blocks(slots, fused_table, level.camera, T)):.1f}")


if __name__ == "__main__":
    main()
