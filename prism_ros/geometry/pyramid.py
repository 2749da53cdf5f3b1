"""Image, depth and camera pyramids for coarse-to-fine tracking; level 0 is the input, each level halves.

Intensities use kornia's Gaussian ``build_pyramid`` (blur + half-pixel-centred resampling, which matches
the camera's c' = (c + 0.5) / 2 - 0.5). Depth is not blurred: averaging across a depth edge invents
points floating between foreground and background, and one NaN would spread through a Gaussian kernel.
kornia has no NaN-aware, edge-preserving depth reduction, so it is a 2x2 block reduction here (see
:func:`downsample_depth`). Odd sizes are floored, like kornia's pyrdown.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from kornia.geometry.transform import build_pyramid

from prism_ros.geometry.camera import PinholeCamera


def intensity_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(..., C, H, W) float image -> ``levels`` images, halved each level (Gaussian pyramid)."""
    flat = image.reshape(-1, *image.shape[-3:])
    return [level.reshape(*image.shape[:-2], *level.shape[-2:]) for level in build_pyramid(flat, levels)]


def downsample_depth(depth: torch.Tensor, max_rel_spread: float = 0.05) -> torch.Tensor:
    """(..., H, W) depth (NaN invalid) -> (..., H//2, W//2): mean of each 2x2 block's valid values.

    A block whose valid depths spread by more than ``max_rel_spread`` of their minimum straddles a depth edge
    (or a grazing surface): it becomes NaN rather than a point that lies on neither surface. Blocks with no
    valid value are NaN. The spread is relative because depth noise and depth-edge jumps grow with depth.
    """
    h, w = depth.shape[-2] // 2, depth.shape[-1] // 2
    blocks = depth[..., : 2 * h, : 2 * w].reshape(*depth.shape[:-2], h, 2, w, 2).transpose(-3, -2)
    blocks = blocks.reshape(*depth.shape[:-2], h, w, 4)
    valid = torch.isfinite(blocks) & (blocks > 0)
    count = valid.sum(-1)
    mean = torch.where(valid, blocks, torch.zeros_like(blocks)).sum(-1) / count.clamp_min(1)
    lo = torch.where(valid, blocks, torch.full_like(blocks, float("inf"))).amin(-1)
    hi = torch.where(valid, blocks, torch.full_like(blocks, float("-inf"))).amax(-1)
    keep = (count > 0) & (hi - lo <= max_rel_spread * lo)
    return torch.where(keep, mean, torch.full_like(mean, float("nan")))


def depth_pyramid(depth: torch.Tensor, levels: int, max_rel_spread: float = 0.05,
                  downsample=downsample_depth) -> list[torch.Tensor]:
    """(..., H, W) depth -> ``levels`` depth maps by repeated :func:`downsample_depth` (no edge bleeding;
    ``downsample``: another implementation of it, e.g. the fused kernel)."""
    pyramid = [depth]
    for _ in range(levels - 1):
        pyramid.append(downsample(pyramid[-1], max_rel_spread))
    return pyramid


def camera_pyramid(camera: PinholeCamera, levels: int) -> list[PinholeCamera]:
    """Cameras matching :func:`intensity_pyramid` / :func:`depth_pyramid` levels (sizes floored)."""
    pyramid = [camera]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        pyramid.append(replace(prev.scaled(0.5), width=prev.width // 2, height=prev.height // 2))
    return pyramid
