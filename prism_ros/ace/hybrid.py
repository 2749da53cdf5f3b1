"""One answer from several relocalizers: ask them in turn, keep the first pose the query's depth confirms.

ACE answers most queries near its mapping views; SIFT + PnP (:mod:`prism_ros.ace.features`) answers more
of those far from them; both sometimes return a confident pose tens of centimetres off. Each method's best
pose (``candidate``, kept even when its own inlier rule rejected it) goes through the same depth check
(:func:`prism_ros.ace.verify.verify`) and the first that passes answers, refined. The order is the
preference: the default asks ACE first and the features only when ACE's pose fails the check, so the second
method costs nothing on the queries ACE answers. Why the first verified pose rather than the best fitness of
all: a passed check already bounds the error by the depth alignment, and asking every method always costs
their sum.

Without query depth or a map cloud nothing can be checked: the first method whose own inlier rule accepted
its pose answers, unrefined, and the answer says it was not verified. No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from prism_ros.ace.verify import MapCloud, Verification, VerifyConfig, verify


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
    """Ask ``methods`` (name, call returning a result with ``pose``, ``candidate`` and ``inliers``) in order;
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
        check = verify(result.candidate, query_points, cloud, config)
        answer.checks[name] = check
        if check.accepted:
            answer.pose, answer.source, answer.inliers, answer.verified = check.pose, name, int(result.inliers), True
            return answer
    return answer
