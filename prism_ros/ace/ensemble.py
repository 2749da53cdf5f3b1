"""ACE ensembles for larger scenes: split the mapping frames by camera position, one head per chunk,
and answer a query with the pose of the head that finds the most inliers (ACE, "larger scenes").

The split is k-means on camera centres (scipy's ``kmeans2`` with k-means++ seeding, a maintained
implementation); chunks left empty by k-means are dropped and labels renumbered, so every head has frames.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

from prism_ros.errors import InputError


def split_frames(positions: np.ndarray, chunks: int, seed: int = 0) -> np.ndarray:
    """Chunk label (N,) in 0..k-1 of each camera position (N,3); k <= ``chunks`` (empty clusters dropped)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if chunks < 1 or chunks > len(positions):
        raise InputError(f"cannot split {len(positions)} frames into {chunks} chunks",
                         "use between 1 and the number of mapping frames")
    if chunks == 1:
        return np.zeros(len(positions), dtype=np.int64)
    _, labels = kmeans2(positions, chunks, minit="++", seed=np.random.default_rng(seed), iter=50)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def best_of(results: list) -> tuple[int, object]:
    """(index, result) of the relocalization with the most inliers (ties: the first)."""
    if not results:
        raise ValueError("no relocalization results to choose from")
    index = int(np.argmax([r.inliers for r in results]))
    return index, results[index]
