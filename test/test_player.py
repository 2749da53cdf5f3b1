"""Bag player over real DDS (separate processes, loopback profile), its errors, and the launch paths."""
from __future__ import annotations

import importlib.util
import json
import py_compile
import shlex
import sys
import time
from pathlib import Path

import pytest
from ros_helpers.bags import PERIOD_NS, T0_NS, write_mismatched_bag, write_ros1_bag, write_ros2_bag

from prism_ros.launch_graph.graph import NodeSpec, play_graph
from prism_ros.launch_graph.launcher import node_command, run_graph
from prism_ros.nodes.compat import has_ros_piece
from prism_ros.nodes.player import main as player_main

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
ROS2_COUNT, ROS1_COUNT = 50, 20


@pytest.fixture(scope="module")
def ros2_bag(tmp_path_factory) -> Path:
    """mcap bag: 50 images + 50 IMU messages on /cam/image and /cam/imu, plus a /tf topic."""
    return write_ros2_bag(tmp_path_factory.mktemp("bags") / "ros2", "/cam/image", "/cam/imu", ROS2_COUNT)


@pytest.fixture(scope="module")
def ros1_bag(tmp_path_factory) -> Path:
    return write_ros1_bag(tmp_path_factory.mktemp("bags1") / "ros1.bag", "/cam/image", "/cam/imu",
                          ROS1_COUNT)


def _remap_args(namespace: str) -> list[str]:
    return ["--remap", f"/cam/image:={namespace}/image", "--remap", f"/cam/imu:={namespace}/imu"]


def _result(subscriber) -> dict:
    out, err = subscriber.communicate(timeout=45)
    assert subscriber.returncode == 0, f"subscriber did not get everything:\n{out[-2000:]}\n{err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _assert_complete_in_order(got: dict, count: int) -> None:
    assert got["image"] == list(range(count)), got["image"]
    assert got["imu"] == list(range(count)), got["imu"]
    expected_stamps = [T0_NS + i * PERIOD_NS for i in range(count)]
    assert got["image_stamps"] == expected_stamps  # exact nanoseconds survive
    assert got["imu_stamps"] == expected_stamps
    assert got["bad_content"] == []


def test_player_publishes_ros2_bag_completely_in_order(spawn_python, unique_ns, ros2_bag):
    """All messages, in order, content intact; /clock monotone; /tf skipped with one warning where tf2_msgs is
    not installed."""
    subscriber = spawn_python("bag_subscriber.py", f"{unique_ns}/image", f"{unique_ns}/imu", ROS2_COUNT)
    started = time.monotonic()
    player = spawn_python(["-m", "prism_ros.nodes.player"], ros2_bag, "--rate", "2",
                          "--wait-for-subscribers", "1", "--quiet",
                          *_remap_args(unique_ns))
    _, err = player.communicate(timeout=45)
    elapsed = time.monotonic() - started
    assert player.returncode == 0, err
    got = _result(subscriber)
    _assert_complete_in_order(got, ROS2_COUNT)
    assert elapsed >= (ROS2_COUNT - 1) * PERIOD_NS / 1e9 / 2  # paced: 1 s of bag at rate 2
    clock = got["clock"]
    assert len(clock) >= 2 and clock == sorted(clock), clock
    assert T0_NS <= clock[0] and clock[-1] <= T0_NS + ROS2_COUNT * PERIOD_NS
    warnings = [line for line in err.splitlines() if "tf2_msgs/msg/TFMessage" in line]
    if has_ros_piece("tf2_msgs"):  # a ROS install, or the package make venv builds: /tf is played too
        assert not warnings, err
    else:
        assert len(warnings) == 1 and "/tf" in warnings[0], err


def test_player_converts_ros1_bag(spawn_python, unique_ns, ros1_bag):
    """ROS 1 messages (headers with seq) arrive as proper ROS 2 messages, as fast as possible."""
    subscriber = spawn_python("bag_subscriber.py", f"{unique_ns}/image", f"{unique_ns}/imu", ROS1_COUNT)
    player = spawn_python(["-m", "prism_ros.nodes.player"], ros1_bag, "--rate", "0",
                          "--wait-for-subscribers", "1", "--quiet",
                          *_remap_args(unique_ns))
    _, err = player.communicate(timeout=45)
    assert player.returncode == 0, err
    got = _result(subscriber)
    _assert_complete_in_order(got, ROS1_COUNT)
    assert got["image_shape"] == [24, 32, 3]
    assert got["clock"] == sorted(got["clock"]) and got["clock"]


def test_launcher_runs_the_play_graph(spawn_python, unique_ns, ros2_bag, domain_id, tmp_path):
    """The fallback launcher starts the same NodeSpecs as play.launch.py; a subscriber gets it all."""
    subscriber = spawn_python("bag_subscriber.py", f"{unique_ns}/image", f"{unique_ns}/imu", ROS2_COUNT)
    specs = play_graph(str(ros2_bag), rate=0.0, wait_for_subscribers=1,
                       remappings=(("/cam/image", f"{unique_ns}/image"), ("/cam/imu", f"{unique_ns}/imu")))
    log = tmp_path / "graph.log"
    with log.open("w") as sink:
        codes = run_graph(specs, timeout=40, loopback=True, domain_id=domain_id, cwd=REPO,
                          stdout=sink, stderr=sink)
    assert codes == [0], log.read_text()
    _assert_complete_in_order(_result(subscriber), ROS2_COUNT)


def test_node_command_is_what_launch_ros_would_pass():
    spec = NodeSpec("prism_ros", "bag_player", "player", {"bag": "/b 1", "rate": 1.0, "loop": False},
                    (("/a", "/b"),), module="prism_ros.nodes.player")
    command = node_command(spec)
    ros = command[command.index("--ros-args"):]
    assert ros == ["--ros-args", "-r", "__node:=player", "-p", 'bag:="/b 1"', "-p", "rate:=1.0",
                   "-p", "loop:=false", "-r", "/a:=/b"]
    assert Path(command[0]).name in ("bag_player", Path(sys.executable).name), shlex.join(command)


@pytest.mark.parametrize("args, needle", [
    (["/definitely/not/here.bag"], "bag not found"),
    ([], "no bag given"),
    (["BAG", "--remap", "/cam/image=/x"], "bad remap"),
    (["BAG", "--topics", "/nope"], "topics not in the bag"),
    (["BAG", "--rate", "-1"], "rate must be >= 0"),
    (["GARBAGE"], "cannot read bag"),
])
def test_player_input_errors_exit_2_with_one_line(args, needle, ros2_bag, tmp_path, capsys):
    garbage = tmp_path / "garbage.bag"
    garbage.write_bytes(b"not a bag at all")
    argv = [str(ros2_bag) if a == "BAG" else str(garbage) if a == "GARBAGE" else a for a in args]
    assert player_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


LAUNCH_FILE = REPO / "launch" / "play.launch.py"


def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH_FILE), doraise=True)


@pytest.mark.skipif(not (has_ros_piece("launch") and has_ros_piece("launch_ros")),
                    reason="ROS 2 launch/launch_ros not installed (no PyPI wheels); the launcher "
                           "fallback test covers the same graph")
def test_launch_file_builds_a_launch_description():
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location("play_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.entities if hasattr(a, "default_value")}
    assert {"bag", "rate", "loop"} <= names


def looping_player(spawn_python, bag, domain_id, **popen_kwargs):
    """(launcher process, its looping player as a psutil.Process) once the player's participant is up."""
    import psutil
    from ros_helpers.dds import domain_ports

    launcher = spawn_python(["-m", "prism_ros.launch_graph.launcher"], "play", bag, "--loop", "--loopback",
                            "--domain-id", domain_id, **popen_kwargs)
    deadline, player = time.monotonic() + 20, None
    while time.monotonic() < deadline and player is None:
        for child in psutil.Process(launcher.pid).children():
            if any(c.laddr.port in domain_ports(domain_id) for c in child.net_connections(kind="udp")):
                player = child
        time.sleep(0.1)
    assert player is not None, "the player did not start"
    return launcher, player


def test_launcher_forwards_sigint_and_reports_exit_codes(spawn_python, ros2_bag, domain_id):
    """Ctrl-C on the launcher reaches the looping player, which stops; the launcher exits 130. The launcher
    starts with SIGINT ignored, as a child of a process that ignores it does (the full test run's case: the
    player inherited the ignore and never stopped): the player must stop all the same."""
    import signal

    import psutil

    launcher, player = looping_player(spawn_python, ros2_bag, domain_id,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=20)
    assert launcher.returncode == 130, err
    assert "bag_player exited with 130" in err
    assert not player.is_running() or player.status() == psutil.STATUS_ZOMBIE


def test_nodes_end_when_their_launcher_is_killed(spawn_python, ros2_bag, domain_id):
    """SIGKILL on the launcher (no chance to stop its nodes): the looping player it started ends by itself."""
    import signal

    import psutil

    launcher, player = looping_player(spawn_python, ros2_bag, domain_id)
    launcher.send_signal(signal.SIGKILL)
    launcher.communicate(timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and player.is_running() and player.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.1)
    ended = not player.is_running() or player.status() == psutil.STATUS_ZOMBIE
    if not ended:
        player.kill()
    assert ended, "the player outlived its killed launcher"


def test_player_reads_ros_parameters(ros2_bag, capsys):
    """Started by launch (``--ros-args -p ...``): parameters drive the player (no subscribers here)."""
    argv = ["--ros-args", "-p", f"bag:={ros2_bag}", "-p", "rate:=0", "-p", "wait_s:=0.0",
            "-p", "topics:=/cam/imu", "-p", "quiet:=true"]
    assert player_main(argv) == 0
    assert player_main(["--ros-args", "-p", f"bag:={ros2_bag}", "-p", "rate:=-1"]) == 2
    assert "rate must be >= 0" in capsys.readouterr().err


def test_play_bag_api_reports_what_it_published(ros2_bag):
    from prism_ros.nodes.player import play_bag

    report = play_bag(ros2_bag, rate=0, wait_s=0.0, quiet=True, topics=["/cam/image"],
                      remaps=["/cam/image:=/elsewhere/image"])
    assert report.published == {"/elsewhere/image": ROS2_COUNT} and report.loops == 1
    assert report.skipped_types == {} and not report.interrupted and report.clock_messages >= 1


def test_player_rejects_a_topic_whose_definition_differs(tmp_path):
    """A bag type that does not match the installed message is skipped, not published as garbage."""
    from prism_ros.nodes.player import play_bag

    report = play_bag(write_mismatched_bag(tmp_path / "weird"), rate=0, wait_s=0.0, quiet=True)
    assert report.published == {"/weird": 0}
    assert "/weird" in report.rejected_topics
