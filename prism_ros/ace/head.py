"""The scene-specific ACE head: an MLP from one encoder feature to one scene coordinate.

ACE's head is a stack of 1x1 convolutions; a 1x1 convolution is a linear layer applied per pixel, so it is
written here with ``nn.Linear`` on (..., C) features (the same function and weights, but 3-8x faster on CPU
than Conv2d on (B,C,1,1) buffers). Structure as in ACE: a residual block of three layers (with a linear skip
when the feature width differs from the head width), ``blocks`` further residual blocks of three layers, and
three output layers. The output is homogeneous: (x, y, z, w) -> xyz / h with h = softplus(beta w) + 1/4,
beta = ln 2 / (1 - 1/4) (so h = 1 at w = 0), clamped to h <= 100; this lets the network express far points
with small outputs. The mean camera centre of the mapping poses is added, so the network regresses offsets.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

H_MIN, H_MAX = 0.25, 100.0  # 1/4 and 1/min_scale (min scale 0.01) as in ACE
H_BETA = math.log(2.0) / (1.0 - H_MIN)


@dataclass(frozen=True)
class HeadConfig:
    """Input feature width, hidden width and the number of extra residual blocks."""

    in_channels: int = 256
    width: int = 256
    blocks: int = 1


class Head(nn.Module):
    """Features (..., C) -> world coordinates (..., 3)."""

    def __init__(self, config: HeadConfig, mean: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        c, w = config.in_channels, config.width
        self.skip = nn.Identity() if c == w else nn.Linear(c, w)
        self.res = nn.ModuleList([nn.Linear(c, w), nn.Linear(w, w), nn.Linear(w, w)])
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)]) for _ in range(config.blocks))
        self.fc1, self.fc2, self.fc3 = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, 4)
        self.register_buffer("mean", torch.zeros(3) if mean is None else torch.as_tensor(mean, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for layer in self.res:
            x = F.relu(layer(x))
        res = self.skip(features) + x
        for block in self.blocks:
            x = res
            for layer in block:
                x = F.relu(layer(x))
            res = res + x
        x = F.relu(self.fc2(F.relu(self.fc1(res))))
        with torch.autocast(x.device.type, enabled=False):  # coordinates in float32 under fp16/bf16 autocast
            x = self.fc3(x.float())
            h = (F.softplus(x[..., 3:], beta=H_BETA) + H_MIN).clamp(max=H_MAX)
            return x[..., :3] / h + self.mean

    def to_record(self) -> dict:
        """Plain dict for the map file: config, fp16 weights, the mean in float32 (fp16 would cost mm)."""
        return {"config": asdict(self.config), "mean": self.mean.detach().cpu().float().clone(),
                "state_dict": {k: v.detach().to("cpu", torch.float16) for k, v in self.state_dict().items()
                               if k != "mean"}}

    @staticmethod
    def from_record(record: dict) -> "Head":
        head = Head(HeadConfig(**record["config"]), mean=record["mean"])
        head.load_state_dict({**{k: v.float() for k, v in record["state_dict"].items()}, "mean": head.mean})
        return head.eval()
