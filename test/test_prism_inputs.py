"""prism_node's inputs without DDS: StampOrder (in order, out of order, outlier stamps dropped, time jumps taken
once the next frame confirms them) and the camera a CameraInfo may give."""
import math

import pytest

from prism_ros.errors import InputError
from prism_ros.frame import Intrinsics
from prism_ros.nodes.conversions import camera_info_to_intrinsics, intrinsics_to_camera_info
from prism_ros.nodes.prism_inputs import BadInput, FrameDecoder, StampOrder

S = 1_000_000_000
T0 = 1_700_000_000 * S
P = S // 30


def cause(order: StampOrder, stamp: int) -> str:
    with pytest.raises(BadInput) as bad:
        order.accept(stamp)
    return bad.value.cause


def test_in_order_out_of_order_and_unstamped():
    order = StampOrder({"time_jump_threshold": 1.0})
    assert order.accept(T0) is None and order.accept(T0 + P) is None
    assert cause(order, T0) == "out_of_order" and cause(order, T0 + P) == "out_of_order"
    assert cause(order, 0) == "bad_stamp"
    assert order.accept(T0 + 2 * P) is None and order.newest == T0 + 2 * P


def test_an_outlier_stamp_is_dropped_and_a_confirmed_jump_is_taken():
    order = StampOrder({"time_jump_threshold": 1.0})
    order.accept(T0)
    assert cause(order, T0 + 10 * 365 * 24 * 3600 * S) == "bad_stamp"  # a clock glitch: not the new time
    assert order.accept(T0 + P) is None and order.newest == T0 + P
    assert cause(order, T0 - 60 * S) == "bad_stamp"  # a looped bag's first frame is held back
    assert order.accept(T0 - 60 * S + P).startswith("time jumped back by 60.0")  # its second confirms: reset
    assert order.accept(T0 - 60 * S + 2 * P) is None
    assert cause(order, T0 + 5 * S) == "bad_stamp"  # a gap in the input: no reset once confirmed
    assert order.accept(T0 + 5 * S + P) is None and order.newest == T0 + 5 * S + P
    order.reset()
    assert order.accept(T0 - 3600 * S) is None  # after a requested reset any stamp is welcome


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.k.__setitem__(slice(None), [math.nan] * 9), "non-finite"),
    (lambda m: m.k.__setitem__(2, math.nan), "non-finite"),
    (lambda m: m.k.__setitem__(0, math.inf), "non-finite"),
    (lambda m: m.k.__setitem__(0, 1e-6), "not a camera for 160x120"),
    (lambda m: m.k.__setitem__(4, 1e9), "not a camera for 160x120"),
    (lambda m: m.k.__setitem__(2, 5000.0), "not a camera for 160x120"),
])
def test_a_camera_info_that_is_no_camera_is_bad_input(change, problem):
    info = intrinsics_to_camera_info(Intrinsics(125.0, 125.0, 79.5, 59.5, 160, 120))
    decoder = FrameDecoder({"camera_info_topic": "rgb/camera_info", "rectified_input": False}, max_depth=4.0)
    assert decoder.intrinsics(info, (120, 160, 3)).fx == 125.0
    change(info)
    with pytest.raises(BadInput, match=problem) as bad:
        decoder.intrinsics(info, (120, 160, 3))
    assert bad.value.cause == "bad_camera_info"
    if problem == "non-finite":
        with pytest.raises(InputError, match="non-finite"):
            camera_info_to_intrinsics(info)


def test_imu_samples_beyond_any_imu_range_are_bad_input():
    import threading

    from sensor_msgs.msg import Imu

    from prism_ros.nodes.conversions import ns_to_stamp
    from prism_ros.nodes.prism_inputs import MotionBuffer

    motion = MotionBuffer({"time_jump_threshold": 1.0, "imu_topic": "imu"}, threading.Event())
    for i, (accel, gyro) in enumerate([(9.81, 0.1), (1e6, 0.1), (9.81, 1e30), (150.0, 30.0)]):
        msg = Imu()
        msg.header.stamp = ns_to_stamp(T0 + i * P)
        msg.linear_acceleration.z, msg.angular_velocity.x = accel, gyro
        if accel > 1000 or gyro > 100:
            with pytest.raises(BadInput, match="beyond any IMU's range"):
                motion.add_imu(msg)
        else:
            motion.add_imu(msg)
    assert [s[0] for s in motion.imu] == [T0 / 1e9, (T0 + 3 * P) / 1e9]  # a 15 g, 30 rad/s sample is kept


def test_sync_watch_names_the_missing_stream_or_the_disagreeing_stamps():
    import time

    from prism_ros.nodes.prism_inputs import SyncWatch

    watch = SyncWatch(["rgb", "depth", "camera_info"], {"rgb": "/c/rgb", "depth": "/c/depth",
                                                        "camera_info": "/c/info"})
    assert watch.check(0.05, 0.01) is None  # nothing arrived
    for k in range(3):  # colour and depth, no CameraInfo
        watch.arrived(0, k * 10**8)
        watch.arrived(1, k * 10**8)
    time.sleep(0.08)
    watch.arrived(0, 3 * 10**8)
    watch.arrived(1, 3 * 10**8)
    bad, count = watch.check(0.05, 0.01)
    assert bad.cause == "missing_camera_info" and "/c/info" in bad.problem and count == 4
    assert watch.check(0.05, 0.01) is None  # said once per run of unmatched images
    for role in range(3):  # all three, stamps 0.3 s apart: unsynchronised
        watch.arrived(role, role * 3 * 10**8)
    time.sleep(0.06)
    for role in range(3):
        watch.arrived(role, 10**9 + role * 3 * 10**8)
    bad, count = watch.check(0.05, 0.01)
    assert bad.cause == "unsynchronised" and "spread 0.600 s" in bad.problem and count == 2
    watch.arrived(0, 2 * 10**9)  # a set that completes in time is no problem
    watch.matched()
    time.sleep(0.06)
    assert watch.check(0.05, 0.01) is None


def test_pose_inputs_are_read_into_the_map_frame_or_refused():
    import numpy as np
    import pytest
    from geometry_msgs.msg import PoseWithCovarianceStamped

    from prism_ros.geometry.transform_tree import TransformError
    from prism_ros.nodes.conversions import matrix_to_pose
    from prism_ros.nodes.prism_inputs import BadInput, read_pose_input

    T_map_odom = np.eye(4)
    T_map_odom[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # odom turned 90 degrees about z
    T_map_odom[:3, 3] = [1.0, 2.0, 0.0]

    def lookup(target, source, t, tolerance):
        if (target, source) == ("map", "odom"):
            return T_map_odom
        raise TransformError(f"no transform from {source} to {target}")

    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "odom"
    T_odom_base = np.eye(4)
    T_odom_base[:3, 3] = [0.5, 0.0, 0.0]
    msg.pose.pose = matrix_to_pose(T_odom_base)
    msg.pose.covariance = np.diag([0.01, 0.04, 0.0001, 1e-4, 1e-4, 1e-3]).ravel().tolist()
    T_map_base, covariance = read_pose_input(msg, "/initialpose", "map", lookup, 0.1)
    assert np.allclose(T_map_base, T_map_odom @ T_odom_base)
    assert covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(covariance) > 0)
    msg.pose.covariance = [0.0] * 36  # no covariance given: the filter's own is used
    assert read_pose_input(msg, "/initialpose", "map", lookup, 0.1)[1] is None
    msg.header.frame_id = "elsewhere"
    with pytest.raises(BadInput, match="in frame 'elsewhere'") as refused:
        read_pose_input(msg, "/initialpose", "map", lookup, 0.1)
    assert refused.value.cause == "bad_initial_pose"
    msg.header.frame_id = "map"
    msg.pose.pose.position.x = float("nan")
    with pytest.raises(BadInput, match="non-finite"):
        read_pose_input(msg, "~/set_pose", "map", lookup, 0.1)
