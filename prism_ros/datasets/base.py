"""The interface every dataset reader implements: a :class:`~prism_ros.frame.Frame` per index (conventions in
:mod:`prism_ros.frame`)."""
from __future__ import annotations

import abc

import numpy as np

from prism_ros.frame import Frame, ImuSamples


class Dataset(abc.ABC):
    """A sequence of frames with random access, in time order (kiss-icp style)."""

    #: registry name of the format, e.g. "tum"
    format_name: str = ""

    @property
    def preset_name(self) -> str:
        """Which ``config/prism_<name>.yaml`` suits this data; the format unless the source says more."""
        return self.format_name

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Frame: ...

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    @abc.abstractmethod
    def timestamps(self) -> np.ndarray:
        """Frame timestamps in seconds, strictly increasing."""

    @property
    def T_imu_camera(self) -> np.ndarray | None:
        """4x4 camera -> IMU (body) transform, when the dataset has an IMU."""
        return None

    @property
    def imu(self) -> ImuSamples | None:
        """The whole IMU stream, when the dataset has one."""
        return None

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(timestamps (N,), poses (N,4,4) T_world_camera) of the ground truth, or None."""
        return None
