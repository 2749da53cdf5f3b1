"""The node process helpers: Periodic, the thread that runs the nodes' diagnostics and watchdogs."""
from __future__ import annotations

import threading
import time

from prism_ros.nodes.runner import Periodic


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
