"""Keep ROS 2 / DDS traffic on this machine.

Every process that tests, the demo or benches start goes through :func:`loopback_env` or
:func:`spawn`: discovery limited to localhost, a random domain id (so parallel runs never see each
other) and the Fast DDS profile in ``config/fastdds_localhost.xml`` (UDPv4 on 127.0.0.1 and shared
memory only). No ROS import here: this is used before rclpy is loaded.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import time
from pathlib import Path

from prism_ros.resources import config_file

PROFILE_NAME = "fastdds_localhost.xml"


def profile_path() -> Path:
    """Path of the loopback Fast DDS profile, from the source tree or the installed share dir."""
    return config_file(PROFILE_NAME)


def random_domain_id(rng: random.Random | None = None) -> int:
    """A DDS domain id in 1..100 (the range valid on every platform; 0 is the busy default)."""
    return (rng or random.SystemRandom()).randint(1, 100)


#: the profile file variable of Fast DDS 3 (ROS 2 Kilted and later) and of Fast DDS 2 (Humble, Jazzy); each
#: version reads only its own (Kilted's rmw warns about the old name), so a profile is set under one of them
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def profile_variable(environ=None) -> str:
    """The variable the Fast DDS of this ROS 2 reads: by ``ROS_DISTRO`` (the PyPI wheels are Kilted's)."""
    distro = (os.environ if environ is None else environ).get("ROS_DISTRO", "").strip().lower()
    return PROFILE_VARIABLES[1] if distro in FAST_DDS_2_DISTROS else PROFILE_VARIABLES[0]


def loopback_env(domain_id: int | None = None, base: dict | None = None) -> dict:
    """Environment for a ROS 2 process that talks only over loopback and shared memory."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(random_domain_id() if domain_id is None else domain_id)
    for name in PROFILE_VARIABLES:
        env.pop(name, None)
    env[profile_variable(env)] = str(profile_path())
    env["RMW_IMPLEMENTATION"] = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.pop("ROS_STATIC_PEERS", None)  # never reach out to other hosts
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated spelling; the range above replaces it
    return env


def apply_loopback_env(domain_id: int | None = None) -> dict:
    """Set the loopback settings on this process (call before rclpy.init); returns them."""
    env = loopback_env(domain_id)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", profile_variable(env), "RMW_IMPLEMENTATION"):
        os.environ[key] = env[key]
    for key in ("ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY", *(v for v in PROFILE_VARIABLES if v not in env)):
        os.environ.pop(key, None)
    return env


def spawn(args: list[str], domain_id: int, **popen_kwargs) -> subprocess.Popen:
    """Start a process on the given domain with the loopback settings (stdout/stderr piped)."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    return subprocess.Popen(args, env=loopback_env(domain_id, popen_kwargs.pop("env", None)),
                            **popen_kwargs)


SHM_DIR = Path("/dev/shm")
SEGMENT_NAME = re.compile(r"(fastdds|fastrtps)_[0-9a-f]{16}")  # a participant's segment (Fast DDS 3 / 2)


def _mapped_files() -> set[str]:
    """Every file some process on this machine has mapped (from /proc/*/maps; processes we cannot read: none)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split(None, 5)[5].strip() for line in maps.read_text().splitlines()
                          if line.count(" ") >= 5 and "/dev/shm/" in line)
        except (OSError, IndexError):
            continue  # the process ended meanwhile
    return mapped


def _locked(lock_file: Path) -> bool:
    """Whether a process holds ``lock_file`` (Fast DDS keeps its segment's ``_el`` file locked while it lives)."""
    import fcntl

    try:
        with lock_file.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # no lock file: nothing says it is in use
        return False
    return False


def clean_shared_memory(min_age_s: float = 60.0, shm: Path = SHM_DIR, only: set[str] | None = None) -> list[str]:
    """Remove the shared-memory segments of Fast DDS participants whose process is gone (a node killed with
    SIGKILL leaves its segment, up to the profile's segment_size, in /dev/shm); the removed names.

    A segment is removed only when no process this one can see maps it, no process holds its lock file (one in
    another PID namespace sharing /dev/shm), and it is older than ``min_age_s`` (one being created is neither
    mapped nor locked yet). Ports (``fastdds_port<N>``) are left alone: they are small and shared by live
    participants. Fast DDS's own ``fastdds shm clean`` is not used: it also removes a port's file when any one
    of its lock files is free, while a live participant still listens on it, and the next participant on that
    port then fails to open it. ``only``: consider these segment names only."""
    if not shm.is_dir() or not Path("/proc/self/maps").is_file():
        return []
    now, mapped, removed = time.time(), _mapped_files(), []
    for segment in shm.iterdir():
        if not SEGMENT_NAME.fullmatch(segment.name) or str(segment) in mapped or \
                (only is not None and segment.name not in only):
            continue
        try:
            if now - segment.stat().st_mtime < min_age_s or _locked(Path(f"{segment}_el")):
                continue
            segment.unlink()
            for lock in ("_el", "_sl"):
                Path(f"{segment}{lock}").unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(segment.name)
    return removed
