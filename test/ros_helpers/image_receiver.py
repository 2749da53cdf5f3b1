"""Receive one rgb8 + one 32FC1 image pair from image_sender.py and check every pixel.

Usage: image_receiver.py NAMESPACE [--timeout S]. Prints a JSON verdict; exit 0 when both images
match the shared patterns exactly (NaNs included), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/: ros_helpers

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image

from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import image_to_numpy
from ros_helpers.patterns import depth_pattern, rgb_pattern


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("namespace")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    rclpy.init()
    node = Node("image_receiver")
    got: dict[str, Image] = {}
    node.create_subscription(Image, f"{args.namespace}/rgb", lambda m: got.setdefault("rgb", m),
                             reliable_qos(10))
    node.create_subscription(Image, f"{args.namespace}/depth", lambda m: got.setdefault("depth", m),
                             reliable_qos(10))
    deadline = time.monotonic() + args.timeout
    while len(got) < 2 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    verdict = {"received": sorted(got)}
    if len(got) == 2:
        rgb, depth = image_to_numpy(got["rgb"]), image_to_numpy(got["depth"])
        verdict.update(
            rgb_step=got["rgb"].step, rgb_shape=list(rgb.shape), depth_dtype=str(depth.dtype),
            rgb_ok=bool(np.array_equal(rgb, rgb_pattern())),
            depth_ok=bool(np.array_equal(depth, depth_pattern(), equal_nan=True)),
            depth_nans=int(np.isnan(depth).sum()))
    print(json.dumps(verdict), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if verdict.get("rgb_ok") and verdict.get("depth_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
