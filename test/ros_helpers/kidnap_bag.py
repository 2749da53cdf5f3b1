"""A kidnapped-camera bag from a synthetic one: the whole bag, then the camera teleported back to where it
started. The frames of the first ``seconds`` play again, restamped to continue one frame period after the
last frame, so the image stream jumps to an earlier viewpoint while time runs on (ground truth moves with
it); then the camera holds still at the last of them for ``hold`` more frames, so frames keep coming after a
recovery however late it is. IMU and control messages are not repeated: a node replaying this bag predicts with the
constant-velocity model."""
from __future__ import annotations

from pathlib import Path

CAMERA_TOPICS = ("/camera/rgb/image_color", "/camera/depth/image", "/camera/rgb/camera_info", "/ground_truth")


def write_kidnap_bag(source: Path, target: Path, seconds: float, hold: int = 0) -> tuple[int, int]:
    """Write ``target`` (mcap) from the synthetic bag ``source``; returns the stamp (ns) of the first
    kidnapped frame and the number of kidnapped frames (the held ones included)."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    with AnyReader([Path(source)], default_typestore=store) as reader:
        connections = list(reader.connections)  # the reader empties its list on close
        messages = list(reader.messages())
        frame_times = sorted(t for c, t, _ in messages if c.topic == CAMERA_TOPICS[0])
        start, end = frame_times[0], frame_times[-1]
        shift = end - start + (frame_times[1] - frame_times[0])
        period = frame_times[1] - frame_times[0]
        repeated = [(c, t + shift, reader.deserialize(raw, c.msgtype)) for c, t, raw in messages
                    if c.topic in CAMERA_TOPICS and t - start <= seconds * 1e9]
        last = max(t for _, t, _ in repeated)
        repeated += [(c, t + k * period, reader.deserialize(raw, c.msgtype)) for k in range(1, hold + 1)
                     for c, t, raw in [(c, t + shift, raw) for c, t, raw in messages if c.topic in CAMERA_TOPICS]
                     if t == last]
    with Writer(Path(target), version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        out = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in connections}
        for connection, t, raw in messages:
            writer.write(out[connection.topic], t, raw)
        for connection, t, msg in repeated:
            stamp_ns = t  # the synthetic bag stamps every message with its record time
            msg.header.stamp = type(msg.header.stamp)(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
            writer.write(out[connection.topic], t, store.serialize_cdr(msg, connection.msgtype))
    return start + shift, sum(c.topic == CAMERA_TOPICS[0] for c, _, _ in repeated)
