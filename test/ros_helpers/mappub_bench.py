"""Time MapPublisher.publish_map on synthetic maps (one torch thread, loopback DDS, no subscriber unless
--subscriber, which starts a plain MarkerArray/PointCloud2 subscriber process on the same domain).

Usage: mappub_bench.py [--width 320 --height 240 --frames 0,10,...] [--subscriber]
Prints one line per publish: blocks, groups re-meshed / carried, triangles sent, cloud points, ms by phase.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from prism_ros.loopback import apply_loopback_env, spawn

ENV = apply_loopback_env()

import numpy as np
import torch

SUBSCRIBER = """
import sys, rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
from visualization_msgs.msg import MarkerArray
from sensor_msgs.msg import PointCloud2
rclpy.init(); node = Node("bench_sub")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
node.create_subscription(MarkerArray, sys.argv[1] + "/mesh", lambda m: None, qos)
node.create_subscription(PointCloud2, sys.argv[1] + "/map_cloud", lambda m: None, qos)
rclpy.spin(node)
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--frames", default="0,10,20,30,40,50,60,70,80")
    p.add_argument("--subscriber", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    import rclpy
    from rclpy.node import Node

    from prism_ros.frame import Frame
    from prism_ros.nodes.map_publishing import MapPublisher
    from prism_ros.prism.map import GaussianSdfMap, MapConfig
    from prism_ros.prism.observation import Observation
    from prism_ros.synthetic import make_sequence

    frames = [int(f) for f in args.frames.split(",")]
    seq = make_sequence(frames=max(frames) + 1, noise=False, width=args.width, height=args.height)
    rclpy.init()
    node = Node("mappub_bench")
    publisher = MapPublisher(node, "map")
    sub = None
    if args.subscriber:
        sub = spawn([sys.executable, "-c", SUBSCRIBER, node.get_fully_qualified_name()], int(ENV["ROS_DOMAIN_ID"]))
        while publisher._mesh_pub.get_subscription_count() < 1:
            time.sleep(0.05)
    sdf_map = GaussianSdfMap(MapConfig())

    def integrate(index, window=None):
        rgb, depth = seq.frame(index)
        if window is not None:
            kept = np.full_like(depth, np.nan)
            kept[window] = depth[window]
            depth = kept
        obs = Observation.from_frame(Frame(index, index / 30.0, rgb, depth, seq.intrinsics), levels=1)
        sdf_map.integrate(obs.finest, obs.colour, seq.poses[index])

    def publish(label):
        publisher.publish_map(sdf_map, 1.0)
        if sub is not None:
            publisher.wait_delivered(30)
        s = publisher.stats
        phases = " ".join(f"{k} {v:.0f}" for k, v in s.phases_ms.items())
        print(f"{label:>22}: {s.blocks} blocks, {s.changed_blocks} changed, {s.meshed_groups} groups meshed "
              f"(+{s.carried_groups} carried, {len(publisher._meshes)} shown), {s.triangles_sent} triangles, "
              f"{s.cloud_points} cloud points: {s.ms:.0f} ms ({phases})", flush=True)

    for index in frames[:-1]:
        integrate(index)
    publish("first (whole map)")
    integrate(frames[-1])
    publish("one more whole frame")
    h, w = args.height, args.width
    integrate(frames[-1] - 5, (slice(h * 3 // 8, h * 5 // 8), slice(w * 3 // 8, w * 5 // 8)))
    publish("a quarter of a frame")
    publish("nothing changed")
    start = time.perf_counter()
    publisher.republish()
    print(f"{'republish everything':>22}: {(time.perf_counter() - start) * 1e3:.0f} ms", flush=True)
    if sub is not None:
        sub.kill()
        sub.communicate()
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
