"""Ray casting of the map's SDF mean from one pose: the one render per frame that PRISM tracks against.

(The ray caster itself is added below this contract.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prism_ros.geometry import PinholeCamera


@dataclass
class RenderResult:
    """What the map looks like from ``T_world_camera`` at one pyramid level (all (H,W,...) float32).

    depth: z in the camera frame, NaN where no surface was hit; vertex/normal: world frame (H,W,3),
    NaN where invalid, normals unit and facing the camera; colour (H,W,3) in [0,1]; intensity (H,W);
    gradient (2,H,W) of the intensity (d/du, d/dv; zero where the neighbourhood is invalid);
    sdf_std (H,W): posterior std of the SDF at the hit point (the uncertainty image); valid (H,W) bool.
    """

    T_world_camera: torch.Tensor
    camera: PinholeCamera
    depth: torch.Tensor
    vertex: torch.Tensor
    normal: torch.Tensor
    colour: torch.Tensor
    intensity: torch.Tensor
    gradient: torch.Tensor
    sdf_std: torch.Tensor
    valid: torch.Tensor
