"""prism_ros.nodes.cdr writes the bytes rclpy's own serialisation writes (padding aside: rclpy leaves it
uninitialised, we write zeros), with packed point and colour arrays."""
from __future__ import annotations

import numpy as np
import pytest

from prism_ros.loopback import apply_loopback_env

apply_loopback_env()
rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Empty, Header
from visualization_msgs.msg import Marker, MarkerArray

from prism_ros.nodes.cdr import to_cdr


def assert_same_cdr(ours: bytes, theirs: bytes, kind) -> None:
    """Same length, same bytes wherever ours is not a zero (padding), and the same message when read back."""
    assert len(ours) == len(theirs)
    a, b = np.frombuffer(ours, np.uint8), np.frombuffer(theirs, np.uint8)
    assert ((a == b) | (a == 0)).all(), np.flatnonzero((a != b) & (a != 0))
    assert deserialize_message(ours, kind) == deserialize_message(theirs, kind)


def marker(rng: np.random.Generator, corners: int, text: str = "") -> tuple[Marker, np.ndarray, np.ndarray]:
    """A marker with every kind of field set, and its points (N,3) float64 and colours (N,4) float32."""
    m = Marker(header=Header(stamp=Time(sec=int(rng.integers(1e9)), nanosec=7), frame_id="map" * int(rng.integers(4))),
               ns="prism_mesh", id=int(rng.integers(-2**31, 2**31)), type=Marker.TRIANGLE_LIST, action=Marker.ADD,
               text=text, mesh_resource="package://x/y.dae", frame_locked=bool(rng.integers(2)))
    m.pose.position.x, m.pose.orientation.w = float(rng.normal()), 1.0
    m.scale.x = m.color.a = 0.5
    m.texture.format = "png"
    m.texture.data = rng.integers(0, 256, int(rng.integers(0, 5)), dtype=np.uint8).tobytes()
    m.mesh_file.data = rng.integers(0, 256, int(rng.integers(0, 3)), dtype=np.uint8).tolist()
    m.mesh_use_embedded_materials = True
    return m, rng.normal(size=(corners, 3)), rng.random((corners, 4)).astype(np.float32)


def with_objects(m: Marker, points: np.ndarray, colours: np.ndarray) -> Marker:
    """The same marker with rclpy's Point/ColorRGBA objects (what rclpy itself serialises)."""
    full = deserialize_message(serialize_message(m), Marker)
    full.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in points]
    full.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a)) for r, g, b, a in colours]
    return full


@pytest.mark.parametrize("corners", [0, 1, 3, 7])
def test_a_marker_with_packed_points_is_byte_identical(corners):
    rng = np.random.default_rng(corners)
    for text in ("", "a", "ab", "héllo"):  # string lengths move the alignment of what follows
        m, points, colours = marker(rng, corners, text)
        packed = to_cdr(m, {id(m): {"points": points, "colors": colours}})
        assert_same_cdr(packed, serialize_message(with_objects(m, points, colours)), Marker)
        back = deserialize_message(packed, Marker)
        np.testing.assert_array_equal(np.array([[p.x, p.y, p.z] for p in back.points]).reshape(-1, 3), points)
        assert back.text == text and back.mesh_use_embedded_materials


def test_a_marker_array_of_markers_of_every_size_is_byte_identical():
    rng = np.random.default_rng(3)
    parts = [marker(rng, int(n), "x" * int(rng.integers(5))) for n in (3, 0, 5, 1, 6)]
    packed = {id(m): {"points": p, "colors": c} for m, p, c in parts}
    ours = to_cdr(MarkerArray(markers=[m for m, _, _ in parts]), packed)
    theirs = serialize_message(MarkerArray(markers=[with_objects(m, p, c) for m, p, c in parts]))
    assert_same_cdr(ours, theirs, MarkerArray)


def test_other_messages_are_byte_identical():
    """Fixed arrays, byte blobs, sequences of messages with strings, floats after odd offsets."""
    rng = np.random.default_rng(4)
    image = Image(height=2, width=3, encoding="rgb8", step=9, data=rng.integers(0, 256, 18, dtype=np.uint8).tobytes())
    info = CameraInfo(distortion_model="plumb_bob", d=[0.1, -0.2, 0.0, 0.0, 0.01], k=rng.normal(size=9).tolist())
    imu = Imu(orientation_covariance=rng.normal(size=9).tolist())
    cloud = PointCloud2(height=1, width=2, fields=[PointField(name="x", offset=0, datatype=7, count=1)],
                        point_step=4, row_step=8, data=np.arange(8, dtype=np.uint8).tobytes(), is_dense=True)
    diagnostics = DiagnosticArray(status=[DiagnosticStatus(level=b"\x01", name="n" * k, values=[
        KeyValue(key="k", value="v" * k)]) for k in range(3)])
    for msg in (image, info, imu, cloud, diagnostics, Marker()):
        assert_same_cdr(to_cdr(msg), serialize_message(msg), type(msg))
    assert deserialize_message(to_cdr(Empty()), Empty) == Empty()  # its placeholder byte (rclpy pads to 4)


def test_packing_a_wrong_array_or_field_is_a_type_error():
    m = Marker()
    with pytest.raises(TypeError, match="float64"):
        to_cdr(m, {id(m): {"points": np.zeros((2, 3), np.float32)}})
    with pytest.raises(TypeError, match="4 columns"):  # a colour without its alpha
        to_cdr(m, {id(m): {"colors": np.zeros((2, 3), np.float32)}})
    with pytest.raises(TypeError, match="only sequences of messages"):
        to_cdr(m, {id(m): {"ns": np.zeros((2, 3))}})
