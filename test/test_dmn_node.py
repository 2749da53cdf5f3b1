"""dmn_node over real DDS with a tiny model: a context file of one procedural room, camera images and
odometry from the test's probe node (separate process, loopback profile, fresh domain); particles and the
estimate come back; ~/global_localization spreads the belief, /initialpose concentrates it; bad images are
counted and the node keeps running; a missing weights file ends start-up with exit code 2 and one line."""
from __future__ import annotations

import numpy as np
import pytest
from ros_helpers.dmn_probe import DmnProbe
from ros_helpers.ros_args import ros_args

pytestmark = pytest.mark.timeout(240)


def planar_matrix(x, y, yaw):
    T = np.eye(4)
    T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T[:2, 3] = x, y
    return T


def test_dmn_node_localizes_with_images_and_odometry(tiny_dmn, spawn_python, ros_node, tmp_path):
    from std_srvs.srv import Trigger

    from prism_ros.nodes.conversions import matrix_to_odometry, matrix_to_pose_with_covariance, numpy_to_image

    weights, contexts, queries, query_poses, area = tiny_dmn
    probe = DmnProbe(ros_node)
    got = {"particles": probe.particles, "pose": probe.pose, "diag": probe.diag}
    images, odometry, initial, executor, spin_until = (probe.images, probe.odometry, probe.initial, probe.executor,
                                                       probe.spin_until)
    log = tmp_path / "dmn.log"
    probe.start(spawn_python, log, weights, contexts, odometry_topic="/probe/odom", particles=256,
                diagnostics_period=0.2)
    assert spin_until(lambda: odometry.get_subscription_count() > 0, 10)

    def send(k: int, stamp_ns: int) -> None:
        x, y, yaw = query_poses[k]
        odometry.publish(matrix_to_odometry(planar_matrix(x, y, yaw), stamp=stamp_ns / 1e9, frame_id="odom"))
        executor.spin_once(timeout_sec=0.05)
        images.publish(numpy_to_image(queries[k], "rgb8", stamp=stamp_ns / 1e9))

    for k in range(4):
        send(k, (k + 1) * 10**9)
        assert spin_until(lambda k=k: len(got["particles"]) >= k + 1, 20), (got["diag"][-1:], log.read_text()[-2000:])
    assert len(got["particles"][-1].poses) == 256 and got["pose"][-1].header.frame_id == "map"
    assert np.isfinite(got["pose"][-1].pose.covariance).all()

    def particle_xy() -> np.ndarray:
        return np.array([[p.position.x, p.position.y] for p in got["particles"][-1].poses])

    # /initialpose: tracking mode, the particles gather around it (σ = 0.3 normalised = 0.75 m in this room)
    x, y, yaw = query_poses[3]
    initial.publish(matrix_to_pose_with_covariance(planar_matrix(x, y, yaw), np.eye(6) * 0.01, frame_id="map"))
    executor.spin_once(timeout_sec=0.2)
    count = len(got["particles"])
    send(3, 6 * 10**9)
    assert spin_until(lambda: len(got["particles"]) > count, 20)
    near = np.linalg.norm(particle_xy() - [x, y], axis=1) < 1.5
    assert near.mean() > 0.8, near.mean()

    # ~/global_localization: uniform again (about 28 % of a 5 m square lies within 1.5 m of a point)
    client = ros_node.create_client(Trigger, "/dmn_node/global_localization")
    assert spin_until(client.service_is_ready, 10)
    future = client.call_async(Trigger.Request())
    assert spin_until(future.done, 10) and future.result().success
    count = len(got["particles"])
    send(3, 7 * 10**9)
    assert spin_until(lambda: len(got["particles"]) > count, 20)
    near = np.linalg.norm(particle_xy() - [x, y], axis=1) < 1.5
    assert near.mean() < 0.6, near.mean()
    spread = particle_xy()
    assert (spread.min(0) < area.x0 + 1.0).all() and (spread.max(0) > area.x0 + area.side - 1.0).all()

    # a bad image is counted; the node keeps running
    images.publish(numpy_to_image(np.zeros((8, 8), np.uint16), "16UC1", stamp=8.0))
    assert spin_until(lambda: got["diag"][-1].get("bad_input.bad_encoding") == "1", 10), got["diag"][-1]
    send(2, 9 * 10**9)
    count = len(got["particles"])
    assert spin_until(lambda: len(got["particles"]) > count, 20)


def test_dmn_node_start_up_errors_and_parameter_file(spawn_python, tmp_path):
    from pathlib import Path

    import yaml

    from prism_ros.nodes.dmn_node import PARAMETERS, parameters_yaml

    bad = spawn_python(["-m", "prism_ros.nodes.dmn_node"], "--ros-args",
                       *ros_args(weights_path=tmp_path / "missing.pt", context_path=tmp_path / "x.ctx"))
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "not found" in err and len(err.strip().splitlines()) == 1, err
    text = (Path(__file__).resolve().parents[1] / "config/dmn.yaml").read_text()
    assert text == parameters_yaml(), "config/dmn.yaml is stale: regenerate with dmn_node.parameters_yaml()"
    assert yaml.safe_load(text)["/**"]["ros__parameters"] == {n: p.default for n, p in PARAMETERS.items()}


def test_an_exception_in_a_callback_leaves_dmn_node_running(tiny_dmn, spawn_python, ros_node, tmp_path):
    """Fail points make each callback raise once: counted, the service answers as failed, and the node goes on."""
    import os

    from std_srvs.srv import Trigger

    from prism_ros.nodes.conversions import numpy_to_image
    from prism_ros.nodes.health import FAILPOINTS_VARIABLE

    weights, contexts, queries, _, _ = tiny_dmn
    probe = DmnProbe(ros_node)
    diag, particles, images, spin_until = probe.diag, probe.particles, probe.images, probe.spin_until
    log = tmp_path / "dmn.log"
    node = probe.start(spawn_python, log, weights, contexts, env={**os.environ, FAILPOINTS_VARIABLE: "all"},
                       particles=64, diagnostics_period=0.2)
    client = ros_node.create_client(Trigger, "/dmn_node/global_localization")
    assert spin_until(client.service_is_ready, 10)
    answers = []
    for _ in range(2):
        future = client.call_async(Trigger.Request())
        assert spin_until(future.done, 10)
        answers.append(future.result())
    assert not answers[0].success and "internal error" in answers[0].message and answers[1].success, answers
    for k in range(2):  # the first image raises, the second is localized
        images.publish(numpy_to_image(queries[k], "rgb8", stamp=float(k + 1)))
        probe.executor.spin_once(timeout_sec=0.2)
    assert spin_until(lambda: particles, 20), log.read_text()[-2000:]
    assert spin_until(lambda: diag[-1].get("callback_errors.image") == "1"
                      and diag[-1].get("callback_errors.global_localization") == "1", 10), diag[-1]
    assert node.poll() is None
