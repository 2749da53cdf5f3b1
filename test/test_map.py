"""Gaussian SDF map: closed-form products, prior, forgetting, sparse allocation, accuracy against the
synthetic scene's exact SDF, trilinear sampling, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prism_ros.errors import InputError
from prism_ros.evaluation.metrics import map_error
from prism_ros.frame import Frame, Intrinsics
from prism_ros.geometry import PinholeCamera
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.observation import Observation, make_level
from prism_ros.synthetic import make_sequence

SMALL = Intrinsics(131.25, 131.25, 80.0, 60.0, 160, 120)  # principal point on pixel (80, 60)



# ----------------------------------------------------------------------------- helpers
def plane_level(depth: float | np.ndarray, intrinsics: Intrinsics = SMALL, device="cpu"):
    """Observation level of a fronto-parallel plane (or any depth image) with grey colour."""
    camera = PinholeCamera.from_intrinsics(intrinsics, device=device)
    image = torch.as_tensor(np.broadcast_to(depth, (intrinsics.height, intrinsics.width)).copy(),
                            dtype=torch.float32, device=device)
    level = make_level(camera, image, torch.full_like(image, 0.5))
    return level, torch.full((intrinsics.height, intrinsics.width, 3), 0.5, device=device)


def voxel_state(sdf_map: GaussianSdfMap, index) -> dict:
    """Stored mean, precision and count of the voxel with global integer index (3,)."""
    index = torch.as_tensor(index)
    b = sdf_map.config.block_size
    block, local = torch.div(index, b, rounding_mode="floor"), index % b
    slot = (sdf_map.block_coords.cpu() == block).all(1).nonzero()[0, 0]
    at = (slot, *local.tolist())
    return {"mean": float(sdf_map.mean[at]), "precision": float(sdf_map.precision[at]),
            "count": int(sdf_map.count[at])}


def sensor_variance(config: MapConfig, depth: float, m: float) -> float:
    """The documented measurement variance for a head-on view (cos = 1)."""
    return (config.noise_a + config.noise_b * depth**2) ** 2 + (config.band_std_slope * m) ** 2


def integrate_sequence(noise: bool, frames=range(0, 240, 20), width=160, height=120, config=None):
    """Map of a synthetic sequence integrated at ground-truth poses; returns (map, sequence)."""
    seq = make_sequence(frames=max(frames) + 1, noise=noise, width=width, height=height)
    sdf_map = GaussianSdfMap(config or MapConfig())
    for i in frames:
        rgb, depth = seq.frame(i)
        obs = Observation.from_frame(Frame(i, i / 30.0, rgb, depth, seq.intrinsics), levels=1)
        sdf_map.integrate(obs.finest, obs.colour, seq.poses[i])
    return sdf_map, seq


def near_surface_errors(sdf_map: GaussianSdfMap, scene):
    """evaluation.map_error of the observed voxels within 2 voxels of the exact surface."""
    voxels = sdf_map.voxel_centres_and_values()
    return map_error(voxels.centres, voxels.mean, voxels.std, scene.sdf, 2 * sdf_map.config.voxel_size)


# ----------------------------------------------------------------------------- closed-form product
def test_same_measurement_twice_doubles_precision_and_keeps_mean():
    sdf_map = GaussianSdfMap()
    level, colour = plane_level(1.0)
    sdf_map.integrate(level, colour, np.eye(4))
    mean, precision = sdf_map.mean.clone(), sdf_map.precision.clone()
    stats = sdf_map.integrate(level, colour, np.eye(4))
    assert stats["allocated_blocks"] == 0 and stats["updated_voxels"] > 0
    seen = precision > 0
    torch.testing.assert_close(sdf_map.precision[seen], 2 * precision[seen], rtol=1e-6, atol=0)
    torch.testing.assert_close(sdf_map.mean[seen], mean[seen], rtol=0, atol=1e-7)
    assert (sdf_map.count[seen] == 2).all() and (sdf_map.count[~seen] == 0).all()


def test_two_measurements_give_precision_weighted_mean():
    config = MapConfig()
    sdf_map = GaussianSdfMap(config)
    voxel, z = (0, 0, 49), 0.98  # on the optical axis: projects onto pixel (80, 60), head-on
    for depth in (1.00, 1.01):
        sdf_map.integrate(*plane_level(depth), np.eye(4))
    m = np.array([1.00 - z, 1.01 - z])
    w = 1.0 / np.array([sensor_variance(config, d, mi) for d, mi in zip((1.00, 1.01), m)])
    state = voxel_state(sdf_map, voxel)
    assert state["count"] == 2
    assert state["precision"] == pytest.approx(w.sum(), rel=1e-5)
    assert state["mean"] == pytest.approx((w * m).sum() / w.sum(), abs=1e-6)
    # the posterior read by sample_nearest multiplies the prior in
    p0 = 1.0 / config.prior_std**2
    read = sdf_map.sample_nearest(torch.tensor([[0.0, 0.0, z]]))
    assert float(read.std[0]) == pytest.approx((p0 + w.sum()) ** -0.5, rel=1e-5)
    assert float(read.mean[0]) == pytest.approx((p0 * config.truncation + (w * m).sum()) / (p0 + w.sum()), abs=1e-6)


def test_unobserved_points_read_the_prior():
    config = MapConfig(prior_std=0.5)
    sdf_map = GaussianSdfMap(config)
    sdf_map.integrate(*plane_level(1.0), np.eye(4))
    far = torch.tensor([[5.0, 5.0, 5.0]])
    assert not sdf_map.is_allocated(far).any()
    for read in (sdf_map.sample(far), sdf_map.sample_nearest(far)):
        assert float(read.mean[0]) == pytest.approx(config.truncation)
        assert float(read.std[0]) == pytest.approx(config.prior_std)
        assert not read.observed[0]
        torch.testing.assert_close(read.colour[0], torch.full((3,), config.colour_prior))
    assert GaussianSdfMap(config).sample(far).observed.sum() == 0  # an empty map reads the prior too


def test_precision_cap_forgets():
    cap = 5e4
    capped, uncapped = GaussianSdfMap(MapConfig(max_precision=cap)), GaussianSdfMap()
    for depth in [1.0] * 10 + [1.04] * 10:  # the surface moves 4 cm
        for sdf_map in (capped, uncapped):
            sdf_map.integrate(*plane_level(depth), np.eye(4))
    assert float(capped.precision.max()) == pytest.approx(cap, rel=1e-6)
    assert float(uncapped.precision.max()) > 10 * cap
    # the capped map follows the moved surface; the uncapped one averages it away
    assert voxel_state(capped, (0, 0, 50))["mean"] > 0.03
    assert voxel_state(uncapped, (0, 0, 50))["mean"] < 0.01


def test_coarse_level_with_full_resolution_colour():
    sdf_map = GaussianSdfMap()
    level, _ = plane_level(1.0, Intrinsics(65.625, 65.625, 39.75, 29.75, 80, 60))  # pyramid level 1
    colour = torch.zeros(120, 160, 3)
    colour[..., 0] = 0.8  # full-resolution red image, area-resampled onto the level
    sdf_map.integrate(level, colour, np.eye(4))
    read = sdf_map.sample_nearest(torch.tensor([[0.0, 0.0, 1.0], [0.1, -0.1, 1.0]]))
    torch.testing.assert_close(read.colour, torch.tensor([[0.8, 0.0, 0.0]] * 2))


def test_distorted_camera_measures_the_same_plane():
    distorted = Intrinsics(131.25, 131.25, 80.0, 60.0, 160, 120, (0.08, -0.02, 0.001, 0.0, 0.0))
    maps = []
    for intrinsics in (SMALL, distorted):
        sdf_map = GaussianSdfMap()
        sdf_map.integrate(*plane_level(1.0, intrinsics), np.eye(4))  # a plane at z = 1 has depth 1 everywhere
        maps.append(sdf_map)
    points = torch.tensor([[x, y, z] for x in (-0.3, 0.0, 0.3) for y in (-0.2, 0.0, 0.2) for z in (0.96, 1.0, 1.04)])
    plain, warped = (m.sample_nearest(points) for m in maps)
    assert plain.observed.all() and warped.observed.all()
    torch.testing.assert_close(warped.mean, plain.mean, atol=2e-4, rtol=0)
    torch.testing.assert_close(plain.mean, 1.0 - points[:, 2], atol=2e-4, rtol=0)


# ----------------------------------------------------------------------------- sparse allocation
def test_blocks_are_allocated_only_near_the_surface():
    config = MapConfig()
    sdf_map = GaussianSdfMap(config)
    stats = sdf_map.integrate(*plane_level(1.0), np.eye(4))
    assert stats["allocated_blocks"] == sdf_map.num_blocks > 0
    z_low = sdf_map.block_coords[:, 2].double() * config.block_extent - config.voxel_size / 2
    assert (z_low + config.block_extent >= 1.0 - config.truncation).all()
    assert (z_low <= 1.0 + config.truncation).all()
    # the visible plane is 160/131.25 x 120/131.25 m = 1.11 m^2; a band-thick layer of blocks covers it
    area = (160 / 131.25) * (120 / 131.25)
    assert sdf_map.surface_area_estimate() == pytest.approx(area, rel=0.1)
    assert sdf_map.num_blocks * config.block_extent**2 < 3 * area


def test_memory_grows_with_surface_not_volume():
    near, far = GaussianSdfMap(MapConfig(initial_capacity=8)), GaussianSdfMap(MapConfig(initial_capacity=8))
    near.integrate(*plane_level(1.0), np.eye(4))
    far.integrate(*plane_level(2.0), np.eye(4))  # 4x the surface, 8x the frustum volume
    assert 2.5 < far.num_blocks / near.num_blocks < 5.5
    assert far.memory_bytes() / near.memory_bytes() < 8
    assert far.surface_area_estimate() / near.surface_area_estimate() == pytest.approx(4.0, rel=0.1)


def test_capacity_doubles_and_keeps_contents():
    sdf_map = GaussianSdfMap(MapConfig(initial_capacity=2))
    level, colour = plane_level(1.0)
    sdf_map.integrate(level, colour, np.eye(4))
    assert sdf_map.capacity >= sdf_map.num_blocks and sdf_map.capacity & (sdf_map.capacity - 1) == 0
    reference = GaussianSdfMap()
    reference.integrate(level, colour, np.eye(4))
    torch.testing.assert_close(sdf_map.mean, reference.mean)
    points = torch.rand(500, 3) * torch.tensor([1.0, 0.8, 0.3]) + torch.tensor([-0.5, -0.4, 0.85])
    torch.testing.assert_close(sdf_map.sample(points).mean, reference.sample(points).mean)


# ----------------------------------------------------------------------------- accuracy on the synthetic room
@pytest.fixture(scope="module")
def clean_room():
    return integrate_sequence(noise=False)


def test_synthetic_room_sdf_error_below_1cm(clean_room):
    sdf_map, seq = clean_room
    error = near_surface_errors(sdf_map, seq.scene)
    mean, p95, rho = error.mean_abs_m, error.p95_abs_m, error.std_error_spearman
    print(f"\nnoise-free room: {error.summary_line()}")
    assert mean < 0.01
    assert p95 < 0.02
    assert rho > 0


def test_synthetic_room_with_sensor_noise_stays_accurate():
    sdf_map, seq = integrate_sequence(noise=True)
    error = near_surface_errors(sdf_map, seq.scene)
    mean, p95, rho = error.mean_abs_m, error.p95_abs_m, error.std_error_spearman
    print(f"\nnoisy room (Kinect-like depth noise): {error.summary_line()}")
    assert mean < 0.015
    assert p95 < 0.04
    assert rho > 0  # larger std where the error is larger


def test_colour_is_fused(clean_room):
    sdf_map, seq = clean_room
    voxels = sdf_map.voxel_centres_and_values()
    candidates = voxels.mean.abs() < 0.005
    surface = seq.scene.sdf(voxels.centres[candidates].double()).abs() < 0.005
    assert surface.sum() > 1000
    colour = voxels.colour[candidates][surface]
    assert 0.05 < float(colour.mean()) < 0.95 and float(colour.std()) > 0.02  # textured, not the grey prior


# ----------------------------------------------------------------------------- sampling
def test_trilinear_sample_is_continuous_across_block_boundaries(clean_room):
    sdf_map, _ = clean_room
    vs, b = sdf_map.config.voxel_size, sdf_map.config.block_size
    voxels = sdf_map.voxel_centres_and_values()
    index = torch.round(voxels.centres / vs).long()
    # surface voxels at the last x index of a block whose +x neighbour (next block) is observed too
    last = ((index[:, 0] % b) == b - 1) & (voxels.mean.abs() < 0.02)
    starts = voxels.centres[last][:200]
    f = torch.linspace(0.0, 1.0, 11)
    points = (starts[:, None, :] + f[None, :, None] * torch.tensor([vs, 0.37 * vs, 0.61 * vs])).reshape(-1, 3)
    read = sdf_map.sample(points)
    # the reference: trilinear weights over the 8 corner voxels read one by one with sample_nearest
    base = torch.floor(points / vs)
    frac = points / vs - base
    reference = torch.zeros(len(points))
    for corner in torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]):
        weight = torch.where(corner.bool(), frac, 1 - frac).prod(-1)
        reference += weight * sdf_map.sample_nearest((base + corner) * vs).mean
    torch.testing.assert_close(read.mean, reference, atol=2e-5, rtol=0)
    # no jump where the cell changes, at the block face x = (k B) vs
    face = (torch.floor(starts[:, :1] / vs) + 1) * vs
    left = torch.cat([face - 1e-5, starts[:, 1:]], -1)
    right = torch.cat([face + 1e-5, starts[:, 1:]], -1)
    assert float((sdf_map.sample(left).mean - sdf_map.sample(right).mean).abs().max()) < 1e-3
    assert float((sdf_map.sample(left).std - sdf_map.sample(right).std).abs().max()) < 1e-3


def test_sample_nearest_agrees_at_voxel_centres(clean_room):
    sdf_map, _ = clean_room
    voxels = sdf_map.voxel_centres_and_values()
    centres = voxels.centres[:: max(1, len(voxels.centres) // 5000)]
    nearest, trilinear = sdf_map.sample_nearest(centres), sdf_map.sample(centres)
    torch.testing.assert_close(nearest.mean, trilinear.mean, atol=1e-5, rtol=1e-5)
    # variances are interpolated: float rounding of a centre puts ~1e-5 weight on neighbours, which matters
    # only next to unobserved ones (prior variance), hence the absolute tolerance in prior units
    prior_variance = sdf_map.config.prior_std**2
    torch.testing.assert_close(nearest.std**2, trilinear.std**2, atol=1e-4 * prior_variance, rtol=1e-3)
    torch.testing.assert_close(nearest.colour, trilinear.colour, atol=1e-5, rtol=1e-5)
    assert nearest.observed.all()
    assert sdf_map.is_allocated(centres).all()


def test_sample_handles_nan_and_far_points():
    sdf_map = GaussianSdfMap()
    sdf_map.integrate(*plane_level(1.0), np.eye(4))
    points = torch.tensor([[float("nan"), 0.0, 1.0], [1e9, -1e9, 1e9]])
    read = sdf_map.sample_nearest(points)
    assert not read.observed.any() and not sdf_map.is_allocated(points).any()
    assert torch.isfinite(read.mean).all()


# ----------------------------------------------------------------------------- fast reads and block lookups
def read_points(sdf_map: GaussianSdfMap, count: int = 4000) -> torch.Tensor:
    """Points near observed voxels (within two voxels, so cells straddle blocks and the observed rim), far
    away and NaN."""
    generator = torch.Generator().manual_seed(0)
    centres = sdf_map.voxel_centres_and_values().centres
    near = centres[torch.randint(len(centres), (count,), generator=generator)]
    near = near + (torch.rand(count, 3, generator=generator) - 0.5) * 4 * sdf_map.config.voxel_size
    return torch.cat([near, torch.tensor([[float("nan"), 0.0, 1.0], [1e9, -1e9, 1e9], [50.0, 50.0, 50.0]])])


def fast_reads(sdf_map: GaussianSdfMap, points: torch.Tensor) -> dict:
    surface, gradient = sdf_map.sample_surface(points)
    nearest_mean, observed = sdf_map.sample_nearest_mean(points)
    return {"mean": sdf_map.sample_mean(points), "nearest_mean": nearest_mean, "nearest_observed": observed,
            "gradient": gradient, "allocated": sdf_map.is_allocated(points),
            **{f"surface_{name}": getattr(surface, name) for name in ("mean", "std", "colour", "observed")}}


def test_fast_reads_match_sample(clean_room):
    """The renderer's reads (one read-mean channel) give what sample / sample_nearest give; the surface
    read's gradient is the central difference of the trilinear mean one voxel apart."""
    sdf_map, _ = clean_room
    points = read_points(sdf_map)
    full, nearest, reads = sdf_map.sample(points), sdf_map.sample_nearest(points), fast_reads(sdf_map, points)
    # unobserved voxels read +truncation rounded up to the next float32 (7e-9 m)
    torch.testing.assert_close(reads["mean"], full.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(reads["nearest_mean"], nearest.mean, atol=1e-6, rtol=0)
    assert torch.equal(reads["nearest_observed"], nearest.observed)
    for name in ("mean", "std", "colour", "observed"):
        assert torch.equal(reads[f"surface_{name}"], getattr(full, name)), name
    vs = sdf_map.config.voxel_size
    finite = torch.isfinite(points).all(-1) & (points.abs() < 100).all(-1)
    steps = torch.eye(3) * vs
    reference = torch.stack([sdf_map.sample(points[finite] + e).mean - sdf_map.sample(points[finite] - e).mean
                             for e in steps], -1) / (2 * vs)
    torch.testing.assert_close(reads["gradient"][finite], reference, atol=2e-4, rtol=0)  # rounding of both sums
    assert (reads["gradient"][finite].norm(dim=-1) > 0.5).float().mean() > 0.5  # mostly near the surface


def test_read_mean_cache_follows_forgetting_and_growth():
    """The read-mean cache is updated with every fused voxel (after the precision cap) and survives the
    storage doubling and a save/load round trip."""
    sdf_map = GaussianSdfMap(MapConfig(max_precision=5e4, initial_capacity=2))
    for depth in [1.0] * 5 + [1.03] * 5:
        sdf_map.integrate(*plane_level(depth), np.eye(4))
    points = read_points(sdf_map, 2000)
    torch.testing.assert_close(sdf_map.sample_mean(points), sdf_map.sample(points).mean, atol=1e-6, rtol=0)
    copy = sdf_map.clone()
    assert torch.equal(copy.sample_mean(points), sdf_map.sample_mean(points))


def test_dense_and_sorted_block_lookups_agree(clean_room, monkeypatch):
    """Maps whose bounding box is too large for the dense block index read through the sorted keys (and the
    neighbour table): every read gives the same values."""
    sdf_map, _ = clean_room
    monkeypatch.setattr("prism_ros.prism.map._MAX_DENSE_CELLS", 0)
    sorted_only = sdf_map.clone()
    assert sorted_only._dense is None and sdf_map._dense is not None
    points = read_points(sdf_map)
    dense, searched = fast_reads(sdf_map, points), fast_reads(sorted_only, points)
    for name in dense:
        assert torch.equal(dense[name], searched[name]), name
    assert torch.equal(sdf_map.sample(points).std, sorted_only.sample(points).std)
    assert torch.equal(sdf_map.sample_nearest(points).colour, sorted_only.sample_nearest(points).colour)


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path, clean_room):
    sdf_map, _ = clean_room
    path = tmp_path / "map.pt"
    sdf_map.save(path)
    loaded = GaussianSdfMap.load(path)
    assert loaded.config == sdf_map.config and loaded.num_blocks == sdf_map.num_blocks
    for name in ("block_coords", "mean", "precision", "colour", "colour_precision", "count"):
        assert torch.equal(getattr(loaded, name), getattr(sdf_map, name)), name
    points = sdf_map.voxel_centres_and_values().centres[:3000] + 0.005
    assert torch.equal(loaded.sample(points).mean, sdf_map.sample(points).mean)
    copy = sdf_map.clone()
    assert torch.equal(copy.mean, sdf_map.mean)
    copy.reset()
    assert copy.num_blocks == 0 and sdf_map.num_blocks > 0


def test_load_rejects_corrupt_and_incompatible_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a torch file" * 10)
    with pytest.raises(InputError, match="garbage.pt"):
        GaussianSdfMap.load(garbage)
    with pytest.raises(InputError, match="missing.pt"):
        GaussianSdfMap.load(tmp_path / "missing.pt")
    sdf_map = GaussianSdfMap()
    sdf_map.integrate(*plane_level(1.0), np.eye(4))
    good = tmp_path / "good.pt"
    sdf_map.save(good)
    data = torch.load(good, weights_only=True)
    for key, value in (("mean", data["mean"][:, :4]), ("config", {**data["config"], "voxel": 1}),
                       ("format", "something else"), ("count", data["count"].float())):
        bad = tmp_path / f"bad_{key}.pt"
        torch.save({**data, key: value}, bad)
        with pytest.raises(InputError, match=f"bad_{key}.pt"):
            GaussianSdfMap.load(bad)
    far = data["block_coords"].clone()
    far[0] = torch.tensor([10**6, 0, 0])
    mean = data["mean"].clone()
    mean[0, 0, 0, 0] = float("inf")
    for name, change, reason in (("far", {"block_coords": far}, "m from the origin"),
                                 ("inf", {"mean": mean}, "mean has non-finite values"),
                                 ("negative", {"precision": -data["precision"] - 1}, "must be >= 0")):
        poisoned = tmp_path / f"{name}.pt"
        torch.save({**data, **change}, poisoned)
        with pytest.raises(InputError, match=reason):
            GaussianSdfMap.load(poisoned)
    huge = tmp_path / "huge.pt"  # well formed, but no machine holds 10^13 blocks
    torch.save({**data, "config": {**data["config"], "initial_capacity": 10**13}}, huge)
    with pytest.raises(InputError, match="cannot be allocated .*initial_capacity 10000000000000"):
        GaussianSdfMap.load(huge)


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError):
        MapConfig(block_size=6)
    with pytest.raises(InputError):
        MapConfig(voxel_size=0.0)


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    level, colour = plane_level(np.linspace(0.9, 1.3, 160, dtype=np.float32)[None, :].repeat(120, 0))
    cuda_level, cuda_colour = plane_level(np.linspace(0.9, 1.3, 160, dtype=np.float32)[None, :].repeat(120, 0),
                                          device="cuda")
    cpu_map, cuda_map = GaussianSdfMap(), GaussianSdfMap(device="cuda")
    T = np.eye(4)
    T[:3, 3] = [0.01, -0.02, 0.03]
    for _ in range(2):
        cpu_map.integrate(level, colour, T)
        cuda_map.integrate(cuda_level, cuda_colour, T)
    assert cuda_map.num_blocks == cpu_map.num_blocks
    points = torch.rand(2000, 3) * torch.tensor([1.0, 0.8, 0.5]) + torch.tensor([-0.5, -0.4, 0.8])
    cpu_read, cuda_read = cpu_map.sample(points), cuda_map.sample(points.cuda())
    torch.testing.assert_close(cuda_read.mean.cpu(), cpu_read.mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cuda_read.std.cpu(), cpu_read.std, atol=1e-4, rtol=1e-3)
    assert torch.equal(cuda_read.observed.cpu(), cpu_read.observed)


def test_window_averaged_normals_are_steadier_on_noisy_depth_and_absent_across_edges():
    """A fronto-parallel plane at 2.5 m with Kinect-like depth noise: normals from the 3x3-averaged vertex map
    tilt several times less than the single-pixel ones; a step in depth leaves the windows across it without a
    normal; window 1 is the observation's own normals."""
    from prism_ros.prism.map import map_normals

    rng = np.random.default_rng(0)
    depth = 2.5 + rng.normal(0, 0.0012 + 0.0019 * 2.5**2, (SMALL.height, SMALL.width))
    level, _ = plane_level(depth)
    tilt = lambda normals: torch.rad2deg(torch.arccos((-normals[..., 2]).clamp(-1, 1)))[2:-2, 2:-2].nanmedian()
    assert map_normals(level, 1, 0.05) is level.normals
    assert tilt(map_normals(level, 3, 0.05)) < 0.5 * tilt(level.normals)
    step = np.where(np.arange(SMALL.width) < SMALL.width // 2, 2.0, 2.5) * np.ones((SMALL.height, 1))
    normals = map_normals(plane_level(step)[0], 3, 0.05)
    middle = SMALL.width // 2
    assert torch.isnan(normals[:, middle - 1:middle + 1]).all()
    assert torch.isfinite(normals[1:-1, 2:middle - 2]).all()
