"""A node with one publisher and one subscription that idles, so a test can inspect its sockets.

Usage: idle_node.py [--seconds S]
"""
from __future__ import annotations

import argparse
import time

import rclpy
from rclpy.node import Node
from std_msgs.msg import String


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    rclpy.init()
    node = Node("idle_node")
    node.create_publisher(String, "idle_chatter", 10)
    node.create_subscription(String, "idle_chatter", lambda _m: None, 10)
    print("READY", flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
