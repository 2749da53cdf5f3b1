"""ros2 launch prism_ros suite.launch.py [sensor:=euroc] [bag:=/path/to/bag] [rviz:=true] [ace:=false] [dmn:=false]

The whole prism_ros suite. Today that is prism.launch.py (included; every one of its arguments --
config, sensor, use_sim_time, rviz, bag, rate, loop -- passes through unchanged). The relocalization
nodes ACE and DMN arrive in later releases: their switches exist so that command lines stay valid, and
for now they only log that the node is not part of this release (no executable is started).

| argument | default | choices | description |
| --- | --- | --- | --- |
| ace | false | true, false | ACE relocalization node (later release: logs a notice only) |
| dmn | false | true, false | DMN relocalization node (later release: logs a notice only) |
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PRISM_LAUNCH = "prism.launch.py"  # beside this file, in the source tree and in share/prism_ros/launch

ARGUMENTS = {
    "ace": ("false", "ACE relocalization node (later release: logs a notice only)"),
    "dmn": ("false", "DMN relocalization node (later release: logs a notice only)"),
}
CHOICES = {"ace": ["true", "false"], "dmn": ["true", "false"]}
# Placeholder notices for nodes that do not exist yet; replace each by its Node action when it lands.
LATER = {
    "ace": "ace:=true: the ACE relocalization node arrives in a later prism_ros release; not started",
    "dmn": "dmn:=true: the DMN relocalization node arrives in a later prism_ros release; not started",
}


def generate_launch_description():
    """ace/dmn arguments, prism.launch.py (its arguments pass through) and the later-release notices."""
    arguments = [DeclareLaunchArgument(name, default_value=default, description=text, choices=CHOICES[name])
                 for name, (default, text) in ARGUMENTS.items()]
    prism = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(os.path.dirname(os.path.abspath(__file__)), PRISM_LAUNCH)))
    notices = [LogInfo(msg=text, condition=IfCondition(LaunchConfiguration(name))) for name, text in LATER.items()]
    return LaunchDescription(arguments + [prism] + notices)
