"""The fused observation kernels (prism_ros.prism.kernels.observe) against the torch reference: the same depth pyramid
and points, normals to float rounding, and the registered colour, intensity pyramid and gradient within a few float32
ulps (another summation order), on a real 7-Scenes frame (separate colour camera) and a distorted one."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from shared_data import sample

from prism_ros.datasets import open_dataset
from prism_ros.prism.observation import Observation

pytest.importorskip("warp")


def assert_same_levels(reference: Observation, fused: Observation, normal_tol: float = 1e-5,
                       image_tol: float = 1e-5) -> None:
    """Depth and points equal; normals within ``normal_tol`` (a division by a float32 norm); intensity and its
    gradient within ``image_tol``; the invalid (NaN) pixels identical."""
    assert float((reference.colour - fused.colour).abs().max()) <= image_tol
    for level, (a, b) in enumerate(zip(reference.levels, fused.levels)):
        for name, tol in (("depth", 0.0), ("points", 0.0), ("normals", normal_tol), ("gradient", image_tol),
                          ("intensity", image_tol)):
            x, y = getattr(a, name), getattr(b, name)
            if x is None:
                assert y is None, (level, name)
                continue
            assert x.shape == y.shape, (level, name)
            assert torch.equal(torch.isnan(x), torch.isnan(y)), f"level {level} {name}: invalid pixels differ"
            assert float((x - y).nan_to_num(0.0).abs().max()) <= tol, (level, name)


@pytest.fixture(scope="module")
def kitchen_frame():
    return open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="0:1")[0]


@pytest.mark.parametrize("first_level", [0, 1])
def test_fused_observation_equals_the_reference_on_a_real_frame(kitchen_frame, first_level):
    reference = Observation.from_frame(kitchen_frame, 3, "cpu", 5.0, first_level=first_level)
    fused = Observation.from_frame(kitchen_frame, 3, "cpu", 5.0, first_level=first_level, backend="fused")
    assert int(torch.isfinite(reference.levels[-1].normals[..., 0]).sum()) > 1000  # the frame has geometry
    assert_same_levels(reference, fused)
    assert float(reference.colour.std()) > 0.05  # the registered colour has content


def test_fused_observation_with_lens_distortion(kitchen_frame):
    intrinsics = kitchen_frame.depth_intrinsics or kitchen_frame.intrinsics
    distorted = replace(intrinsics, distortion=(0.12, -0.25, 0.001, -0.002, 0.05))
    frame = replace(kitchen_frame, depth_intrinsics=distorted, intrinsics=distorted)
    reference = Observation.from_frame(frame, 3, "cpu", 5.0)
    fused = Observation.from_frame(frame, 3, "cpu", 5.0, backend="fused")
    assert_same_levels(reference, fused)


def test_a_depth_edge_breaks_the_reduction_and_nan_stays_nan():
    depth = torch.tensor([[1.0, 1.01, 2.0, 2.0], [1.0, 1.02, 2.0, 3.0], [np.nan, np.nan, np.nan, 0.5],
                          [np.nan, np.nan, np.nan, np.nan]])
    from prism_ros.geometry import downsample_depth as reference
    from prism_ros.prism.kernels.observe import downsample_depth as fused

    expected = reference(depth)
    assert torch.equal(torch.isnan(expected), torch.isnan(fused(depth)))
    torch.testing.assert_close(fused(depth).nan_to_num(-1.0), expected.nan_to_num(-1.0))
    assert torch.isnan(expected[0, 1]) and torch.isnan(expected[1, 0]) and expected[1, 1] == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(kitchen_frame):
    cpu = Observation.from_frame(kitchen_frame, 3, "cpu", 5.0, backend="fused")
    cuda = Observation.from_frame(kitchen_frame, 3, "cuda", 5.0, backend="fused")
    for a, b in zip(cpu.levels, cuda.levels):
        for name in ("depth", "points", "normals", "gradient"):
            x, y = getattr(a, name), getattr(b, name).cpu()
            assert torch.equal(torch.isnan(x), torch.isnan(y)), name
            assert float((x - y).nan_to_num(0.0).abs().max()) < 1e-4, name
