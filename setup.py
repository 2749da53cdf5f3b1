"""prism_ros: an ament_python ROS 2 package that also installs with plain pip.

`colcon build` uses this file inside a ROS 2 workspace; `pip install -e .[ros]` (what `make`
does) installs the same package into a virtualenv and pulls the PyPI ROS 2 Kilted wheels.
"""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "prism_ros"

# Core scientific stack. torch is pinned loosely so an installed build (CUDA or CPU) is respected;
# the Makefile installs torch==2.13.0 first when none is present.
CORE = [
    "numpy>=1.24",
    "scipy>=1.10",
    "torch>=2.1",
    "kornia>=0.7",
    "opencv-python-headless>=4.8",
    "rosbags>=0.10",
    "evo>=1.28",
    "matplotlib>=3.7",
    "typer>=0.12",
    "rich>=13",
    "tqdm>=4.66",
    "pyyaml>=6",
    "scikit-image>=0.22",  # marching cubes for mesh export
    "warp-lang>=1.19",  # fused CPU/CUDA kernels of the per-frame stages (prism_ros.prism.kernels)
]
# ROS 2 Kilted from PyPI, for machines without a ROS install (a sourced ROS install provides these).
ROS_WHEELS = [
    "ros-kilted-rclpy",
    "ros-kilted-rmw-fastrtps-cpp",
    "ros-kilted-sensor-msgs",
    "ros-kilted-geometry-msgs",
    "ros-kilted-nav-msgs",
    "ros-kilted-visualization-msgs",
    "ros-kilted-std-msgs",
    "ros-kilted-std-srvs",
    "ros-kilted-diagnostic-msgs",
    "ros-kilted-rosgraph-msgs",
]
NODES = {
    "bag_player": "prism_ros.nodes.player:main",
    "trajectory_recorder": "prism_ros.nodes.recorder:main",
    "imu_odometry": "prism_ros.nodes.imu_odometry:main",
    "prism_node": "prism_ros.nodes.prism_node:main",
    "ace_node": "prism_ros.nodes.ace_node:main",
    "dmn_node": "prism_ros.nodes.dmn_node:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", [f for f in glob("config/*") if Path(f).is_file()]),
        ("share/" + PACKAGE + "/config/sensors", glob("config/sensors/*.yaml")),
        ("share/" + PACKAGE + "/rviz", glob("rviz/*.rviz")),
    ],
    package_data={PACKAGE: ["py.typed"], f"{PACKAGE}.ace": ["weights/*.pt", "weights/README.md"],
                  f"{PACKAGE}.dmn": ["weights/*/*.pt", "weights/README.md"]},
    install_requires=CORE,
    extras_require={
        "ros": ROS_WHEELS,
        "mesh": ["open3d>=0.18"],
        "test": ["pytest>=7", "pytest-timeout>=2", "ruff>=0.6", "xmlschema>=3"],
    },
    zip_safe=True,
    maintainer="prism_ros developers",
    maintainer_email="prism-ros@example.org",
    description="Real-time dense probabilistic SLAM (PRISM) and relocalization as ROS 2 nodes.",
    license="Apache-2.0",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": ["prism-ros = prism_ros.cli.main:main"]
        + [f"{name} = {target}" for name, target in NODES.items()],
    },
)
