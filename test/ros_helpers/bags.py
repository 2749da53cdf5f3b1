"""Write small ROS 2 (mcap) and ROS 1 bags whose messages carry their sequence number.

Each message i has header.stamp = T0 + i * PERIOD and frame_id "seq_<i>"; images are filled with
i % 256 and IMU angular_velocity.x = i, so a receiver can check order and content.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

T0_NS = 1_700_000_000_123_456_789
PERIOD_NS = 20_000_000  # 50 Hz


def _header(types, i: int):
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    sec, nanosec = divmod(T0_NS + i * PERIOD_NS, 1_000_000_000)
    extra = {"seq": 1000 + i} if "seq" in Header.__dataclass_fields__ else {}  # ROS 1 header
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=f"seq_{i}", **extra)


def _image(types, i: int, width: int, height: int):
    return types["sensor_msgs/msg/Image"](
        header=_header(types, i), height=height, width=width, encoding="rgb8", is_bigendian=0,
        step=width * 3, data=np.full(height * width * 3, i % 256, dtype=np.uint8))


def _imu(types, i: int):
    Vector3 = types["geometry_msgs/msg/Vector3"]
    Quaternion = types["geometry_msgs/msg/Quaternion"]
    cov = np.zeros(9)
    return types["sensor_msgs/msg/Imu"](
        header=_header(types, i), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
        orientation_covariance=cov, angular_velocity=Vector3(x=float(i), y=0.0, z=0.0),
        angular_velocity_covariance=cov, linear_acceleration=Vector3(x=0.0, y=0.0, z=9.81),
        linear_acceleration_covariance=cov)


def _tf(types, i: int):
    TF = types["tf2_msgs/msg/TFMessage"]
    return TF(transforms=[])


def write_ros2_bag(path: Path, image_topic: str, imu_topic: str, count: int = 50,
                   width: int = 32, height: int = 24, tf_topic: str | None = "/tf") -> Path:
    """ROS 2 mcap bag with ``count`` images and IMU messages (and a /tf topic, unplayable without tf2_msgs)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image_conn = writer.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=store)
        imu_conn = writer.add_connection(imu_topic, "sensor_msgs/msg/Imu", typestore=store)
        tf_conn = (writer.add_connection(tf_topic, "tf2_msgs/msg/TFMessage", typestore=store)
                   if tf_topic else None)
        for i in range(count):
            t = T0_NS + i * PERIOD_NS
            writer.write(imu_conn, t, store.serialize_cdr(_imu(types, i), "sensor_msgs/msg/Imu"))
            writer.write(image_conn, t + 1, store.serialize_cdr(_image(types, i, width, height),
                                                                "sensor_msgs/msg/Image"))
            if tf_conn is not None:
                writer.write(tf_conn, t + 2, store.serialize_cdr(_tf(types, i), "tf2_msgs/msg/TFMessage"))
    return path


def write_ros1_bag(path: Path, image_topic: str, imu_topic: str, count: int = 20,
                   width: int = 32, height: int = 24) -> Path:
    """ROS 1 bag (headers with seq) with ``count`` images and IMU messages."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    types = store.types
    with Writer(path) as writer:
        image_conn = writer.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=store)
        imu_conn = writer.add_connection(imu_topic, "sensor_msgs/msg/Imu", typestore=store)
        for i in range(count):
            t = T0_NS + i * PERIOD_NS
            image, imu = _image(types, i, width, height), _imu(types, i)  # seq must not leak
            writer.write(imu_conn, t, store.serialize_ros1(imu, "sensor_msgs/msg/Imu"))
            writer.write(image_conn, t + 1, store.serialize_ros1(image, "sensor_msgs/msg/Image"))
    return path


def write_mismatched_bag(path: Path, topic: str = "/weird", count: int = 3) -> Path:
    """ROS 2 bag whose std_msgs/msg/String definition is two float64s: not the installed String."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg("float64 data\nfloat64 more", "std_msgs/msg/String"))
    fake = store.types["std_msgs/msg/String"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(topic, "std_msgs/msg/String", typestore=store)
        for i in range(count):
            writer.write(connection, T0_NS + i * PERIOD_NS,
                         store.serialize_cdr(fake(data=1e300, more=2.0), "std_msgs/msg/String"))
    return path
