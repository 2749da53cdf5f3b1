"""ros2 launch prism_ros prism.launch.py [sensor:=euroc] [bag:=/path/to/bag] [rviz:=true] [config:=FILE]

The PRISM SLAM node with its parameters and a sensor preset, optionally a bag player (publishing
/clock) and RViz2. The nodes come from prism_ros.launch_graph.graph.prism_graph, the same NodeSpecs that
`python -m prism_ros.launch_graph.launcher prism [BAG] --sensor S [--rviz] [--config FILE]` runs when ROS 2
launch is not installed. The launch arguments are resolved first (OpaqueFunction) because they choose
files and optional nodes.

| argument | default | choices | description |
| --- | --- | --- | --- |
| config | prism.yaml | path | prism_node parameter YAML: a path, or a file name in share/prism_ros/config (default: the installed config/prism.yaml) |
| sensor | tum | tum, euroc, blackbird, 7scenes, realsense, synthetic | sensor preset share/prism_ros/config/sensors/<sensor>.yaml (topics, frames, camera model), loaded after config |
| use_sim_time | auto | auto, true, false | use /clock time in every node; auto = true exactly when bag is given |
| rviz | false | true, false | also start rviz2 with share/prism_ros/rviz/prism.rviz |
| bag | "" | path | ROS 1 .bag or ROS 2 bag folder/.db3/.mcap to play with /clock ("" = none: live sensors or another player) |
| rate | 1.0 | number | bag playback speed factor (0 = as fast as possible); only with bag |
| loop | false | true, false | restart the bag at its end; only with bag |
| namespace | "" | name | namespace of the nodes (two cameras or robots side by side; rviz2 stays global) |
| autostart | true | true, false | prism_node configures and activates itself; false: it waits for a lifecycle manager |
| fastdds_profile | auto | auto, none, path | Fast DDS profile of the nodes: auto = share/prism_ros/config/fastdds_large_data.xml (shared memory that holds camera images) unless a profile is set (FASTDDS_DEFAULT_PROFILES_FILE; Humble/Jazzy: FASTRTPS_DEFAULT_PROFILES_FILE); none = the environment's |

Parameter files are ROS 2 parameter YAML (``prism_node:`` or ``/**:`` with ``ros__parameters``); the
sensor preset is loaded after config, so it overrides it, and use_sim_time overrides both.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from prism_ros.launch_graph.graph import launch_nodes, prism_graph

ARGUMENTS = {
    "config": ("prism.yaml", "prism_node parameter YAML: a path, or a file name in share/prism_ros/config "
                             "(default: the installed config/prism.yaml)"),
    "sensor": ("tum", "sensor preset share/prism_ros/config/sensors/<sensor>.yaml, loaded after config"),
    "use_sim_time": ("auto", "use /clock time in every node; auto = true exactly when bag is given"),
    "rviz": ("false", "also start rviz2 with share/prism_ros/rviz/prism.rviz"),
    "bag": ("", "ROS 1 .bag or ROS 2 bag folder/.db3/.mcap to play with /clock (empty: none)"),
    "rate": ("1.0", "bag playback speed factor (0 = as fast as possible); only with bag"),
    "loop": ("false", "restart the bag at its end; only with bag"),
    "namespace": ("", "namespace of the nodes (two cameras or robots side by side; rviz2 stays global)"),
    "autostart": ("true", "prism_node configures and activates itself; false: it waits for a lifecycle manager"),
    "fastdds_profile": ("auto", "Fast DDS profile of the nodes: auto = config/fastdds_large_data.xml unless a "
                                "profile is set in the environment; none = the environment's; or a file"),
}
CHOICES = {
    "sensor": ["tum", "euroc", "blackbird", "7scenes", "realsense", "synthetic"],
    "use_sim_time": ["auto", "true", "false"],
    "rviz": ["true", "false"],
    "autostart": ["true", "false"],
    "loop": ["true", "false"],
}


def _declare(name, default, description):
    return DeclareLaunchArgument(name, default_value=default, description=description,
                                 **({"choices": CHOICES[name]} if name in CHOICES else {}))


def _nodes(context):
    """The graph's nodes for the resolved launch arguments (missing parameter/rviz files stop the launch)."""
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    return launch_nodes(prism_graph(**values))


def generate_launch_description():
    """The launch arguments of the table above and the prism graph's nodes."""
    arguments = [_declare(name, default, text) for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])
