"""The classical relocalization baseline (prism_ros.ace.features): exact synthetic scenes, the
batched matcher against OpenCV's brute force, depth lookup at keypoints, rejection, and real 7-Scenes data."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from shared_data import sample

from prism_ros.ace.features import (
    FeatureConfig,
    build_feature_map,
    depth_at_keypoints,
    descriptor_matrix,
    localize_dataset,
    ratio_matches,
)
from prism_ros.datasets import open_dataset

# the procedural textures are low-contrast: lower the detectors' thresholds (the defaults suit real images)
SYNTHETIC_CONFIGS = {"sift": FeatureConfig(detector="sift", sift_contrast_threshold=0.01, keyframe_step=2),
                     "orb": FeatureConfig(detector="orb", orb_fast_threshold=5, keyframe_step=2)}


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation m, rotation deg) between two T_world_camera."""
    dt = float(np.linalg.norm(estimate[:3, 3] - truth[:3, 3]))
    cos = (np.trace(truth[:3, :3].T @ estimate[:3, :3]) - 1) / 2
    return dt, float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A 16-frame handheld sequence (seed 0) and 2 frames of a different scene (seed 1), 320x240, exact
    poses and depth."""
    from prism_ros.synthetic import generate

    root = tmp_path_factory.mktemp("feature_reloc")
    common = dict(motion="handheld", bag=None, width=320, height=240, progress=False)
    return generate(root / "seq", frames=16, seed=0, **common), generate(root / "other", frames=2, seed=1, **common)


@pytest.fixture(scope="module", params=sorted(SYNTHETIC_CONFIGS))
def synthetic_map(request, scenes):
    """(feature map of the even frames, the whole sequence, the other scene) per detector."""
    sequence, other = scenes
    dataset = open_dataset(sequence)
    return build_feature_map(dataset, SYNTHETIC_CONFIGS[request.param], progress=False), dataset, open_dataset(other)


def test_synthetic_held_out_frames_relocalize_within_a_centimetre(synthetic_map):
    feature_map, dataset, _ = synthetic_map
    assert [k.index for k in feature_map.keyframes] == list(range(0, 16, 2))
    held_out = open_dataset(dataset.path, frames="1:16:2")
    results = localize_dataset(feature_map, held_out, progress=False)
    assert len(results) == 8
    for _, truth, result in results:
        assert result.accepted, result.reason
        assert result.inliers >= 100
        dt, dr = pose_error(result.pose, truth)
        assert dt < 0.015 and dr < 0.3, (dt, dr)


def test_query_of_a_keyframe_retrieves_it_first_and_recovers_its_pose(synthetic_map):
    feature_map, dataset, _ = synthetic_map
    frame = dataset[6]
    result = feature_map.localize(frame.rgb, frame.intrinsics)
    assert result.keyframes[0] == 6
    dt, dr = pose_error(result.pose, frame.pose)
    assert dt < 0.005 and dr < 0.1, (dt, dr)


def test_other_scene_and_blank_image_are_rejected(synthetic_map):
    feature_map, dataset, other = synthetic_map
    for frame in other:
        result = feature_map.localize(frame.rgb, frame.intrinsics)
        assert not result.accepted and result.inliers < feature_map.config.min_inliers
    blank = feature_map.localize(np.full((240, 320, 3), 128, np.uint8), dataset[0].intrinsics)
    assert not blank.accepted and blank.inliers == 0 and "keypoints" in blank.reason


def test_inlier_threshold_is_what_rejects(scenes):
    """The same good query: accepted with the default threshold, rejected (candidate kept) above its inliers."""
    dataset = open_dataset(scenes[0], frames="0:8")
    config = SYNTHETIC_CONFIGS["sift"]
    frame = open_dataset(scenes[0])[9]
    accepted = build_feature_map(dataset, config, progress=False).localize(frame.rgb, frame.intrinsics)
    assert accepted.accepted
    strict = FeatureConfig(**{**config.__dict__, "min_inliers": accepted.inliers + 1})
    rejected = build_feature_map(dataset, strict, progress=False).localize(frame.rgb, frame.intrinsics)
    assert not rejected.accepted and rejected.inliers == accepted.inliers
    assert rejected.candidate is not None and "inliers" in rejected.reason
    assert np.allclose(rejected.candidate, accepted.pose, atol=1e-6)


@pytest.mark.parametrize("detector", ["sift", "orb"])
def test_batched_ratio_matches_equal_opencv_brute_force(detector):
    rng = np.random.default_rng(3)
    if detector == "sift":
        query = rng.integers(0, 120, (300, 128)).astype(np.float32)
        keyframes = [rng.integers(0, 120, (n, 128)).astype(np.float32) for n in (250, 90, 1)]
        keyframes[0][:40] = query[:40] + rng.normal(0, 2, (40, 128)).astype(np.float32)  # true matches
        norm = cv2.NORM_L2
    else:
        query = rng.integers(0, 256, (300, 32), dtype=np.uint8)
        keyframes = [rng.integers(0, 256, (n, 32), dtype=np.uint8) for n in (250, 90, 1)]
        keyframes[0][:40] = query[:40] ^ (rng.random((40, 32)) < 0.02).astype(np.uint8)  # a few flipped bits
        norm = cv2.NORM_HAMMING
    slot, row, kf_row, _ = ratio_matches(descriptor_matrix(query, detector),
                                         [descriptor_matrix(k, detector) for k in keyframes], 0.8, detector)
    reference = set()
    for k, descriptors in enumerate(keyframes[:2]):  # a 1-descriptor keyframe has no second neighbour
        for best, second in cv2.BFMatcher(norm).knnMatch(query, descriptors, k=2):
            if best.distance < 0.8 * second.distance:
                reference.add((k, best.queryIdx, best.trainIdx))
    assert {(0, i, i) for i in range(40)} <= reference
    assert set(zip(slot.tolist(), row.tolist(), kf_row.tolist())) == reference


def test_depth_at_keypoints_drops_edges_holes_and_borders():
    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, 10:] = 4.0  # a depth edge between columns 9 and 10
    depth[15:, :5] = np.nan  # a hole
    pixels = np.array([[4.0, 4.0], [9.4, 4.0], [10.0, 4.0], [2.0, 17.0], [15.0, 8.0], [0.0, 0.0], [25.0, 4.0]])
    z = depth_at_keypoints(depth, pixels.astype(np.float32))
    assert z[0] == 2.0 and z[4] == 4.0
    assert np.isnan(z[1]) and np.isnan(z[2])  # windows span the edge
    assert np.isnan(z[3])  # in the hole
    assert np.isnan(z[5])  # image corner: only 4 of the 9 window pixels exist
    assert np.isnan(z[6])  # outside the image


def test_real_7scenes_unregistered_depth_relocalizes_nearby_frames():
    """7-Scenes depth is not registered to colour: the map goes through register_depth; frames just after
    the mapping range relocalize within 5 cm / 3 deg."""
    root = sample("7scenes_redkitchen_seq_0000_0399")
    mapping = open_dataset(root, frames="0:60")
    assert mapping[0].depth_intrinsics is not None  # the unregistered path is exercised
    feature_map = build_feature_map(mapping, FeatureConfig(keyframe_step=5), progress=False)
    assert len(feature_map) == 12 and feature_map.points > 12 * 300
    # map points seen from the depth camera land on its own depth (raw depth read at colour pixels does not)
    keyframe, frame = feature_map.keyframes[6], mapping[30]
    camera = keyframe.world @ np.linalg.inv(frame.pose)[:3, :3].T + np.linalg.inv(frame.pose)[:3, 3]
    d_int = frame.depth_intrinsics
    u = np.round(d_int.fx * camera[:, 0] / camera[:, 2] + d_int.cx).astype(int)
    v = np.round(d_int.fy * camera[:, 1] / camera[:, 2] + d_int.cy).astype(int)
    inside = (u >= 0) & (u < d_int.width) & (v >= 0) & (v < d_int.height)
    assert inside.mean() > 0.95
    assert np.mean(np.abs(frame.depth[v[inside], u[inside]] - camera[inside, 2]) < 0.02) > 0.9
    for _, truth, result in localize_dataset(feature_map, open_dataset(root, frames="62:75:6"), progress=False):
        assert result.accepted, result.reason
        dt, dr = pose_error(result.pose, truth)
        assert dt < 0.05 and dr < 3.0, (dt, dr)
