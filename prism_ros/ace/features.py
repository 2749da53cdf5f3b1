"""Classical relocalization: local features of mapping keyframes with depth, then PnP RANSAC.

This is what a user would pick instead of ACE (OpenCV only, no learning): the baseline of
``bench/ace_vs_features.py`` and the second opinion of :mod:`prism_ros.ace.hybrid`. No ROS imports.

Mapping (:func:`build_feature_map`): every ``keyframe_step``-th posed frame becomes a keyframe. SIFT (default)
or ORB keypoints are detected on its grey image; each keypoint gets a world point from the depth registered
to the colour camera (:func:`prism_ros.ace.buffer.register_depth`, which also handles 7-Scenes' unregistered
depth) and the frame's camera-to-world pose. Keypoints without a reliable depth (fewer than 5 valid depths in
their 3x3 window, or a window spanning a depth edge) are dropped: a wrong 3-D point is worse than none.

Query (:meth:`FeatureMap.localize`):
1. Retrieval by descriptor voting: every query descriptor looks up its ``retrieval_neighbours`` nearest
   descriptors among all keyframes (one FLANN index, kd-tree for SIFT, LSH for ORB) and gives one vote to each
   keyframe among them; the ``top_keyframes`` with most votes are kept. Why voting rather than a global
   descriptor or a bag of words: it needs no trained vocabulary or network (a vocabulary learnt from tens of
   keyframes is weak), it ranks keyframes by the evidence that matching will then use, and it costs one
   approximate k-NN search.
2. Matching against each retrieved keyframe separately, exact 2-NN (batched in torch as one distance matrix
   per keyframe; ORB's Hamming distance through unpacked bits) with Lowe's ratio test. The ratio test has to
   be per keyframe: against all keyframes at once, the same scene point seen in neighbouring keyframes makes
   the second neighbour as close as the first and the test rejects the good matches. A query keypoint keeps
   its closest accepted match over the keyframes, so inlier counts count query keypoints.
3. ``cv2.solvePnPRansac`` with USAC MAGSAC++ (plain RANSAC if this OpenCV lacks USAC), then Levenberg-Marquardt
   refinement (``cv2.solvePnPRefineLM``) on the inliers, repeated while the inlier set changes.
Poses with fewer than ``min_inliers`` inliers are rejected (``pose`` None, ``candidate`` kept), as in ACE.
Pixel thresholds are given for 480-row images and scaled to the query's height.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from prism_ros.ace.buffer import register_depth
from prism_ros.errors import InputError
from prism_ros.frame import Frame, Intrinsics

REFERENCE_HEIGHT = 480  # pixel thresholds are given for 480-row images
DETECTORS = ("sift", "orb")
USAC_FLAG = getattr(cv2, "USAC_MAGSAC", cv2.SOLVEPNP_ITERATIVE)  # MAGSAC++ when this OpenCV has USAC


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that sets the baseline's cost and accuracy (defaults: SIFT, every 5th frame a keyframe)."""

    detector: str = "sift"  # "sift" (float, L2) or "orb" (binary, Hamming)
    max_features: int = 2000  # per image (mapping and query)
    sift_contrast_threshold: float = 0.04  # OpenCV's default; lower it for low-contrast images
    orb_fast_threshold: int = 20  # OpenCV's default; lower it for low-contrast images
    keyframe_step: int = 5  # every k-th mapping frame is a keyframe
    retrieval_neighbours: int = 8  # k-NN per query descriptor for keyframe voting
    top_keyframes: int = 5  # retrieved keyframes matched per query
    ratio: float = 0.8  # Lowe's ratio test (per keyframe)
    ransac_threshold_px: float = 6.0  # reprojection inlier threshold at 480 rows
    ransac_iterations: int = 5000
    ransac_confidence: float = 0.9999
    refine_iterations: int = 5
    min_inliers: int = 30  # fewer inliers: the pose is rejected

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise InputError(f"unknown detector {self.detector!r}", f"use one of {list(DETECTORS)}")
        if self.keyframe_step < 1 or self.top_keyframes < 1 or self.retrieval_neighbours < 1:
            raise InputError("keyframe_step, top_keyframes and retrieval_neighbours must be >= 1",
                             "give positive integers")


@dataclass
class Keyframe:
    """One mapping keyframe: keypoint pixels (M,2) float32, descriptors (M,D) (float32 SIFT / uint8 ORB),
    their world points (M,3) float64 and the frame's T_world_camera (4,4)."""

    index: int
    T_world_camera: np.ndarray
    pixels: np.ndarray
    descriptors: np.ndarray
    world: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass
class FeatureRelocalization:
    """``pose`` T_world_camera (4,4) or None when rejected; ``inliers``; ``candidate`` the best pose found
    even when rejected; ``matches`` 2D-3D correspondences given to PnP; ``keyframes`` the retrieved ones
    (dataset indices); ``reason`` why it was rejected. Field names match ACE's ``Relocalization``."""

    pose: np.ndarray | None
    inliers: int
    candidate: np.ndarray | None = None
    matches: int = 0
    keyframes: list[int] = field(default_factory=list)
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.pose is not None


# -------------------------------------------------------------------------------------- detection
def make_detector(config: FeatureConfig):
    """The OpenCV feature detector/descriptor of ``config``."""
    if config.detector == "sift":
        return cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=config.sift_contrast_threshold)
    return cv2.ORB_create(nfeatures=config.max_features, fastThreshold=config.orb_fast_threshold)


def detect(detector, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Keypoint pixels (N,2) float32 and descriptors (N,D) (None when none) of an RGB or grey image."""
    grey = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = detector.detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), None
    return np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2), descriptors


def undistorted_pixels(pixels: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Pixels of a distorted camera as seen by the pinhole with the same K (no-op without distortion)."""
    if len(pixels) == 0 or not np.any(np.asarray(intrinsics.distortion)):
        return pixels
    K = intrinsics.K
    return cv2.undistortPoints(pixels.reshape(-1, 1, 2).astype(np.float64), K, np.asarray(intrinsics.distortion),
                               P=K).reshape(-1, 2).astype(np.float32)


def depth_at_keypoints(depth: np.ndarray, pixels: np.ndarray, min_valid: int = 5,
                       max_spread: tuple[float, float] = (0.02, 0.05)) -> np.ndarray:
    """Median depth (N,) of the 3x3 window around each pixel, NaN where fewer than ``min_valid`` depths are
    valid or the window spans a depth edge (max - min > a + b * median, ``max_spread`` = (a m, b))."""
    h, w = depth.shape
    u = np.round(pixels[:, 0]).astype(np.int64)
    v = np.round(pixels[:, 1]).astype(np.int64)
    du, dv = np.meshgrid(np.arange(-1, 2), np.arange(-1, 2))
    uu, vv = u[:, None] + du.ravel(), v[:, None] + dv.ravel()  # (N, 9)
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
    window = np.full(uu.shape, np.nan, np.float32)
    window[inside] = depth[vv[inside], uu[inside]]
    window[~(window > 0)] = np.nan  # 0 and NaN are invalid
    valid = np.isfinite(window).sum(1)
    out = np.full(len(pixels), np.nan)
    enough = valid >= min_valid
    if not enough.any():
        return out
    win = window[enough]
    median = np.nanmedian(win, 1)
    spread = np.nanmax(win, 1) - np.nanmin(win, 1)
    out[np.flatnonzero(enough)] = np.where(spread <= max_spread[0] + max_spread[1] * median, median, np.nan)
    return out


def make_keyframe(frame: Frame, detector) -> Keyframe | None:
    """Keypoints of a posed RGB-D frame with their world points; None when the frame cannot be used."""
    if frame.pose is None or frame.rgb is None or frame.depth is None or not np.all(np.isfinite(frame.pose)):
        return None
    intr = frame.intrinsics
    pixels, descriptors = detect(detector, frame.rgb)
    if descriptors is None:
        return None
    depth = register_depth(frame, intr)  # depth in the (undistorted) colour camera, NaN unknown
    pinhole = undistorted_pixels(pixels, intr)
    z = depth_at_keypoints(depth, pinhole)
    keep = np.isfinite(z)
    if not keep.any():
        return None
    z, pinhole = z[keep], pinhole[keep].astype(np.float64)
    camera = np.stack([(pinhole[:, 0] - intr.cx) / intr.fx * z, (pinhole[:, 1] - intr.cy) / intr.fy * z, z], -1)
    pose = np.asarray(frame.pose, dtype=np.float64)
    world = camera @ pose[:3, :3].T + pose[:3, 3]
    return Keyframe(int(frame.index), pose, pixels[keep], descriptors[keep], world)


# ------------------------------------------------------------------------------------------ matching
def descriptor_matrix(descriptors: np.ndarray, detector: str) -> torch.Tensor:
    """Descriptors as float rows whose squared L2 distances give the detector's metric: SIFT as is, ORB as
    unpacked bits (squared L2 of 0/1 vectors = Hamming distance)."""
    if detector == "orb":
        return torch.from_numpy(np.unpackbits(descriptors, axis=1).astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32))


def ratio_matches(query: torch.Tensor, keyframe_descriptors: list[torch.Tensor], ratio: float, detector: str):
    """Lowe ratio matches of the query rows (Q,D) against each keyframe separately, batched as one
    (K, Q, Mmax) distance tensor. Returns (keyframe slot, query row, keyframe row, distance) arrays."""
    sizes = [len(d) for d in keyframe_descriptors]
    usable = [i for i, n in enumerate(sizes) if n >= 2]
    if not usable or len(query) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, np.float32)
    m_max = max(sizes[i] for i in usable)
    padded = torch.zeros(len(usable), m_max, query.shape[1])
    keyframe_norm = torch.full((len(usable), m_max), float("inf"))  # padding rows never come first or second
    for slot, i in enumerate(usable):
        padded[slot, :sizes[i]] = keyframe_descriptors[i]
        keyframe_norm[slot, :sizes[i]] = (keyframe_descriptors[i] ** 2).sum(1)
    # |q - k|^2 = |k|^2 - 2 q.k + |q|^2; |q|^2 does not change the ranking, so it is added to the top 2 only
    partial = torch.baddbmm(keyframe_norm[:, None, :], query.expand(len(usable), -1, -1), padded.transpose(1, 2),
                            alpha=-2.0)
    best, index = partial.topk(2, dim=2, largest=False)
    best = (best + (query * query).sum(1)[None, :, None]).clamp_min_(0.0)
    # Lowe's ratio on distances: L2 for SIFT, Hamming (= squared L2 of bits) for ORB
    d1, d2 = (best[..., 0].sqrt(), best[..., 1].sqrt()) if detector == "sift" else (best[..., 0], best[..., 1])
    accepted = d1 < ratio * d2
    slot, row = torch.nonzero(accepted, as_tuple=True)
    return (np.asarray(usable)[slot.numpy()], row.numpy(), index[slot, row, 0].numpy(),
            d1[slot, row].numpy())


# ------------------------------------------------------------------------------------------- the map
class FeatureMap:
    """Keyframes with their descriptors and world points, plus a FLANN index of all descriptors for retrieval."""

    def __init__(self, keyframes: list[Keyframe], config: FeatureConfig, meta: dict | None = None):
        if not keyframes:
            raise InputError("no usable keyframe (each needs colour, depth and a pose)",
                             "give posed RGB-D mapping frames")
        self.config, self.keyframes, self.meta = config, keyframes, dict(meta or {})
        self._detector = make_detector(config)
        all_descriptors = np.concatenate([k.descriptors for k in keyframes])
        self._owner = np.concatenate([np.full(len(k), i) for i, k in enumerate(keyframes)])
        if config.detector == "sift":
            params = {"algorithm": 1, "trees": 4}  # FLANN randomised kd-trees
        else:
            params = {"algorithm": 6, "table_number": 6, "key_size": 12, "multi_probe_level": 1}  # FLANN LSH
        self._index_data = np.ascontiguousarray(all_descriptors)  # FLANN keeps a pointer: hold the array
        self._index = cv2.flann_Index(self._index_data, params)
        self._matrices = [descriptor_matrix(k.descriptors, config.detector) for k in keyframes]

    def __len__(self) -> int:
        return len(self.keyframes)

    @property
    def points(self) -> int:
        """Number of 3-D map points (keypoints with depth) over all keyframes."""
        return int(len(self._owner))

    def retrieve(self, descriptors: np.ndarray) -> np.ndarray:
        """Keyframe slots (best first, at most ``top_keyframes``) by descriptor voting (see module doc)."""
        k = min(self.config.retrieval_neighbours, len(self._owner))
        index, _ = self._index.knnSearch(np.ascontiguousarray(descriptors), k, params={"checks": 64})
        index = np.asarray(index, dtype=np.int64).reshape(len(descriptors), -1)
        found = (index >= 0) & (index < len(self._owner))  # LSH may return fewer than k
        owner = np.where(found, self._owner[np.clip(index, 0, len(self._owner) - 1)], -1)
        owner.sort(axis=1)
        first = np.ones_like(owner, dtype=bool)
        first[:, 1:] = owner[:, 1:] != owner[:, :-1]  # one vote per keyframe per query descriptor
        votes = np.bincount(owner[first & (owner >= 0)], minlength=len(self.keyframes))
        ranked = np.argsort(-votes, kind="stable")
        return ranked[votes[ranked] > 0][:self.config.top_keyframes]

    def correspondences(self, descriptors: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query keypoint rows (N,), world points (N,3)) matched in the keyframes ``slots``: ratio test per
        keyframe, then one match (the closest) per query keypoint."""
        query = descriptor_matrix(descriptors, self.config.detector)
        slot, row, kf_row, dist = ratio_matches(query, [self._matrices[s] for s in slots], self.config.ratio,
                                                self.config.detector)
        if len(row) == 0:
            return row, np.zeros((0, 3))
        order = np.argsort(dist, kind="stable")
        _, first = np.unique(row[order], return_index=True)
        pick = order[first]
        worlds = [self.keyframes[s].world for s in slots]
        offsets = np.cumsum([0] + [len(w) for w in worlds[:-1]])
        return row[pick], np.concatenate(worlds)[offsets[slot[pick]] + kf_row[pick]]

    def localize(self, rgb: np.ndarray, intrinsics: Intrinsics) -> FeatureRelocalization:
        """Pose of one query image (HxWx3 uint8 or grey) with its intrinsics (see the module doc)."""
        pixels, descriptors = detect(self._detector, rgb)
        if descriptors is None or len(pixels) < 6:
            return FeatureRelocalization(None, 0, reason=f"only {len(pixels)} keypoints")
        slots = self.retrieve(descriptors)
        keyframes = [self.keyframes[s].index for s in slots]
        rows, world = self.correspondences(descriptors, slots)
        if len(rows) < 6:
            return FeatureRelocalization(None, 0, matches=len(rows), keyframes=keyframes,
                                         reason=f"only {len(rows)} matches")
        threshold = self.config.ransac_threshold_px * intrinsics.height / REFERENCE_HEIGHT
        rvec_tvec, inliers = pnp_ransac(world, pixels[rows].astype(np.float64), intrinsics, threshold, self.config)
        if rvec_tvec is None:
            return FeatureRelocalization(None, 0, matches=len(rows), keyframes=keyframes, reason="PnP found no pose")
        pose = camera_to_world(*rvec_tvec)
        result = FeatureRelocalization(pose, inliers, pose, len(rows), keyframes)
        if inliers < self.config.min_inliers:
            result.pose, result.reason = None, f"{inliers} inliers < {self.config.min_inliers}"
        return result


def pnp_ransac(world: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics, threshold: float,
               config: FeatureConfig) -> tuple[tuple[np.ndarray, np.ndarray] | None, int]:
    """((rvec, tvec) world-to-camera or None, inlier count): USAC/RANSAC PnP, then LM on the inliers
    until the inlier set is stable."""
    K, dist = intrinsics.K, np.asarray(intrinsics.distortion, dtype=np.float64)
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            world, pixels, K, dist, iterationsCount=config.ransac_iterations, reprojectionError=threshold,
            confidence=config.ransac_confidence, flags=USAC_FLAG)
    except cv2.error:
        ok = False
    if not ok or inliers is None or not np.all(np.isfinite(tvec)):
        return None, 0
    mask = np.zeros(len(world), bool)
    mask[inliers.ravel()] = True
    for _ in range(config.refine_iterations):
        if mask.sum() < 6:
            break
        rvec, tvec = cv2.solvePnPRefineLM(world[mask], pixels[mask], K, dist, rvec.copy(), tvec.copy())
        projected, _ = cv2.projectPoints(world, rvec, tvec, K, dist)
        R, _ = cv2.Rodrigues(rvec)
        in_front = (world @ R[2] + tvec[2, 0]) > 0
        new_mask = (np.linalg.norm(projected.reshape(-1, 2) - pixels, axis=1) < threshold) & in_front
        if np.array_equal(new_mask, mask):
            break
        mask = new_mask
    return (rvec, tvec), int(mask.sum())


def camera_to_world(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """T_world_camera (4,4) from OpenCV's world-to-camera (rvec, tvec)."""
    R, _ = cv2.Rodrigues(rvec)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R.T, -R.T @ np.asarray(tvec, dtype=np.float64).reshape(3)
    return T


# ------------------------------------------------------------------------------------ entry points
def build_feature_map(frames, config: FeatureConfig = FeatureConfig(), progress: bool = True) -> FeatureMap:
    """Map posed RGB-D frames (a Dataset, read only at the keyframes, or any iterable of Frames, every
    ``keyframe_step``-th kept) into a :class:`FeatureMap`; the mapping time is in ``meta["mapping_seconds"]``."""
    start = time.perf_counter()
    detector = make_detector(config)
    if hasattr(frames, "__getitem__") and hasattr(frames, "__len__"):
        selected: Iterable[Frame] = (frames[i] for i in range(0, len(frames), config.keyframe_step))
        total = (len(frames) + config.keyframe_step - 1) // config.keyframe_step
    else:
        selected = (f for i, f in enumerate(frames) if i % config.keyframe_step == 0)
        total = None
    keyframes = []
    for frame in tqdm(selected, total=total, desc="feature map", unit="kf", disable=not progress, leave=False):
        keyframe = make_keyframe(frame, detector)
        if keyframe is not None:
            keyframes.append(keyframe)
    feature_map = FeatureMap(keyframes, config)
    feature_map.meta.update(mapping_seconds=time.perf_counter() - start, keyframes=len(keyframes),
                            points=feature_map.points)
    return feature_map


def localize_dataset(feature_map: FeatureMap, dataset, progress: bool = True):
    """[(timestamp, frame pose or None, FeatureRelocalization)] for every frame."""
    out = []
    times = dataset.timestamps
    for i, frame in enumerate(tqdm(dataset, total=len(dataset), desc="feature localize", unit="img",
                                   disable=not progress)):
        out.append((float(times[i]), frame.pose, feature_map.localize(frame.rgb, frame.intrinsics)))
    return out
