"""Encoder pretraining, ACE-style: one shared encoder, one head per scene, trained jointly.

Data: procedural rooms of :mod:`prism_ros.synthetic.scene` (seeded geometry), re-textured and re-lit here
for variety: material pattern frequencies, weights and contrast are drawn per surface (wider ranges than
the synthetic defaults), and every view gets its own lighting (random light direction, ambient/diffuse
ratio, exposure, gamma, colour tint) and sensor noise, so features must be invariant to illumination but
tied to surface texture and geometry. Cameras stand at random places in the room looking at objects or
in random directions. Real RGB-D sequences with poses (``real=``) join as extra scenes.
Each step draws ``scenes_per_step`` scenes and ``views_per_scene`` views of each, applies ACE's mapping
augmentation (scale, in-plane rotation, brightness/contrast), crops ``crop`` x ``crop`` pixels, encodes
the batch and regresses every valid feature cell's world coordinate with that scene's head (Euclidean
distance to the depth-given coordinate, DSAC*'s RGB-D objective; synthetic depth is exact).
Why a second term: on a CPU budget (minutes, not ACE's GPU-days over 100 ScanNet scenes) the heads
stay poor for most of the run, and the regression alone taught the encoder smooth, weakly discriminative
features (measured: worse than a random encoder for mapping). So the loss adds an InfoNCE matching term
between cells of two views of the same scene that see the same surface point (found with depth and
poses): it asks directly for what a head needs, features that differ between surface points and stay
the same across viewpoint, scale, rotation and lighting. Heads use the CPU recipe's architecture.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prism_ros.ace.buffer import Augmentation, AugmentedView, MappingFrame, augment, feature_targets, prepare_frame
from prism_ros.ace.encoder import LITE_CONFIG, Encoder, EncoderConfig, normalise, round_to_fp16, save_encoder
from prism_ros.ace.head import Head, HeadConfig
from prism_ros.frame import Intrinsics
from prism_ros.synthetic.scene import (
    N_ROOM_FACES,
    NOISE_PERIOD,
    ROOM_SIZE,
    albedo,
    make_scene,
    pixel_rays,
    render_scene,
)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining data and schedule (defaults: the shipped encoder's run)."""

    scenes: int = 16
    views_per_scene_rendered: int = 32
    width: int = 320
    height: int = 240
    steps: int = 8000
    minutes: float | None = 22.0  # stop earlier when this wall time (rendering included) is reached
    scenes_per_step: int = 2
    views_per_scene: int = 4
    crop: int = 128
    lr_encoder: float = 1e-3
    lr_head: float = 5e-3
    head_width: int = 256
    matching_weight: float = 1.0
    temperature: float = 0.1
    seed: int = 0


# --------------------------------------------------------------------------------------- scene variety
def varied_materials(rng: np.random.Generator, count: int) -> torch.Tensor:
    """Material rows (count, 22) as :func:`prism_ros.synthetic.scene.make_materials` lays them out, with wider
    ranges: colours of any contrast, pattern periods 3 cm - 1 m, random pattern weights and noise shifts."""
    rows = []
    for surface in range(count):
        c0 = rng.uniform(0.15, 1.0, 3)
        c1 = np.clip(c0 * rng.uniform(0.05, 0.9) + rng.uniform(-0.1, 0.25, 3), 0.02, 1.0)
        if rng.random() < 0.3:  # near-grey surfaces
            c0, c1 = np.full(3, c0.mean()), np.full(3, c1.mean())
        dirs = rng.normal(size=(3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        big = surface < N_ROOM_FACES
        periods = np.exp(rng.uniform(np.log(0.08), np.log(1.0), 3)) if big else \
            np.exp(rng.uniform(np.log(0.03), np.log(0.4), 3))
        freq = np.r_[2 * np.pi / periods[:2], 1 / periods[2]]
        weights = rng.dirichlet(np.full(3, 0.7)) + 0.05
        rows.append(np.r_[c0, c1, dirs.reshape(-1), freq, weights, rng.uniform(0, NOISE_PERIOD)])
    return torch.tensor(np.array(rows), dtype=torch.float32)


def look_at(position: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """T_world_camera (optical frame: z forward, y down) at ``position`` looking at ``target`` (z-up world)."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / max(np.linalg.norm(x), 1e-9)
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.stack([x, y, z], 1), position
    return T


def relit_grey(scene, T_world_camera: np.ndarray, intrinsics: Intrinsics, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8, depth float32) of one view with random lighting and sensor noise."""
    view = render_scene(scene, T_world_camera, intrinsics)
    T = torch.as_tensor(T_world_camera, dtype=torch.float64)
    dirs = pixel_rays(intrinsics) @ T[:3, :3].T
    points = (T[:3, 3] + view.depth[..., None] * dirs).reshape(-1, 3)
    base = albedo(points, F.embedding(view.surface.reshape(-1), scene.materials))
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.3
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.3, 0.8)
    lambert = (view.normal.reshape(-1, 3).float() @ torch.tensor(light, dtype=torch.float32)).clamp_min(0)
    shade = ambient + (1 - ambient) * lambert
    tint = torch.tensor(rng.uniform(0.85, 1.15, 3), dtype=torch.float32)
    colour = (base * shade[:, None] * tint * rng.uniform(0.6, 1.4)).clamp(0, 1) ** rng.uniform(0.7, 1.4)
    grey = (colour @ torch.tensor([0.299, 0.587, 0.114])).reshape(view.depth.shape) * 255
    grey = grey + rng.uniform(0, 3) * torch.randn(grey.shape, generator=torch.Generator().manual_seed(
        int(rng.integers(2**31))))
    return grey.round().clamp(0, 255).to(torch.uint8).numpy(), view.depth.float().numpy()


def synthetic_scene_views(seed: int, config: PretrainConfig) -> list[MappingFrame]:
    """Rendered views (grey, depth, K, pose) of one procedural scene with varied materials and lighting.

    Views cluster like a mapping sequence (what a head is trained on in ACE): cameras within ~0.5 m of a
    centre, looking at a common region (an object or a wall area) with jitter."""
    rng = np.random.default_rng([config.seed, seed, 99])
    intrinsics = Intrinsics(262.5 * config.width / 320, 262.5 * config.width / 320, (config.width - 1) / 2,
                            (config.height - 1) / 2, config.width, config.height)
    X, Y, _ = ROOM_SIZE
    centre = np.array([rng.uniform(1.2, X - 1.2), rng.uniform(1.2, Y - 1.2), rng.uniform(0.9, 1.9)])
    positions = centre + rng.normal(0, 0.3, (config.views_per_scene_rendered, 3)).clip(-0.6, 0.6)
    scene = make_scene(int(rng.integers(1 << 30)), keep_out=positions, clearance=0.45,
                       n_boxes=int(rng.integers(3, 10)), n_spheres=int(rng.integers(1, 6)),
                       n_cylinders=int(rng.integers(1, 6)))
    scene.materials = varied_materials(rng, scene.count)
    centres = np.concatenate([scene.spheres[:, :3].numpy(), scene.boxes[:, :3].numpy(),
                              np.c_[scene.cylinders[:, :2].numpy(), scene.cylinders[:, 3].numpy() / 2]])
    near = centres[np.linalg.norm(centres - centre, axis=1) > 1.0]
    if len(near) and rng.random() < 0.7:
        focus = near[rng.integers(len(near))]
    else:
        yaw = rng.uniform(0, 2 * np.pi)
        focus = centre + 2.0 * np.array([np.cos(yaw), np.sin(yaw), rng.uniform(-0.5, 0.2)])
    views = []
    for p in positions:
        target = focus + rng.normal(0, 0.5, 3)
        if np.linalg.norm(target - p) < 0.5:
            target = p + (focus - centre)
        T = look_at(p, target, np.deg2rad(rng.uniform(-12, 12)))
        grey, depth = relit_grey(scene, T, intrinsics, rng)
        views.append(MappingFrame(grey, intrinsics.K, T, depth))
    return views


def real_scene_views(path: str | Path, height: int, frames: str | None = None) -> list[MappingFrame]:
    """Views of a real posed RGB-D sequence (frames with pose and depth) at ``height`` rows."""
    from prism_ros.datasets import open_dataset

    return [prepare_frame(f, height, True) for f in open_dataset(path, frames=frames)
            if f.pose is not None and f.depth is not None]


# ---------------------------------------------------------------------------------------- training
def crop_view(aug: AugmentedView, size: int, rng: np.random.Generator) -> AugmentedView:
    """A random ``size`` x ``size`` crop (zero-padded when the image is smaller) with K and H adjusted."""
    h, w = aug.grey.shape
    y0, x0 = int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))
    grey = np.zeros((size, size), np.float32)
    valid = np.zeros((size, size), bool)
    part = (slice(y0, y0 + size), slice(x0, x0 + size))
    grey[:min(size, h - y0), :min(size, w - x0)] = aug.grey[part]
    valid[:min(size, h - y0), :min(size, w - x0)] = aug.valid[part]
    K = aug.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    shift = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])  # crop pixel -> augmented pixel
    return AugmentedView(grey, valid, K, aug.T_world_camera, aug.H_to_original @ shift)


def correspondence_loss(fmap: torch.Tensor, crops: list[AugmentedView], owners: list[int], worlds: list[np.ndarray],
                        temperature: float, tolerance: float = 0.08) -> torch.Tensor:
    """InfoNCE between feature cells of two crops of the same scene that see the same surface point.

    Cell i of crop a matches cell j of crop b when a's depth-given world point projects into cell j and b's
    own world point there is within ``tolerance`` m (visible, not occluded); all cells of b are the
    candidates. Cosine similarity of L2-normalised features over ``temperature``, cross-entropy to the match.
    """
    rows, cols = fmap.shape[2:]
    total, count = fmap.new_zeros(()), 0
    for a in range(len(crops)):
        for b in range(a + 1, len(crops)):
            if owners[a] != owners[b]:
                continue
            ia = np.flatnonzero(np.isfinite(worlds[a][:, 0]))
            if len(ia) == 0:
                continue
            T_cw = np.linalg.inv(crops[b].T_world_camera)
            cam = worlds[a][ia] @ T_cw[:3, :3].T + T_cw[:3, 3]
            K = crops[b].K
            z = np.maximum(cam[:, 2], 1e-6)
            u = np.round((K[0, 0] * cam[:, 0] / z + K[0, 2]) / 8).astype(np.int64)
            v = np.round((K[1, 1] * cam[:, 1] / z + K[1, 2]) / 8).astype(np.int64)
            inside = (cam[:, 2] > 0.1) & (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
            jb = np.where(inside, v * cols + u, 0)
            close = inside & (np.linalg.norm(worlds[b][jb] - worlds[a][ia], axis=1) < tolerance)  # NaN: False
            if close.sum() < 4:
                continue
            fa = F.normalize(fmap[a].flatten(1).T[torch.from_numpy(ia[close])], dim=-1)
            fb = F.normalize(fmap[b].flatten(1).T, dim=-1)
            total = total + F.cross_entropy(fa @ fb.T / temperature, torch.from_numpy(jb[close]), reduction="sum")
            count += int(close.sum())
    return total / max(count, 1)


def pretrain_encoder(out: str | Path, config: PretrainConfig = PretrainConfig(), real: list[str] = (),
                     encoder_config: EncoderConfig = LITE_CONFIG, device="cpu", progress: bool = True,
                     checkpoint_every: int = 500) -> Encoder:
    """Train an encoder from scratch (see module doc); writes fp16 weights with a note to ``out``."""
    start = time.perf_counter()
    torch.set_flush_denormal(True)  # tiny activations otherwise slow CPU convolutions down 4x and more
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = [synthetic_scene_views(s, config) for s in
              tqdm(range(config.scenes), desc="render scenes", disable=not progress)]
    scenes += [real_scene_views(path, config.height) for path in real]
    scenes = [s for s in scenes if len(s) >= 2]
    render_seconds = time.perf_counter() - start
    encoder = Encoder(encoder_config).to(device).train()
    heads = [Head(HeadConfig(encoder_config.out, config.head_width, 1),
                  torch.tensor(np.mean([v.T_world_camera[:3, 3] for v in s], 0), dtype=torch.float32)).to(device)
             for s in scenes]
    optimiser = torch.optim.AdamW([{"params": encoder.parameters(), "lr": config.lr_encoder}] +
                                  [{"params": h.parameters(), "lr": config.lr_head} for h in heads], weight_decay=0.01)
    base_lr = [g["lr"] for g in optimiser.param_groups]
    train_start = time.perf_counter()

    def set_learning_rate(step: int) -> None:
        """5 % warm-up, then cosine decay; progress is by steps or by the time budget, whichever is further."""
        progress = step / config.steps
        if config.minutes:
            budget = 60 * config.minutes - (train_start - start)
            progress = max(progress, (time.perf_counter() - train_start) / max(budget, 1.0))
        factor = min(progress / 0.05, 1.0) * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))
        for group, lr in zip(optimiser.param_groups, base_lr):
            group["lr"] = lr * max(factor, 0.01)
    aug = Augmentation()
    losses, matches, step = [], [], 0

    def note() -> dict:
        return {"data": f"{config.scenes} procedural scenes x {config.views_per_scene_rendered} views "
                        f"({config.width}x{config.height}, varied materials and lighting)"
                        + (f" + real: {', '.join(map(str, real))}" if real else ""),
                "steps": step, "seconds": round(time.perf_counter() - start, 1),
                "render_seconds": round(render_seconds, 1), "config": asdict(config),
                "final_loss_m": float(np.mean(losses[-100:])) if losses else None,
                "loss_curve_m": [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)],
                "matching_curve_nats": [float(np.mean(matches[i:i + 100])) for i in range(0, len(matches), 100)],
                "device": str(device), "torch_threads": torch.get_num_threads()}

    bar = tqdm(range(config.steps), desc="pretrain encoder", disable=not progress)
    for step in bar:
        chosen = rng.choice(len(scenes), size=min(config.scenes_per_step, len(scenes)), replace=False)
        crops, owners = [], []
        for s in chosen:
            for v in rng.choice(len(scenes[s]), size=config.views_per_scene, replace=False):
                view = scenes[s][v]
                crops.append((view, crop_view(augment(view, rng, aug), config.crop, rng)))
                owners.append(s)
        images = normalise(torch.from_numpy(np.stack([c.grey for _, c in crops])).to(device))[:, None]
        fmap = encoder(images)  # (B, C, r, c)
        rows, cols = fmap.shape[2:]
        loss, count, worlds = 0.0, 0, []
        for b, ((view, cropped), s) in enumerate(zip(crops, owners)):
            _, valid, world = feature_targets(view, cropped, rows, cols)
            keep = valid & np.all(np.isfinite(world), 1)
            worlds.append(np.where(keep[:, None], world, np.nan))
            if not keep.any():
                continue
            features = fmap[b].flatten(1).T[torch.from_numpy(np.flatnonzero(keep)).to(device)]
            target = torch.from_numpy(world[keep]).float().to(device)
            loss = loss + (heads[s](features) - target).norm(dim=-1).sum()
            count += int(keep.sum())
        if count == 0:
            continue
        regression = loss / count
        matching = correspondence_loss(fmap, [c for _, c in crops], owners, worlds, config.temperature)
        loss = regression + config.matching_weight * matching
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        set_learning_rate(step)
        optimiser.step()
        losses.append(regression.item())
        matches.append(matching.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f} m", matching=f"{np.mean(matches[-50:]):.2f}")
        if checkpoint_every and step and step % checkpoint_every == 0:
            save_encoder(encoder, out, note())
        if config.minutes and time.perf_counter() - start > 60 * config.minutes:
            break
    step += 1
    encoder = round_to_fp16(encoder.eval())
    save_encoder(encoder, out, note())
    return encoder
