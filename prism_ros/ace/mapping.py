"""ACE mapping: train a scene-specific head on the feature buffer with ACE's reprojection curriculum.

Loss per sampled feature (ACE): the pixel reprojection error e of the predicted scene coordinate in its
(augmented) mapping view, robustified as w tanh(e / w) with w annealed from ``soft_clamp`` + ``soft_clamp_min``
to ``soft_clamp_min`` on ACE's circular schedule (w = soft_clamp sqrt(1 - t^2) + soft_clamp_min, t = progress);
predictions that are invalid (behind 0.1 m, beyond 1000 m, or reprojecting more than 1000 px away) are
pulled to the point 10 m along their pixel ray (L1). With depth (RGB-D), DSAC*'s RGB-D term adds the
distance to the depth-given scene coordinate, expressed in pixels (f |x - x_d| / z_d) and robustified with
the same w, so it shares the curriculum and units and also fixes depth along the ray early on.
Pixel quantities (soft clamp, RANSAC threshold) are given for 480-px-high images and scaled to the recipe's
working height. Optimiser: AdamW with a one-cycle learning rate (ACE), fp16 autocast on CUDA (``gpu``) and
bfloat16 autocast on CPUs with native bf16 products (``cpu``); the head's output layer stays float32.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from prism_ros.ace.buffer import Augmentation, FeatureBuffer, MappingFrame, fill_buffer, prepare_frame, view_frame
from prism_ros.ace.encoder import Encoder
from prism_ros.ace.head import Head, HeadConfig
from prism_ros.ace.hybrid import check_maps
from prism_ros.ace.mapfile import AceMap
from prism_ros.datasets.base import Dataset
from prism_ros.errors import InputError

REFERENCE_HEIGHT = 480  # pixel thresholds below are ACE's, for 480-px-high images


@dataclass(frozen=True)
class Recipe:
    """Everything that sets mapping cost and accuracy. ``steps`` head updates of ``batch`` features
    from a buffer of ``passes`` x ``samples_per_image`` features per mapping image."""

    name: str
    image_height: int  # working resolution (rows); queries are resized to it
    head_width: int
    head_blocks: int
    samples_per_image: int
    passes: int
    batch: int
    steps: int
    lr_max: float = 5e-3
    lr_min: float = 5e-4
    weight_decay: float = 0.01
    soft_clamp: float = 50.0  # px at 480 rows
    soft_clamp_min: float = 1.0  # px at 480 rows
    depth_weight: float = 1.0  # RGB-D term (when depth is available and used)
    fp16: bool = False  # autocast on CUDA
    bf16_cpu: bool = False  # bfloat16 autocast on CPUs whose oneDNN has bf16 kernels (AVX512-BF16, AMX)
    augmentation: Augmentation = Augmentation()

    @property
    def pixel_scale(self) -> float:
        return self.image_height / REFERENCE_HEIGHT


#: For CPUs: 240-row images, a 256-wide head, ~2.5 passes worth of 600 samples per image, 2000 steps of 4096,
#: bfloat16 products where the CPU has them (mapping times: docs/ace.md).
CPU_RECIPE = Recipe("cpu", image_height=240, head_width=256, head_blocks=1, samples_per_image=600, passes=2,
                    batch=4096, steps=2000, bf16_cpu=True)
#: ACE's paper recipe (GPU): 480 rows, 512-wide head, 8M-feature buffer (1024 per image, passes until full
#: for ~8k images; here passes=16 over the given images), batch 5120, ~25k steps (16 epochs), fp16.
GPU_RECIPE = Recipe("gpu", image_height=480, head_width=512, head_blocks=1, samples_per_image=1024, passes=16,
                    batch=5120, steps=25000, lr_max=5e-3, lr_min=5e-4, fp16=True)
#: tens of seconds on one CPU thread, for tests and smoke runs (tens of frames).
TEST_RECIPE = Recipe("test", image_height=240, head_width=128, head_blocks=1, samples_per_image=400, passes=2,
                     batch=2048, steps=1000, lr_max=5e-3)
RECIPES = {r.name: r for r in (CPU_RECIPE, GPU_RECIPE, TEST_RECIPE)}


def get_recipe(name: str, **overrides) -> Recipe:
    """A named recipe, optionally with fields replaced (e.g. steps=500)."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}", f"use one of {sorted(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def soft_clamp_width(progress: float, recipe: Recipe) -> float:
    """ACE's circular schedule of the tanh soft clamp (pixels at the working height)."""
    t = min(max(progress, 0.0), 1.0)
    return (recipe.soft_clamp * math.sqrt(1.0 - t * t) + recipe.soft_clamp_min) * recipe.pixel_scale


def ace_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], width: float, depth_weight: float = 0.0,
             depth_target: float = 10.0) -> torch.Tensor:
    """Mean ACE loss of predicted world coordinates ``pred`` (B,3) for a buffer batch (see the module doc)."""
    T = batch["T_camera_world"]
    cam = (T[:, :, :3] @ pred[:, :, None])[..., 0] + T[:, :, 3]
    fx, fy, cx, cy = batch["K"].unbind(-1)
    z = cam[:, 2]
    zc = z.clamp_min(0.1)
    uv = torch.stack([fx * cam[:, 0] / zc + cx, fy * cam[:, 1] / zc + cy], -1)
    error = (uv - batch["pixels"]).norm(dim=-1)
    valid = (z > 0.1) & (z < 1000.0) & (error < 1000.0)
    robust = lambda e: width * torch.tanh(e / width)
    loss = torch.where(valid, robust(error), torch.zeros_like(error)).sum()
    ray = torch.stack([(batch["pixels"][:, 0] - cx) / fx, (batch["pixels"][:, 1] - cy) / fy,
                       torch.ones_like(fx)], -1) * depth_target
    loss = loss + torch.where(~valid, (ray - cam).abs().sum(-1), torch.zeros_like(error)).sum()
    if depth_weight > 0:
        world = batch["world"]
        has = torch.isfinite(world[:, 0])
        if bool(has.any()):
            target_cam = (T[:, :, :3] @ torch.nan_to_num(world)[:, :, None])[..., 0] + T[:, :, 3]
            scale = fx / target_cam[:, 2].clamp_min(0.1)
            e3 = (pred - torch.nan_to_num(world)).norm(dim=-1) * scale
            loss = loss + depth_weight * torch.where(has, robust(e3), torch.zeros_like(e3)).sum()
    return loss / len(pred)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN with AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def train_head(buffer: FeatureBuffer, recipe: Recipe, mean: torch.Tensor, use_depth: bool = True, seed: int = 0,
               progress: bool = True, desc: str = "ace head") -> Head:
    """Train a fresh head on ``buffer`` for ``recipe.steps`` steps (random batches of the shuffled buffer)."""
    device = buffer.features.device
    torch.set_flush_denormal(True)  # denormal activations otherwise slow CPU steps down several times
    torch.manual_seed(seed)
    head = Head(HeadConfig(buffer.features.shape[1], recipe.head_width, recipe.head_blocks), mean).to(device)
    optimiser = torch.optim.AdamW(head.parameters(), lr=recipe.lr_min, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr_max, total_steps=recipe.steps,
                                                   div_factor=recipe.lr_max / recipe.lr_min, cycle_momentum=False)
    generator = torch.Generator(device=device).manual_seed(seed)
    depth_weight = recipe.depth_weight if use_depth and buffer.has_depth else 0.0
    autocast = recipe.fp16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=autocast)
    bf16 = recipe.bf16_cpu and device.type == "cpu" and cpu_has_bf16()
    order, cursor = torch.randperm(len(buffer), generator=generator, device=device), 0
    head.train()
    bar = tqdm(range(recipe.steps), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        if cursor + recipe.batch > len(buffer):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(buffer), generator=generator, device=device), 0
        batch = buffer.batch(order[cursor:cursor + recipe.batch])
        cursor += recipe.batch
        width = soft_clamp_width(step / recipe.steps, recipe)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = head(batch["features"])
        loss = ace_loss(pred.float(), batch, width, depth_weight)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.2f}", clamp=f"{width:.1f}px")
    return head.eval()


def prepare_views(dataset: Dataset, recipe: Recipe, use_depth: bool = True, progress: bool = True
                  ) -> list[MappingFrame]:
    """Read and prepare all mapping frames (each needs a ground-truth/mapping pose)."""
    views = []
    for frame in tqdm(dataset, total=len(dataset), desc="ace frames", unit="img", disable=not progress, leave=False):
        if frame.pose is None or not np.all(np.isfinite(frame.pose)):
            continue  # frames without a pose cannot be mapped
        if frame.rgb is None:
            raise InputError("frame has no colour image", "ACE maps colour/grey camera images", frame.index)
        views.append(prepare_frame(frame, recipe.image_height, use_depth))
    if len(views) < 2:
        raise InputError(f"only {len(views)} frame(s) with a pose", "mapping needs posed frames (ground truth or "
                         "SLAM poses) - check the dataset has poses and the --frames range")
    return views


def map_views(views: list[MappingFrame], encoder: Encoder, recipe: Recipe, intrinsics, use_depth: bool = True,
              chunks: int = 1, seed: int = 0, device="cpu", progress: bool = True, feature_step: int = 0) -> AceMap:
    """Map prepared views: one head, or one per k-means chunk of camera positions (``chunks`` > 1). With depth
    and ``feature_step`` > 0, also the depth check's map cloud and the feature keyframes (every
    ``feature_step``-th view) of :mod:`prism_ros.ace.hybrid`, at the working resolution."""
    from prism_ros.ace.ensemble import split_frames

    start = time.perf_counter()
    positions = np.stack([v.T_world_camera[:3, 3] for v in views])
    labels = split_frames(positions, chunks, seed) if chunks > 1 else np.zeros(len(views), dtype=np.int64)
    heads, centres = [], []
    for chunk in range(int(labels.max()) + 1):
        members = [v for v, label in zip(views, labels) if label == chunk]
        buffer = fill_buffer(encoder, members, recipe.samples_per_image, recipe.passes, recipe.augmentation,
                             seed + chunk, device, progress)
        mean = torch.from_numpy(np.mean([v.T_world_camera[:3, 3] for v in members], 0)).float().to(device)
        heads.append(train_head(buffer, recipe, mean, use_depth, seed + chunk, progress,
                                desc=f"ace head {chunk + 1}/{labels.max() + 1}"))
        centres.append(mean.cpu().numpy())
    seconds = time.perf_counter() - start
    meta = {"recipe": asdict(recipe) | {"augmentation": asdict(recipe.augmentation)}, "frames": len(views),
            "depth": bool(use_depth and any(v.depth is not None for v in views)), "mapping_seconds": seconds,
            "frame_indices": [int(v.index) for v in views]}
    meta["recipe"]["augmentation"] = {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in meta["recipe"]["augmentation"].items()}
    ace_map = AceMap(heads, np.stack(centres), encoder.encoder_id, recipe.image_height, intrinsics, meta)
    if use_depth and feature_step > 0:
        add_check_maps(ace_map, [view_frame(v) for v in views], feature_step)
    return ace_map


def add_check_maps(ace_map: AceMap, frames, feature_step: int) -> None:
    """Give the map the depth check's cloud and the feature keyframes of posed RGB-D ``frames``; the time
    they took is in ``meta["check_maps_seconds"]``."""
    start = time.perf_counter()
    ace_map.cloud, ace_map.features = check_maps(frames, feature_step)
    ace_map.meta["check_maps_seconds"] = time.perf_counter() - start


def map_scene(dataset: Dataset, encoder: Encoder, recipe: Recipe = CPU_RECIPE, use_depth: bool = True,
              chunks: int = 1, seed: int = 0, device="cpu", progress: bool = True, feature_step: int = 5) -> AceMap:
    """Map a posed dataset (frames with ``pose``) into an :class:`AceMap` (mapping time in ``meta``). With depth
    and ``feature_step`` > 0 the map also gets the depth check's cloud and feature keyframes (every
    ``feature_step``-th frame), from the frames at full resolution."""
    start = time.perf_counter()
    encoder = encoder.to(device)
    views = prepare_views(dataset, recipe, use_depth, progress)
    first = dataset[0].intrinsics
    intr = (first.fx, first.fy, first.cx, first.cy, first.width, first.height)
    ace_map = map_views(views, encoder, recipe, intr, use_depth, chunks, seed, device, progress)
    if use_depth and feature_step > 0:
        add_check_maps(ace_map, dataset, feature_step)
    ace_map.meta["total_seconds"] = time.perf_counter() - start
    return ace_map
