"""Test session set-up: every DDS participant stays on this machine.

At import (before any test imports rclpy) this process gets the loopback settings of
:mod:`prism_ros.loopback`: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random domain and the Fast DDS
profile that binds 127.0.0.1 and shared memory only. Fixtures give each test a fresh domain that
no participant on this machine uses, a way to start helper processes on it with the same settings
(killed at teardown if still running), and an in-process rclpy node on it.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prism_ros.loopback import apply_loopback_env, clean_shared_memory, random_domain_id, spawn

SESSION_LOOPBACK = apply_loopback_env()  # must run before rclpy is imported anywhere

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "ros_helpers"
if str(HELPERS.parent) not in sys.path:  # test/ itself, for `import ros_helpers`
    sys.path.insert(0, str(HELPERS.parent))

from ros_helpers.dds import domain_in_use


def pytest_sessionfinish(session, exitstatus):
    """Nodes that tests kill leave their Fast DDS shared-memory segments in /dev/shm: remove those."""
    clean_shared_memory()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Torch on one CPU thread, as the filter runs (FilterConfig.cpu_threads): per-frame tensors are small
    and extra OpenMP threads contend on a busy 2-core machine (10-50x slower per call)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_domain_id(attempts: int = 50) -> int:
    """A random domain id that no participant on this machine uses (parallel runs stay apart)."""
    session = int(SESSION_LOOPBACK["ROS_DOMAIN_ID"])
    for _ in range(attempts):
        candidate = random_domain_id()
        if candidate != session and not domain_in_use(candidate):
            return candidate
    raise RuntimeError("no free DDS domain id found in 1..100")


@pytest.fixture
def domain_id() -> int:
    """A fresh, unused DDS domain id for this test."""
    return free_domain_id()


@pytest.fixture
def unique_ns() -> str:
    """A topic namespace no other test (or test run) uses."""
    return f"/prism_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spawn_python(domain_id):
    """Start ``python <script> args...`` (a name in test/ros_helpers, a path, or ["-m", module])
    on the test's domain with the loopback settings; leftovers are killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(script, *args, **popen_kwargs) -> subprocess.Popen:
        if isinstance(script, (list, tuple)):
            target = [str(s) for s in script]
        else:
            path = Path(script)
            target = [str(path if path.is_absolute() else HELPERS / path)]
        popen_kwargs.setdefault("cwd", REPO)
        process = spawn([sys.executable, *target, *map(str, args)], domain_id, **popen_kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        try:
            process.communicate(timeout=5)
        except (subprocess.TimeoutExpired, ValueError):
            pass


@pytest.fixture
def ros_node(domain_id):
    """An rclpy node in its own context on the test's domain (this process has the loopback env)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node(f"test_node_{uuid.uuid4().hex[:6]}", context=context)
    yield node
    node.destroy_node()
    context.try_shutdown()


@pytest.fixture(scope="session")
def synthetic_sequence(tmp_path_factory) -> Path:
    """A 30-frame 160x120 synthetic sequence (handheld, seed 0): TUM-style folder with its exact scene + an
    mcap bag (preset "prism"), rendered once per session for the node and replay tests."""
    from prism_ros.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "seq", frames=30, seed=0, motion="handheld",
                    bag="mcap", width=160, height=120, progress=False)


@pytest.fixture(scope="session")
def tiny_dmn(tmp_path_factory):
    """Weights of a 2-step pf-dmn and a context file of six views of one test room (+ four query views)."""
    from prism_ros.dmn.environments import denormalise_pose, domain_config, generate, split_seeds
    from prism_ros.dmn.localizer import Area, save_contexts
    from prism_ros.dmn.model import DmnConfig
    from prism_ros.dmn.training import TrainConfig, save_method, train

    folder = tmp_path_factory.mktemp("dmn")
    config = DmnConfig()
    result = train("pf-dmn", "rooms", TrainConfig(steps=2, batch=2, validate_every=1, validation_episodes=2), config,
                   progress=False)
    weights = save_method(result, "pf-dmn", "rooms", config, TrainConfig(), folder / "tiny.pt")
    data = generate("rooms", split_seeds("test", 1), views=10, image_size=64)
    images = data["images"][0].permute(0, 2, 3, 1).numpy()  # (10, 64, 64, 3)
    room = domain_config("rooms")
    poses = denormalise_pose(data["poses"][0].double(), room).numpy()
    low, high = room.extent
    contexts = save_contexts(folder / "room.ctx", images[:6], poses[:6], Area(low, low, high - low))
    return weights, contexts, images[6:], poses[6:], Area(low, low, high - low)
