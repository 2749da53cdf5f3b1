"""Bad input raises InputError whose message names the file and the fix (broken copies in tmp_path)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from shared_data import sample

from prism_ros.datasets import open_dataset
from prism_ros.errors import InputError


def raises_naming(path: Path, *args, match: str | None = None, **kwargs) -> InputError:
    """open_dataset(*args, **kwargs) raises InputError naming ``path`` (and ``match`` when given)."""
    with pytest.raises(InputError, match=match) as info:
        open_dataset(*args, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def copy_sequence(tmp_path: Path) -> Path:
    """A 3-frame 7-Scenes sequence copied from the stairs sample."""
    return Path(shutil.copytree(sample("7scenes_stairs_tiny/stairs/seq-01"), tmp_path / "seq-01"))


def tum_folder(tmp_path: Path, depth_times=(1.0, 1.1, 1.2), make_rgb: bool = True) -> Path:
    root = tmp_path / "rgbd_dataset_freiburg3_test"
    (root / "depth").mkdir(parents=True)
    if make_rgb:
        (root / "rgb").mkdir()
    for t in (1.0, 1.1, 1.2):
        if make_rgb:
            cv2.imwrite(str(root / "rgb" / f"{t:.6f}.png"), np.zeros((24, 32, 3), np.uint8))
        cv2.imwrite(str(root / "depth" / f"{t:.6f}.png"), np.full((24, 32), 10000, np.uint16))
    (root / "rgb.txt").write_text("".join(f"{t:.6f} rgb/{t:.6f}.png\n" for t in (1.0, 1.1, 1.2)))
    (root / "depth.txt").write_text("".join(f"{t:.6f} depth/{1.0 + 0.1 * (i % 3):.6f}.png\n"
                                            for i, t in enumerate(depth_times)))
    return root


# ------------------------------------------------------------------------------------- layout
def test_missing_path(tmp_path):
    raises_naming(tmp_path / "nope", tmp_path / "nope", match="not found")


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    raises_naming(tmp_path, tmp_path, match="unknown dataset layout")


def test_unknown_format_and_option(tmp_path):
    root = tum_folder(tmp_path)
    raises_naming(root, root, fmt="kitti", match="unknown format")
    raises_naming(root, root, depth_sclae=5000, match="unknown option")


# ---------------------------------------------------------------------------------------- TUM
def test_tum_missing_rgb_folder(tmp_path):
    root = tum_folder(tmp_path, make_rgb=False)
    error = raises_naming(root / "rgb.txt", root, match="missing")
    assert "rgb/1.000000.png" in str(error)


def test_tum_duplicate_timestamps(tmp_path):
    root = tum_folder(tmp_path, depth_times=(1.0, 1.1, 1.1))
    raises_naming(root / "depth.txt", root, match="duplicate")


def test_tum_unsorted_timestamps(tmp_path):
    root = tum_folder(tmp_path, depth_times=(1.0, 1.2, 1.1))
    raises_naming(root / "depth.txt", root, match="unsorted")


def test_tum_read_with_millimetre_scale():
    path = sample("tum_fr3_cabinet_keyframes")
    error = raises_naming(path / "depth_imgs" / "0000_depth_raw.png", path, depth_scale=1000, match="implausible")
    assert "depth_scale" in str(error)


def test_tum_malformed_line(tmp_path):
    root = tum_folder(tmp_path)
    (root / "rgb.txt").write_text("1.0\n")
    raises_naming(root / "rgb.txt", root, match="line 1")


# ----------------------------------------------------------------------------------- 7-Scenes
def test_depth_png_not_uint16(tmp_path):
    seq = copy_sequence(tmp_path)
    cv2.imwrite(str(seq / "frame-000000.depth.png"), np.full((480, 640), 100, np.uint8))
    raises_naming(seq / "frame-000000.depth.png", seq, match="uint16")


def test_truncated_depth_png_on_access(tmp_path):
    seq = copy_sequence(tmp_path)
    broken = seq / "frame-000002.depth.png"
    broken.write_bytes(broken.read_bytes()[:1000])
    ds = open_dataset(seq)  # the first frame is fine
    with pytest.raises(InputError, match="cannot read") as info:
        ds[2]
    assert str(broken) in str(info.value)


def test_corrupt_colour_image(tmp_path):
    seq = copy_sequence(tmp_path)
    broken = seq / "frame-000000.color.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    raises_naming(broken, seq, match="cannot read")


def test_missing_depth_file(tmp_path):
    seq = copy_sequence(tmp_path)
    (seq / "frame-000001.depth.png").unlink()
    raises_naming(seq, seq, match="frame-000001.depth.png")


def test_unknown_split_and_missing_split_file(tmp_path):
    scene = Path(shutil.copytree(sample("7scenes_stairs_tiny/stairs"), tmp_path / "stairs"))
    raises_naming(scene, scene, split="validation", match="unknown split")
    (scene / "TestSplit.txt").unlink()
    raises_naming(scene / "TestSplit.txt", scene, split="test", match="split file")


def test_frame_slice_out_of_range():
    path = sample("7scenes_stairs_tiny/stairs/seq-01")
    raises_naming(path, path, frames="5:9", match="selects none")
    raises_naming(path, path, frames="one:two", match="not a slice")
    raises_naming(path, path, frames="::-1", match="positive step")


# -------------------------------------------------------------------------------------- EuRoC
def test_euroc_unsorted_camera_list(tmp_path):
    root = tmp_path / "euroc"
    shutil.copytree(sample("euroc_V1_01_micro/mav0"), root / "mav0", ignore=shutil.ignore_patterns("imu0", "cam1"))
    csv = root / "mav0" / "cam0" / "data.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[2], lines[1]] + lines[3:]) + "\n")
    raises_naming(csv, root, match="unsorted")


def test_euroc_missing_sensor_yaml(tmp_path):
    root = tmp_path / "euroc"
    shutil.copytree(sample("euroc_V1_01_micro/mav0"), root / "mav0", ignore=shutil.ignore_patterns("imu0", "cam1"))
    (root / "mav0" / "cam0" / "sensor.yaml").unlink()
    raises_naming(root / "mav0" / "cam0" / "sensor.yaml", root, match="not found")


# ---------------------------------------------------------------------------------------- bags
def small_bag(path: Path) -> Path:
    store = get_typestore(Stores.ROS2_KILTED)
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                                frame_id="cam")
    image = store.types["sensor_msgs/msg/Image"](header=header, height=2, width=2, encoding="mono8", is_bigendian=0,
                                                 step=2, data=np.zeros(4, np.uint8))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/left/image", "sensor_msgs/msg/Image", typestore=store)
        writer.write(connection, 10**9, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
    return path


def test_bag_unknown_topic_lists_the_topics(tmp_path):
    bag = small_bag(tmp_path / "bag")
    error = raises_naming(bag, bag, topics=dict(rgb="/camera/rgb/image_color"), match="not in the bag")
    assert "/left/image [sensor_msgs/msg/Image]" in str(error)
    raises_naming(bag, bag, match="no colour topic")  # no preset matches


def test_bag_without_camera_info_needs_intrinsics(tmp_path):
    bag = small_bag(tmp_path / "bag")
    raises_naming(bag, bag, topics=dict(rgb="/left/image"), match="camera_info")
    assert len(open_dataset(bag, topics=dict(rgb="/left/image"), intrinsics=(1, 1, 1, 1, 2, 2))) == 1


def test_bag_wrong_type_for_role(tmp_path):
    bag = small_bag(tmp_path / "bag")
    raises_naming(bag, bag, topics=dict(rgb="/left/image", imu="/left/image"), match="role imu")


def test_corrupt_bag(tmp_path):
    bag = tmp_path / "broken.bag"
    bag.write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 64)
    raises_naming(bag, bag, match="cannot open")
