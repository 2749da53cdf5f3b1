"""ros2 launch prism_ros play.launch.py bag:=/path/to/bag [rate:=1.0] [loop:=false]

Builds the nodes from prism_ros.launch_graph.graph.play_graph, the same NodeSpecs that
`python -m prism_ros.launch_graph.launcher play BAG` runs when ROS 2 launch is not installed.
"""
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from prism_ros.launch_graph.graph import play_graph

ARGUMENTS = {
    "bag": (None, "ROS 1 .bag file or ROS 2 bag folder/.db3/.mcap to play"),
    "rate": ("1.0", "playback speed factor (0 = as fast as possible)"),
    "loop": ("false", "restart the bag at its end"),
}


def _declare(name, default, description):
    if default is None:
        return DeclareLaunchArgument(name, description=description)
    return DeclareLaunchArgument(name, default_value=default, description=description)


def _node(spec):
    return Node(package=spec.package, executable=spec.executable, name=spec.name,
                parameters=[spec.parameters], remappings=list(spec.remappings),
                arguments=list(spec.arguments), output="screen")


def generate_launch_description():
    """Launch arguments bag, rate, loop and one Node action per NodeSpec of the play graph."""
    arguments = [_declare(name, default, text) for name, (default, text) in ARGUMENTS.items()]
    specs = play_graph(**{name: LaunchConfiguration(name) for name in ARGUMENTS})
    return LaunchDescription(arguments + [_node(spec) for spec in specs])
