"""The fused-kernel plumbing (prism_ros.prism.kernels): backend names, the CPU range split and its determinism,
warm-up."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from prism_ros.errors import InputError
from prism_ros.prism import kernels
from prism_ros.prism.config import FilterConfig

pytest.importorskip("warp")


def test_backend_names_resolve_or_name_the_fix():
    assert kernels.resolve_backend("auto") == "fused" and kernels.resolve_backend("torch") == "torch"
    with pytest.raises(InputError, match="use one of auto, torch, fused"):
        kernels.resolve_backend("gpu")
    with pytest.raises(InputError, match="unknown backend"):
        FilterConfig(backend="warp")
    assert FilterConfig(backend="torch").resolved_backend() == "torch"


def test_cpu_launches_split_into_ranges_and_cuda_does_not():
    kernels.set_cpu_threads(2)
    try:
        assert kernels.parts(100_000, "cpu") == 2
        assert kernels.parts(100, "cpu") == 1  # too small to hand to another thread
        assert kernels.parts(100_000, "cuda:0") == 1
    finally:
        kernels.set_cpu_threads(0)
    with pytest.raises(InputError, match="kernel_threads"):
        kernels.set_cpu_threads(-1)


def test_warm_up_loads_every_stage():
    assert {"render", "integrate", "track", "observe"} <= set(kernels.warm_up("cpu"))


def test_results_do_not_depend_on_the_cpu_thread_count():
    """Render, map update and tracking over a few synthetic frames with one and with two kernel threads: the ranges
    are disjoint, so the first render and map are identical; tracking's per-range float64 sums are added in
    another order, so poses (and the maps fused from them) agree to rounding."""
    from test_filter import frame_at, small_config

    from prism_ros.prism.filter import PrismFilter
    from prism_ros.synthetic import make_sequence

    sequence = make_sequence(frames=4, seed=1, motion="handheld", noise=True, width=160, height=120)
    frames = [frame_at(sequence, i) for i in range(4)]
    runs = []
    for threads in (1, 2):
        config = replace(small_config(), backend="fused", kernel_threads=threads)
        slam = PrismFilter(config, initial_pose=sequence.poses[0])
        estimates = [slam.step(frame) for frame in frames]
        runs.append((estimates, slam.map.mean.clone(), slam.map.precision.clone()))
    kernels.set_cpu_threads(0)
    (one, mean_1, precision_1), (two, mean_2, precision_2) = runs
    assert all(e.tracking_ok for e in one + two)
    assert torch.equal(one[1].render.depth.nan_to_num(-1.0), two[1].render.depth.nan_to_num(-1.0))
    for a, b in zip(one, two):
        assert abs(a.T_world_camera - b.T_world_camera).max() < 1e-9
    torch.testing.assert_close(mean_1, mean_2, rtol=0, atol=1e-5)
    torch.testing.assert_close(precision_1, precision_2, rtol=1e-5, atol=1e-3)
