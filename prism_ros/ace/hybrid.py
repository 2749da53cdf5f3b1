"""One answer from several relocalizers: ask them in turn, keep the first pose the query's depth confirms.

ACE answers most queries near its mapping views; SIFT + PnP (:mod:`prism_ros.ace.features`) answers more
of those far from them; both sometimes return a confident pose tens of centimetres off. Each method's pose,
if its own inlier rule accepted it, goes through the same depth check (:func:`prism_ros.ace.verify.verify`)
and the first that passes answers, refined. The check only vetoes: a pose with too few inliers is not
rescued by it, because ICP can fit the depth to similar surfaces elsewhere in the map (redkitchen: 75 % of
a query's depth on the map at a pose 79 cm off). The order is the preference: the default asks ACE first
and the features only when ACE's pose fails the check, so the second method costs nothing on the queries
ACE answers. Why the first verified pose rather than the best fitness of all: a passed check already bounds
the error by the depth alignment, and asking every method always costs their sum.

Without query depth or a map cloud nothing can be checked: the first method whose own inlier rule accepted
its pose answers, unrefined, and the answer says it was not verified.

:func:`check_maps` builds what the check and the second opinion need from the posed RGB-D mapping frames, and
:func:`answer_query` asks an ACE map (with them, when it has them) about one image. No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from prism_ros.ace.features import FeatureConfig, FeatureMap, build_feature_map
from prism_ros.ace.relocalize import relocalize
from prism_ros.ace.verify import MapCloud, Verification, VerifyConfig, build_map_cloud, frame_points, verify
from prism_ros.errors import InputError
from prism_ros.frame import Frame


@dataclass
class Answer:
    """``pose`` T_world_camera (None: no method answered), ``source`` the method that answered ("" if none),
    ``inliers`` its RANSAC inliers, ``verified`` whether the depth check confirmed it, ``results`` every
    method asked (name -> its result) and ``checks`` their depth checks (name -> Verification)."""

    pose: np.ndarray | None
    source: str = ""
    inliers: int = 0
    verified: bool = False
    results: dict = field(default_factory=dict)
    checks: dict[str, Verification] = field(default_factory=dict)

    @property
    def covariance(self) -> np.ndarray | None:
        """The answering method's own pose covariance (ACE's inlier covariance), None when it has none."""
        result = self.results.get(self.source)
        return getattr(result, "covariance", None) if self.accepted else None

    @property
    def accepted(self) -> bool:
        return self.pose is not None

    @property
    def reason(self) -> str:
        """Why each method asked was not used (empty when one answered)."""
        if self.accepted:
            return ""
        parts = []
        for name, result in self.results.items():
            check = self.checks.get(name)
            why = check.reason if check is not None else (getattr(result, "reason", "") or "rejected")
            parts.append(f"{name}: {why}")
        return "; ".join(parts) or "no method asked"


def ask(methods: Iterable[tuple[str, Callable[[], object]]], query_points: np.ndarray | None,
        cloud: MapCloud | None, config: VerifyConfig = VerifyConfig()) -> Answer:
    """Ask ``methods`` (name, call returning a result with ``pose`` (None: rejected) and ``inliers``) in order;
    the first whose pose passes the depth check answers (see the module doc)."""
    answer = Answer(None)
    checkable = query_points is not None and cloud is not None
    for name, call in methods:
        result = call()
        answer.results[name] = result
        if not checkable:
            if result.pose is not None:
                answer.pose, answer.source, answer.inliers = np.asarray(result.pose), name, int(result.inliers)
                return answer
            continue
        if result.pose is None:
            continue  # the check vetoes and refines; it cannot vouch for a pose its own method rejected
        check = verify(result.pose, query_points, cloud, config)
        answer.checks[name] = check
        if check.accepted:
            answer.pose, answer.source, answer.inliers, answer.verified = check.pose, name, int(result.inliers), True
            return answer
    return answer


def check_maps(frames, feature_step: int = 5, verify_config: VerifyConfig = VerifyConfig(),
               feature_config: FeatureConfig | None = None) -> tuple[MapCloud | None, FeatureMap | None]:
    """(map cloud, feature map) of posed RGB-D mapping frames (a Dataset, read frame by frame, or a list of
    Frames; every ``feature_step``-th frame becomes a feature keyframe); None for what they cannot give (no
    frame with depth and a pose)."""
    config = feature_config or FeatureConfig(keyframe_step=feature_step)
    try:
        cloud = build_map_cloud(frames, verify_config)
    except InputError:
        return None, None
    return cloud, build_feature_map(frames, config, progress=False)


def answer_query(ace_map, encoder, frame: Frame, check: bool = True, second_opinion: bool = True,
                 verify_config: VerifyConfig = VerifyConfig(), **ace_options) -> Answer:
    """Relocalize one image (``frame``: colour, intrinsics, optional depth registered to colour) with an ACE
    map: ACE first, then the map's feature keyframes if it has them and ``second_opinion``; with ``check``,
    the frame's depth and the map's cloud, each pose goes through the depth check (see the module doc)."""
    methods = [("ace", lambda: relocalize(ace_map, encoder, frame.rgb, frame.intrinsics, **ace_options))]
    if second_opinion and ace_map.features is not None:
        methods.append(("features", lambda: ace_map.features.localize(frame.rgb, frame.intrinsics)))
    checkable = check and frame.depth is not None and ace_map.cloud is not None
    points = frame_points(frame, verify_config) if checkable else None
    return ask(methods, points, ace_map.cloud if checkable else None, verify_config)


def answer_dataset(ace_map, encoder, dataset, progress: bool = True, check: bool = True, second_opinion: bool = True,
                   **ace_options) -> list[tuple[float, np.ndarray | None, Answer]]:
    """[(timestamp, frame pose or None, Answer)] of :func:`answer_query` for every frame of a dataset."""
    times = dataset.timestamps
    return [(float(times[i]), frame.pose, answer_query(ace_map, encoder, frame, check, second_opinion, **ace_options))
            for i, frame in enumerate(tqdm(dataset, total=len(dataset), desc="relocalize", unit="img",
                                           disable=not progress))]
