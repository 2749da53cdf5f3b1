"""Record what a MapPublisher sends (mesh MarkerArrays, map clouds, rendered images) and pickle it.

Usage: mappub_recorder.py BASE OUT [--arrays N] [--triangles T] [--clouds N] [--images N] [--timeout S]
BASE is the publishing node's fully qualified name (topics BASE/mesh, BASE/map_cloud,
BASE/rendered/depth, BASE/rendered/uncertainty). Stops when at least N MarkerArrays arrived (--arrays) or
the markers shown after applying every array (ADD / DELETE / DELETEALL) hold exactly T triangles
(--triangles), and at least N clouds and N depth + N uncertainty images arrived. Writes a pickle of plain
Python / numpy data to OUT; exit 0 when everything arrived, 1 on timeout (the pickle is written anyway).
Prints READY once subscribed.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root: prism_ros

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from prism_ros.nodes.compat import sensor_qos
from prism_ros.nodes.conversions import header_ns, image_to_numpy


def marker_data(marker: Marker) -> dict:
    return {"ns": marker.ns, "id": marker.id, "type": marker.type, "action": marker.action,
            "frame_id": marker.header.frame_id, "stamp_ns": header_ns(marker),
            "points": np.array([(p.x, p.y, p.z) for p in marker.points], np.float64).reshape(-1, 3),
            "colors": np.array([(c.r, c.g, c.b, c.a) for c in marker.colors], np.float32).reshape(-1, 4),
            "orientation_w": marker.pose.orientation.w}


def cloud_data(msg: PointCloud2) -> dict:
    return {"frame_id": msg.header.frame_id, "stamp_ns": header_ns(msg), "height": msg.height,
            "width": msg.width, "point_step": msg.point_step, "row_step": msg.row_step,
            "is_bigendian": msg.is_bigendian, "is_dense": msg.is_dense,
            "fields": [(f.name, f.offset, f.datatype, f.count) for f in msg.fields],
            "data": bytes(msg.data)}


def image_data(msg: Image) -> dict:
    return {"frame_id": msg.header.frame_id, "stamp_ns": header_ns(msg), "encoding": msg.encoding,
            "pixels": np.array(image_to_numpy(msg))}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("out")
    p.add_argument("--arrays", type=int, default=0)
    p.add_argument("--triangles", type=int, default=-1)
    p.add_argument("--clouds", type=int, default=0)
    p.add_argument("--images", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    rclpy.init()
    node = Node("mappub_recorder")
    latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = {"arrays": [], "clouds": [], "depth": [], "uncertainty": []}
    shown: dict[int, int] = {}  # marker id -> triangles, after applying the arrays

    def on_array(msg: MarkerArray) -> None:
        markers = [marker_data(m) for m in msg.markers]
        got["arrays"].append(markers)
        for m in markers:
            if m["action"] == Marker.DELETEALL:
                shown.clear()
            elif m["action"] == Marker.DELETE:
                shown.pop(m["id"], None)
            else:
                shown[m["id"]] = len(m["points"]) // 3

    node.create_subscription(MarkerArray, f"{args.base}/mesh", on_array, latched)
    node.create_subscription(PointCloud2, f"{args.base}/map_cloud", lambda m: got["clouds"].append(cloud_data(m)),
                             latched)
    node.create_subscription(Image, f"{args.base}/rendered/depth", lambda m: got["depth"].append(image_data(m)),
                             sensor_qos(10))
    node.create_subscription(Image, f"{args.base}/rendered/uncertainty",
                             lambda m: got["uncertainty"].append(image_data(m)), sensor_qos(10))
    print("READY", flush=True)

    def done() -> bool:
        meshes = len(got["arrays"]) >= args.arrays and (args.triangles < 0 or sum(shown.values()) == args.triangles)
        return (meshes and len(got["clouds"]) >= args.clouds and len(got["depth"]) >= args.images
                and len(got["uncertainty"]) >= args.images)

    deadline = time.monotonic() + args.timeout
    while not done() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    complete = done()
    got["shown_triangles"] = sum(shown.values())
    with open(args.out, "wb") as out:
        pickle.dump(got, out)
    print(f"arrays {len(got['arrays'])} clouds {len(got['clouds'])} depth {len(got['depth'])} "
          f"uncertainty {len(got['uncertainty'])} shown triangles {got['shown_triangles']}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
