"""Synthetic generator: exact geometry, consistent appearance, motion profiles, sensor models, writers."""
import math

import cv2
import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.transform import Rotation

from prism_ros.dynamics.imu import GRAVITY
from prism_ros.errors import InputError
from prism_ros.synthetic import (
    ControlModel,
    DepthNoise,
    ImuModel,
    Scene,
    generate,
    intrinsics_for,
    make_sequence,
    make_trajectory,
    render_scene,
    synthesize_control,
    synthesize_imu,
)
from prism_ros.synthetic.scene import make_materials, noisy_depth, pixel_rays
from prism_ros.synthetic.writer import TOPICS

SMALL = dict(width=160, height=120)


def looking_along_x(position) -> np.ndarray:
    """T_world_camera of an optical frame at ``position`` looking along +x with image-down = -z."""
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    T[:3, 3] = position
    return T


def hand_built_scene() -> Scene:
    """Room with one sphere on the optical axis of ``looking_along_x((1, 2.5, 1.5))``, a yawed box and a
    cylinder off to the sides."""
    f64 = lambda rows: torch.tensor(rows, dtype=torch.float64).reshape(-1, len(rows[0]) if rows else 1)
    spheres, boxes = f64([[3.5, 2.5, 1.5, 0.5]]), f64([[2.6, 1.9, 0.4, 0.3, 0.2, 0.4, 0.6]])
    cylinders = f64([[2.8, 3.2, 0.0, 2.0, 0.25]])
    materials = make_materials(np.random.default_rng(0), 6 + 3)
    return Scene(torch.tensor([6.0, 5.0, 3.0], dtype=torch.float64), spheres, boxes, cylinders, materials)


def sphere_trace(scene: Scene, origin: torch.Tensor, dirs: torch.Tensor, steps: int = 3000):
    """Independent reference: march the exact SDF from the origin (unit directions). Returns the distance
    along each ray and whether it converged to |sdf| < 1e-10."""
    t = torch.zeros(len(dirs), dtype=torch.float64)
    for _ in range(steps):
        d = scene.sdf(origin + t[:, None] * dirs)
        t = t + d
        if bool((d.abs() < 1e-10).all()):
            break
    return t, scene.sdf(origin + t[:, None] * dirs).abs() < 1e-10


# ----------------------------------------------------------------------------- geometry
def test_depth_is_the_exact_ray_primitive_intersection():
    scene, intrinsics = hand_built_scene(), intrinsics_for(**SMALL)
    T = looking_along_x([1.0, 2.5, 1.5])
    view = render_scene(scene, T, intrinsics)
    depth, surface = view.depth.numpy(), view.surface.numpy()
    wall = surface == 1  # x = 6 face, fronto-parallel at 5 m from the camera
    assert wall.sum() > 1000 and np.abs(depth[wall] - 5.0).max() < 1e-12
    on_sphere = surface == 6
    assert on_sphere.sum() > 500
    rays = pixel_rays(intrinsics).numpy()[on_sphere]  # camera frame, z = 1
    oc = np.array([0.0, 0.0, 2.5])  # sphere centre in the camera frame
    expected = [min(r for r in np.roots([d @ d, -2 * d @ oc, oc @ oc - 0.25]).real if r > 0) for d in rays]
    assert np.abs(depth[on_sphere] - expected).max() < 1e-9


def test_depth_agrees_with_sphere_tracing_the_sdf():
    """Every primitive type, on a generated scene and on the hand-built one, against SDF marching."""
    seq = make_sequence(frames=31, seed=4, width=80, height=60, noise=False)
    cases = [(seq.scene, seq.poses[i]) for i in (0, 15, 30)] + [(hand_built_scene(), looking_along_x([1.0, 2.5, 1.5]))]
    for scene, T in cases:
        view = render_scene(scene, T, seq.intrinsics)
        dirs = pixel_rays(seq.intrinsics).reshape(-1, 3) @ torch.tensor(T[:3, :3]).T
        norms = dirs.norm(dim=-1)
        t, converged = sphere_trace(scene, torch.tensor(T[:3, 3]), dirs / norms[:, None])
        steep = view.cos_incidence.reshape(-1) > 0.2
        check = converged & steep
        assert check.float().mean() > 0.9
        err = (t / norms - view.depth.reshape(-1))[check].abs()
        assert err.max() < 1e-8  # measured < 1e-13
    assert {6, 7, 8} <= set(view.surface.reshape(-1)[check].tolist())  # sphere, box and cylinder checked


@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_backprojected_depth_lies_on_the_sdf_zero_set(motion):
    seq = make_sequence(frames=90, seed=1, motion=motion, noise=False, **SMALL)
    for index in (0, 45, 89):
        T = torch.tensor(seq.poses[index])
        view = render_scene(seq.scene, T, seq.intrinsics)
        points = T[:3, 3] + view.depth[..., None] * (pixel_rays(seq.intrinsics) @ T[:3, :3].T)
        assert seq.scene.sdf(points.reshape(-1, 3)).abs().max() < 1e-6  # measured ~1e-14


def test_windowed_render_equals_brute_force_intersection():
    seq = make_sequence(frames=60, seed=2, noise=False, **SMALL)
    for index in (0, 30, 59):
        T = torch.tensor(seq.poses[index])
        view = render_scene(seq.scene, T, seq.intrinsics)
        dirs = pixel_rays(seq.intrinsics).reshape(-1, 3) @ T[:3, :3].T
        t, surface, normal = seq.scene.intersect(T[:3, 3], dirs)
        assert torch.equal(t, view.depth.reshape(-1)) and torch.equal(surface, view.surface.reshape(-1))
        assert torch.allclose(normal, view.normal.reshape(-1, 3))


# ----------------------------------------------------------------------------- appearance
def test_colour_is_view_independent():
    """Warp one noise-free view into another with the exact depth: the colours agree."""
    seq = make_sequence(frames=20, seed=0, noise=False, **SMALL)
    rgb_a, depth_a = seq.frame(0)
    rgb_b, depth_b = seq.frame(19)
    K = seq.intrinsics.K
    h, w = depth_a.shape
    v, u = np.mgrid[0:h, 0:w]
    points_a = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)]) * depth_a.ravel()
    T_b_a = np.linalg.inv(seq.poses[19]) @ seq.poses[0]
    points_b = T_b_a[:3, :3] @ points_a + T_b_a[:3, 3:]
    uv = (K @ points_b)[:2] / points_b[2]
    map_u, map_v = uv[0].reshape(h, w).astype(np.float32), uv[1].reshape(h, w).astype(np.float32)
    warped = cv2.remap(rgb_b, map_u, map_v, cv2.INTER_LINEAR, borderValue=(0, 0, 0)).astype(float)
    depth_at = cv2.remap(depth_b, map_u, map_v, cv2.INTER_NEAREST, borderValue=0.0)
    inside = (map_u > 1) & (map_u < w - 2) & (map_v > 1) & (map_v < h - 2)
    visible = inside & (np.abs(depth_at - points_b[2].reshape(h, w)) < 0.01)
    assert visible.mean() > 0.3
    diff = np.abs(warped - rgb_a.astype(float)).mean(-1)[visible]
    assert np.median(diff) < 1.0 and np.percentile(diff, 90) < 4.0  # measured 0.33 and 1.33 grey levels
    grad = np.abs(np.diff(cv2.cvtColor(rgb_a, cv2.COLOR_RGB2GRAY).astype(float), axis=1))
    assert np.median(grad) > 0.5 and np.percentile(grad, 90) > 2.0  # texture enough for photometric alignment


# ----------------------------------------------------------------------------- sensor models
def test_depth_noise_model():
    seq = make_sequence(frames=1, seed=0, noise=False)  # 640x480 for statistics
    view = render_scene(seq.scene, seq.poses[0], seq.intrinsics)
    model = DepthNoise()
    gen = torch.Generator().manual_seed(0)
    noisy = noisy_depth(view.depth, view.cos_incidence, model, gen).double()
    valid = ~noisy.isnan()
    exact = view.depth
    steps = noisy[valid] * model.scale
    assert (steps - steps.round()).abs().max() < 2e-3  # on the 1/5000 m grid (float32 storage)
    z = exact[valid]
    normalised = (noisy[valid] - z) / (model.a + model.b * z**2)
    assert abs(float(normalised.std()) - 1.0) < 0.05 and abs(float(normalised.mean())) < 0.05
    expect_invalid = (exact > model.max_range) | (exact < model.min_range) | \
        (view.cos_incidence < math.cos(math.radians(model.max_incidence_deg)))
    assert not bool((valid & expect_invalid).any())
    dropped = (~valid & ~expect_invalid).float().sum() / (~expect_invalid).float().sum()
    assert abs(float(dropped) - model.dropout) < 0.003


def test_imu_and_control_noise_statistics():
    trajectory, rate = make_trajectory("drone", 5), 200.0
    t = np.arange(4000) / rate
    exact = synthesize_imu(trajectory, t, rate, None)
    model = ImuModel()
    noisy = synthesize_imu(trajectory, t, rate, model, seed=5)
    for measured, true, bias, density in ((noisy.gyro, exact.gyro, noisy.bias_gyro, model.gyro_noise_density),
                                          (noisy.accel, exact.accel, noisy.bias_accel, model.accel_noise_density)):
        residual = measured - true - bias
        assert np.allclose(residual.std(0), density * np.sqrt(rate), rtol=0.06)
        assert np.all(np.abs(residual.mean(0)) < 4 * density * np.sqrt(rate) / np.sqrt(len(t)))
    assert np.linalg.norm(noisy.bias_gyro) > 0 and np.linalg.norm(noisy.bias_accel) > 0
    # specific force and control follow their definitions
    k = trajectory.kinematics(t[:50])
    f = np.einsum("nji,nj->ni", k.R.numpy(), k.a.numpy() - [0.0, 0.0, -GRAVITY])
    assert np.allclose(exact.accel[:50], f) and np.allclose(exact.gyro[:50], k.omega.numpy())
    control = synthesize_control(trajectory, t[:50], None)
    assert np.allclose(control[:, :3], np.einsum("nji,nj->ni", k.R.numpy(), k.a.numpy()))
    assert np.allclose(control[:, 3:], k.omega.numpy())
    lagged = synthesize_control(trajectory, t, ControlModel(), seed=1)
    residual = lagged - synthesize_control(trajectory, t + ControlModel().lag, None)
    assert np.allclose(residual.std(0), [0.05] * 3 + [0.01] * 3, rtol=0.06)


# ----------------------------------------------------------------------------- motion
@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_profiles_are_smooth_exact_and_inside_the_room(motion):
    trajectory = make_trajectory(motion, 7)
    t = np.arange(0.0, 60.0, 0.01)
    k = trajectory.kinematics(t)
    h = 1e-5
    plus, minus = trajectory.kinematics(t[:200] + h), trajectory.kinematics(t[:200] - h)
    assert torch.allclose((plus.p - minus.p) / (2 * h), k.v[:200], atol=1e-6)
    assert torch.allclose((plus.v - minus.v) / (2 * h), k.a[:200], atol=1e-6)
    R_dot = (plus.R - minus.R) / (2 * h)
    omega_hat = k.R[:200].transpose(1, 2) @ R_dot
    assert torch.allclose(torch.stack([omega_hat[:, 2, 1], omega_hat[:, 0, 2], omega_hat[:, 1, 0]], -1),
                          k.omega[:200], atol=1e-6)
    p = k.p.numpy()
    clearance = np.minimum(p, np.array([6.0, 5.0, 3.0]) - p).min()
    assert clearance > 0.8
    speed, rate = k.v.norm(dim=-1).numpy(), np.degrees(k.omega.norm(dim=-1).numpy())
    if motion == "handheld":
        assert 0.2 < speed.mean() < 0.45 and rate.max() < 45.0
    else:
        assert 0.8 < speed.mean() < 1.3 and rate.max() < 90.0
        thrust = k.a + torch.tensor([0.0, 0.0, GRAVITY], dtype=torch.float64)
        assert torch.allclose(k.R[:, :, 2], thrust / thrust.norm(dim=-1, keepdim=True), atol=1e-12)
    forward = np.einsum("nij,j->ni", k.R.numpy(), [1.0, 0.0, 0.0])
    assert np.median(np.abs(np.degrees(np.arcsin(forward[:, 2])))) < 20  # looking mostly level, into the room


@pytest.mark.parametrize("motion", ["handheld", "drone"])
def test_objects_keep_clear_of_the_path(motion):
    seq = make_sequence(frames=900, seed=3, motion=motion, noise=False, width=16, height=12)
    camera = torch.tensor(seq.poses[:, :3, 3])
    assert seq.scene.object_sdfs(camera).min() > 0.45
    assert len(seq.scene.spheres) + len(seq.scene.boxes) + len(seq.scene.cylinders) >= 8


def test_same_seed_same_data_and_other_seed_differs():
    a, b = (make_sequence(frames=6, seed=11, width=64, height=48) for _ in range(2))
    c = make_sequence(frames=6, seed=12, width=64, height=48)
    assert np.array_equal(a.poses, b.poses) and np.array_equal(a.imu.accel, b.imu.accel)
    assert np.array_equal(a.control, b.control)
    for x, y in zip(a.frame(3), b.frame(3)):
        assert np.array_equal(x, y, equal_nan=True)
    assert not np.allclose(a.poses, c.poses)
    assert not np.array_equal(a.frame(3)[0], c.frame(3)[0])


# ----------------------------------------------------------------------------- writers
def test_generate_writes_the_folder_and_an_mcap_bag(tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = generate(tmp_path / "seq", frames=8, seed=2, noise=False, progress=False, **SMALL)
    seq = make_sequence(frames=8, seed=2, noise=False, **SMALL)
    rgb_names = sorted((out / "rgb").glob("*.png"))
    assert len(rgb_names) == 8 and len(list((out / "depth").glob("*.png"))) == 8
    lines = lambda name: [l for l in (out / name).read_text().splitlines() if not l.startswith("#")]
    assert len(lines("rgb.txt")) == len(lines("depth.txt")) == len(lines("groundtruth.txt")) == 8
    assert len(lines("imu.txt")) == len(seq.imu_us) == 1 + int(7 / 30 * 200) and len(lines("control.txt")) == 8
    stamp, name = lines("depth.txt")[5].split()
    rgb, depth = seq.frame(5)
    png = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and np.abs(png / 5000.0 - depth).max() <= 0.5 / 5000 + 1e-6
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(out / "rgb" / f"{stamp}.png")), cv2.COLOR_BGR2RGB), rgb)
    gt = np.array([[float(x) for x in l.split()] for l in lines("groundtruth.txt")])
    assert np.allclose(gt[5, 1:4], seq.poses[5][:3, 3], atol=1e-8)
    assert np.allclose(Rotation.from_quat(gt[5, 4:]).as_matrix(), seq.poses[5][:3, :3], atol=1e-8)
    camera = yaml.safe_load((out / "camera.yaml").read_text())
    assert camera["fx"] == 131.25 and camera["width"] == 160 and len(camera["distortion"]) == 5
    assert np.allclose(camera["T_imu_camera"], seq.T_imu_camera)

    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {topic: (len(seq.imu_us) if key == "imu" else 8) for key, (topic, _) in TOPICS.items()}
        depth_conn = [c for c in reader.connections if c.topic == "/camera/depth/image"]
        for connection, timestamp, raw in reader.messages(connections=depth_conn):
            msg = reader.deserialize(raw, connection.msgtype)
            if msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 == pytest.approx(float(stamp), abs=1e-6):
                assert msg.encoding == "32FC1" and msg.header.frame_id == "camera_rgb_optical_frame"
                assert np.array_equal(msg.data.view(np.float32).reshape(120, 160), depth)
                assert timestamp == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_generate_db3_bag_and_refuses_to_overwrite(tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = generate(tmp_path / "seq", frames=3, seed=0, motion="drone", bag="db3", progress=False, width=32, height=24)
    assert list((out / "bag").glob("*.db3"))
    with AnyReader([out / "bag"], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        assert {c.topic for c in reader.connections} == {topic for topic, _ in TOPICS.values()}
        assert sum(c.msgcount for c in reader.connections) == 5 * 3 + 1 + int(2 / 30 * 200)
    with pytest.raises(InputError):
        generate(out, frames=3, progress=False, width=32, height=24)
    generate(out, frames=2, bag=None, overwrite=True, progress=False, width=32, height=24)
    assert not (out / "bag").exists() and len(list((out / "rgb").glob("*.png"))) == 2


def test_rays_parallel_to_room_faces_hit_the_room():
    """A ray with an exactly zero direction component (e.g. through an integer principal point of an
    axis-aligned camera) leaves through another face, not at -inf."""
    import torch

    from prism_ros.synthetic.scene import ray_room

    size = torch.tensor([6.0, 5.0, 3.0], dtype=torch.float64)
    origin = torch.tensor([[1.0, 2.0, 1.5]], dtype=torch.float64).expand(3, 3)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    t, face = ray_room(origin, dirs, size)
    torch.testing.assert_close(t, torch.tensor([5.0, 2.0, 1.5], dtype=torch.float64))
    assert face.tolist() == [1, 2, 5]
