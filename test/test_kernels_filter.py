"""The whole filter with the fused kernels against the torch reference, frame by frame: on the exact synthetic
sequence and on real 7-Scenes frames the two backends give the same trajectory (each stage's own equivalence is
tested in test_kernels_<stage>.py; here float32 rounding differences must not grow along a sequence)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from shared_data import sample
from test_filter import frame_at, small_config

from prism_ros.datasets import open_dataset
from prism_ros.evaluation.metrics import evaluate
from prism_ros.prism.config import FilterConfig, preset_config
from prism_ros.prism.filter import PrismFilter
from prism_ros.synthetic import make_sequence

pytest.importorskip("warp")


def run(config: FilterConfig, frames, initial_pose=None) -> list:
    slam = PrismFilter(config, initial_pose=initial_pose)
    return [slam.step(frame) for frame in frames]


def positions(estimates) -> np.ndarray:
    return np.stack([e.T_world_camera[:3, 3] for e in estimates])


def test_backends_agree_on_the_synthetic_sequence():
    sequence = make_sequence(frames=16, seed=3, motion="handheld", noise=True, width=160, height=120)
    frames = [frame_at(sequence, i) for i in range(16)]
    reference = run(replace(small_config(), backend="torch"), frames, sequence.poses[0])
    fused = run(replace(small_config(), backend="fused"), frames, sequence.poses[0])
    assert [e.tracking_ok for e in fused] == [e.tracking_ok for e in reference] and all(e.tracking_ok for e in fused)
    assert np.abs(positions(fused) - positions(reference)).max() < 2e-4  # m
    truth = np.stack([p[:3, 3] for p in sequence.poses[:16]])
    assert np.sqrt(np.mean(np.sum((positions(fused) - truth) ** 2, 1))) < 0.01
    covariance = np.stack([e.pose_covariance for e in fused])[1:], np.stack([e.pose_covariance for e in reference])[1:]
    # differences relative to the covariance's own scale, sigma_i sigma_j: small off-diagonal entries are sums of
    # cancelling float32 terms, so an entry-wise relative tolerance would test the CPU's rounding, not the filter
    sigma = np.sqrt(np.einsum("nii->ni", covariance[1]))
    scaled = np.abs(covariance[0] - covariance[1]) / (sigma[:, :, None] * sigma[:, None, :])
    assert scaled.max() < 0.02, scaled.max()


def test_backends_agree_on_real_frames():
    dataset = open_dataset(sample("7scenes_redkitchen_seq_0000_0399"), frames="0:30")
    frames = [dataset[i] for i in range(len(dataset))]
    config = replace(preset_config(dataset), device="cpu")
    reference = run(replace(config, backend="torch"), frames)
    fused = run(replace(config, backend="fused"), frames)
    truth = (np.array([f.timestamp for f in frames]), np.stack([f.pose for f in frames]))
    ate = [evaluate((truth[0], np.stack([e.T_world_camera for e in estimates])), truth).ate_rmse
           for estimates in (reference, fused)]
    assert sum(e.tracking_ok for e in fused) >= sum(e.tracking_ok for e in reference) - 1
    assert abs(ate[1] - ate[0]) < 0.002 and ate[1] < 0.05, ate  # m
    assert np.abs(positions(fused) - positions(reference)).max() < 0.005


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_filter_matches_cpu():
    sequence = make_sequence(frames=10, seed=3, motion="handheld", noise=True, width=160, height=120)
    frames = [frame_at(sequence, i) for i in range(10)]
    cpu = run(replace(small_config(), backend="fused"), frames, sequence.poses[0])
    cuda = run(replace(small_config(), backend="fused", device="cuda"), frames, sequence.poses[0])
    assert all(e.tracking_ok for e in cuda)
    assert np.abs(positions(cuda) - positions(cpu)).max() < 1e-3
