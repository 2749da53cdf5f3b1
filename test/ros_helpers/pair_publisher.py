"""Publish Image/CameraInfo streams whose stamps pair up (with jitter) plus unmatched extras.

Usage: pair_publisher.py NAMESPACE [--pairs N] [--timeout S]
Pair i: Image at T0 + i*0.1 s, CameraInfo 10 ms later, both with frame_id "seq_<i>". Before
each pair an extra Image 50 ms earlier (frame_id "extra_<i>") that must be dropped, not matched.
Waits until both topics are matched before sending; exits after sending.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import make_header

T0 = 1700000000.0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("namespace")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    rclpy.init()
    node = Node("pair_publisher")
    image_pub = node.create_publisher(Image, f"{args.namespace}/image", reliable_qos(100))
    info_pub = node.create_publisher(CameraInfo, f"{args.namespace}/info", reliable_qos(100))
    deadline = time.monotonic() + args.timeout
    while image_pub.get_subscription_count() == 0 or info_pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.02)
    time.sleep(0.2)
    for i in range(args.pairs):
        t = T0 + 0.1 * i
        image_pub.publish(Image(header=make_header(f"extra_{i}", t - 0.05)))
        image_pub.publish(Image(header=make_header(f"seq_{i}", t)))
        info_pub.publish(CameraInfo(header=make_header(f"seq_{i}", t + 0.01)))
        time.sleep(0.01)
    image_pub.wait_for_all_acked(Duration(seconds=5))
    info_pub.wait_for_all_acked(Duration(seconds=5))
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
