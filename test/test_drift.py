"""The map-frame drift random walk (prism_ros.prism.drift) in closed form."""
import pytest
import torch

from prism_ros.prism.drift import MapDrift


def test_drift_grows_with_new_surface_only():
    pose = torch.diag(torch.tensor([1e-6, 2e-6, 3e-6, 1e-5, 2e-5, 3e-5], dtype=torch.float64))
    drift = MapDrift(scale=1.0)
    drift.update(pose, coverage=1.0)  # revisiting mapped surface: the map frame is not moved
    assert torch.count_nonzero(drift.covariance) == 0
    drift.update(pose, coverage=0.0)  # all new: the frame's whole pose uncertainty enters the map
    drift.update(pose, coverage=0.75)
    torch.testing.assert_close(drift.covariance, 1.25 * pose)
    drift.update(pose, coverage=1.7)  # out-of-range coverage is clamped, not extrapolated
    torch.testing.assert_close(drift.covariance, 1.25 * pose)
    drift.reset()
    assert torch.count_nonzero(drift.covariance) == 0


def test_scale_and_bad_scale():
    pose = torch.eye(6, dtype=torch.float64)
    off = MapDrift(scale=0.0)
    off.update(pose, coverage=0.0)
    assert torch.count_nonzero(off.covariance) == 0
    half = MapDrift(scale=0.5)
    half.update(pose, coverage=0.0)
    torch.testing.assert_close(half.covariance, 0.5 * pose)
    with pytest.raises(ValueError, match="scale"):
        MapDrift(scale=-1.0)
