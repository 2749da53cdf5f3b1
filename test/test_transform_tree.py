"""TransformTree: lookups through a tree of static and dynamic stamped transforms."""
import numpy as np
import pytest

from prism_ros.geometry.lie import se3_exp_np, se3_inverse_np
from prism_ros.geometry.transform_tree import TransformError, TransformTree, interpolate


def pose(*xi) -> np.ndarray:
    return se3_exp_np(np.asarray(xi, dtype=np.float64))


def test_lookup_composes_through_the_common_ancestor():
    tree = TransformTree()
    T_map_odom, T_odom_base = pose(1, 2, 0, 0, 0, 0.3), pose(0.5, 0, 0, 0.1, 0, 0)
    T_base_camera, T_base_imu = pose(0.1, 0, 0.2, -1.2, 0, -1.5), pose(0, 0.05, 0.1, 0, 0, 0)
    tree.set("map", "odom", 1.0, T_map_odom)
    tree.set("odom", "base_link", 1.0, T_odom_base)
    tree.set("base_link", "camera", 0.0, T_base_camera, static=True)
    tree.set("/base_link", "imu", 0.0, T_base_imu, static=True)  # a leading slash is ignored
    np.testing.assert_allclose(tree.lookup("map", "camera", 1.0), T_map_odom @ T_odom_base @ T_base_camera,
                               atol=1e-12)
    np.testing.assert_allclose(tree.lookup("camera", "imu"), se3_inverse_np(T_base_camera) @ T_base_imu, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("imu", "map", 1.0),
                               se3_inverse_np(T_map_odom @ T_odom_base @ T_base_imu), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("odom", "odom"), np.eye(4))
    assert tree.frames() == {"map", "odom", "base_link", "camera", "imu"}


def test_dynamic_edges_interpolate_and_refuse_stamps_outside_their_history():
    tree = TransformTree(cache_s=10.0)
    A, B = np.eye(4), pose(0, 0, 0, 0, 0, 0.4)
    B[:3, 3] = (1.0, -2.0, 0.5)
    tree.set("odom", "base", 2.0, B)
    tree.set("odom", "base", 1.0, A)  # out of order
    middle = tree.lookup("odom", "base", 1.25)
    expected = pose(0, 0, 0, 0, 0, 0.1)
    expected[:3, 3] = (0.25, -0.5, 0.125)
    np.testing.assert_allclose(middle, expected, atol=1e-12)
    np.testing.assert_allclose(middle, interpolate(A, B, 0.25), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("odom", "base"), B)  # newest
    np.testing.assert_allclose(tree.lookup("odom", "base", 2.05, tolerance=0.1), B)
    with pytest.raises(TransformError, match="older than the lookup"):
        tree.lookup("odom", "base", 2.5, tolerance=0.1)
    with pytest.raises(TransformError, match="older than its history"):
        tree.lookup("odom", "base", 0.5)
    assert not tree.can_transform("odom", "base", 3.0) and tree.can_transform("odom", "base", 1.5)


def test_history_is_bounded_and_a_new_parent_replaces_the_old_one():
    tree = TransformTree(cache_s=1.0)
    for i in range(100):
        tree.set("odom", "base", i * 0.1, pose(i * 0.1, 0, 0, 0, 0, 0))
    with pytest.raises(TransformError):
        tree.lookup("odom", "base", 5.0)  # dropped: older than cache_s
    np.testing.assert_allclose(tree.lookup("odom", "base", 9.45)[0, 3], 9.45)
    tree.set("map", "base", 0.0, pose(0, 1, 0, 0, 0, 0), static=True)
    np.testing.assert_allclose(tree.lookup("map", "base", 123.0)[1, 3], 1.0)
    with pytest.raises(TransformError, match="'odom' is unknown|not connected"):
        tree.lookup("odom", "base")


def test_errors_name_the_missing_frame_or_the_broken_chain():
    tree = TransformTree()
    tree.set("map", "odom", 0.0, np.eye(4))
    tree.set("base_link", "camera", 0.0, np.eye(4), static=True)
    with pytest.raises(TransformError, match="frame 'robot' is unknown .*known frames: base_link, camera, map"):
        tree.lookup("map", "robot")
    with pytest.raises(TransformError, match="not connected"):
        tree.lookup("map", "camera")
    with pytest.raises(ValueError, match="two different frame names"):
        tree.set("map", "map", 0.0, np.eye(4))
    tree.set("camera", "base_link", 0.0, np.eye(4), static=True)
    with pytest.raises(TransformError, match="loop"):
        tree.lookup("map", "camera")
