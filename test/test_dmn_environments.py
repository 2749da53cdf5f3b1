"""Procedural Rooms / Mazes environments for DMN: determinism by seed, seed splits, valid poses, the ray
caster against closed-form cases, maze connectivity and the data set file."""
import dataclasses
import math
from collections import deque

import numpy as np
import pytest
import torch
from bad_files import FILE_CASES, bad_file, edited

from prism_ros.dmn.environments import (
    CEILING,
    DOMAINS,
    FLOOR,
    OBJECT,
    WALL,
    denormalise_pose,
    domain_config,
    draw_layout,
    generate,
    load_dataset,
    make_environments,
    normalise_pose,
    render,
    render_buffers,
    sample_poses,
    save_dataset,
    split_seeds,
)
from prism_ros.errors import InputError


def without_objects(envs):
    return dataclasses.replace(envs, object_present=torch.zeros_like(envs.object_present))


def one_object(envs, x, y, radius, height):
    objects = envs.objects.clone()
    objects[:, 0] = torch.tensor([x, y, radius, height])
    present = torch.zeros_like(envs.object_present)
    present[:, 0] = True
    return dataclasses.replace(envs, objects=objects, object_present=present)


def world_pose(envs, x, y, yaw):
    """A normalised (1,1,3) pose from metres and radians."""
    return normalise_pose(torch.tensor([[[x, y, yaw]]], dtype=torch.float64), envs.config).float()


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("domain, views", [("rooms", None), ("mazes", 12)])
def test_same_seed_same_data_whatever_the_batch(domain, views):
    a = generate(domain, [5, 9, 11], views=views, batch=3)
    b = generate(domain, [11, 3, 5], views=views, batch=1)
    assert torch.equal(a["images"][0], b["images"][2]) and torch.equal(a["poses"][0], b["poses"][2])
    assert torch.equal(a["images"][2], b["images"][0]) and torch.equal(a["poses"][2], b["poses"][0])
    assert a["seeds"].tolist() == [5, 9, 11] and a["domain"] == domain
    assert a["images"].dtype == torch.uint8 and a["poses"].dtype == torch.float32
    v = domain_config(domain).views if views is None else views
    assert a["images"].shape == (3, v, 3, 32, 32) and a["poses"].shape == (3, v, 3)


def test_different_seeds_differ_and_fewer_views_are_a_prefix():
    data = generate("rooms", [0, 1, 2])
    images = data["images"].float()
    for i in range(3):
        for j in range(i + 1, 3):
            assert (images[i] - images[j]).abs().mean() > 10
            assert not torch.equal(data["poses"][i], data["poses"][j])
    envs = make_environments("mazes", [4])
    assert torch.equal(sample_poses(envs, 5), sample_poses(envs, 50)[:, :5])


def test_float_uint8_and_chunked_images_agree():
    envs = make_environments("rooms", [3])
    poses = sample_poses(envs)
    as_float = render(envs, poses, dtype=torch.float32)
    assert as_float.min() >= 0 and as_float.max() <= 1
    as_uint8 = render(envs, poses)
    assert torch.equal(torch.floor(as_float * 255 + 0.5).to(torch.uint8), as_uint8)
    assert torch.equal(render(envs, poses, chunk_views=3), as_uint8)  # chunking does not change the result


# ----------------------------------------------------------------------------- splits and configs
def test_split_seed_ranges_are_disjoint():
    ends = {split: (split_seeds(split, 1)[0].item(), split_seeds(split, 5, start=10**8 - 5)[-1].item())
            for split in ("train", "val", "test")}
    ranges = sorted(ends.values())
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    assert not set(split_seeds("train", 1000).tolist()) & set(split_seeds("test", 1000).tolist())
    assert split_seeds("val", 3, start=7).tolist() == [10**8 + 7, 10**8 + 8, 10**8 + 9]
    with pytest.raises(InputError):
        split_seeds("train", 10, start=10**8 - 5)  # would run into the val range
    with pytest.raises(InputError):
        split_seeds("dev", 10)


def test_unknown_domain_and_bad_seeds_are_input_errors():
    with pytest.raises(InputError, match="unknown DMN domain"):
        domain_config("kitchens")
    with pytest.raises(InputError):
        make_environments("rooms", [-1])
    with pytest.raises(InputError):
        make_environments("rooms", [0.5])
    config = domain_config("rooms", image_size=48)
    assert config.views == 10 and domain_config("mazes").views == 300 and config.image_size == 48


# ----------------------------------------------------------------------------- poses
def test_poses_are_normalised_and_in_free_space():
    for domain, views in (("rooms", None), ("mazes", 300)):
        envs = make_environments(domain, range(20))
        config = envs.config
        poses = sample_poses(envs, views)
        assert poses.abs().max() <= 1 and (poses[..., 2] < 1).all()
        assert torch.allclose(normalise_pose(denormalise_pose(poses.double(), config), config), poses.double(),
                              atol=1e-9)
        world = denormalise_pose(poses.double(), config)
        cell = torch.floor(world[..., :2] / config.cell_size).long()
        env = torch.arange(len(envs))[:, None]
        assert not envs.occupancy[env, cell[..., 0], cell[..., 1]].any()
        # every point within the clearance of the camera is in a free cell too (no wall is that close)
        for angle in np.linspace(0, 2 * np.pi, 16, endpoint=False):
            ring = world[..., :2] + 0.99 * config.wall_clearance * torch.tensor([np.cos(angle), np.sin(angle)])
            near = torch.floor(ring / config.cell_size).long()
            assert not envs.occupancy[env, near[..., 0], near[..., 1]].any()
        objects = envs.objects.double()
        distance = (world[..., None, :2] - objects[:, None, :, :2]).norm(dim=-1) - objects[:, None, :, 2]
        assert (distance[envs.object_present[:, None].expand_as(distance)] >= config.object_clearance).all()
    rooms = make_environments("rooms", range(200))
    counts = rooms.object_present.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 3 and len(set(counts.tolist())) == 3


# ----------------------------------------------------------------------------- images
def test_images_show_walls_floor_ceiling_and_texture():
    envs = make_environments("rooms", range(8))
    buffers = render_buffers(envs, sample_poses(envs))
    surface = buffers.surface.flatten(2)
    sees = lambda kind: (surface == kind).any(-1)
    assert (sees(WALL) & sees(FLOOR) & sees(CEILING)).float().mean() > 0.8
    assert (surface >= OBJECT).any(-1).float().mean() > 0.2
    images = render(envs, sample_poses(envs)).float()
    assert (images.flatten(2).std(-1) > 5).all()  # no flat view
    wall = buffers.surface == WALL
    rgb = buffers.rgb.permute(0, 1, 3, 4, 2)
    for e in range(len(envs)):  # the walls of every room show more than two colours (pattern, shading)
        assert len(torch.unique((rgb[e][wall[e]] * 255).round(), dim=0)) > 2
    mazes = make_environments("mazes", [1])
    maze_images = render(mazes, sample_poses(mazes, 40)).float()
    assert (maze_images.flatten(2).std(-1) > 3).all()


def test_wall_depth_and_height_match_the_closed_form():
    envs = without_objects(make_environments("rooms", [0]))
    config, size = envs.config, 32
    focal, half = config.focal(size), math.tan(math.radians(config.field_of_view) / 2)
    assert envs.occupancy[0, 6].all() and not envs.occupancy[0, 1:6, 1:6].any()  # the x = 6 m wall
    s = 1 - 2 * (np.arange(size) + 0.5) / size  # column offsets, left positive
    slope = (size / 2 - (np.arange(size) + 0.5)) / focal
    # facing the x = 6 m wall from (3.5, 3.5): every column sees it at view-axis depth 2.5 m
    buffers = render_buffers(envs, world_pose(envs, 3.5, 3.5, 0.0), size)
    depth, surface = buffers.depth[0, 0].double().numpy(), buffers.surface[0, 0].numpy()
    wall_rows = (config.camera_height + slope * 2.5 >= 0) & (config.camera_height + slope * 2.5 <= config.wall_height)
    assert 5 < wall_rows.sum() < size - 5
    assert (surface[wall_rows] == WALL).all() and (surface[~wall_rows] != WALL).all()
    assert np.abs(depth[wall_rows] - 2.5).max() < 1e-5
    assert (surface[slope < 0][~wall_rows[slope < 0]] == FLOOR).all()
    assert (surface[slope > 0][~wall_rows[slope > 0]] == CEILING).all()
    # turned by 30 degrees: the Euclidean distance along each column's ray to x = 6 is 2.5 / cos(angle)
    yaw = math.radians(30)
    buffers = render_buffers(envs, world_pose(envs, 3.5, 3.5, yaw), size)
    angle = yaw + np.arctan(s * half)
    hit_y = 3.5 + 2.5 * np.tan(angle)
    on_x_wall = (hit_y > 1.01) & (hit_y < 5.99)
    assert on_x_wall.sum() > 10
    horizon = size // 2  # a row that sees the wall in every column here
    euclidean = buffers.depth[0, 0, horizon].double().numpy() * np.sqrt(1 + (s * half) ** 2)
    assert np.abs(euclidean[on_x_wall] - 2.5 / np.cos(angle[on_x_wall])).max() < 1e-4
    # the other columns hit the y = 6 m wall at a Euclidean distance of 2.5 / sin(angle)
    on_y_wall = (hit_y > 6.01) & (3.5 + 2.5 / np.tan(angle) < 5.99)
    assert on_y_wall.sum() > 3
    assert np.abs(euclidean[on_y_wall] - 2.5 / np.sin(angle[on_y_wall])).max() < 1e-4


def test_cylinder_depth_and_cap_match_the_closed_form():
    size = 64
    for height in (1.0, 0.3):  # taller than the camera (side only) and lower (top cap visible)
        envs = one_object(make_environments("rooms", [0]), 4.5, 3.5, 0.5, height)
        config = envs.config
        focal, half = config.focal(size), math.tan(math.radians(config.field_of_view) / 2)
        buffers = render_buffers(envs, world_pose(envs, 2.0, 3.5, 0.0), size)
        depth, surface = buffers.depth[0, 0].double().numpy(), buffers.surface[0, 0].numpy()
        s = (1 - 2 * (np.arange(size) + 0.5) / size) * half  # ray (1, s) from the camera, centre 2.5 m ahead
        # |(t - 2.5, t s)| = 0.5 -> (1 + s^2) t^2 - 5 t + 6.25 - 0.25 = 0
        a, b, c = 1 + s**2, -5.0, 6.0
        disc = b * b - 4 * a * c
        hits = disc > 0
        t_near = (-b - np.sqrt(np.where(hits, disc, 0))) / (2 * a)
        t_far = (-b + np.sqrt(np.where(hits, disc, 0))) / (2 * a)
        slope = (size / 2 - (np.arange(size) + 0.5)) / focal
        rise = height - config.camera_height
        for column in range(size):
            on_object = surface[:, column] == OBJECT
            if not hits[column]:
                assert not on_object.any()
                continue
            side = (slope >= -config.camera_height / t_near[column]) & (slope <= rise / t_near[column])
            cap = (slope > rise / t_near[column]) & (slope <= rise / t_far[column])
            assert side.any() and (on_object == (side | cap)).all()
            assert np.abs(depth[side, column] - t_near[column]).max() < 1e-5
            assert np.abs(depth[cap, column] - rise / slope[cap]).max(initial=0) < 1e-4
        assert (surface == OBJECT).any() and hits.sum() < size
        caps = [((slope > rise / t_near[c]) & (slope <= rise / t_far[c])).sum() for c in np.flatnonzero(hits)]
        assert (sum(caps) > 0) == (height < config.camera_height)


# ----------------------------------------------------------------------------- mazes
def test_mazes_are_connected_with_enough_free_cells():
    envs = make_environments("mazes", range(12))
    g = envs.config.grid_cells
    for occupancy in envs.occupancy.numpy():
        assert occupancy[0].all() and occupancy[-1].all() and occupancy[:, 0].all() and occupancy[:, -1].all()
        free = ~occupancy
        assert free.sum() >= 97  # the spanning tree alone frees 7 * 7 cells and 48 passages
        start = tuple(np.argwhere(free)[0])
        seen, queue = {start}, deque([start])
        while queue:
            i, j = queue.popleft()
            for n in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= n[0] < g and 0 <= n[1] < g and free[n] and n not in seen:
                    seen.add(n)
                    queue.append(n)
        assert len(seen) == free.sum()
    assert len({occupancy.tobytes() for occupancy in envs.occupancy.numpy()}) == len(envs)


# ----------------------------------------------------------------------------- files and plots
def test_dataset_round_trip_and_bad_files(tmp_path):
    data = generate("rooms", split_seeds("test", 2), views=4, image_size=16)
    path = save_dataset(data, tmp_path / "rooms.pt")
    loaded = load_dataset(path)
    assert loaded["domain"] == "rooms" and loaded["image_size"] == 16
    for key in ("images", "poses", "seeds"):
        assert torch.equal(loaded[key], data[key])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read the DMN data set"):
        load_dataset(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not a DMN environments data set"):
        load_dataset(other)
    torch.save({**torch.load(path, weights_only=True), "poses": torch.zeros(2, 4, 2)}, other)
    with pytest.raises(InputError, match=r"poses must be a 2x4x3 float32 tensor, got \(2, 4, 2\)"):
        load_dataset(other)


@pytest.fixture(scope="module")
def small_dataset():
    return generate("rooms", split_seeds("test", 2), views=4, image_size=8)


def _poses(index, value):
    return lambda blob: blob["poses"].__setitem__(index, value)


DATASET_CASES = [  # (name, edit of a valid data set file's dict, pattern of the InputError)
    ("other kind: DMN weights", lambda blob: blob.update(format=None, kind="prism_ros.dmn"),
     r"not a DMN environments data set \(no format header\) \(it is DMN weights"),
    ("future version", lambda blob: blob.update(version=2), "DMN data set version 2, this code reads 1"),
    ("unknown domain", lambda blob: blob.update(domain="attic"), "unknown domain 'attic'"),
    ("image size a string", lambda blob: blob.update(image_size="8"), "image_size must be an integer"),
    ("image size differs", lambda blob: blob.update(image_size=16), r"images must be a NxNx3x16x16 uint8 tensor"),
    ("images float", lambda blob: blob.update(images=blob["images"].float()), r"got \(2, 4, 3, 8, 8\) float32"),
    ("no environments", lambda blob: blob.update(images=blob["images"][:0], poses=blob["poses"][:0],
                                                 seeds=blob["seeds"][:0]), "the data set has no views"),
    ("poses of another shape", lambda blob: blob.update(poses=torch.zeros(2, 4, 2)),
     r"poses must be a 2x4x3 float32 tensor, got \(2, 4, 2\) float32"),
    ("poses float64", lambda blob: blob.update(poses=blob["poses"].double()), r"got \(2, 4, 3\) float64"),
    ("poses NaN", _poses((0, 1, 2), float("nan")), "poses has non-finite values"),
    ("poses inf", _poses((1, 3, 0), -float("inf")), "poses has non-finite values"),
    ("poses not normalised", _poses((1, 0, 1), 5.0), r"poses must be normalised to \[-1, 1\] \(largest 5\)"),
    ("seeds negative", lambda blob: blob["seeds"].__setitem__(0, -1), r"seeds must lie in \[0, 300000000\)"),
    ("seeds per environment wrong", lambda blob: blob.update(seeds=blob["seeds"][:1]), r"seeds must be a 2 int64"),
    ("no seeds", lambda blob: blob.pop("seeds"), "seeds must be a 2 int64 tensor, got NoneType"),
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_dataset_file_refuses_damaged_files(tmp_path, small_dataset, case):
    good = save_dataset(small_dataset, tmp_path / "rooms.pt")
    with pytest.raises(InputError, match=FILE_CASES[case][1]) as error:
        load_dataset(bad_file(case, good, tmp_path))
    assert "prism-ros dmn generate" in error.value.fix and error.value.path is not None


@pytest.mark.parametrize("name,edit,pattern", DATASET_CASES, ids=[case[0] for case in DATASET_CASES])
def test_dataset_file_refuses_bad_content(tmp_path, small_dataset, name, edit, pattern):
    good = save_dataset(small_dataset, tmp_path / "rooms.pt")
    assert torch.equal(load_dataset(good)["poses"], small_dataset["poses"])  # the good file round trips
    bad = edited(good, tmp_path, edit)
    with pytest.raises(InputError, match=pattern) as error:
        load_dataset(bad)
    assert error.value.path == bad and "prism-ros dmn generate" in error.value.fix


def test_draw_layout_draws_walls_objects_and_poses():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = make_environments("rooms", [2])
    fig, ax = plt.subplots()
    draw_layout(ax, 0, envs, sample_poses(envs)[0])
    assert len(ax.images) == 1 and len(ax.patches) == int(envs.object_present[0].sum())
    assert ax.get_xlim()[0] < -1 and ax.get_xlim()[1] > 1
    plt.close(fig)


@pytest.mark.parametrize("domain", DOMAINS)
def test_generate_with_no_seeds_is_empty(domain):
    data = generate(domain, [], views=3)
    assert data["images"].shape == (0, 3, 3, 32, 32) and data["poses"].shape == (0, 3, 3)
