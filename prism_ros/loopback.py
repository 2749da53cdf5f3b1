"""Keep ROS 2 / DDS traffic on this machine.

Every process that tests, the demo or benches start goes through :func:`loopback_env` or
:func:`spawn`: discovery limited to localhost, a random domain id (so parallel runs never see each
other) and the Fast DDS profile in ``config/fastdds_localhost.xml`` (UDPv4 on 127.0.0.1 and shared
memory only). No ROS import here: this is used before rclpy is loaded.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from prism_ros.resources import config_file

PROFILE_NAME = "fastdds_localhost.xml"


def profile_path() -> Path:
    """Path of the loopback Fast DDS profile, from the source tree or the installed share dir."""
    return config_file(PROFILE_NAME)


def random_domain_id(rng: random.Random | None = None) -> int:
    """A DDS domain id in 1..100 (the range valid on every platform; 0 is the busy default)."""
    return (rng or random.SystemRandom()).randint(1, 100)


def loopback_env(domain_id: int | None = None, base: dict | None = None) -> dict:
    """Environment for a ROS 2 process that talks only over loopback and shared memory."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(random_domain_id() if domain_id is None else domain_id)
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile_path())
    env["RMW_IMPLEMENTATION"] = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.pop("ROS_STATIC_PEERS", None)  # never reach out to other hosts
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated spelling; the range above replaces it
    return env


def apply_loopback_env(domain_id: int | None = None) -> dict:
    """Set the loopback settings on this process (call before rclpy.init); returns them."""
    env = loopback_env(domain_id)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE",
                "RMW_IMPLEMENTATION"):
        os.environ[key] = env[key]
    for key in ("ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY"):
        os.environ.pop(key, None)
    return env


def spawn(args: list[str], domain_id: int, **popen_kwargs) -> subprocess.Popen:
    """Start a process on the given domain with the loopback settings (stdout/stderr piped)."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    return subprocess.Popen(args, env=loopback_env(domain_id, popen_kwargs.pop("env", None)),
                            **popen_kwargs)


def fastdds_tool() -> list[str] | None:
    """Command of Fast DDS's ``fastdds`` tool: the PyPI wheels' ``tools/fastdds/fastdds.py`` or a ROS install's."""
    script = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"
    if script.is_file():
        return [sys.executable, str(script)]
    found = shutil.which("fastdds")
    return [found] if found else None


def clean_shared_memory(timeout: float = 30.0) -> bool:
    """Remove the shared-memory files of Fast DDS participants whose process died without closing them (a
    SIGKILL): ``fastdds shm clean``, which keeps every file whose lock a live process holds. Tests and benches
    that kill nodes call it when they end; each such file is a segment of up to the profile's segment size.
    False when the tool is missing or failed."""
    tool = fastdds_tool()
    if tool is None:
        return False
    try:
        return subprocess.run([*tool, "shm", "clean"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
