"""ACE's training buffer: encoder features sampled from all mapping images at once, shuffled.

This is the key idea of ACE: the head needs no spatial context, so one batch can hold features from
thousands of views and its gradients are decorrelated (stable training at high learning rates). Each
mapping image is passed through the encoder ``passes`` times with a fresh ACE augmentation (scale 2/3-1.5,
in-plane rotation +-15 deg, brightness and contrast +-10 %), and ``samples_per_image`` random valid feature
cells of each pass are kept with what the loss needs: the feature (fp16), its pixel, the index of its
(augmented) view (intrinsics and world-to-camera pose are stored per view) and, with depth, its world
coordinate (NaN without depth).

Augmentation is a homography of the working image: scaling changes the intrinsics, an in-plane rotation
about the optical axis is the homography K R_z K^-1 and turns the pose by R_z; the world coordinates of a
feature come from the un-augmented depth at the pre-image of its pixel, so depth is never resampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from prism_ros.ace.encoder import OUTPUT_STRIDE, Encoder, feature_pixels, grey_image, normalise
from prism_ros.frame import Frame, Intrinsics


@dataclass(frozen=True)
class Augmentation:
    """ACE's mapping augmentation (scale range, max in-plane rotation, brightness/contrast jitter)."""

    scale: tuple[float, float] = (2 / 3, 1.5)
    rotation_deg: float = 15.0
    brightness: float = 0.1
    contrast: float = 0.1


NO_AUGMENTATION = Augmentation((1.0, 1.0), 0.0, 0.0, 0.0)


@dataclass
class MappingFrame:
    """One mapping view at the working resolution: grey (h,w) uint8, K (3,3), T_world_camera (4,4) and
    depth (h,w) float32 registered to the colour camera (NaN invalid) or None."""

    grey: np.ndarray
    K: np.ndarray
    T_world_camera: np.ndarray
    depth: np.ndarray | None = None
    index: int = 0


def working_intrinsics(intrinsics: Intrinsics, height: int) -> Intrinsics:
    """Intrinsics of the image resized to ``height`` rows (the working resolution of a recipe)."""
    return intrinsics.scaled(height / intrinsics.height)


def undistort(image: np.ndarray, intrinsics: Intrinsics, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """The image as a distortion-free pinhole with the same K (no-op when distortion is zero)."""
    if not np.any(np.asarray(intrinsics.distortion)):
        return image
    maps = cv2.initUndistortRectifyMap(intrinsics.K, np.asarray(intrinsics.distortion), None, intrinsics.K,
                                       (intrinsics.width, intrinsics.height), cv2.CV_32FC1)
    return cv2.remap(image, *maps, interpolation)


def query_grey(rgb: np.ndarray, intrinsics: Intrinsics, height: int) -> tuple[np.ndarray, Intrinsics]:
    """Grey image at the working height (undistorted) and its intrinsics."""
    work = working_intrinsics(intrinsics, height)
    grey = undistort(grey_image(rgb), intrinsics)
    return cv2.resize(grey, (work.width, work.height), interpolation=cv2.INTER_AREA), work


def register_depth(frame: Frame, colour: Intrinsics) -> np.ndarray:
    """Depth of ``frame`` seen from the colour camera with intrinsics ``colour`` (h,w), NaN where unknown.

    Registered depth (no ``depth_intrinsics``) is resized by nearest neighbour; otherwise every valid depth
    pixel is back-projected with the depth intrinsics, moved by ``T_color_depth`` (identity when unknown,
    as for 7-Scenes) and z-buffered into the colour image (scatter-min)."""
    depth = frame.depth
    if frame.depth_intrinsics is None:
        depth = undistort(depth, frame.intrinsics, cv2.INTER_NEAREST)
        return cv2.resize(depth, (colour.width, colour.height), interpolation=cv2.INTER_NEAREST)
    d_int = frame.depth_intrinsics
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    points = np.stack([(u - d_int.cx) / d_int.fx * z, (v - d_int.cy) / d_int.fy * z, z], -1)
    if frame.T_color_depth is not None:
        points = points @ frame.T_color_depth[:3, :3].T + frame.T_color_depth[:3, 3]
    front = points[:, 2] > 1e-3
    points = points[front]
    uc = np.round(colour.fx * points[:, 0] / points[:, 2] + colour.cx).astype(np.int64)
    vc = np.round(colour.fy * points[:, 1] / points[:, 2] + colour.cy).astype(np.int64)
    inside = (uc >= 0) & (uc < colour.width) & (vc >= 0) & (vc < colour.height)
    flat = torch.from_numpy(vc[inside] * colour.width + uc[inside])
    out = torch.full((colour.height * colour.width,), float("inf"), dtype=torch.float32)
    out.scatter_reduce_(0, flat, torch.from_numpy(points[inside, 2].astype(np.float32)), "amin")
    out[torch.isinf(out)] = float("nan")
    return out.view(colour.height, colour.width).numpy()


def prepare_frame(frame: Frame, height: int, use_depth: bool = True) -> MappingFrame:
    """A dataset frame as a mapping view at the working ``height`` (grey, K, pose, registered depth)."""
    grey, work = query_grey(frame.rgb, frame.intrinsics, height)
    depth = register_depth(frame, work) if use_depth and frame.depth is not None else None
    return MappingFrame(grey, work.K, np.asarray(frame.pose, dtype=np.float64), depth, frame.index)


def view_frame(view: MappingFrame) -> Frame:
    """A mapping view as a pinhole Frame (grey image, registered depth, pose), for what is built beside the
    heads from the same views (the depth check's map cloud, the feature keyframes)."""
    h, w = view.grey.shape
    K = view.K
    return Frame(int(view.index), 0.0, view.grey, view.depth, Intrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h),
                 pose=view.T_world_camera)


# -------------------------------------------------------------------------------------- augmentation
@dataclass
class AugmentedView:
    """An augmented view: grey float (h',w') in [0, 255], valid (h',w') bool, K' (3,3), T_world_camera',
    and the homography H (3,3) from augmented to original pixels."""

    grey: np.ndarray
    valid: np.ndarray
    K: np.ndarray
    T_world_camera: np.ndarray
    H_to_original: np.ndarray


def augment(view: MappingFrame, rng: np.random.Generator, aug: Augmentation) -> AugmentedView:
    """Scale, rotate about the optical axis and jitter one view (OpenCV warpPerspective)."""
    h, w = view.grey.shape
    s = rng.uniform(*aug.scale)
    angle = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
    w2, h2 = max(int(round(w * s)), OUTPUT_STRIDE), max(int(round(h * s)), OUTPUT_STRIDE)
    sx, sy = w2 / w, h2 / h
    K = view.K
    K2 = np.array([[K[0, 0] * sx, 0, (K[0, 2] + 0.5) * sx - 0.5], [0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5],
                   [0, 0, 1]])
    c, sn = np.cos(angle), np.sin(angle)
    Rz = np.array([[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]])  # X_aug = Rz X_orig
    H = K2 @ Rz @ np.linalg.inv(K)  # original pixel -> augmented pixel
    grey = cv2.warpPerspective(view.grey, H, (w2, h2), flags=cv2.INTER_LINEAR, borderValue=0).astype(np.float32)
    valid = cv2.warpPerspective(np.ones_like(view.grey), H, (w2, h2), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    brightness = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    grey = grey * brightness
    mean = grey[valid].mean() if valid.any() else 0.0
    grey = np.clip((grey - mean) * contrast + mean, 0, 255)
    T = view.T_world_camera.copy()
    T[:3, :3] = T[:3, :3] @ Rz.T
    return AugmentedView(grey, valid, K2, T, np.linalg.inv(H))


def feature_targets(view: MappingFrame | None, aug: AugmentedView, rows: int, cols: int):
    """For the feature grid (rows, cols) of an augmented view: pixels (rows*cols, 2), valid (rows*cols,)
    (the warped image around the centre) and world coordinates from depth (rows*cols, 3) or None."""
    pixels = feature_pixels(rows, cols).reshape(-1, 2).numpy()
    # a cell is valid when the warped image covers 4 px around its centre (borders of the frame itself are fine)
    inner = cv2.erode(aug.valid.astype(np.uint8), np.ones((9, 9), np.uint8))
    valid = inner[pixels[:, 1].astype(np.int64), pixels[:, 0].astype(np.int64)] > 0
    world = None
    if view is not None and view.depth is not None:
        original = np.c_[pixels, np.ones(len(pixels))] @ aug.H_to_original.T
        original = original[:, :2] / original[:, 2:]
        h, w = view.depth.shape
        ui, vi = np.round(original[:, 0]).astype(np.int64), np.round(original[:, 1]).astype(np.int64)
        inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
        z = np.full(len(pixels), np.nan, np.float64)
        z[inside] = view.depth[vi[inside], ui[inside]]
        K = view.K
        cam = np.stack([(ui - K[0, 2]) / K[0, 0] * z, (vi - K[1, 2]) / K[1, 1] * z, z], -1)
        world = cam @ view.T_world_camera[:3, :3].T + view.T_world_camera[:3, 3]
    return pixels, valid, world


# -------------------------------------------------------------------------------------------- buffer
@dataclass
class FeatureBuffer:
    """Sampled training features of all mapping views (see the module docstring)."""

    features: torch.Tensor  # (N, C) fp16
    pixels: torch.Tensor  # (N, 2) float32
    view: torch.Tensor  # (N,) int64 index into K / T_camera_world
    world: torch.Tensor  # (N, 3) float32 from depth, NaN without
    K: torch.Tensor  # (V, 4) fx fy cx cy of each augmented view
    T_camera_world: torch.Tensor  # (V, 3, 4) float32

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``index`` with their views' intrinsics and poses gathered."""
        view = self.view[index]
        return {"features": self.features[index].float(), "pixels": self.pixels[index], "K": self.K[view],
                "T_camera_world": self.T_camera_world[view], "world": self.world[index]}

    @property
    def has_depth(self) -> bool:
        return bool(torch.isfinite(self.world[:, 0]).any())


@torch.no_grad()
def fill_buffer(encoder: Encoder, views: list[MappingFrame], samples_per_image: int, passes: int,
                aug: Augmentation = Augmentation(), seed: int = 0, device: str | torch.device = "cpu",
                progress: bool = True) -> FeatureBuffer:
    """Encode every view ``passes`` times (a new augmentation each pass) and keep ``samples_per_image``
    random valid cells per pass. Images differ in size after augmentation, so they are encoded one by one."""
    rng = np.random.default_rng(seed)
    features, pixels, view_ids, worlds, Ks, Ts = [], [], [], [], [], []
    order = [(p, i) for p in range(passes) for i in rng.permutation(len(views))]
    encoder = encoder.to(device).eval()
    for _, i in tqdm(order, desc="ace buffer", unit="img", disable=not progress, leave=False):
        view = views[i]
        augmented = augment(view, rng, aug)
        image = normalise(torch.from_numpy(augmented.grey).to(device))[None, None]
        fmap = encoder(image)[0]
        rows, cols = fmap.shape[1:]
        pix, valid, world = feature_targets(view, augmented, rows, cols)
        cells = np.flatnonzero(valid)
        if len(cells) == 0:
            continue
        cells = rng.choice(cells, min(samples_per_image, len(cells)), replace=False)
        cells_t = torch.from_numpy(cells).to(device)
        features.append(fmap.flatten(1).T[cells_t].half())
        pixels.append(torch.from_numpy(pix[cells]))
        worlds.append(torch.from_numpy(world[cells]).float() if world is not None
                      else torch.full((len(cells), 3), float("nan")))
        view_ids.append(torch.full((len(cells),), len(Ks), dtype=torch.int64))
        K = augmented.K
        Ks.append(torch.tensor([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=torch.float32))
        Ts.append(torch.from_numpy(np.linalg.inv(augmented.T_world_camera)[:3]).float())
    to = lambda x: torch.cat(x).to(device)
    return FeatureBuffer(to(features), to(pixels), to(view_ids), to(worlds), torch.stack(Ks).to(device),
                         torch.stack(Ts).to(device))
