"""DDS facts the tests need: which UDP ports a domain's participants bind, and whether one is busy."""
from __future__ import annotations

# RTPS well-known ports (DDS-RTPS spec 9.6.1.1): domain d uses [PB + DG*d, PB + DG*(d+1)).
PORT_BASE, DOMAIN_GAIN = 7400, 250


def domain_ports(domain_id: int) -> range:
    """UDP ports the RTPS participants of ``domain_id`` bind (discovery and user unicast)."""
    start = PORT_BASE + DOMAIN_GAIN * domain_id
    return range(start, start + DOMAIN_GAIN)


def domain_in_use(domain_id: int) -> bool:
    """True when some process on this machine has a participant on ``domain_id``."""
    import psutil

    ports = domain_ports(domain_id)
    return any(c.laddr and c.laddr.port in ports for c in psutil.net_connections(kind="udp"))


def spin_until(node, condition, timeout: float) -> bool:
    """Spin ``node`` (in its own context) until ``condition()`` holds or ``timeout`` seconds pass."""
    import time

    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.remove_node(node)
        executor.shutdown()
    return condition()
