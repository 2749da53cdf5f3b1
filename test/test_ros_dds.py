"""Real DDS between processes with the loopback profile: pixel-exact images, and what gets bound."""
from __future__ import annotations

import ipaddress
import json
import socket
import time

import psutil
import pytest
from ros_helpers.dds import domain_ports

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
