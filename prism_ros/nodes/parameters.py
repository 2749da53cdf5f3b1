"""Node parameters from one table: declaration with descriptors, typed conversion and checks (at start-up
and at runtime) and the documented parameters file (``config/<node>.yaml``), shared by the nodes.

A :class:`Param` gives the default, the kind (str, bool, int, float, floats), the meaning, whether it may
change at runtime, and a check of the converted value that returns the problem or None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
        T = np.asarray(values).reshape(4, 4)  # noqa: N806
        R = T[:3, :3]  # noqa: N806
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
    from rcl_interfaces.msg import ParameterDescriptor  # noqa: PLC0415

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
    import yaml  # noqa: PLC0415

    lines = [f"# {line}" if line else "#" for line in header] + ["/**:", "  ros__parameters:"]
    for name, spec in table.items():
        value = yaml.safe_dump({name: spec.default}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"    # {spec.doc}{' [dynamic]' if spec.dynamic else ''}")
        lines.append(f"    {value}")
    return "\n".join(lines) + "\n"
