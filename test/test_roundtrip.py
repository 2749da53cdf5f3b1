"""Synthetic round trip: the folder and the bag the generator writes read back as the same data."""
from __future__ import annotations

import numpy as np
import pytest

from prism_ros.datasets import open_dataset
from prism_ros.synthetic import generate, make_sequence

FRAMES, SEED, SIZE = 10, 4, dict(width=96, height=72)
DEPTH_PNG_STEP = 1.0 / 5000.0  # the folder stores depth as uint16 at 5000 per metre


@pytest.fixture(scope="module", params=["mcap", "db3"])
def written(request, tmp_path_factory):
    out = generate(tmp_path_factory.mktemp(request.param) / "seq", frames=FRAMES, seed=SEED,
                   motion="drone", bag=request.param, noise=True, progress=False, **SIZE)
    return out, make_sequence(frames=FRAMES, seed=SEED, motion="drone", noise=True, **SIZE)


def test_folder_and_bag_read_back_equal(written):
    out, sequence = written
    folder = open_dataset(out)  # autodetected as TUM layout
    bag = open_dataset(out / "bag", preset="prism")
    assert folder.format_name == "tum" and bag.format_name == "rosbag"
    assert len(folder) == len(bag) == FRAMES
    np.testing.assert_allclose(folder.timestamps, bag.timestamps, rtol=0, atol=1e-6)
    for i in range(FRAMES):
        a, b = folder[i], bag[i]
        rgb, depth = sequence.frame(i)
        assert np.array_equal(a.rgb, rgb) and np.array_equal(b.rgb, rgb)
        assert np.array_equal(np.isnan(a.depth), np.isnan(depth))  # same invalid pixels
        assert np.array_equal(np.isnan(b.depth), np.isnan(depth))
        valid = ~np.isnan(depth)
        np.testing.assert_array_equal(b.depth[valid], depth[valid])  # float32 in the bag: exact
        assert np.abs(a.depth[valid] - depth[valid]).max() <= DEPTH_PNG_STEP / 2 + 1e-6
        assert a.intrinsics == b.intrinsics
        np.testing.assert_allclose(a.pose, sequence.poses[i], atol=1e-8)
        np.testing.assert_allclose(b.pose, sequence.poses[i], atol=1e-8)
        np.testing.assert_allclose(a.control, b.control, atol=1e-9)
        assert len(a.imu) == len(b.imu) == (0 if i == 0 else len(a.imu))
        np.testing.assert_allclose(a.imu.t, b.imu.t, atol=1e-6)
        np.testing.assert_allclose(a.imu.gyro, b.imu.gyro, atol=1e-9)
        np.testing.assert_allclose(a.imu.accel, b.imu.accel, atol=1e-9)
    assert sum(len(folder[i].imu) for i in range(FRAMES)) == len(folder.imu) - 1  # all but the t0 sample
    np.testing.assert_allclose(folder.T_imu_camera, sequence.T_imu_camera, atol=1e-12)


def test_frame_slice_reads_the_same_frames_from_folder_and_bag(written):
    out, _ = written
    folder = open_dataset(out, frames="2:8:3")
    bag = open_dataset(out / "bag", preset="prism", frames="2:8:3")
    assert [f.index for f in folder] == [f.index for f in bag] == [2, 5]
    for a, b in zip(folder, bag):
        assert np.array_equal(a.rgb, b.rgb)
        np.testing.assert_allclose(a.imu.t, b.imu.t, atol=1e-6)  # IMU since the previous kept frame
        assert len(a.imu) > 0


def test_pose_inputs_refuse_quaternions_that_are_not_rotations():
    """A quaternion off unit length by more than tf2's tolerance is refused, not silently normalised; float32
    rounding passes."""
    from geometry_msgs.msg import Pose

    from prism_ros.errors import InputError
    from prism_ros.nodes.conversions import pose_to_matrix

    pose = Pose()
    pose.orientation.x, pose.orientation.w = 0.9, 1.0
    with pytest.raises(InputError, match="has length 1.345, not 1"):
        pose_to_matrix(pose)
    pose.orientation.x, pose.orientation.w = 0.0, 1.0 + 1e-4
    assert np.allclose(pose_to_matrix(pose), np.eye(4))
    pose.orientation.x = 1e200  # a square that overflows is not a rotation either
    with pytest.raises(InputError, match="not 1"):
        pose_to_matrix(pose)


def test_an_image_without_pixels_is_bad_input():
    from sensor_msgs.msg import Image

    from prism_ros.errors import InputError
    from prism_ros.nodes.conversions import image_to_numpy

    with pytest.raises(InputError, match="image is 0x480: no pixels"):
        image_to_numpy(Image(width=0, height=480, encoding="rgb8"))
