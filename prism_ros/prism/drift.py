"""Uncertainty of the map's frame relative to the world: the drift a frame-to-model filter accumulates.

Tracking gives the pose relative to the map (the likelihood uses the map mean), so the Laplace covariance
says how well the camera is placed *in the map*. The map itself was fused from earlier, uncertain poses:
where a frame sees new surface, that surface inherits the frame's pose error, and later frames that track
against it inherit it too. Revisiting mapped surface adds nothing. So the map frame performs a random
walk whose increment is the pose covariance weighted by the share of the view that is new:

    Sigma_drift <- Sigma_drift + scale * (1 - coverage) * Sigma_pose

(``coverage``: share of the frame's points that land on the rendered map). The reported pose covariance
against the world is ``Sigma_pose + Sigma_drift`` (both left, world-frame perturbations). The filter's own
recursion keeps using the map-relative covariance, as in the paper.
"""
from __future__ import annotations

import torch


class MapDrift:
    """Accumulated 6x6 covariance of the map frame relative to the world (left perturbation)."""

    def __init__(self, scale: float = 1.0, device="cpu"):
        if scale < 0:
            raise ValueError(f"map drift scale must be >= 0, got {scale}")
        self.scale = float(scale)
        self.covariance = torch.zeros(6, 6, dtype=torch.float64, device=device)

    def update(self, pose_covariance: torch.Tensor, coverage: float) -> None:
        """One fused frame: add its pose covariance, weighted by the share of the view that was new."""
        novelty = min(max(1.0 - float(coverage), 0.0), 1.0)
        self.covariance = self.covariance + self.scale * novelty * pose_covariance

    def reset(self) -> None:
        self.covariance.zero_()
