"""The fused map update (prism_ros.prism.kernels.integrate) against the torch reference (GaussianSdfMap's
``_pixel_table`` and ``_update_blocks``): same frames into two maps, every channel compared.

Both paths compute the same voxel centres and follow the same operation order, so on the CPU most voxels
agree to float32 rounding. Three things differ in the last bit: torch's vectorised sqrt (the ray length) is
not correctly rounded where Warp's is, torch's addcmul (the projection) fuses a multiply-add, and Warp's
compiler may fuse one in the window-averaged normals. A voxel centre within that rounding of a pixel boundary
then reads the neighbouring pixel, and a plane distance on the edge of its plausible range switches to the
along-ray distance: a few voxels in a million differ by up to the band. The tests bound that fraction and
hold all other voxels to rounding.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from shared_data import sample
from test_map import plane_level

from prism_ros.datasets import open_dataset
from prism_ros.errors import InputError
from prism_ros.geometry import PinholeCamera
from prism_ros.prism import kernels
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.observation import Observation, make_level
from prism_ros.synthetic import make_sequence

pytestmark = pytest.mark.skipif(not kernels.available(), reason="NVIDIA Warp is not installed")

MEAN_ATOL = 1e-6  # metres; also the read-mean cache
COLOUR_ATOL = 1e-5
# SDF and colour precision: the window-averaged normals differ by an ulp (Warp's compiler may fuse the cross
# product's multiply-adds), which moves m by ~1e-7 m and the colour weight, steep in m, by up to ~1e-5
PRECISION_RTOL = 1e-4
BACKENDS = ("torch", "fused")
MAX_DIFFERING = 1e-4  # fraction of the observed voxels allowed outside these (pixel-boundary cases)


def channels(sdf_map: GaussianSdfMap) -> dict:
    """The map's per-voxel state on the CPU: the stored channels and the read-mean cache (N,B,B,B[,3])."""
    used = sdf_map.num_blocks * sdf_map.config.block_size**3
    state = {name: getattr(sdf_map, name).cpu() for name in ("mean", "precision", "colour", "colour_precision",
                                                             "count")}
    state["read_mean"] = sdf_map._read_mean[:used].cpu().view_as(state["mean"])
    state["block_coords"] = sdf_map.block_coords.cpu()
    return state


def differing_voxels(reference: GaussianSdfMap, fused: GaussianSdfMap) -> torch.Tensor:
    """(N,B,B,B) bool: voxels whose channels differ by more than rounding; asserts what must agree exactly (the
    blocks, which voxels were observed, how often)."""
    a, b = channels(reference), channels(fused)
    assert torch.equal(a["block_coords"], b["block_coords"])
    assert torch.equal(a["count"], b["count"])
    assert torch.equal(a["precision"] > 0, b["precision"] > 0)
    far = lambda name, atol, rtol: (b[name] - a[name]).abs() > atol + rtol * a[name].abs()
    return (far("mean", MEAN_ATOL, 0) | far("precision", 0, PRECISION_RTOL) | far("colour", COLOUR_ATOL, 0).any(-1)
            | far("colour_precision", 0, PRECISION_RTOL) | far("read_mean", MEAN_ATOL, 0))


def assert_maps_match(reference: GaussianSdfMap, fused: GaussianSdfMap, max_fraction: float = MAX_DIFFERING) -> int:
    """At most ``max_fraction`` of the observed voxels differ beyond rounding; returns how many do."""
    differing = int(differing_voxels(reference, fused).sum())
    observed = int((reference.precision > 0).sum())
    assert observed > 0
    assert differing <= max_fraction * observed, f"{differing} of {observed} observed voxels differ"
    return differing


def integrate_both(levels, poses, config=None, device="cpu") -> tuple[GaussianSdfMap, GaussianSdfMap]:
    """(torch, fused) maps of the same (level, colour) frames at ``poses``; the stats agree frame by frame."""
    maps = GaussianSdfMap(config, device), GaussianSdfMap(config, device)
    for (level, colour), T in zip(levels, poses):
        stats = [sdf_map.integrate(level, colour, T, backend=backend) for sdf_map, backend in zip(maps, BACKENDS)]
        assert stats[0].keys() == stats[1].keys()
        assert all(stats[0][key] == stats[1][key] for key in stats[0] if key != "ms"), stats
    return maps


# ----------------------------------------------------------------------------- the measurement table
def test_pixel_table_matches_reference():
    (level, colour), = redkitchen_frames(1)[0]
    sdf_map = GaussianSdfMap()
    reference, fused = sdf_map._pixel_table(level, colour), sdf_map._fused_pixel_table(level, colour)
    assert torch.equal(reference.depth.isnan(), fused.depth.isnan())
    valid = ~reference.depth.isnan()
    assert int(valid.sum()) > 0.5 * level.depth.numel()
    torch.testing.assert_close(fused.depth[valid], reference.depth[valid], rtol=0, atol=0)
    # 1-ulp differences: torch's vectorised sqrt (the ray length, hence the variance, and the normals' length) is
    # not correctly rounded; on near-zero normal components that is a large relative but a tiny absolute error
    torch.testing.assert_close(fused.values[:, valid], reference.values[:, valid], rtol=2e-6, atol=1e-7)


def test_window_normals_match_reference():
    """The 3x3 and 5x5 window-averaged normals of a real frame (holes, depth edges): the same pixels without a
    normal, the others to an ulp."""
    from prism_ros.prism.kernels.integrate import fill_window_normals
    from prism_ros.prism.map import map_normals

    (level, _), = redkitchen_frames(1)[0]
    for window in (3, 5):
        reference = map_normals(level, window, 0.05)
        fused = fill_window_normals(level.depth, level.points, window, 0.05)
        assert torch.equal(reference.isnan(), fused.isnan())
        finite = reference.isfinite()
        assert finite.float().mean() > 0.5
        torch.testing.assert_close(fused[finite], reference[finite], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- whole maps
@pytest.fixture(scope="module")
def synthetic():
    """Six noisy frames of the synthetic room (160x120): depth (H,W) NaN-invalid, colour (H,W,3), poses."""
    seq = make_sequence(frames=101, noise=True, width=160, height=120)
    frames = [seq.frame(i) for i in range(0, 101, 20)]
    depths = [torch.as_tensor(np.asarray(depth, dtype=np.float32)) for _, depth in frames]
    colours = [torch.as_tensor(rgb).float() / 255.0 for rgb, _ in frames]
    return seq.intrinsics, [torch.where(d > 0, d, torch.nan) for d in depths], colours, seq.poses[::20]


def synthetic_levels(synthetic, distortion=(), device="cpu") -> list:
    """(level, colour) of the synthetic frames seen through a camera with ``distortion`` (the points and
    normals then follow that camera: the geometry is consistent, if not the room's)."""
    intrinsics, depths, colours, _ = synthetic
    camera = PinholeCamera.from_intrinsics(replace(intrinsics, distortion=tuple(distortion)), device=device)
    return [(make_level(camera, depth.to(device), colour.mean(-1).to(device)), colour.to(device))
            for depth, colour in zip(depths, colours)]


@pytest.mark.parametrize("normal_window", [1, 3])
def test_synthetic_sequence_matches_reference(synthetic, normal_window):
    config = MapConfig(normal_window=normal_window)
    assert_maps_match(*integrate_both(synthetic_levels(synthetic), synthetic[-1], config))


def redkitchen_frames(count: int, step: int = 10) -> tuple[list, list]:
    """(level 0, colour) of ``count`` real frames ``step`` apart, and their ground-truth poses."""
    dataset = open_dataset(sample("7scenes_redkitchen_seq_0000_0399"))
    frames = [dataset[i] for i in range(0, count * step, step)]
    observations = [Observation.from_frame(frame, levels=1) for frame in frames]
    return [(obs.finest, obs.colour) for obs in observations], [frame.pose for frame in frames]


def test_redkitchen_frames_match_reference():
    """Ten real 640x480 frames (Kinect noise, holes, depth edges) at their ground-truth poses."""
    reference, fused = integrate_both(*redkitchen_frames(10))
    assert_maps_match(reference, fused)


def test_forgetting_cap_matches_reference():
    config = MapConfig(max_precision=5e4)
    frames = [plane_level(depth) for depth in [1.0] * 6 + [1.04] * 6]  # the surface moves 4 cm
    reference, fused = integrate_both(frames, [np.eye(4)] * len(frames), config)
    assert float(fused.precision.max()) == pytest.approx(config.max_precision, rel=1e-6)
    assert_maps_match(reference, fused)


@pytest.mark.parametrize("distortion", [(0.08, -0.02, 0.001, -0.002, 0.01),  # OpenCV 5: in the kernel
                                        (0.08, -0.02, 0.001, -0.002, 0.01, 0.02, 0.0, 0.003),  # rational 8
                                        (0.08, -0.02, 0.001, -0.002, 0.01, 0, 0, 0, 1e-3, 0, 0, 0)])  # thin prism
def test_distorted_camera_matches_reference(synthetic, distortion):
    assert_maps_match(*integrate_both(synthetic_levels(synthetic, distortion), synthetic[-1]))


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="unknown backend"):
        GaussianSdfMap().integrate(*plane_level(1.0), np.eye(4), backend="numpy")


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(synthetic):
    """The kernels on CUDA against the same kernels on the CPU and the torch reference on CUDA (nvcc
    contracts multiply-adds: a few more voxels sit on the other side of a pixel boundary)."""
    poses = synthetic[-1]
    cpu = integrate_both(synthetic_levels(synthetic), poses)[1]
    reference, cuda = integrate_both(synthetic_levels(synthetic, device="cuda"), poses, device="cuda")
    assert_maps_match(cpu, cuda, 1e-4)
    assert_maps_match(reference, cuda, 1e-4)
