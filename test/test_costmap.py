"""Collision cost and cost-to-go on a map slice, against an analytic room: clearance, cost, cost-to-go,
unknown handling, the confidence bound, up axes, OccupancyGrid values and the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prism_ros.cli.main import app
from prism_ros.dynamics.costmap import CostmapConfig, build_costmap, plane_axes, save_png, slice_grid
from prism_ros.errors import InputError
from prism_ros.prism.map import GaussianSdfMap, MapConfig

ROOM = np.array([4.0, 3.0, 2.5])  # [0, 4] x [0, 3] x [0, 2.5] m, z up
PILLAR = (1.5, 1.5, 0.3)  # a full-height cylinder: x, y, radius
HEIGHT = 1.0  # the slice: a metre above the floor, so floor and ceiling are outside the SDF band
BOX = (0.0, 0.0, 4.0, 3.0)
START, GOAL = (0.6, 1.5), (3.2, 1.5)  # on either side of the pillar


def room_sdf(p: np.ndarray) -> np.ndarray:
    """Exact signed distance (N,) of world points (N,3) (z up) to the room walls and the pillar."""
    walls = np.minimum(p, ROOM - p).min(-1)
    return np.minimum(walls, np.hypot(p[:, 0] - PILLAR[0], p[:, 1] - PILLAR[1]) - PILLAR[2])


def in_plane_distance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact distance to the nearest wall or the pillar in the slice (negative inside the pillar or walls)."""
    walls = np.minimum.reduce([u, ROOM[0] - u, v, ROOM[1] - v])
    return np.minimum(walls, np.hypot(u - PILLAR[0], v - PILLAR[1]) - PILLAR[2])


def analytic_map(sdf, low, high, path, std: float = 0.005) -> GaussianSdfMap:
    """A map as integration leaves it, from an exact SDF: blocks within a truncation of the surface only (open
    space farther away stays unallocated), voxels observed down to a truncation behind the surface, mean
    clipped to +-truncation, posterior std ``std``. Written in the map file format and loaded."""
    c = MapConfig()
    b, vs, tau = c.block_size, c.voxel_size, c.truncation
    ranges = [np.arange(math.floor(lo / c.block_extent), math.ceil(hi / c.block_extent)) for lo, hi in zip(low, high)]
    blocks = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 1, 3)
    local = np.stack(np.meshgrid(*(np.arange(b),) * 3, indexing="ij"), -1).reshape(1, -1, 3)  # x slowest
    distance = sdf(((blocks * b + local) * vs).reshape(-1, 3)).reshape(len(blocks), -1)
    keep = np.abs(distance).min(1) < tau
    distance = distance[keep]
    observed = distance > -tau
    precision = np.where(observed, 1.0 / std**2 - 1.0 / c.prior_std**2, 0.0)
    shape = (int(keep.sum()), b, b, b)
    data = {"format": "prism_ros.GaussianSdfMap", "version": 1, "config": c.__dict__.copy(),
            "block_coords": torch.from_numpy(blocks[keep, 0]).long(),
            "mean": torch.from_numpy(np.clip(distance, -tau, tau).reshape(shape)).float(),
            "precision": torch.from_numpy(precision.reshape(shape)).float(),
            "colour": torch.full((*shape, 3), 0.5),
            "colour_precision": torch.from_numpy(precision.reshape(shape)).float(),
            "count": torch.from_numpy(observed.reshape(shape)).int()}
    torch.save(data, path)
    return GaussianSdfMap.load(path)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """(map, its file) of the analytic room."""
    path = tmp_path_factory.mktemp("costmap") / "room.pt"
    return analytic_map(room_sdf, (-0.2, -0.2, -0.2), ROOM + 0.2, path), path


def centres(costmap):
    u, v = costmap.cell_centres()
    return np.meshgrid(u, v)  # (rows, cols) each


def cell(costmap, point):
    return costmap.cell_of(*point)


def test_clearance_matches_the_exact_distance(room):
    """Within a voxel (2 cm) everywhere, from the walls 2 m away to the cells touching the pillar."""
    costmap = slice_grid(room[0], HEIGHT, CostmapConfig(unknown="free", confidence_k=0.0), BOX)
    u, v = centres(costmap)
    exact = in_plane_distance(u, v)
    free = exact > 0
    error = np.abs(costmap.clearance - exact)[free]
    print(f"\nclearance error over {free.sum()} free cells: mean {error.mean() * 1e3:.1f} mm, "
          f"max {error.max() * 1e3:.1f} mm (cells {costmap.resolution * 1e3:.0f} mm)")
    assert error.max() < room[0].config.voxel_size
    assert error.mean() < 0.1 * room[0].config.voxel_size
    inside = exact < -0.5 * costmap.resolution
    assert costmap.occupied[inside & costmap.known].all() and not costmap.occupied[free].any()
    assert (costmap.clearance[inside & costmap.known] < 0).all()
    # the pillar's core, deeper than the truncation, was never observed: free under --unknown free, but walled in
    core = in_plane_distance(*centres(costmap)) < -0.15
    assert core.any() and not costmap.known[core].any() and not costmap.occupied[core].any()


def test_collision_cost_is_zero_far_from_obstacles_and_lethal_at_them(room):
    config = CostmapConfig(robot_radius=0.2, inflation_scale=0.1, unknown="free")
    costmap = slice_grid(room[0], HEIGHT, config, BOX)
    exact = in_plane_distance(*centres(costmap))
    far = exact > config.robot_radius + 5 * config.inflation_scale
    assert far.sum() > 100
    assert costmap.cost[far].max() < 0.01
    assert (costmap.cost[exact < config.robot_radius - costmap.resolution] == 1.0).all()
    inflated = (exact > config.robot_radius + costmap.resolution) & ~far
    assert (costmap.cost[inflated] < 1.0).all() and (costmap.cost[inflated] > 0.006).all()
    # decreasing with the clearance
    order = np.argsort(costmap.clearance[inflated])
    assert (np.diff(costmap.cost[inflated][order]) <= 1e-6).all()


def test_unknown_space_is_lethal_or_free_as_asked(room):
    as_obstacle = slice_grid(room[0], HEIGHT, CostmapConfig(unknown="obstacle"), BOX)
    as_free = slice_grid(room[0], HEIGHT, CostmapConfig(), BOX)  # the default
    middle = cell(as_free, (3.0, 1.5))  # 1 m from every surface: outside the map's band, never allocated
    assert not as_free.known[middle] and not as_obstacle.known[middle]
    assert as_obstacle.cost[middle] == 1.0 and as_obstacle.occupied[middle]
    assert as_free.cost[middle] < 0.1 and not as_free.occupied[middle]  # exp(-(1 - 0.2) / 0.3) = 0.07
    assert as_obstacle.fractions()["unknown"] == as_free.fractions()["unknown"] > 0.3
    assert as_obstacle.fractions()["lethal"] > as_free.fractions()["lethal"]
    # OccupancyGrid data: -1 marks unknown cells unless asked for the policy's cost
    values = as_free.to_occupancy_values()
    assert values.dtype == np.int8 and values.shape == (as_free.cost.size,)
    assert values.min() == -1 and values.max() == 100 and ((values >= -1) & (values <= 100)).all()
    assert ((values == -1) == ~as_free.known.reshape(-1)).all()
    rows, cols = as_free.shape
    flat = middle[0] * cols + middle[1]  # row-major from cell [0, 0] (the lowest v): OccupancyGrid's layout
    assert as_free.to_occupancy_values(mark_unknown=False)[flat] == round(99 * as_free.cost[middle]) == 8
    assert as_obstacle.to_occupancy_values(mark_unknown=False)[flat] == 100
    known_lethal = (as_free.cost >= 1.0) & as_free.known
    assert (as_free.to_occupancy_values().reshape(rows, cols)[known_lethal] == 100).all()


def test_cost_to_go(room):
    costmap = build_costmap(room[0], HEIGHT, CostmapConfig(unknown="free"), BOX, goal=GOAL)
    ctg = costmap.cost_to_go
    u, v = centres(costmap)
    goal = cell(costmap, GOAL)
    assert ctg[goal] == 0.0
    inside = in_plane_distance(u, v) < 0
    assert np.isinf(ctg[inside]).all() and np.isinf(ctg[costmap.cost >= 1.0]).all()
    reachable = np.isfinite(ctg)
    assert reachable.mean() > 0.5
    straight = np.hypot(u - u[goal], v - v[goal])
    assert (ctg[reachable] >= straight[reachable] - 1e-9).all()  # at least 1 per metre
    # increases away from the goal: along y = 1.5 towards the pillar (west), and north towards the wall
    row, col = goal
    west = ctg[row, col - 18:col + 1][::-1]
    north = ctg[row:row + 20, col]
    assert np.isfinite(west).all() and np.isfinite(north).all()
    assert (np.diff(west) > 0).all() and (np.diff(north) > 0).all()
    # the pillar is in the way: going around costs more than the straight distance (2.6 m)
    start = cell(costmap, START)
    detour = ctg[start]
    print(f"\ncost-to-go from {START} to {GOAL}: {detour:.2f} (straight {straight[start]:.2f} m)")
    assert np.isfinite(detour) and detour > 1.2 * straight[start]
    with pytest.raises(InputError, match="lethal"):
        build_costmap(room[0], HEIGHT, CostmapConfig(unknown="free"), BOX, goal=PILLAR[:2])
    with pytest.raises(InputError, match="outside the grid"):
        build_costmap(room[0], HEIGHT, CostmapConfig(unknown="free"), BOX, goal=(9.0, 1.0))


def test_uncertain_surfaces_are_kept_farther_away(tmp_path):
    """Occupancy and clearance use mean - k std: k std of uncertainty moves the obstacle k std closer."""
    std = 0.01
    sdf_map = analytic_map(room_sdf, (-0.2, -0.2, 0.6), (4.2, 3.2, 1.4), tmp_path / "uncertain.pt", std=std)
    sharp = slice_grid(sdf_map, HEIGHT, CostmapConfig(unknown="free", confidence_k=0.0), BOX)
    cautious = slice_grid(sdf_map, HEIGHT, CostmapConfig(unknown="free", confidence_k=3.0), BOX)
    exact = in_plane_distance(*centres(sharp))
    near = (exact > 0.05) & (exact < 0.3)
    shrink = (sharp.clearance - cautious.clearance)[near]
    print(f"\nclearance shrink at k = 3, std = {std * 1e3:.0f} mm: {shrink.mean() * 1e3:.1f} mm mean")
    assert abs(shrink.mean() - 3 * std) < 0.005
    assert cautious.occupied.sum() > sharp.occupied.sum()
    assert (cautious.cost >= sharp.cost - 1e-6).all()


@pytest.mark.parametrize("up, to_room", [
    ("y", lambda p: p[:, [2, 0, 1]]),  # world (Y, Z, X) of room point (X, Y, Z): up y, plane (z, x) = (X, Y)
    ("-y", lambda p: np.stack([p[:, 0], p[:, 2], -p[:, 1]], -1)),  # world (X, -Z, Y): plane (x, z) = (X, Y)
])
def test_other_up_axes_give_the_same_slice(room, tmp_path, up, to_room):
    R = plane_axes(up)
    assert np.allclose(R.T @ R, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
    low, high = R @ np.array([-0.2, -0.2, 0.6]), R @ np.array([4.2, 3.2, 1.4])
    turned = analytic_map(lambda p: room_sdf(to_room(p)), np.minimum(low, high), np.maximum(low, high),
                          tmp_path / "turned.pt")
    reference = slice_grid(room[0], HEIGHT, CostmapConfig(unknown="free"), BOX)
    costmap = slice_grid(turned, HEIGHT, CostmapConfig(unknown="free", up=up), BOX)
    assert np.allclose(costmap.cost, reference.cost, atol=1e-4)
    assert np.allclose(room_sdf(to_room(costmap.world_points().reshape(-1, 3)))[:, None],
                       room_sdf(reference.world_points().reshape(-1, 3))[:, None])
    position, quaternion = costmap.origin_pose()
    assert np.allclose(position, R @ [0.0, 0.0, HEIGHT]) and np.isclose(np.linalg.norm(quaternion), 1.0)


def test_occupancy_grid_origin_for_z_up(room):
    costmap = slice_grid(room[0], HEIGHT, CostmapConfig(), (0.5, 0.25, 2.0, 1.0))
    position, quaternion = costmap.origin_pose()
    assert costmap.shape == (15, 30)
    assert np.allclose(position, [0.5, 0.25, HEIGHT]) and np.allclose(quaternion, [0, 0, 0, 1])
    assert np.allclose(costmap.world_points()[0, 0], [0.525, 0.275, HEIGHT])


def test_png_and_npz(room, tmp_path):
    costmap = build_costmap(room[0], HEIGHT, CostmapConfig(unknown="free"), BOX, goal=GOAL)
    save_png(costmap, tmp_path / "c.png")
    costmap.save_npz(tmp_path / "c.npz")
    assert (tmp_path / "c.png").stat().st_size > 20_000
    saved = np.load(tmp_path / "c.npz")
    assert np.array_equal(saved["cost"], costmap.cost) and np.array_equal(saved["cost_to_go"], costmap.cost_to_go)
    assert np.array_equal(saved["occupancy"], costmap.to_occupancy_values()) and float(saved["resolution"]) == 0.05


def test_cli_writes_the_figure_and_reports_bad_input(room, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["costmap", "--map", str(room[1]), "--height", str(HEIGHT), "--unknown", "free", "--out", str(out)]
    result = runner.invoke(app, [*args, "--goal", "3.2,1.5"])
    assert result.exit_code == 0, result.output
    assert (out / "costmap.png").stat().st_size > 20_000 and (out / "costmap.npz").is_file()
    assert "% lethal" in result.output and "% unknown (as free)" in result.output and str(out) in result.output
    for bad, expected in (
            (["--map", str(tmp_path / "missing.pt")], "map file not found"),
            (["--height", "7"], "outside the map"),
            (["--goal", "1.5,1.5"], "lethal"),
            (["--goal", "3.2"], "bad --goal"),
            (["--unknown", "maybe"], "unknown must be one of")):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2, (bad, result.output)
        assert expected in result.output.replace("\n", " ") and "Traceback" not in result.output
