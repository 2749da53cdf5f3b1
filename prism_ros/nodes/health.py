"""What every node reports about its inputs and requests, one implementation for prism_node, ace_node and
dmn_node so that a user reads the same words and /diagnostics keys from each: bad input is logged once per
cause with the problem and the fix and counted (``bad_input.<cause>``, ``bad_input_total``); a failed request
(a refused parameter change, a map that cannot be saved) is logged each time and counted
(``failures.<name>``)."""
from __future__ import annotations

import threading
from typing import Iterable


class Health:
    """Counts and once-only logging of a node's problems; thread-safe. ``logger``: the node's rclpy logger."""

    def __init__(self, logger, causes: Iterable[str], failures: Iterable[str] = ()):
        self._logger = logger
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self.bad_inputs = dict.fromkeys(causes, 0)
        self.failures = dict.fromkeys(failures, 0)

    def log_once(self, key: str, text: str, level: str = "warning") -> None:
        """Log ``text`` the first time ``key`` comes up (``level`` "warning" or "info")."""
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        if level == "info":  # one call site per severity: rclpy refuses a severity change at a call site
            self._logger.info(text)
        else:
            self._logger.warning(text)

    def bad_input(self, cause: str, problem: str, fix: str, count: int = 1) -> None:
        """Count ``count`` bad inputs of ``cause`` (a key given at construction); log the first one with its fix."""
        with self._lock:
            self.bad_inputs[cause] += count
        self.log_once(f"bad:{cause}", f"bad input ({cause}): {problem} -> {fix} (counted in /diagnostics as "
                      f"bad_input.{cause}; logged once)")

    def failure(self, name: str, text: str) -> None:
        """Count a failed request ``name`` and log ``text`` as an error (each time: a user asked)."""
        with self._lock:
            self.failures[name] += 1
        self._logger.error(text)

    def values(self) -> dict[str, int]:
        """The counts as /diagnostics values."""
        with self._lock:
            return {"bad_input_total": sum(self.bad_inputs.values()),
                    **{f"bad_input.{cause}": n for cause, n in self.bad_inputs.items()},
                    **{f"failures.{name}": n for name, n in self.failures.items()}}
