"""Deterministic image content shared by the publishing and receiving test processes."""
from __future__ import annotations

import numpy as np

HEIGHT, WIDTH = 48, 64


def rgb_pattern(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 image where every pixel differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 3 + seed) % 256, (y * 5 + 7 * seed) % 256, (x * y + seed) % 256], axis=-1)
    return rgb.astype(np.uint8)


def depth_pattern(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W) float32 depth in metres with a NaN border (invalid pixels travel too)."""
    y, x = np.mgrid[0:height, 0:width]
    depth = (0.5 + 0.01 * x + 0.001 * y).astype(np.float32)
    depth[0, :] = np.nan
    return depth


def padded_rgb_message(rgb: np.ndarray, padding: int = 5):
    """sensor_msgs/Image rgb8 whose rows carry ``padding`` junk bytes (step > width * 3)."""
    import array

    from sensor_msgs.msg import Image

    height, width = rgb.shape[:2]
    step = width * 3 + padding
    rows = np.full((height, step), 0xAB, dtype=np.uint8)
    rows[:, : width * 3] = rgb.reshape(height, width * 3)
    data = array.array("B")
    data.frombytes(rows.tobytes())
    return Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=step, data=data)
