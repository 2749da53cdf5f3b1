"""What every node reports about its inputs and requests, one implementation for prism_node, ace_node and
dmn_node so that a user reads the same words and /diagnostics keys from each: bad input is logged once per
cause with the problem and the fix and counted (``bad_input.<cause>``, ``bad_input_total``); a failed request
(a refused parameter change, a map that cannot be saved) is logged each time and counted
(``failures.<name>``); an exception that escapes a callback (a defect) is logged once per callback with its
traceback, counted (``callback_errors.<name>``) and answered, instead of ending the node (rclpy's executor
re-raises it from spin).

Fail points: ``PRISM_ROS_FAILPOINTS=name1,name2`` makes the first call of each named callback raise, so that a
test can show that every callback of a live node is guarded (``all``: every callback once).
"""
from __future__ import annotations

import os
import threading
import traceback
from typing import Any, Callable, Iterable

FAILPOINTS_VARIABLE = "PRISM_ROS_FAILPOINTS"


class Failpoint(RuntimeError):
    """Raised by a callback named in ``PRISM_ROS_FAILPOINTS`` (a test of the guards)."""


class Health:
    """Counts and once-only logging of a node's problems; thread-safe. ``logger``: the node's rclpy logger."""

    def __init__(self, logger, causes: Iterable[str], failures: Iterable[str] = ()):
        self._logger = logger
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self.bad_inputs = dict.fromkeys(causes, 0)
        self.failures = dict.fromkeys(failures, 0)
        self.callback_errors: dict[str, int] = {}
        self._failpoints = {name.strip() for name in os.environ.get(FAILPOINTS_VARIABLE, "").split(",") if name.strip()}
        self._fired: set[str] = set()

    def log_once(self, key: str, text: str, level: str = "warning") -> None:
        """Log ``text`` the first time ``key`` comes up (``level`` "warning", "info" or "error")."""
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        if level == "info":  # one call site per severity: rclpy refuses a severity change at a call site
            self._logger.info(text)
        elif level == "error":
            self._logger.error(text)
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

    def guard(self, name: str, callback: Callable, answer: Callable[[tuple, Exception], Any] | None = None) -> Callable:
        """``callback`` that cannot take the node down: an exception is counted as ``callback_errors.<name>``,
        logged once for ``name`` with its traceback, and ``answer(args, error)`` is returned (None without one;
        services answer with :func:`failed_trigger`). Bad input never gets here: callbacks report it."""
        with self._lock:
            self.callback_errors.setdefault(name, 0)

        def guarded(*args):
            try:
                self._failpoint(name)
                return callback(*args)
            except Exception as error:
                self.callback_failed(name, error)
                return None if answer is None else answer(args, error)
        return guarded

    def callback_failed(self, name: str, error: Exception) -> None:
        """Count and log (once per ``name``, with the traceback being handled) a defect caught in ``name``: a
        guarded callback, or a worker loop that goes on with its next item."""
        with self._lock:
            self.callback_errors[name] = self.callback_errors.get(name, 0) + 1
        self.log_once(f"callback:{name}", f"{name} callback failed: {type(error).__name__}: {error} (a defect: "
                      f"please report it with this log; counted in /diagnostics as callback_errors.{name}; "
                      f"logged once; the node keeps running)\n{traceback.format_exc()}", level="error")

    def _failpoint(self, name: str) -> None:
        if not self._failpoints:
            return
        with self._lock:
            hit = (name in self._failpoints or "all" in self._failpoints) and name not in self._fired
            self._fired.add(name)
        if hit:
            raise Failpoint(f"fail point {name} ({FAILPOINTS_VARIABLE})")

    def values(self) -> dict[str, int]:
        """The counts as /diagnostics values."""
        with self._lock:
            return {"bad_input_total": sum(self.bad_inputs.values()),
                    **{f"bad_input.{cause}": n for cause, n in self.bad_inputs.items()},
                    **{f"failures.{name}": n for name, n in self.failures.items()},
                    "callback_errors_total": sum(self.callback_errors.values()),
                    **{f"callback_errors.{name}": n for name, n in self.callback_errors.items()}}


def failed_trigger(args: tuple, error: Exception):
    """The answer of a guarded ``std_srvs/Trigger`` service whose callback failed: success false and why."""
    response = args[1]
    response.success = False
    response.message = f"internal error: {type(error).__name__}: {error} (see the node's log)"
    return response


def refused_parameters(args: tuple, error: Exception):
    """The answer of a guarded parameter callback that failed: the change is refused, with why."""
    from rcl_interfaces.msg import SetParametersResult

    return SetParametersResult(successful=False, reason=f"internal error: {type(error).__name__}: {error} "
                                                        "(see the node's log)")
