"""A tree of stamped rigid transforms between named frames (what tf2's buffer does), with no ROS.

The nodes look up extrinsics (base_link -> camera from a URDF's /tf_static), external odometry (odom ->
base_link) and the frame of a pose input through it. tf2_ros has no PyPI wheel, so a node cannot count on
its Buffer; this is the one lookup path, used with and without a ROS install and tested offline.

Each edge is parent -> child (``T_parent_child``, as in a TransformStamped: header.frame_id = parent,
child_frame_id = child). Static edges hold one transform for all times; dynamic edges keep ``cache_s``
seconds of history and are interpolated between the two nearest stamps (linear position, geodesic
rotation). A lookup walks both frames up to their common ancestor.
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque

import numpy as np

from prism_ros.geometry.lie import se3_inverse_np, so3_exp_np, so3_log_np

#: seconds within which two stamps are the same: float seconds near 1.8e9 carry ~0.2 us of rounding
STAMP_EPS = 1e-6


class TransformError(LookupError):
    """A lookup that cannot be answered: the problem (missing frame, broken chain, stamp out of range)."""


class _Edge:
    def __init__(self, parent: str, static: bool, cache_s: float):
        self.parent, self.static, self.cache_s = parent, static, cache_s
        self.stamps: deque[float] = deque()
        self.transforms: deque[np.ndarray] = deque()

    def add(self, t: float, T: np.ndarray) -> None:
        if self.static:
            self.stamps, self.transforms = deque([0.0]), deque([T])
            return
        if self.stamps and t < self.stamps[-1]:  # out of order (rare): insert in place
            i = bisect_left(self.stamps, t)
            if i < len(self.stamps) and self.stamps[i] == t:
                self.transforms[i] = T
                return
            self.stamps.insert(i, t)
            self.transforms.insert(i, T)
        elif self.stamps and t == self.stamps[-1]:
            self.transforms[-1] = T
        else:
            self.stamps.append(t)
            self.transforms.append(T)
        while len(self.stamps) > 2 and self.stamps[-1] - self.stamps[0] > self.cache_s:
            self.stamps.popleft()
            self.transforms.popleft()

    def at(self, t: float | None, tolerance: float, child: str) -> np.ndarray:
        if self.static or t is None:
            return self.transforms[-1]
        stamps = self.stamps
        tolerance += STAMP_EPS
        if t >= stamps[-1]:
            if t - stamps[-1] > tolerance:
                raise TransformError(f"{self.parent} -> {child} is {t - stamps[-1]:.3f} s older than the lookup "
                                     f"(newest at {stamps[-1]:.3f} s)")
            return self.transforms[-1]
        if t <= stamps[0]:
            if stamps[0] - t > tolerance:
                raise TransformError(f"{self.parent} -> {child} at {t:.3f} s is older than its history "
                                     f"(from {stamps[0]:.3f} s)")
            return self.transforms[0]
        i = bisect_left(stamps, t)
        t0, t1 = stamps[i - 1], stamps[i]
        return interpolate(self.transforms[i - 1], self.transforms[i], (t - t0) / (t1 - t0))


def interpolate(A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """The transform a fraction ``s`` of the way from A to B (linear position, geodesic rotation)."""
    T = np.eye(4)
    T[:3, :3] = A[:3, :3] @ so3_exp_np(s * so3_log_np(A[:3, :3].T @ B[:3, :3]))
    T[:3, 3] = (1.0 - s) * A[:3, 3] + s * B[:3, 3]
    return T


class TransformTree:
    """Stamped transforms between frames; thread-safe (filled by subscription callbacks, read by workers)."""

    def __init__(self, cache_s: float = 10.0):
        self.cache_s = cache_s
        self._edges: dict[str, _Edge] = {}  # by child frame
        self._lock = threading.Lock()

    def set(self, parent: str, child: str, t: float, T_parent_child: np.ndarray, static: bool = False) -> None:
        """Record ``T_parent_child`` at time ``t`` (seconds). A frame has one parent; a new parent replaces it."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two different frame names, got {parent!r} -> {child!r}")
        T = np.asarray(T_parent_child, dtype=np.float64).reshape(4, 4)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static, self.cache_s)
            edge.add(float(t), T)

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {edge.parent for edge in self._edges.values()}

    def can_transform(self, target: str, source: str, t: float | None = None, tolerance: float = 0.0) -> bool:
        try:
            self.lookup(target, source, t, tolerance)
        except TransformError:
            return False
        return True

    def lookup(self, target: str, source: str, t: float | None = None, tolerance: float = 0.0) -> np.ndarray:
        """``T_target_source`` at time ``t`` (None: the newest of each edge); dynamic edges may be used up to
        ``tolerance`` seconds past their newest (or before their oldest) stamp. TransformError says why not."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        with self._lock:
            up_source = self._chain(source)  # [(frame, T_root-ward parent_frame)] from source to its root
            up_target = self._chain(target)
            source_frames = [source] + [edge.parent for _, edge in up_source]
            target_frames = [target] + [edge.parent for _, edge in up_target]
            common = next((f for f in source_frames if f in target_frames), None)
            if common is None:
                known = sorted(set(self._edges) | {e.parent for e in self._edges.values()})
                missing = [f for f in (target, source) if f not in known]
                why = (f"frame {missing[0]!r} is unknown" if missing else
                       f"{target!r} and {source!r} are not connected (roots {target_frames[-1]!r} and "
                       f"{source_frames[-1]!r})")
                raise TransformError(f"no transform {target} <- {source}: {why} (known frames: "
                                     f"{', '.join(known) or 'none'})")
            T_common_source = self._compose(up_source[:source_frames.index(common)], t, tolerance)
            T_common_target = self._compose(up_target[:target_frames.index(common)], t, tolerance)
        return se3_inverse_np(T_common_target) @ T_common_source

    def _chain(self, frame: str) -> list[tuple[str, _Edge]]:
        chain, seen = [], {frame}
        while frame in self._edges:
            edge = self._edges[frame]
            chain.append((frame, edge))
            if edge.parent in seen:
                raise TransformError(f"the transforms form a loop at {edge.parent!r}")
            seen.add(edge.parent)
            frame = edge.parent
        return chain

    @staticmethod
    def _compose(chain: list[tuple[str, _Edge]], t: float | None, tolerance: float) -> np.ndarray:
        """T_ancestor_frame of a chain [(frame, edge to its parent), ...] going up."""
        T = np.eye(4)
        for child, edge in chain:
            T = edge.at(t, tolerance, child) @ T
        return T
