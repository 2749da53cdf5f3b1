"""ros2 launch prism_ros suite.launch.py [sensor:=euroc] [bag:=/path/to/bag] [rviz:=true] [ace:=true] [ace_map:=FILE]
    [dmn:=true] [dmn_contexts:=FILE]

The whole prism_ros suite: the PRISM graph of prism.launch.py (same arguments, same meaning) plus, with
ace:=true, ace_node on the same sensor preset (relocalization on request, and the automatic recovery of
prism_node when its tracking is lost). The nodes come from prism_ros.launch_graph.graph.suite_graph, the same
NodeSpecs that `python -m prism_ros.launch_graph.launcher suite [BAG] --ace ...` runs when ROS 2 launch is not
installed. The DMN localization node arrives in a later release: its switch exists so that command lines
stay valid, and for now it only logs that the node is not part of this release.

| argument | default | choices | description |
| --- | --- | --- | --- |
| config | prism.yaml | path | prism_node parameter YAML: a path, or a file name in share/prism_ros/config (default: the installed config/prism.yaml) |
| sensor | tum | tum, euroc, blackbird, 7scenes, realsense, synthetic | sensor preset share/prism_ros/config/sensors/<sensor>.yaml, loaded after config (and after config/ace.yaml for ace_node) |
| use_sim_time | auto | auto, true, false | use /clock time in every node; auto = true exactly when bag is given |
| rviz | false | true, false | also start rviz2 with share/prism_ros/rviz/prism.rviz |
| bag | "" | path | ROS 1 .bag or ROS 2 bag folder/.db3/.mcap to play with /clock ("" = none: live sensors or another player) |
| rate | 1.0 | number | bag playback speed factor (0 = as fast as possible); only with bag |
| loop | false | true, false | restart the bag at its end; only with bag |
| namespace | "" | name | namespace of the nodes (two cameras or robots side by side; rviz2 stays global) |
| autostart | true | true, false | prism_node configures and activates itself; false: it waits for a lifecycle manager |
| fastdds_profile | auto | auto, none, path | Fast DDS profile of the nodes: auto = share/prism_ros/config/fastdds_large_data.xml (shared memory that holds camera images) unless a profile is set (FASTDDS_DEFAULT_PROFILES_FILE; Humble/Jazzy: FASTRTPS_DEFAULT_PROFILES_FILE); none = the environment's |
| ace | false | true, false | also start ace_node (ACE relocalization and recovery of prism_node) |
| ace_map | "" | path | ACE map file for ace_node ("" = map_path of config/ace.yaml) |
| dmn | false | true, false | also start dmn_node (DMN particle-filter localization; particles in RViz) |
| dmn_contexts | "" | path | DMN context file for dmn_node ("" = context_path of config/dmn.yaml) |
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from prism_ros.launch_graph.graph import launch_nodes, suite_graph

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
    "ace": ("false", "also start ace_node (ACE relocalization and recovery of prism_node)"),
    "ace_map": ("", "ACE map file for ace_node (empty: map_path of config/ace.yaml)"),
    "dmn": ("false", "also start dmn_node (DMN particle-filter localization)"),
    "dmn_contexts": ("", "DMN context file for dmn_node (empty: context_path of config/dmn.yaml)"),
}
CHOICES = {
    "sensor": ["tum", "euroc", "blackbird", "7scenes", "realsense", "synthetic"],
    "use_sim_time": ["auto", "true", "false"],
    "rviz": ["true", "false"],
    "autostart": ["true", "false"],
    "loop": ["true", "false"],
    "ace": ["true", "false"],
    "dmn": ["true", "false"],
}
GRAPH_ARGUMENTS = ("config", "sensor", "use_sim_time", "rviz", "bag", "rate", "loop", "namespace", "autostart",
                   "fastdds_profile", "ace", "ace_map", "dmn", "dmn_contexts")


def _declare(name, default, description):
    return DeclareLaunchArgument(name, default_value=default, description=description,
                                 **({"choices": CHOICES[name]} if name in CHOICES else {}))


def _nodes(context):
    """The graph's nodes for the resolved launch arguments (missing parameter/rviz files stop the launch)."""
    values = {name: LaunchConfiguration(name).perform(context) for name in GRAPH_ARGUMENTS}
    return launch_nodes(suite_graph(**values))


def generate_launch_description():
    """The launch arguments of the table above and the suite graph's nodes."""
    arguments = [_declare(name, default, text) for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])
