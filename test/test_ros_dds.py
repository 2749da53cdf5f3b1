"""Real DDS between processes with the loopback profile: pixel-exact images, and what gets bound."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest
from ros_helpers.dds import domain_ports

from prism_ros.launch_graph.graph import LARGE_DATA_PROFILE
from prism_ros.loopback import clean_shared_memory, profile_path

pytestmark = pytest.mark.timeout(60)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_images_cross_processes_pixel_exact(spawn_python, unique_ns):
    """A padded 64x48 rgb8 image and a 32FC1 depth (with NaNs) arrive bit-exact in another process."""
    receiver = spawn_python("image_receiver.py", unique_ns, "--timeout", 30)
    sender = spawn_python("image_sender.py", unique_ns, "--timeout", 30)
    out, err = receiver.communicate(timeout=45)
    assert receiver.returncode == 0, f"receiver failed: {out}\n{err}"
    verdict = _last_json(out)
    assert verdict["rgb_ok"] and verdict["depth_ok"], verdict
    assert verdict["rgb_step"] == 64 * 3 + 5  # the row padding travelled and was honoured
    assert verdict["rgb_shape"] == [48, 64, 3] and verdict["depth_dtype"] == "float32"
    assert verdict["depth_nans"] == 64
    sender_out, sender_err = sender.communicate(timeout=20)
    assert sender.returncode == 0, f"sender failed: {sender_out}\n{sender_err}"


def _local_port_range() -> range:
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except OSError:  # not Linux: the IANA dynamic range
        low, high = 49152, 65535
    return range(low, high + 1)


def _non_loopback_ipv4() -> set[str]:
    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")}


def _wait_for_participant(pid: int, domain_id: int, timeout: float = 15.0) -> list:
    """The process's UDP sockets once its participant bound the domain's unicast ports."""
    ports, deadline = domain_ports(domain_id), time.monotonic() + timeout
    while time.monotonic() < deadline:
        sockets = psutil.Process(pid).net_connections(kind="udp")
        if sum(1 for s in sockets if s.laddr.port in ports) >= 2:
            time.sleep(0.5)  # let the remaining transports open
            return psutil.Process(pid).net_connections(kind="inet")
        time.sleep(0.1)
    raise AssertionError(f"no participant of domain {domain_id} appeared within {timeout} s")


def test_loopback_profile_binds_loopback_only(spawn_python, domain_id):
    """Every listening socket of a node is on 127.0.0.1; the rest are rmw's send-only sockets.

    With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST rmw_fastrtps appends an unrestricted UDPv4
    transport; its listening binds fail (our loopback transport holds the ports) and what remains
    are send sockets on ephemeral ports (0.0.0.0 and one per interface). See the profile's notes.
    """
    node = spawn_python("idle_node.py", "--seconds", 20)
    sockets = _wait_for_participant(node.pid, domain_id)
    node.kill()
    _, err = node.communicate(timeout=10)
    assert "XMLPARSER" not in err, f"the Fast DDS profile did not load:\n{err}"

    assert not [s for s in sockets if s.type == socket.SOCK_STREAM], "no TCP expected"
    udp = [s for s in sockets if s.type == socket.SOCK_DGRAM]
    rtps_ports = domain_ports(domain_id)
    rtps = [s for s in udp if s.laddr.port in rtps_ports]
    assert rtps and all(s.laddr.ip == "127.0.0.1" for s in rtps), rtps
    assert not [s for s in udp if ipaddress.ip_address(s.laddr.ip).is_multicast], "no multicast"

    elsewhere = [s for s in udp if s.laddr.ip != "127.0.0.1"]
    ephemeral = _local_port_range()
    assert all(s.laddr.port in ephemeral for s in elsewhere), (
        f"a non-loopback socket on a fixed (listening) port: {elsewhere}")
    allowed_addresses = {"0.0.0.0"} | _non_loopback_ipv4()
    assert all(s.laddr.ip in allowed_addresses for s in elsewhere), elsewhere
    assert len(elsewhere) <= len(allowed_addresses), elsewhere


def test_vga_sets_arrive_best_effort(spawn_python, unique_ns):
    """30 VGA sets (rgb8, 16UC1 depth, CameraInfo) at 30 Hz with sensor-data (best-effort) QoS: at least 29
    arrive complete. Fast DDS's default 512 KiB shared-memory segment cannot hold one rgb8 VGA image; the
    profiles give 8 MiB."""
    receiver = spawn_python("camera_sets.py", "receive", unique_ns, "--sets", 30, "--timeout", 40)
    sender = spawn_python("camera_sets.py", "send", unique_ns, "--sets", 30, "--timeout", 45)
    out, err = receiver.communicate(timeout=50)
    assert receiver.returncode == 0, f"receiver got nothing: {out}\n{err}"
    verdict = _last_json(out)
    assert verdict["complete"] >= 29, verdict
    assert verdict["bytes"] == {"rgb": 640 * 480 * 3, "depth": 640 * 480 * 2}
    sender.communicate(timeout=20)
    assert sender.returncode == 0


def _fastdds_schema() -> Path | None:
    """fastdds_profiles.xsd of the Fast DDS this interpreter uses (the wheels' or a ROS install's)."""
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep),
                *map(str, Path("/opt/ros").glob("*"))]
    for prefix in filter(None, prefixes):
        candidate = Path(prefix) / "share" / "fastdds" / "fastdds_profiles.xsd"
        if candidate.is_file():
            return candidate
    return None


def _transports(profile: Path) -> dict[str, dict[str, str]]:
    """transport type -> {element: text} of a Fast DDS profile's transport descriptors."""
    ns = {"d": "http://www.eprosima.com"}
    found = {}
    for descriptor in ET.parse(profile).getroot().iterfind(".//d:transport_descriptor", ns):
        fields = {child.tag.split("}")[1]: (child.text or "").strip() for child in descriptor}
        fields.pop("transport_id")
        found[fields["type"]] = fields
    return found


@pytest.mark.parametrize("profile", [profile_path(), Path(__file__).resolve().parents[1] / LARGE_DATA_PROFILE],
                         ids=["loopback", "large_data"])
def test_fastdds_profiles_are_valid_against_the_schema(profile):
    """Fast DDS ignores a profile it cannot parse and falls back to its defaults without a word."""
    xmlschema = pytest.importorskip("xmlschema")
    schema = _fastdds_schema()
    if schema is None:
        pytest.skip("fastdds_profiles.xsd not found (Fast DDS's share/fastdds)")
    xmlschema.XMLSchema(str(schema)).validate(str(profile))


def test_robot_profile_has_the_loopback_transport_sizes_on_every_interface():
    """The profile for robots moves images as the tested loopback one does (same shared-memory segment), but
    on every interface, with socket buffers large enough for an image's fragments."""
    loopback = _transports(profile_path())
    robot = _transports(Path(__file__).resolve().parents[1] / LARGE_DATA_PROFILE)
    assert set(robot) == set(loopback) == {"SHM", "UDPv4"}
    assert robot["SHM"] == loopback["SHM"] and int(robot["SHM"]["segment_size"]) >= 8 << 20
    assert "interfaceWhiteList" in loopback["UDPv4"] and "interfaceWhiteList" not in robot["UDPv4"]
    assert int(robot["UDPv4"]["receiveBufferSize"]) >= 4 << 20


def _segments_of(pid: int) -> set[str]:
    """Fast DDS shared-memory segment files the process has mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in maps if "/dev/shm/fastdds_" in line and "port" not in line}


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs Linux shared memory")
def test_shared_memory_of_a_killed_node_is_removed_and_a_live_nodes_kept(spawn_python, domain_id):
    """A SIGKILLed node leaves its segment in /dev/shm; clean_shared_memory removes it, and nothing in use: the
    live node's segment and every port stay. The two are on different domains: a reader maps its writers'
    segments, which keeps a dead writer's segment in use until the reader lets it go."""
    import sys

    from prism_ros.loopback import random_domain_id, spawn

    other = next(d for d in iter(random_domain_id, None) if d != domain_id)
    killed = spawn_python("idle_node.py", "--seconds", 30)
    live = spawn([sys.executable, str(Path(__file__).parent / "ros_helpers" / "idle_node.py"), "--seconds", "30"],
                 other)
    for process in (killed, live):
        assert process.stdout.readline().strip() == "READY"
    deadline = time.monotonic() + 10
    while not (_segments_of(killed.pid) and _segments_of(live.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left, kept = _segments_of(killed.pid), _segments_of(live.pid)
    assert left and kept
    ports = {p.name for p in Path("/dev/shm").glob("fastdds_port*")}
    killed.kill()
    killed.wait(timeout=10)
    assert all(Path(f).exists() for f in left)
    ours = {Path(f).name for f in left | kept}  # other runs on this machine may have segments being created
    assert not clean_shared_memory(only=ours)  # too recent: a participant could be starting up
    removed = clean_shared_memory(min_age_s=0.0, only=ours)
    assert {Path(f).name for f in left} <= set(removed)
    assert not any(Path(f).exists() for f in left) and all(Path(f).exists() for f in kept)
    assert ports <= {p.name for p in Path("/dev/shm").glob("fastdds_port*")}
    assert live.poll() is None
    live.kill()
    live.communicate(timeout=10)
