"""The node process helpers: Periodic, the thread that runs the nodes' diagnostics and watchdogs."""
from __future__ import annotations

import threading
import time

from prism_ros.nodes.runner import Periodic, log_errors_once


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


def test_periodic_errors_are_logged_once_per_task_and_type():
    logged: dict[str, str] = {}
    on_error = log_errors_once(lambda key, text: logged.setdefault(key, text), "the costmap")
    for error in (ValueError("a"), ValueError("b"), KeyError("c")):
        try:
            raise error
        except Exception as caught:
            on_error(caught)
    assert len(logged) == 2 and all(text.startswith("the costmap failed: ") for text in logged.values())
    assert "Traceback" in logged["periodic:the costmap:ValueError"] and "ValueError: a" in logged[
        "periodic:the costmap:ValueError"]
