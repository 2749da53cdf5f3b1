"""Geometry on torch tensors (no ROS): Lie groups on 4x4 matrices, pinhole camera, pyramids."""
from prism_ros.geometry.camera import PinholeCamera
from prism_ros.geometry.lie import (
    se3_adjoint,
    se3_compose,
    se3_exp,
    se3_from_rt,
    se3_inverse,
    se3_log,
    skew,
    so3_exp,
    so3_left_jacobian,
    so3_left_jacobian_inverse,
    so3_log,
    so3_right_jacobian,
    so3_right_jacobian_inverse,
    transform_points,
)
from prism_ros.geometry.pyramid import camera_pyramid, depth_pyramid, downsample_depth, intensity_pyramid

__all__ = [
    "PinholeCamera",
    "camera_pyramid",
    "depth_pyramid",
    "downsample_depth",
    "intensity_pyramid",
    "se3_adjoint",
    "se3_compose",
    "se3_exp",
    "se3_from_rt",
    "se3_inverse",
    "se3_log",
    "skew",
    "so3_exp",
    "so3_left_jacobian",
    "so3_left_jacobian_inverse",
    "so3_log",
    "so3_right_jacobian",
    "so3_right_jacobian_inverse",
    "transform_points",
]
