"""Reference surface for map checks on real data (prism_ros.evaluation.reference_map) and the map-error coverage:
the Open3D TSDF of a synthetic sequence agrees with the exact scene, and the coverage counts errors inside
their 95 % intervals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prism_ros.datasets import open_dataset
from prism_ros.evaluation.metrics import map_error
from prism_ros.evaluation.reference_map import fuse_reference, signed_distance
from prism_ros.synthetic import read_scene

pytest.importorskip("open3d")


def test_the_reference_surface_of_a_synthetic_sequence_matches_the_exact_scene(synthetic_sequence):
    """Points scattered around the fused surface, 8 mm to 3 cm from the true one: their signed distance to the
    fused surface mostly agrees in sign with the exact SDF (30 frames of 160x120 depth make a rough surface
    where the depth noise is centimetres, at 3 m), and within about a centimetre in value (on 60 frames of
    320x240: 99 % and 3 mm)."""
    mesh = fuse_reference(open_dataset(synthetic_sequence), min_weight=2.0, progress=False)
    rng = np.random.default_rng(0)
    vertices = np.asarray(mesh.vertices)
    points = vertices[rng.choice(len(vertices), 3000)] + rng.normal(0, 0.015, (3000, 3))
    reference = signed_distance(mesh, points)
    exact = read_scene(synthetic_sequence).sdf(torch.as_tensor(points)).numpy()
    band = (np.abs(exact) > 0.008) & (np.abs(exact) < 0.03)
    assert np.mean(np.sign(reference[band]) == np.sign(exact[band])) > 0.85  # flipped normals: ~0.1
    assert np.median(np.abs(reference - exact)[band]) < 0.012


def test_map_error_coverage_counts_errors_inside_their_interval():
    """A flat 'true' SDF of zero: means drawn from N(0, std^2) lie inside +-1.96 std 95 % of the time, and means
    three times wider much less often."""
    rng = np.random.default_rng(1)
    std = torch.as_tensor(rng.uniform(0.001, 0.01, 20000))
    centres = torch.zeros(20000, 3, dtype=torch.float64)
    zero = lambda points: torch.zeros(len(points), dtype=torch.float64)
    calibrated = map_error(centres, std * torch.as_tensor(rng.normal(size=20000)), std, zero, 0.1)
    assert calibrated.coverage_95 == pytest.approx(0.95, abs=0.01)
    wide = map_error(centres, 3 * std * torch.as_tensor(rng.normal(size=20000)), std, zero, 0.1)
    assert wide.coverage_95 < 0.6
    assert "within their 95 % interval" in wide.summary_line()
