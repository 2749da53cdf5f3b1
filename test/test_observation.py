"""Observation: frame -> device tensors and pyramid; colour registered to the depth camera."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from shared_data import sample

from prism_ros.datasets import open_dataset
from prism_ros.prism.observation import Observation, normals_from_points
from prism_ros.synthetic import make_sequence


@pytest.fixture(scope="module")
def synthetic_frame():
    sequence = make_sequence(frames=2, seed=1, noise=False, width=160, height=120)
    rgb, depth = sequence.frame(0)
    from prism_ros.frame import Frame

    return Frame(index=0, timestamp=0.0, rgb=rgb, depth=depth, intrinsics=sequence.intrinsics,
                 pose=sequence.poses[0])


def test_levels_halve_and_points_match_depth(synthetic_frame):
    obs = Observation.from_frame(synthetic_frame, levels=3)
    assert [tuple(level.depth.shape) for level in obs.levels] == [(120, 160), (60, 80), (30, 40)]
    finest = obs.finest
    valid = ~finest.depth.isnan()
    assert valid.float().mean() > 0.99  # noise-free synthetic depth is dense
    torch.testing.assert_close(finest.points[..., 2][valid], finest.depth[valid])
    assert finest.gradient.shape == (2, 120, 160)
    assert obs.colour.shape == (120, 160, 3) and 0.0 <= float(obs.colour.min()) <= float(obs.colour.max()) <= 1.0


def test_normals_of_a_tilted_plane_face_the_camera():
    v, u = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    x, y = (u - 15) * 0.01, (v - 10) * 0.01
    points = torch.stack([x, y, 1.0 + 0.5 * x], dim=-1)  # plane z = 1 + 0.5 x
    normals = normals_from_points(points)
    expected = torch.tensor([0.5, 0.0, -1.0]) / np.sqrt(1.25)  # towards the camera (negative z)
    torch.testing.assert_close(normals[5:-5, 5:-5], expected.expand(10, 20, 3), atol=1e-5, rtol=0)


def test_colour_registration_with_identical_cameras_is_identity(synthetic_frame):
    """Registering colour through the depth with the same intrinsics reproduces the image."""
    nudged = replace(synthetic_frame.intrinsics, fx=synthetic_frame.intrinsics.fx + 1e-9)
    frame = replace(synthetic_frame, depth_intrinsics=nudged)
    registered = Observation.from_frame(frame, levels=1).colour
    direct = Observation.from_frame(synthetic_frame, levels=1).colour
    assert (registered - direct).abs()[2:-2, 2:-2].max() < 1e-3


def test_no_depth_is_a_clear_error(synthetic_frame):
    with pytest.raises(ValueError, match="no depth"):
        Observation.from_frame(replace(synthetic_frame, depth=None))


def test_seven_scenes_colour_is_registered_to_the_depth_camera():
    path = sample("7scenes_redkitchen_seq_0000_0399")
    frame = open_dataset(path)[0]
    obs = Observation.from_frame(frame, levels=2)
    assert obs.finest.camera.fx.item() == pytest.approx(frame.depth_intrinsics.fx)
    valid = ~obs.finest.depth.isnan()
    seen = obs.colour.sum(-1) > 0
    assert (seen & valid).float().sum() / valid.float().sum() > 0.9  # nearly every depth pixel gets a colour


def test_intensity_gradient_is_per_pixel_on_a_ramp(synthetic_frame):
    """gradient[0] = dI/du, gradient[1] = dI/dv in intensity units per pixel (central differences)."""
    from prism_ros.geometry import PinholeCamera
    from prism_ros.prism.observation import make_level

    v, u = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    intensity = 0.01 * u + 0.003 * v
    camera = PinholeCamera.from_intrinsics(replace(synthetic_frame.intrinsics, width=30, height=20))
    level = make_level(camera, torch.ones(20, 30), intensity)
    torch.testing.assert_close(level.gradient[0, 1:-1, 1:-1], torch.full((18, 28), 0.01))
    torch.testing.assert_close(level.gradient[1, 1:-1, 1:-1], torch.full((18, 28), 0.003))
