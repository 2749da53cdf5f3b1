"""prism_ros: probabilistic dense SLAM and relocalization for ROS 2, on PyTorch."""
__version__ = "0.1.0"
