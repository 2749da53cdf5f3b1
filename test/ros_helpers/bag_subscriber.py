"""Subscribe to the image and IMU topics of a test bag (and /clock); print what arrived as JSON.

Usage: bag_subscriber.py IMAGE_TOPIC IMU_TOPIC EXPECTED [--timeout S] [--qos reliable|sensor]
Exit 0 when EXPECTED messages arrived on both topics, 1 on timeout. Prints READY once subscribed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root: prism_ros

import rclpy
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, Imu

from prism_ros.nodes.compat import reliable_qos, sensor_qos
from prism_ros.nodes.conversions import header_ns, image_to_numpy, stamp_to_ns


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("image_topic")
    p.add_argument("imu_topic")
    p.add_argument("expected", type=int)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--qos", default="reliable")
    args = p.parse_args()
    rclpy.init()
    node = Node("bag_subscriber")
    qos = reliable_qos(1000) if args.qos == "reliable" else sensor_qos(1000)
    got = {"image": [], "imu": [], "image_stamps": [], "imu_stamps": [], "clock": [],
           "bad_content": [], "image_shape": None}

    def on_image(msg: Image) -> None:
        seq = int(msg.header.frame_id.split("_")[1])
        pixels = image_to_numpy(msg)
        got["image_shape"] = list(pixels.shape)
        if not (pixels == seq % 256).all():
            got["bad_content"].append(seq)
        got["image"].append(seq)
        got["image_stamps"].append(header_ns(msg))

    def on_imu(msg: Imu) -> None:
        seq = int(msg.header.frame_id.split("_")[1])
        if msg.angular_velocity.x != float(seq):
            got["bad_content"].append(-seq)
        got["imu"].append(seq)
        got["imu_stamps"].append(header_ns(msg))

    node.create_subscription(Image, args.image_topic, on_image, qos)
    node.create_subscription(Imu, args.imu_topic, on_imu, qos)
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(stamp_to_ns(m.clock)),
                             reliable_qos(1000))
    print("READY", flush=True)
    deadline = time.monotonic() + args.timeout
    done = False
    while time.monotonic() < deadline and not done:
        rclpy.spin_once(node, timeout_sec=0.1)
        done = len(got["image"]) >= args.expected and len(got["imu"]) >= args.expected
    if done:  # collect stragglers (there should be none beyond EXPECTED)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(got), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
