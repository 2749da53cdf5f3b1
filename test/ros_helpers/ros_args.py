"""``--ros-args`` parameter overrides from Python values, as the tests start nodes."""
from __future__ import annotations


def ros_args(**params) -> list[str]:
    """``["-p", "name:=value", ...]``: booleans as true/false, lists as YAML flow lists of floats, "" as ''
    (rcl refuses an empty override), everything else as its text."""
    args = []
    for name, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = "[" + ",".join(repr(float(v)) for v in value) + "]"
        elif value == "":
            value = "''"
        args += ["-p", f"{name}:={value}"]
    return args
