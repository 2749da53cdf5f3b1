"""Small pieces the ``prism-ros`` sub-commands share: comma-separated option values.

Light on purpose (torch is imported when a command runs, so ``--help`` stays quick).
"""
from __future__ import annotations

from prism_ros.errors import InputError


def parse_floats(text: str | None, count: int, option: str, example: str) -> tuple[float, ...] | None:
    """'1.0,2.5' -> (1.0, 2.5); InputError naming the option unless there are exactly ``count`` numbers."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"bad {option} '{text}'", f"give {count} comma-separated numbers, e.g. {option} {example}")
    return values
