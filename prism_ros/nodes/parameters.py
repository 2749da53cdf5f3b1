"""Node parameters from one table: declaration with descriptors, typed conversion and checks (at start-up
and at runtime) and the documented parameters file (``config/<node>.yaml``), shared by the nodes.

A :class:`Param` gives the default, the kind (str, bool, int, float, floats), the meaning, whether it may
change at runtime, and a check of the converted value that returns the problem or None.

The same tables give the parameter tables in docs/ (:func:`parameters_markdown`, between
``<!-- parameters:<node> -->`` and ``<!-- /parameters -->``); regenerate them with
``python -m prism_ros.nodes.parameters --write-docs``. Importing this module does not import rclpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from prism_ros.errors import InputError


@dataclass(frozen=True)
class Param:
    default: Any
    kind: str  # str | bool | int | float | floats
    doc: str
    dynamic: bool = False  # may change at runtime
    check: Callable[[Any], str | None] | None = None  # converted value -> problem, or None


def one_of(choices, allow_empty: bool = False):
    def check(value):
        if (value == "" and allow_empty) or value in choices:
            return None
        return f"must be one of {', '.join(choices)}" + (" (or empty)" if allow_empty else "")
    return check


def positive(value):
    return None if value > 0 and math.isfinite(value) else "must be a positive number"


def non_negative(value):
    return None if value >= 0 and math.isfinite(value) else "must be >= 0"


def fraction(value):
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def not_empty(value):
    return None if value.strip() else "must not be empty"


def transform(allow_empty: bool):
    def check(values):
        if allow_empty and not values:
            return None
        if len(values) != 16 or not all(math.isfinite(v) for v in values):
            return f"needs 16 finite numbers (a row-major 4x4 matrix), got {len(values)}"
        T = np.asarray(values).reshape(4, 4)
        R = T[:3, :3]
        if not np.allclose(T[3], [0, 0, 0, 1]) or not np.allclose(R.T @ R, np.eye(3), atol=1e-3) \
                or np.linalg.det(R) < 0:
            return "is not a rigid transform (rotation must be orthonormal, last row 0 0 0 1)"
        return None
    return check


def count(n: int, positive: bool = False):
    def check(values):
        if len(values) != n or not all(math.isfinite(v) for v in values):
            return f"needs {n} finite numbers, got {len(values)}"
        if positive and not all(v > 0 for v in values[:2]):
            return "fx and fy must be positive"
        return None
    return check


def intrinsics_check(values):
    if not any(values):
        return None  # all zeros = unset
    return count(4, positive=True)(values)


def check_intrinsics_source(values: dict) -> None:
    """InputError when the node's intrinsics source has nothing to read (no CameraInfo topic, or unset
    intrinsics)."""
    if values["intrinsics_source"] == "camera_info" and not values["camera_info_topic"]:
        raise InputError("intrinsics_source is camera_info but camera_info_topic is empty",
                         "set camera_info_topic, or intrinsics_source:=parameters with intrinsics:=[fx,fy,cx,cy]")
    if values["intrinsics_source"] == "parameters" and not any(values["intrinsics"]):
        raise InputError("intrinsics_source is parameters but intrinsics is unset",
                         "set intrinsics:=[fx, fy, cx, cy] (pixels)")


def convert_value(spec: Param, name: str, value: Any, reference: str) -> Any:
    """The typed value of parameter ``name`` (launch files pass "1" for floats and "true" for bools);
    InputError naming the parameter, the problem and the fix."""
    try:
        if spec.kind == "str":
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            converted = value
        elif spec.kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                converted = value.strip().lower() in ("true", "1", "yes")
            elif isinstance(value, bool):
                converted = value
            else:
                raise TypeError(f"expected true or false, got {value!r}")
        elif spec.kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError(f"expected an integer, got {value!r}")
            converted = int(value)
        elif spec.kind == "float":
            if isinstance(value, bool):
                raise TypeError(f"expected a number, got {value!r}")
            converted = float(value)
        else:  # floats
            if value is None:  # `[]` in a parameter file: rcl cannot type an empty list and leaves it unset
                value = []
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"expected a list of numbers, got {value!r}")
            converted = [float(v) for v in value]
    except (TypeError, ValueError) as error:
        raise InputError(f"parameter {name}: {error}", f"see {reference} ({spec.doc})") from None
    problem = spec.check(converted) if spec.check else None
    if problem:
        raise InputError(f"parameter {name}={value!r} {problem}", f"see {reference} ({spec.doc})")
    return converted


def declare(node, table: dict[str, Param]) -> None:
    """Declare every parameter of ``table`` on ``node`` with its description (and whether it is read-only)."""
    from rcl_interfaces.msg import ParameterDescriptor

    for name, spec in table.items():
        node.declare_parameter(name, spec.default, ParameterDescriptor(
            description=spec.doc, dynamic_typing=True,
            additional_constraints="" if spec.dynamic else "read-only at runtime (restart to change)"))


def read_all(node, table: dict[str, Param], reference: str) -> dict[str, Any]:
    """Every parameter's checked value; one InputError listing every invalid one."""
    values, problems = {}, []
    for name, spec in table.items():
        try:
            values[name] = convert_value(spec, name, node.get_parameter(name).value, reference)
        except InputError as error:
            problems.append(str(error))
    if problems:
        raise InputError("; ".join(problems))
    return values


def checked_changes(table: dict[str, Param], parameters, reference: str) -> tuple[dict[str, Any], str | None]:
    """A runtime change request (rclpy Parameters): the checked values of ``table``'s parameters, or the reason
    to refuse the whole request (a read-only parameter, an invalid value). Others (use_sim_time...) pass by."""
    converted = {}
    for parameter in parameters:
        name = parameter.name
        if name not in table:
            continue
        if not table[name].dynamic:
            return {}, (f"{name} is read-only at runtime -> restart the node with -p {name}:=... (or change it in "
                        "the parameters file)")
        try:
            converted[name] = convert_value(table[name], name, parameter.value, reference)
        except InputError as error:
            return {}, str(error)
    return converted, None


def parameters_file(table: dict[str, Param], header: list[str]) -> str:
    """A ROS 2 parameters file (``/**`` section) with every parameter, its default and its meaning."""
    import yaml

    lines = [f"# {line}" if line else "#" for line in header] + ["/**:", "  ros__parameters:"]
    for name, spec in table.items():
        value = yaml.safe_dump({name: spec.default}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"    # {spec.doc}{' [dynamic]' if spec.dynamic else ''}")
        lines.append(f"    {value}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- docs
DOCUMENTED_NODES = {  # node -> (module with PARAMETERS, the docs page holding its table)
    "prism_node": ("prism_ros.nodes.prism_parameters", "docs/node.md"),
    "ace_node": ("prism_ros.nodes.ace_node", "docs/ace.md"),
    "dmn_node": ("prism_ros.nodes.dmn_node", "docs/dmn.md"),
}
TABLE_END = "<!-- /parameters -->"


def table_start(node: str) -> str:
    return f"<!-- parameters:{node} -->"


def parameters_markdown(parameters: dict[str, Param]) -> str:
    """A markdown table of ``parameters``: name, default (as in the YAML parameters file), whether it may change
    at runtime, and the description."""
    import yaml

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| parameter | default | dynamic | description |", "| --- | --- | --- | --- |"]
    for name, spec in parameters.items():
        default = yaml.safe_dump({name: spec.default}, default_flow_style=True, width=1000).strip()[1:-1]
        default = default.split(": ", 1)[1]
        lines.append(f"| `{name}` | `{cell(default)}` | {'yes' if spec.dynamic else 'no'} | {cell(spec.doc)} |")
    return "\n".join(lines) + "\n"


def node_parameters(node: str) -> dict[str, Param]:
    """The PARAMETERS table of a node in :data:`DOCUMENTED_NODES` (imports the node module, hence rclpy)."""
    import importlib

    return importlib.import_module(DOCUMENTED_NODES[node][0]).PARAMETERS


def documented_table(text: str, node: str) -> tuple[int, int] | None:
    """Start and end offsets of the generated table of ``node`` in a docs page (between its markers)."""
    start = text.find(table_start(node))
    if start < 0:
        return None
    start = text.index("\n", start) + 1
    end = text.find(TABLE_END, start)
    return None if end < 0 else (start, end)


def write_docs(root: str | Path) -> list[Path]:
    """Rewrite the generated parameter tables of the docs pages under ``root``; the pages that changed."""
    changed = []
    for node, (_, page) in DOCUMENTED_NODES.items():
        path = Path(root) / page
        text = path.read_text()
        span = documented_table(text, node)
        if span is None:
            raise InputError(f"no {table_start(node)} ... {TABLE_END} markers", "add them where the table goes", path)
        new = text[:span[0]] + parameters_markdown(node_parameters(node)) + text[span[1]:]
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the node parameter tables in docs/ from the nodes' "
                                     "PARAMETERS.", epilog="Example: python -m prism_ros.nodes.parameters --write-docs")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the tables in docs/*.md")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2],
                        help="the repository root (default: this checkout's)")
    arguments = parser.parse_args()
    if not arguments.write_docs:
        parser.print_help()
    else:
        for page in write_docs(arguments.root):
            print(f"updated {page}")
