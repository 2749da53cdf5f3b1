"""The node process helpers: Periodic, the thread that runs the nodes' diagnostics and watchdogs."""
from __future__ import annotations

import threading
import time

from prism_ros.nodes.runner import Periodic, counted


def test_periodic_keeps_calling_through_errors_and_stops():
    calls, errors = [], []
    seen_three = threading.Event()

    def tick():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("one bad tick")
        if len(calls) >= 3:
            seen_three.set()

    periodic = Periodic(0.02, tick, "test_periodic", errors.append).start()
    assert seen_three.wait(5.0), calls  # the failing call did not end the loop
    periodic.stop()
    stopped_at = len(calls)
    time.sleep(0.1)
    assert len(calls) == stopped_at  # nothing after stop()
    assert [str(e) for e in errors] == ["one bad tick"]
    assert min(b - a for a, b in zip(calls, calls[1:])) >= 0.015  # it waits its period between calls


def test_periodic_errors_are_counted_and_logged_once_per_task():
    """A Periodic's defects count in /diagnostics (callback_errors.<name>) and are logged once, with the
    traceback."""
    from prism_ros.nodes.health import Health

    class Logger:
        def __init__(self):
            self.lines = []

        def __getattr__(self, level):
            return lambda text: self.lines.append((level, text))

    logger = Logger()
    health = Health(logger, (), ())
    on_error = counted(health, "costmap")
    for error in (ValueError("a"), ValueError("b"), KeyError("c")):
        try:
            raise error
        except Exception as caught:
            on_error(caught)
    assert health.values()["callback_errors.costmap"] == 3 and health.values()["callback_errors_total"] == 3
    assert len(logger.lines) == 1 and logger.lines[0][0] == "error"
    assert "Traceback" in logger.lines[0][1] and "ValueError: a" in logger.lines[0][1]
