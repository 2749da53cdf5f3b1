"""The node graphs prism_ros starts, as plain data: the single source for launch files and the launcher.

``launch/*.launch.py`` turn each :class:`NodeSpec` into a ``launch_ros.actions.Node`` when ROS 2
launch is installed; :mod:`prism_ros.nodes.launcher` runs the same specs as subprocesses when it is
not (the PyPI wheels have no launch). Values may be launch substitutions: nothing here evaluates them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


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


#: graph name -> function building it (used by the launcher's command line)
GRAPHS: dict[str, Callable[..., list[NodeSpec]]] = {"play": play_graph}
