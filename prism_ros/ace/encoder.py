"""The scene-agnostic ACE encoder: grey image -> dense features at output stride 8.

Architecture as in ACE (Brachmann et al., CVPR 2023): four 3x3 convolutions (the last three with stride 2)
and two residual blocks (3x3, 1x1, 3x3), the second widening to the output channels. Two configurations:
- ``ACE_CONFIG``: the reference widths 32-64-128-256, residual blocks to 512 channels (5.4 M parameters,
  about 7x the cost of the lite network per image);
- ``LITE_CONFIG`` (shipped, the CPU default): half the widths, 16-32-64-128 and 128 -> 256 channels
  (1.4 M parameters). The receptive field and stride are the same; the feature is 256-d.
  A CPU mapping budget of minutes (encoder passes included) and encoder pretraining in minutes, not
  GPU-days, rule out the 512-d network.

Input: grey in [0, 1] normalised with mean 0.4 and standard deviation 0.25 (ACE's values). Feature
(row i, column j) is centred on pixel (8 j, 8 i) (pixel-centre coordinates): the centre of its
receptive field through the stride-2, padding-1 convolutions.

Weights are stored in fp16; the encoder id (``<config name>:<12 hex of sha256 of the fp16 weights>``) is
written into every map so that a map is never used with features of a different encoder.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prism_ros.errors import InputError, check_int, check_weights, file_kind, read_torch_file

OUTPUT_STRIDE = 8
GREY_MEAN, GREY_STD = 0.4, 0.25
ENCODER_FORMAT = "prism_ros.ace.encoder"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "ace_lite_encoder.pt"
MAX_CHANNELS = 4096  # widest layer an encoder file may claim (the reference ACE network: 512)


@dataclass(frozen=True)
class EncoderConfig:
    """Channel widths: ``convs`` of conv1..conv4, ``res1`` of the first residual block, ``out`` features."""

    name: str
    convs: tuple[int, int, int, int]
    res1: int
    out: int


ACE_CONFIG = EncoderConfig("ace", (32, 64, 128, 256), 256, 512)
LITE_CONFIG = EncoderConfig("ace-lite", (16, 32, 64, 128), 128, 256)
CONFIGS = {c.name: c for c in (ACE_CONFIG, LITE_CONFIG)}


class Encoder(nn.Module):
    """ACE feature backbone: (B,1,H,W) normalised grey -> (B,out,ceil(H/8),ceil(W/8))."""

    def __init__(self, config: EncoderConfig = LITE_CONFIG):
        super().__init__()
        self.config = config
        c1, c2, c3, c4 = config.convs
        self.conv1 = nn.Conv2d(1, c1, 3, 1, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.conv3 = nn.Conv2d(c2, c3, 3, 2, 1)
        self.conv4 = nn.Conv2d(c3, c4, 3, 2, 1)
        self.res1_skip = nn.Identity() if c4 == config.res1 else nn.Conv2d(c4, config.res1, 1)
        self.res1_conv1 = nn.Conv2d(c4, config.res1, 3, 1, 1)
        self.res1_conv2 = nn.Conv2d(config.res1, config.res1, 1)
        self.res1_conv3 = nn.Conv2d(config.res1, config.res1, 3, 1, 1)
        self.res2_conv1 = nn.Conv2d(config.res1, config.out, 3, 1, 1)
        self.res2_conv2 = nn.Conv2d(config.out, config.out, 1)
        self.res2_conv3 = nn.Conv2d(config.out, config.out, 3, 1, 1)
        self.res2_skip = nn.Conv2d(config.res1, config.out, 1)
        self._id: str | None = None
        for m in self.modules():  # He init keeps activations O(1) through the ReLU stack (PyTorch's default
            if isinstance(m, nn.Conv2d):  # shrinks them ~2x per layer: features of a fresh net are near constant)
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        return self.config.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        res = F.relu(self.conv4(x))
        x = F.relu(self.res1_conv1(res))
        x = F.relu(self.res1_conv2(x))
        x = F.relu(self.res1_conv3(x))
        res = self.res1_skip(res) + x
        x = F.relu(self.res2_conv1(res))
        x = F.relu(self.res2_conv2(x))
        x = self.res2_conv3(x)
        return self.res2_skip(res) + x

    @property
    def encoder_id(self) -> str:
        """``<config>:<sha256[:12] of the fp16 weights>``; computed once (reset by :func:`round_to_fp16`)."""
        if self._id is None:
            self._id = f"{self.config.name}:{weights_digest(self.state_dict())}"
        return self._id


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """12 hex digits of sha256 over the fp16 bytes of the tensors, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def round_to_fp16(encoder: Encoder) -> Encoder:
    """Round the weights to fp16 values (what is saved), so the id and the features match a reload."""
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(p.half().float())
    encoder._id = None
    return encoder


def random_encoder(seed: int = 0, config: EncoderConfig = LITE_CONFIG) -> Encoder:
    """A randomly initialised encoder (He init, as pretraining starts from), for ablations."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = Encoder(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return round_to_fp16(encoder).eval()


def save_encoder(encoder: Encoder, path: str | Path, meta: dict | None = None) -> Path:
    """Write fp16 weights, the configuration and a note (data, steps, time) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16) for k, v in encoder.state_dict().items()}
    torch.save({"format": ENCODER_FORMAT, "config": asdict(encoder.config), "state_dict": state,
                "meta": dict(meta or {})}, path)
    return path


def load_encoder(path: str | Path | None = None, device: str | torch.device = "cpu") -> Encoder:
    """The encoder stored at ``path`` (default: the weights shipped with the package), in eval mode."""
    path = Path(path) if path is not None else SHIPPED_WEIGHTS
    if not path.exists():
        fix = ("reinstall prism_ros (the weights ship inside the package) or run `prism-ros ace pretrain-encoder`"
               if path == SHIPPED_WEIGHTS else "give the file written by `prism-ros ace pretrain-encoder`")
        raise InputError("encoder weights not found", fix, path)
    blob = read_torch_file(path, "cannot read encoder weights",
                           "the file is corrupt or not an encoder: re-run pretrain-encoder or reinstall")
    if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
        raise InputError(f"not an ACE encoder file{file_kind(blob)}",
                         "give a file written by `prism-ros ace pretrain-encoder`", path)
    fix = "re-run `prism-ros ace pretrain-encoder` (or reinstall prism_ros for the shipped weights)"
    raw = blob.get("config")
    names = {f.name for f in fields(EncoderConfig)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise InputError(f"encoder config must have the keys {sorted(names)}, got {raw!r:.80}", fix, path)
    convs = raw["convs"]
    if not isinstance(convs, (list, tuple)) or len(convs) != 4:
        raise InputError(f"encoder config convs must be 4 channel widths, got {convs!r:.80}", fix, path)
    if not isinstance(raw["name"], str):
        raise InputError(f"encoder config name must be a string, got {raw['name']!r:.80}", fix, path)
    width = lambda value, name: check_int(value, f"encoder config {name}", 1, MAX_CHANNELS, fix, path)
    config = EncoderConfig(raw["name"], tuple(width(c, f"convs[{i}]") for i, c in enumerate(convs)),
                           width(raw["res1"], "res1"), width(raw["out"], "out"))
    state = check_weights(lambda: Encoder(config), blob.get("state_dict"), "encoder weights", fix, path)
    encoder = Encoder(config)
    encoder.load_state_dict(state)
    meta = blob.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError(f"encoder meta must be a dict, got {type(meta).__name__}", fix, path)
    encoder.meta = meta
    return encoder.to(device).eval()


# ------------------------------------------------------------------------------------------- input
def grey_image(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (or HxW grey) -> HxW uint8 grey."""
    return rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def normalise(grey: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 255] float grey (..., H, W) -> the encoder's input scale."""
    return (grey.float() / 255.0 - GREY_MEAN) / GREY_STD


def feature_pixels(rows: int, cols: int, device=None) -> torch.Tensor:
    """Pixel coordinates (rows, cols, 2) [u, v] of the feature centres (pixel-centre convention)."""
    v, u = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float32) * OUTPUT_STRIDE,
                          torch.arange(cols, device=device, dtype=torch.float32) * OUTPUT_STRIDE, indexing="ij")
    return torch.stack([u, v], -1)
