"""The fused render kernel (prism_ros.prism.kernels.render) against the torch reference (prism_ros.prism.render) on
the same maps: synthetic frames, real 7-Scenes frames, a distorted camera, an empty map, and CUDA against the CPU.

The two do the same float32 arithmetic in the same order; they differ by rounding (fused multiply-adds), which
can flip a decision at a threshold for the odd ray. Compared per pixel: valid masks, depth, normal, colour,
std and the intensity gradient.
"""
from __future__ import annotations

import pytest
import torch
from shared_data import sample
from test_render import EYE, TARGET, AnalyticField, angle_deg, camera_for, look_at, sphere_sdf
from test_render import synthetic_map as fused_frames

import prism_ros.prism.render as reference
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import RenderConfig, render
from prism_ros.synthetic.scene import make_scene

pytest.importorskip("warp")

VIEWS = ((0.0, 0.0, 0.0), (0.05, 0.0, 0.02), (-0.08, 0.04, 0.03))  # offsets of eye and target from the fused poses


def assert_equivalent(torch_result, fused, min_valid=0.5):
    """The fused render matches the reference: masks agree on >= 99.5 % of the pixels; over the pixels valid in
    both, depth |diff| p99 < 1 mm, normals p99 < 0.5 deg, colour p99 < 1e-3, std p99 < 0.1 % relative; the
    fills (NaN, 0) where invalid; the intensity gradient where both neighbourhoods are valid in both."""
    a, b = torch_result, fused
    assert b.valid.dtype == torch.bool and b.depth.dtype == torch.float32 and b.depth.shape == a.depth.shape
    assert a.valid.float().mean() > min_valid  # the comparison covers most of the image
    assert (a.valid == b.valid).float().mean() >= 0.995
    both = a.valid & b.valid
    p99 = lambda x: torch.quantile(x.double().flatten(), 0.99)
    assert p99((a.depth - b.depth)[both].abs()) < 1e-3
    assert p99(angle_deg(a.normal[both].double(), b.normal[both].double())) < 0.5
    assert p99((a.colour - b.colour)[both].abs()) < 1e-3
    assert p99(((a.sdf_std - b.sdf_std) / a.sdf_std)[both].abs()) < 1e-3
    assert torch.allclose(a.vertex[both], b.vertex[both], atol=2e-3)
    assert torch.isnan(b.depth[~b.valid]).all() and torch.isnan(b.vertex[~b.valid]).all()
    assert torch.isnan(b.normal[~b.valid]).all() and torch.isnan(b.sdf_std[~b.valid]).all()
    assert (b.colour[~b.valid] == 0).all() and (b.intensity[~b.valid] == 0).all()
    assert (b.gradient[:, ~b.valid] == 0).all()
    assert p99((a.gradient - b.gradient)[:, both].abs()) < 1e-3


def fused_only(monkeypatch):
    """Make the torch march fail, so a render that passes went through the kernel."""
    def no_march(*args, **kwargs):
        raise AssertionError("the torch march ran")

    monkeypatch.setattr(reference, "march", no_march)


@pytest.fixture(scope="module")
def synthetic_map():
    """A GaussianSdfMap of three exact RGB-D frames (320x240) of a seeded synthetic room."""
    return fused_frames(make_scene(seed=3, keep_out=EYE[None], clearance=0.8),
                        ((0.0, 0.0, 0.0), (0.1, -0.05, 0.0), (-0.1, 0.05, 0.05)))


@pytest.mark.parametrize("config", [RenderConfig(), RenderConfig(trilinear_normals=False),
                                    RenderConfig(normal_step_voxels=0.5, refine_iterations=2, tile_size=0)],
                         ids=["surface-stencil", "nearest-normals", "trilinear-normals-half-voxel"])
def test_synthetic_map_renders_like_the_reference(synthetic_map, config, monkeypatch):
    camera = camera_for(160, 120)
    results = []
    for offset in VIEWS:
        T = look_at(EYE + offset, TARGET + offset)
        results.append((T, render(synthetic_map, T, camera, config)))
    fused_only(monkeypatch)
    for T, torch_result in results:
        assert_equivalent(torch_result, render(synthetic_map, T, camera, config, backend="fused"), min_valid=0.9)


def test_distorted_camera(synthetic_map, monkeypatch):
    """Strong radial distortion: the rim pixels without a ray stay invalid in both."""
    camera = camera_for(160, 120, distortion=(0.25, -0.1, 0.001, 0.002, 0.0))
    T = look_at(EYE, TARGET)
    torch_result = render(synthetic_map, T, camera)
    fused_only(monkeypatch)
    assert_equivalent(torch_result, render(synthetic_map, T, camera, backend="fused"), min_valid=0.9)


def test_real_frames_render_like_the_reference(monkeypatch):
    """7-Scenes redkitchen frames 0-22 (every second, QVGA) fused at their ground-truth poses, rendered at QVGA
    from frame 24's pose."""
    from prism_ros.datasets import open_dataset

    dataset = open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="0:25:2")
    field = GaussianSdfMap(MapConfig())
    for frame in list(dataset)[:-1]:
        obs = Observation.from_frame(frame, levels=2)
        field.integrate(obs.levels[1], obs.colour, torch.as_tensor(frame.pose))
    held = dataset[len(dataset) - 1]
    T = torch.as_tensor(held.pose)
    camera = Observation.from_frame(held, levels=2).levels[1].camera
    torch_result = render(field, T, camera)
    fused_only(monkeypatch)
    assert_equivalent(torch_result, render(field, T, camera, backend="fused"), min_valid=0.7)


def test_empty_map_renders_nothing():
    result = render(GaussianSdfMap(MapConfig()), look_at(EYE, TARGET), camera_for(64, 48), backend="fused")
    assert not result.valid.any() and torch.isnan(result.depth).all() and torch.isnan(result.sdf_std).all()
    assert (result.colour == 0).all() and (result.gradient == 0).all()


def test_fields_without_a_dense_index_take_the_torch_path(synthetic_map, monkeypatch):
    """An analytic field and a map without a dense index render exactly as the reference does."""
    field = AnalyticField(sphere_sdf((0.1, -0.05, 1.5), 0.5))
    T, camera = torch.eye(4, dtype=torch.float64), camera_for(64, 48)
    assert torch.equal(render(field, T, camera).depth.nan_to_num(), render(field, T, camera, backend="fused").depth
                       .nan_to_num())
    sparse = synthetic_map.clone()
    monkeypatch.setattr(sparse, "_dense", None)
    T = look_at(EYE, TARGET)
    expected, got = render(sparse, T, camera), render(sparse, T, camera, backend="fused")
    assert expected.valid.any() and torch.equal(expected.valid, got.valid)
    assert torch.equal(expected.depth[expected.valid], got.depth[got.valid])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(synthetic_map, tmp_path):
    path = tmp_path / "map.pt"
    synthetic_map.save(path)
    gpu_map = GaussianSdfMap.load(path, device="cuda")
    for offset in VIEWS:
        T = look_at(EYE + offset, TARGET + offset)
        cpu = render(synthetic_map, T, camera_for(160, 120), backend="fused")
        gpu = render(gpu_map, T.cuda(), camera_for(160, 120, device="cuda"), backend="fused")
        assert gpu.depth.is_cuda and gpu.valid.is_cuda and gpu.gradient.is_cuda
        gpu = type(gpu)(*(getattr(gpu, name).cpu() if torch.is_tensor(getattr(gpu, name)) else getattr(gpu, name)
                          for name in gpu.__dataclass_fields__))
        assert_equivalent(cpu, gpu, min_valid=0.9)
