"""Health: bad input logged once per cause and counted, failures logged and counted, the /diagnostics keys."""
import pytest

from prism_ros.nodes.health import FAILPOINTS_VARIABLE, Failpoint, Health, failed_trigger


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
                               "failures.save_map": 2, "callback_errors_total": 0}
    with pytest.raises(KeyError):
        health.bad_input("not_a_cause", "?", "?")


class Response:
    success, message = True, ""


def test_a_guarded_callback_counts_logs_once_and_answers():
    log = Lines()
    health = Health(log, [])
    calls = []

    def broken(request, response):
        calls.append(request)
        raise ZeroDivisionError("a defect")

    service = health.guard("reset", broken, failed_trigger)
    quiet = health.guard("imu", lambda msg: calls.append(msg))
    for request in range(3):
        answer = service(request, Response())
        assert not answer.success and answer.message.startswith("internal error: ZeroDivisionError: a defect")
    quiet("sample")
    assert calls == [0, 1, 2, "sample"]
    assert health.values()["callback_errors.reset"] == 3 and health.values()["callback_errors.imu"] == 0
    assert health.values()["callback_errors_total"] == 3
    assert len(log.lines) == 1 and log.lines[0][0] == "error"
    assert "reset callback failed: ZeroDivisionError: a defect" in log.lines[0][1]
    assert "Traceback" in log.lines[0][1] and "callback_errors.reset" in log.lines[0][1]


def test_fail_points_raise_once_in_the_named_callbacks(monkeypatch):
    monkeypatch.setenv(FAILPOINTS_VARIABLE, "imu, reset")
    health = Health(Lines(), [])
    seen = []
    imu, odom = health.guard("imu", seen.append), health.guard("odom", seen.append)
    for k in range(2):
        imu(k)
        odom(k)
    assert seen == [0, 1, 1] and health.values()["callback_errors.imu"] == 1
    monkeypatch.setenv(FAILPOINTS_VARIABLE, "all")
    health = Health(Lines(), [])
    with pytest.raises(Failpoint):
        health._failpoint("anything")
    health._failpoint("anything")  # once
