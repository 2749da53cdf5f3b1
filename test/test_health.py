"""Health: bad input logged once per cause and counted, failures logged and counted, the /diagnostics keys."""
import pytest

from prism_ros.nodes.health import Health


class Lines:
    """A logger that keeps what each severity got."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))

    def error(self, text):
        self.lines.append(("error", text))


def test_bad_input_is_logged_once_per_cause_and_every_one_counted():
    log = Lines()
    health = Health(log, ["bad_depth", "bad_imu"], ["save_map"])
    for _ in range(3):
        health.bad_input("bad_depth", "depth has 1% valid pixels", "check depth_scale")
    health.bad_input("bad_imu", "non-finite IMU", "fix the driver", count=2)
    health.failure("save_map", "cannot save the map: disk full")
    health.failure("save_map", "cannot save the map: disk full")
    health.log_once("jump", "time jumped", level="info")
    health.log_once("jump", "time jumped", level="info")
    assert log.lines == [
        ("warning", "bad input (bad_depth): depth has 1% valid pixels -> check depth_scale (counted in /diagnostics "
                    "as bad_input.bad_depth; logged once)"),
        ("warning", "bad input (bad_imu): non-finite IMU -> fix the driver (counted in /diagnostics as "
                    "bad_input.bad_imu; logged once)"),
        ("error", "cannot save the map: disk full"), ("error", "cannot save the map: disk full"),
        ("info", "time jumped")]
    assert health.values() == {"bad_input_total": 5, "bad_input.bad_depth": 3, "bad_input.bad_imu": 2,
                               "failures.save_map": 2}
    with pytest.raises(KeyError):
        health.bad_input("not_a_cause", "?", "?")
