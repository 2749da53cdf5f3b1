"""PrismSession, the filter as a live process runs it (no ROS): pose inputs at a stamp, superseded frames,
restarts at the pose of an image already tracked, localization against a frozen map, generations."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from prism_ros.datasets import open_dataset
from prism_ros.frame import ImuSamples
from prism_ros.prism.config import FilterConfig
from prism_ros.prism.session import PrismSession
from prism_ros.resources import config_file

pytestmark = pytest.mark.timeout(300)


class NoMotion:
    """The motion inputs of a constant-velocity filter: no IMU samples, no command."""

    def take_imu(self, t, after=None):
        return ImuSamples.empty()

    def control_at(self, t):
        return None


@pytest.fixture(scope="module")
def frames(synthetic_sequence):
    dataset = open_dataset(synthetic_sequence, fmt="tum")
    return [dataset[i] for i in range(8)]


def _session(resets=None, **kwargs) -> PrismSession:
    config = FilterConfig.from_yaml(config_file("prism_synthetic.yaml"))
    config = replace(config, dynamics=replace(config.dynamics, model="constant_velocity"))
    on_reset = (lambda reason: resets.append(reason)) if resets is not None else None
    return PrismSession(config, np.eye(4), map_origin="camera", on_reset=on_reset, **kwargs)


def test_frames_step_and_older_ones_are_superseded(frames):
    session = _session()
    first = session.step(frames[0], NoMotion())
    assert first.skipped is None and first.estimate.tracking_ok and first.generation == 0
    assert session.step(frames[1], NoMotion()).estimate.tracking_ok
    assert session.step(frames[1], NoMotion()).skipped == "superseded"
    assert session.step(frames[0], NoMotion()).skipped == "superseded"
    assert session.map_dirty and session.last_processed_t == frames[1].timestamp


def test_a_pose_before_the_first_frame_starts_the_filter_there(frames):
    session = _session()
    T_map_base = np.eye(4)
    T_map_base[:3, 3] = [1.0, 2.0, 0.5]
    session.relocalize(T_map_base, None, stamp=frames[1].timestamp)
    assert session.generation == 1
    assert session.step(frames[0], NoMotion()).skipped == "superseded"  # stamped before the pose
    started = session.step(frames[1], NoMotion())
    assert np.allclose(np.asarray(started.estimate.T_world_camera)[:3, 3], [1.0, 2.0, 0.5], atol=1e-6)


def test_reset_at_the_pose_of_a_tracked_image_keeps_the_motion_since(frames):
    twin = _session()  # the same frames without the reset: where tracking puts frame 4
    old = [np.asarray(twin.step(f, NoMotion()).estimate.T_world_camera) for f in frames[:5]]
    resets: list[str] = []
    session = _session(resets)
    for frame in frames[:4]:
        session.step(frame, NoMotion())
    E = np.eye(4)
    E[:3, 3] = [0.0, 0.0, 3.0]
    T_map_base = E @ old[1]  # base = camera here: image 1 was at this pose of another map
    assert session.reset_at_pose(T_map_base, None, frames[1].timestamp, "relocalized") == "later"
    assert not resets  # nothing is wiped until the next frame
    restarted = session.step(frames[4], NoMotion())
    assert resets == ["relocalized"] and restarted.generation == 1
    assert np.allclose(np.asarray(restarted.estimate.T_world_camera), E @ old[4], atol=1e-6)

    assert session.reset_at_pose(np.eye(4), None, frames[6].timestamp, "queued") == "now"
    assert session.step(frames[5], NoMotion()).skipped == "superseded"  # the pose's own image starts the map
    assert session.step(frames[6], NoMotion()).estimate.tracking_ok
    assert session.reset_at_pose(np.eye(4), None, frames[5].timestamp, "missed") == "behind"
    assert resets == ["relocalized", "queued", "missed"] and session.generation == 3


def test_localization_mode_tracks_against_the_frozen_map(frames):
    builder = _session()
    for frame in frames[:4]:
        builder.step(frame, NoMotion())
    frozen = builder.filter.map.clone()
    before = frozen.num_blocks
    session = _session(frozen_map=frozen)
    assert session.filter.map is frozen and session.filter.map_frozen
    for frame in frames[:6]:
        assert session.step(frame, NoMotion()).estimate.tracking_ok
    assert frozen.num_blocks == before
    session.reset("wiped")
    assert session.filter.map is frozen  # a reset keeps tracking against the loaded map


def test_save_map_writes_the_map_or_says_why_not(frames, tmp_path):
    from prism_ros.errors import InputError
    from prism_ros.prism.map import GaussianSdfMap

    session = _session()
    with pytest.raises(InputError, match="the map is empty"):
        session.save_map(tmp_path / "empty.pt")
    for frame in frames[:2]:
        session.step(frame, NoMotion())
    summary = session.save_map(tmp_path / "maps" / "room.pt")
    assert summary.startswith(f"saved {session.filter.map.num_blocks} blocks")
    assert GaussianSdfMap.load(tmp_path / "maps" / "room.pt").num_blocks == session.filter.map.num_blocks
    (tmp_path / "blocked.ply").mkdir()  # the mesh cannot be written: a failure with the fix, not a defect
    with pytest.raises(InputError, match="cannot save the map to .*blocked.pt.*map_path"):
        session.save_map(tmp_path / "blocked.pt")
    assert not (tmp_path / "blocked.pt.partial").exists()
