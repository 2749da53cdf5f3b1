"""Publish a known 64x48 rgb8 image (with row padding) and a 32FC1 depth image until the receiver leaves.

Usage: image_sender.py NAMESPACE [--timeout S]. Exit 0 once it published to a matched receiver
and the receiver went away; 1 on timeout.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/: ros_helpers

import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image

from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import numpy_to_image, sec_to_stamp
from ros_helpers.patterns import depth_pattern, padded_rgb_message, rgb_pattern


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("namespace")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    rclpy.init()
    node = Node("image_sender")
    rgb_pub = node.create_publisher(Image, f"{args.namespace}/rgb", reliable_qos(10))
    depth_pub = node.create_publisher(Image, f"{args.namespace}/depth", reliable_qos(10))
    rgb_msg = padded_rgb_message(rgb_pattern())
    depth_msg = numpy_to_image(depth_pattern(), "32FC1", backend="numpy")
    deadline, sent = time.monotonic() + args.timeout, 0
    while time.monotonic() < deadline:
        matched = rgb_pub.get_subscription_count() > 0 and depth_pub.get_subscription_count() > 0
        if matched:
            stamp = sec_to_stamp(1700000000.5 + sent)
            rgb_msg.header.stamp = depth_msg.header.stamp = stamp
            rgb_msg.header.frame_id = depth_msg.header.frame_id = f"seq_{sent}"
            rgb_pub.publish(rgb_msg)
            depth_pub.publish(depth_msg)
            sent += 1
        elif sent:
            break  # the receiver got what it needed and left
        time.sleep(0.1)
    node.destroy_node()
    rclpy.shutdown()
    print(f"sent {sent}", flush=True)
    return 0 if sent and time.monotonic() < deadline else 1


if __name__ == "__main__":
    sys.exit(main())
