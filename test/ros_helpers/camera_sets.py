"""Send or receive full-size camera sets (rgb8 + 16UC1 depth + CameraInfo) with sensor-data QoS.

Usage: camera_sets.py send NAMESPACE [--sets N] [--width W] [--height H] [--rate HZ] [--timeout S]
       camera_sets.py receive NAMESPACE [--sets N] [--timeout S]
The sender waits until every topic is matched, sends N sets stamped 1..N at the given rate, then waits
for the receiver to leave. The receiver prints a JSON verdict (sets complete, per topic counts, image
sizes) once it has N complete sets or nothing arrived for 3 s; exit 0 when at least one set was complete.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from prism_ros.nodes.compat import qos_by_name

TOPICS = (("rgb", Image), ("depth", Image), ("camera_info", CameraInfo))


def send(node: Node, args) -> int:
    qos = qos_by_name("sensor", 5)
    publishers = [node.create_publisher(kind, f"{args.namespace}/{name}", qos) for name, kind in TOPICS]
    w, h = args.width, args.height
    rng = np.random.default_rng(0)
    rgb = Image(height=h, width=w, encoding="rgb8", step=3 * w,
                data=rng.integers(0, 255, 3 * w * h, np.uint8).tobytes())
    depth = Image(height=h, width=w, encoding="16UC1", step=2 * w,
                  data=rng.integers(500, 4000, w * h, np.uint16).tobytes())
    info = CameraInfo(height=h, width=w, k=[500.0, 0, w / 2, 0, 500.0, h / 2, 0, 0, 1])
    deadline = time.monotonic() + args.timeout
    while min(p.get_subscription_count() for p in publishers) == 0:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.05)
    time.sleep(0.5)  # the receiver's side of the match settles too
    for i in range(1, args.sets + 1):
        for message in (rgb, depth, info):
            message.header.stamp.sec = i
            message.header.frame_id = "camera"
        for publisher, message in zip(publishers, (rgb, depth, info)):
            publisher.publish(message)
        time.sleep(1.0 / args.rate)
    while max(p.get_subscription_count() for p in publishers) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"sent {args.sets}", flush=True)
    return 0


def receive(node: Node, args) -> int:
    qos = qos_by_name("sensor", args.sets)  # a deep queue: this test is about transport, not a slow reader
    stamps: dict[str, set[int]] = {name: set() for name, _ in TOPICS}
    sizes: dict[str, int] = {}
    last = [time.monotonic()]

    def keep(name):
        def on_message(message):
            stamps[name].add(message.header.stamp.sec)
            if hasattr(message, "data"):
                sizes[name] = len(message.data)
            last[0] = time.monotonic()
        return on_message

    for name, kind in TOPICS:
        node.create_subscription(kind, f"{args.namespace}/{name}", keep(name), qos)
    deadline = time.monotonic() + args.timeout
    complete = set()
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
        complete = set.intersection(*stamps.values())
        if len(complete) >= args.sets or (any(stamps.values()) and time.monotonic() - last[0] > 3.0):
            break
    print(json.dumps({"complete": len(complete), "per_topic": {k: len(v) for k, v in stamps.items()},
                      "bytes": sizes}), flush=True)
    return 0 if complete else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("send", "receive"))
    p.add_argument("namespace")
    p.add_argument("--sets", type=int, default=30)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=40.0)
    args = p.parse_args()
    rclpy.init()
    node = Node(f"camera_sets_{args.role}")
    try:
        return send(node, args) if args.role == "send" else receive(node, args)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
