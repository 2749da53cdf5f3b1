"""The node graphs prism_ros starts, as plain data: the single source for launch files and the launcher.

``launch/*.launch.py`` turn each :class:`NodeSpec` into a ``launch_ros.actions.Node`` when ROS 2
launch is installed; :mod:`prism_ros.launch_graph.launcher` runs the same specs as subprocesses when it is
not (the PyPI wheels have no launch). Values may be launch substitutions: nothing here evaluates them,
except in :func:`prism_graph`, which takes plain strings or Python values (``prism.launch.py`` resolves its
launch arguments first, in an ``OpaqueFunction``) because it picks files and optional nodes from them.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from prism_ros.errors import InputError
from prism_ros.loopback import PROFILE_VARIABLES, profile_variable


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: what ``launch_ros.actions.Node`` needs, plus a ``python -m`` fallback."""

    package: str
    executable: str  # console script (installed in lib/<package> by colcon, in bin/ by pip)
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    module: str | None = None  # `python -m <module>` when the console script is not found
    parameter_files: tuple[Any, ...] = ()  # ROS 2 parameter YAML files, loaded before ``parameters``
    namespace: str = ""  # "" or an absolute namespace ("/robot1"): the node's relative and private topics follow it
    env: tuple[tuple[str, str], ...] = ()  # environment variables for the node's process (e.g. its DDS profile)


PACKAGE = "prism_ros"


def bag_player_spec(bag: Any, rate: Any = 1.0, loop: Any = False, qos: Any = "reliable",
                    topics: Any = "", wait_for_subscribers: Any = 0, quiet: Any = True,
                    remappings: tuple[tuple[str, str], ...] = (), name: str = "bag_player") -> NodeSpec:
    """The bag player node; ``topics`` is a comma-separated list ("" = all topics)."""
    parameters = {"bag": bag, "rate": rate, "loop": loop, "qos": qos, "topics": topics,
                  "wait_for_subscribers": wait_for_subscribers, "quiet": quiet}
    return NodeSpec(PACKAGE, "bag_player", name, parameters, tuple(remappings),
                    module="prism_ros.nodes.player")


def play_graph(bag: Any, rate: Any = 1.0, loop: Any = False, **player: Any) -> list[NodeSpec]:
    """Graph of ``play.launch.py``: the bag player (the SLAM nodes join this graph as they land)."""
    return [bag_player_spec(bag, rate=rate, loop=loop, **player)]


# ----------------------------------------------------------------------------- the PRISM graph
#: sensor presets: ``config/sensors/<name>.yaml`` (ROS 2 parameter files for prism_node)
SENSORS = ("tum", "euroc", "blackbird", "7scenes", "realsense", "synthetic")
#: files prism_graph refers to, relative to the package share folder (the source tree in a checkout)
NODE_CONFIG = "config/prism.yaml"
SENSOR_CONFIG = "config/sensors/{sensor}.yaml"
RVIZ_CONFIG = "rviz/prism.rviz"
USE_SIM_TIME = ("auto", "true", "false")
#: Fast DDS profile whose shared memory holds camera images (docs/node.md, "Large images over DDS")
LARGE_DATA_PROFILE = "config/fastdds_large_data.xml"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def share_dir() -> Path:
    """Where ``config/``, ``rviz/`` and ``launch/`` are: the ament share folder of prism_ros when it is
    installed in a sourced workspace, else this source checkout, else ``<sys.prefix>/share/prism_ros``."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError):
        pass
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.py").is_file() and (checkout / "launch").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / PACKAGE


def as_bool(value: Any, what: str) -> bool:
    """A launch-style boolean (bool, or "true"/"false"/"1"/"0"/...; "" is false)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise InputError(f"{what}:={value!r} is not a boolean", f"write {what}:=true or {what}:=false")


def config_path(value: Any, share: Path | None = None) -> Path:
    """A node parameter file: a path as given, or a bare file name in the installed ``config/`` folder."""
    text = str(value).strip()
    if not text:
        return (share or share_dir()) / NODE_CONFIG
    path = Path(text).expanduser()
    if path.parent == Path(".") and not path.exists():
        return (share or share_dir()) / "config" / path.name
    return path


def prism_node_spec(config: Any, sensor_config: Any, use_sim_time: bool = False, name: str = "prism_node",
                    remappings: tuple[tuple[str, str], ...] = ()) -> NodeSpec:
    """The PRISM SLAM node with its parameter file and sensor preset (the preset overrides the file)."""
    return NodeSpec(PACKAGE, "prism_node", name, {"use_sim_time": use_sim_time}, tuple(remappings),
                    module="prism_ros.nodes.prism_node", parameter_files=(str(config), str(sensor_config)))


def rviz_spec(rviz_config: Any, use_sim_time: bool = False, name: str = "rviz2") -> NodeSpec:
    """RViz2 (package rviz2, external) with our display configuration."""
    return NodeSpec("rviz2", "rviz2", name, {"use_sim_time": use_sim_time}, arguments=("-d", str(rviz_config)))


def as_namespace(namespace: Any) -> str:
    """A launch argument as a node namespace: "" (none) or "/a/b"; InputError for anything ROS refuses."""
    text = str(namespace or "").strip().strip("/")
    if text and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", text):
        raise InputError(f"namespace:={namespace!r} is not a ROS namespace",
                         "use letters, digits, _ and /, not starting with a digit, e.g. namespace:=robot1")
    return f"/{text}" if text else ""


def dds_environment(fastdds_profile: Any = "auto", share: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The DDS environment of a graph's processes: the Fast DDS profile file under the name this ROS 2's Fast
    DDS reads (:func:`prism_ros.loopback.profile_variable`), or nothing.

    "auto": the shipped large-data profile (Fast DDS's default shared memory cannot hold a VGA image, so
    best-effort camera topics lose most frames), unless ``environ`` already names a profile or another RMW
    than Fast DDS is chosen; "" or "none": the environment's settings; else a path or a file name in
    ``config/``. The camera driver needs the same profile: its side of shared memory holds the images.
    """
    environ = os.environ if environ is None else environ
    choice = str(fastdds_profile if fastdds_profile is not None else "").strip()
    if choice.lower() in ("", "none"):
        return ()
    if choice.lower() == "auto":
        rmw = environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") or "rmw_fastrtps_cpp"
        if any(environ.get(name) for name in PROFILE_VARIABLES) or not rmw.startswith("rmw_fastrtps"):
            return ()
        path = (share or share_dir()) / LARGE_DATA_PROFILE
    else:
        path = config_path(choice, share or share_dir())
    return ((profile_variable(environ), str(path)),)


def prism_graph(config: Any = "prism.yaml", sensor: Any = "tum", use_sim_time: Any = "auto", bag: Any = None,
                rviz: Any = False, rate: Any = 1.0, loop: Any = False, namespace: Any = "", autostart: Any = True,
                fastdds_profile: Any = "auto", share: Path | None = None, **player: Any) -> list[NodeSpec]:
    """Graph of ``prism.launch.py``: [bag_player (when ``bag``)], prism_node, [rviz2 (when ``rviz``)].

    config: node parameter YAML, a path or a file name in the installed ``config/`` ("" = prism.yaml);
    sensor: one of :data:`SENSORS`, loaded from ``config/sensors/<sensor>.yaml`` after ``config``;
    use_sim_time: "auto" (true exactly when a bag plays and publishes /clock), "true" or "false";
    bag: bag to play with /clock ("" or None: none, the sensor's topics come from elsewhere);
    rviz: also start rviz2 with ``rviz/prism.rviz``; rate, loop and ``player``: bag player options;
    namespace: the player's and prism_node's namespace (two cameras or robots side by side; rviz2 stays global);
    autostart: prism_node configures and activates itself (false: a lifecycle manager does);
    fastdds_profile: the processes' Fast DDS profile (:func:`dds_environment`).
    Strings as launch passes them are accepted for every value. Files are not checked here (see
    :func:`missing_files`). Unknown sensor or bad boolean: :class:`InputError`.
    """
    share = share or share_dir()
    sensor = str(sensor).strip()
    if sensor not in SENSORS:
        raise InputError(f"unknown sensor preset {sensor!r}", f"use sensor:= one of {', '.join(SENSORS)}")
    bag = None if bag is None or not str(bag).strip() else str(bag).strip()
    auto = str(use_sim_time).strip().lower() == "auto"
    sim_time = bag is not None if auto else as_bool(use_sim_time, "use_sim_time")
    specs = []
    if bag is not None:
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise InputError(f"rate:={rate!r} is not a number",
                             "write e.g. rate:=1.0 (0 = as fast as possible)") from None
        player_spec = bag_player_spec(bag, rate=rate, loop=as_bool(loop, "loop"), **player)
        specs.append(replace(player_spec, parameters={**player_spec.parameters, "clock": True}))
    prism = prism_node_spec(config_path(config, share), share / SENSOR_CONFIG.format(sensor=sensor),
                            use_sim_time=sim_time)
    specs.append(replace(prism, parameters={**prism.parameters, "autostart": as_bool(autostart, "autostart")}))
    specs = [replace(spec, namespace=as_namespace(namespace)) for spec in specs]
    if as_bool(rviz, "rviz"):
        specs.append(rviz_spec(share / RVIZ_CONFIG, use_sim_time=sim_time))
    env = dds_environment(fastdds_profile, share)
    return [replace(spec, env=env) for spec in specs]


DMN_CONFIG = "config/dmn.yaml"
ACE_CONFIG = "config/ace.yaml"


def ace_node_spec(ace_config: Any, sensor_config: Any, ace_map: Any = "", use_sim_time: bool = False,
                  name: str = "ace_node") -> NodeSpec:
    """The ACE relocalization node: its parameter file, then the sensor preset (the same topics, intrinsics
    and T_base_camera as prism_node's), then the map file when given."""
    parameters = {"use_sim_time": use_sim_time, **({"map_path": str(ace_map)} if str(ace_map or "").strip() else {})}
    return NodeSpec(PACKAGE, "ace_node", name, parameters, module="prism_ros.nodes.ace_node",
                    parameter_files=(str(ace_config), str(sensor_config)))


def dmn_node_spec(dmn_config: Any, sensor_config: Any, contexts: Any = "", use_sim_time: bool = False,
                  name: str = "dmn_node") -> NodeSpec:
    """The DMN localization node: its parameter file, then the sensor preset (the camera topic), then the
    context file when given."""
    parameters = {"use_sim_time": use_sim_time,
                  **({"context_path": str(contexts)} if str(contexts or "").strip() else {})}
    return NodeSpec(PACKAGE, "dmn_node", name, parameters, module="prism_ros.nodes.dmn_node",
                    parameter_files=(str(dmn_config), str(sensor_config)))


def suite_graph(config: Any = "prism.yaml", sensor: Any = "tum", use_sim_time: Any = "auto", bag: Any = None,
                rviz: Any = False, rate: Any = 1.0, loop: Any = False, ace: Any = False, ace_map: Any = "",
                dmn: Any = False, dmn_contexts: Any = "", namespace: Any = "", autostart: Any = True,
                fastdds_profile: Any = "auto", share: Path | None = None, **player: Any) -> list[NodeSpec]:
    """Graph of ``suite.launch.py``: :func:`prism_graph` plus, with ``ace``, ace_node on the same sensor preset
    (relocalization and recovery of prism_node; ``ace_map``: its map file, else ``config/ace.yaml``'s) and,
    with ``dmn``, dmn_node (``dmn_contexts``: its context file, else ``config/dmn.yaml``'s)."""
    share = share or share_dir()
    specs = prism_graph(config, sensor, use_sim_time, bag, rviz, rate, loop, namespace, autostart, fastdds_profile,
                        share=share, **player)
    prism = next(s for s in specs if s.executable == "prism_node")
    after = specs.index(prism) + 1
    if as_bool(dmn, "dmn"):
        specs.insert(after, replace(dmn_node_spec(share / DMN_CONFIG, prism.parameter_files[1], dmn_contexts,
                                                  prism.parameters["use_sim_time"]), namespace=prism.namespace,
                                    env=prism.env))
    if as_bool(ace, "ace"):
        specs.insert(after, replace(ace_node_spec(share / ACE_CONFIG, prism.parameter_files[1], ace_map,
                                                  prism.parameters["use_sim_time"]), namespace=prism.namespace,
                                    env=prism.env))
    return specs


def missing_files(specs: list[NodeSpec]) -> list[str]:
    """Parameter files, ``-d`` (rviz) configuration files and DDS profiles of ``specs`` that do not exist."""
    missing = []
    for spec in specs:
        files = list(spec.parameter_files) + [value for key, value in spec.env if key in PROFILE_VARIABLES]
        if "-d" in spec.arguments[:-1]:
            files.append(spec.arguments[spec.arguments.index("-d") + 1])
        missing += [str(f) for f in files if not Path(str(f)).is_file()]
    return missing


def launch_nodes(specs: list[NodeSpec]) -> list:
    """``launch_ros.actions.Node`` actions for ``specs`` (launch files only: needs launch_ros); a missing
    parameter or rviz file stops the launch with an InputError naming it."""
    from launch_ros.actions import Node

    missing = missing_files(specs)
    if missing:
        raise InputError(f"{', '.join(missing)} not found",
                         "give config:=<existing file> or install prism_ros with its config/ and rviz/ folders")
    return [Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                 parameters=[*spec.parameter_files, spec.parameters], remappings=list(spec.remappings),
                 arguments=list(spec.arguments), additional_env=dict(spec.env), output="screen") for spec in specs]


#: graph name -> function building it (used by the launcher's command line)
GRAPHS: dict[str, Callable[..., list[NodeSpec]]] = {"play": play_graph, "prism": prism_graph,
                                                     "suite": suite_graph}
