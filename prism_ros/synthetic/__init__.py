"""Synthetic RGB-D-inertial sequences with exact ground truth: a procedural room rendered by exact
ray casting, analytic motion profiles, IMU and control synthesis, folder and ROS 2 bag writers."""
from prism_ros.synthetic.imu import ControlModel, ImuModel, synthesize_control, synthesize_imu
from prism_ros.synthetic.scene import DepthNoise, Render, Scene, make_scene, render_scene
from prism_ros.synthetic.trajectory import PROFILES, Kinematics, Trajectory, make_trajectory
from prism_ros.synthetic.writer import Sequence, generate, intrinsics_for, make_sequence, read_scene

__all__ = [
    "PROFILES", "ControlModel", "DepthNoise", "ImuModel", "Kinematics", "Render", "Scene", "Sequence",
    "Trajectory", "generate", "intrinsics_for", "make_scene", "make_sequence", "make_trajectory", "render_scene",
    "read_scene", "synthesize_control", "synthesize_imu",
]
