"""MapPublisher over real DDS: incremental mesh markers, the surface cloud, rendered images, reset and late
subscribers. The publisher lives in this process (ros_node), the subscriber in another one
(ros_helpers/mappub_recorder.py), so every message crosses a process boundary."""
from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch
from ros_helpers.dds import spin_until
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from prism_ros.frame import Frame
from prism_ros.geometry import PinholeCamera
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.mesh import colour_map, extract_mesh
from prism_ros.prism.observation import Observation
from prism_ros.prism.render import render
from prism_ros.synthetic import make_sequence

pytestmark = pytest.mark.timeout(60)

STAMP = 1_700_000_000.25
STAMP_NS = 1_700_000_000_250_000_000
GROUP = 4  # blocks per group side (the publisher's default)


def integrate(sdf_map: GaussianSdfMap, seq, index: int, window=None) -> None:
    rgb, depth = seq.frame(index)
    if window is not None:  # only this part of the image is valid: the frame updates part of the map
        kept = np.full_like(depth, np.nan)
        kept[window] = depth[window]
        depth = kept
    obs = Observation.from_frame(Frame(index, index / 30.0, rgb, depth, seq.intrinsics), levels=1)
    sdf_map.integrate(obs.finest, obs.colour, seq.poses[index])


@pytest.fixture(scope="module")
def maps():
    """(sequence, map of frames 0 and 20, that map plus a central 40 x 30 px window of frame 40)."""
    seq = make_sequence(frames=41, noise=False, width=160, height=120)
    first = GaussianSdfMap(MapConfig())
    for index in (0, 20):
        integrate(first, seq, index)
    second = first.clone()
    integrate(second, seq, 40, (slice(45, 75), slice(60, 100)))
    return seq, first, second


# ----------------------------------------------------------------------------- helpers
def start_recorder(spawn_python, node, tmp_path, **counts):
    out = tmp_path / f"recorded_{time.monotonic_ns()}.pkl"
    flags = [f"--{name}={value}" for name, value in counts.items()]
    process = spawn_python("mappub_recorder.py", node.get_fully_qualified_name(), out, *flags, "--timeout", 40)
    return process, out


def finish(process, out, node, while_waiting=lambda: None, timeout=45.0) -> dict:
    """Spin ``node`` (serving its publishers' events) until the recorder exits; its recording."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        while_waiting()
        spin_until(node, lambda: process.poll() is not None, 0.2)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, f"recorder incomplete:\n{stdout[-2000:]}\n{stderr[-2000:]}"
    return pickle.loads(out.read_bytes())


def wait_for_subscriber(node, publisher) -> None:
    pubs = (publisher._mesh_pub, publisher._cloud_pub)
    assert spin_until(node, lambda: all(p.get_subscription_count() >= 1 for p in pubs), 20.0)
    spin_until(node, lambda: False, 0.3)  # serve the matched events now (nothing to re-send yet)


def apply(arrays: list, shown: dict | None = None) -> dict:
    """Markers shown (id -> marker data) after applying MarkerArrays in order, as RViz does."""
    shown = {} if shown is None else shown
    for markers in arrays:
        for marker in markers:
            if marker["action"] == 3:  # DELETEALL
                shown.clear()
            elif marker["action"] == 2:  # DELETE
                shown.pop(marker["id"])
            else:
                shown[marker["id"]] = marker
    return shown


def assert_same_triangles(shown: dict, sdf_map: GaussianSdfMap) -> int:
    """The union of the shown group meshes is the whole map's mesh: the same number of triangles, each
    matched to one of the mesh's (centroid within 1e-5 m, same winding). Returns the triangle count."""
    full = extract_mesh(sdf_map)
    corners = np.concatenate([m["points"] for m in shown.values()]).reshape(-1, 3, 3)
    assert len(corners) == len(full.faces)
    expected = full.vertices[full.faces].astype(np.float64)
    distance, match = cKDTree(expected.mean(1)).query(corners.mean(1))
    assert distance.max() < 1e-5 and len(np.unique(match)) == len(corners)
    normal = lambda t: np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert ((normal(corners) * normal(expected[match])).sum(1) > 0).all()
    return len(corners)


def block_groups(sdf_map: GaussianSdfMap) -> set:
    return {tuple(g) for g in torch.div(sdf_map.block_coords, GROUP, rounding_mode="floor").tolist()}


def changed_block_readers(before: GaussianSdfMap, after: GaussianSdfMap) -> set:
    """Groups whose cubes read a block whose observation count changed (or that is new)."""
    counts = lambda m: {tuple(c): int(n) for c, n in zip(m.block_coords.tolist(),
                                                         m.count.reshape(m.num_blocks, -1).sum(1).tolist())}
    old, new = counts(before), counts(after)
    changed = [c for c, n in new.items() if old.get(c) != n]
    return {tuple(int(np.floor((c[a] - o[a]) / GROUP)) for a in range(3))
            for c in changed for o in np.ndindex(2, 2, 2)}


def expected_cloud(sdf_map: GaussianSdfMap):
    """Rows (slot-major) of the surface voxels, their centres, colours (uint8) and posterior std."""
    c = sdf_map.config
    precision, mean = sdf_map.precision.reshape(-1), sdf_map.mean.reshape(-1)
    prior = 1.0 / c.prior_std**2
    posterior = (prior * c.prior_mean + precision * mean) / (prior + precision)
    rows = ((precision > 1.0 / c.truncation**2) & (posterior.abs() < c.voxel_size / 2)).nonzero()[:, 0]
    b = c.block_size
    local = torch.stack([rows // (b * b) % b, rows // b % b, rows % b], 1)
    centres = (sdf_map.block_coords[rows // b**3] * b + local).double() * c.voxel_size
    colour = (sdf_map.colour.reshape(-1, 3)[rows] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return centres.numpy(), colour, (precision[rows] + prior).rsqrt().numpy()


def decode_cloud(cloud: dict) -> np.ndarray:
    names = {"x": "<f4", "y": "<f4", "z": "<f4", "rgb": "<f4", "sdf_std": "<f4"}
    dtype = np.dtype({"names": [f[0] for f in cloud["fields"]], "formats": [names[f[0]] for f in cloud["fields"]],
                      "offsets": [f[1] for f in cloud["fields"]], "itemsize": cloud["point_step"]})
    return np.frombuffer(cloud["data"], dtype, cloud["width"] * cloud["height"])


# ----------------------------------------------------------------------------- tests
def test_incremental_mesh_cloud_and_reset(maps, ros_node, spawn_python, tmp_path):
    from prism_ros.nodes.map_publishing import MESH_NS, MapPublisher

    seq, first, second = maps
    publisher = MapPublisher(ros_node, "map")
    recorder, out = start_recorder(spawn_python, ros_node, tmp_path, arrays=4, clouds=4)
    wait_for_subscriber(ros_node, publisher)
    # each publish waits for the recorder's acknowledgement, so no increment carries unacknowledged groups
    publisher.publish_map(first, STAMP)
    full_first = publisher.stats
    assert publisher.wait_delivered(20)
    publisher.publish_map(second, STAMP + 1)
    increment = publisher.stats
    assert publisher.wait_delivered(20)
    publisher.reset()
    assert publisher.wait_delivered(20)
    publisher.publish_map(second, STAMP + 2)
    after_reset = publisher.stats
    assert (full_first.carried_groups, increment.carried_groups, after_reset.carried_groups) == (0, 0, 0)
    got = finish(recorder, out, ros_node)
    arrays, clouds = got["arrays"], got["clouds"]
    assert len(arrays) == 4 and len(clouds) == 4

    # 1st publish: every group, one TRIANGLE_LIST each; the union is the whole map's mesh
    markers = arrays[0]
    assert {(m["ns"], m["type"], m["action"], m["frame_id"], m["stamp_ns"]) for m in markers} == {
        (MESH_NS, 11, 0, "map", STAMP_NS)}
    assert all(m["orientation_w"] == 1.0 and len(m["points"]) % 3 == 0 and len(m["colors"]) == len(m["points"])
               for m in markers)
    ids = {publisher.group_id(g): g for g in block_groups(second) | block_groups(first)}
    assert len(ids) == len(block_groups(second) | block_groups(first))  # ids are unique
    assert {m["id"] for m in markers} <= {publisher.group_id(g) for g in block_groups(first)}
    shown = apply(arrays[:1])
    triangles_first = assert_same_triangles(shown, first)

    # 2nd publish (part of one frame integrated): only the groups that read a changed block come again
    resent = {ids[m["id"]] for m in arrays[1]}
    readers = changed_block_readers(first, second)
    groups = block_groups(second)
    assert resent <= readers and len(resent) < len(groups) / 2, (len(resent), len(readers), len(groups))
    assert increment.meshed_groups + increment.deleted_groups == len(arrays[1]) == len(resent)
    for group in sorted(groups - resent):  # what was not re-sent did not change
        blocks = second.block_coords[(torch.div(second.block_coords, GROUP, rounding_mode="floor")
                                      == torch.tensor(group)).all(1)]
        before, after = extract_mesh(first, blocks=blocks), extract_mesh(second, blocks=blocks)
        assert np.array_equal(before.vertices, after.vertices) and np.array_equal(before.faces, after.faces)
    shown = apply(arrays[1:2], shown)
    triangles_second = assert_same_triangles(shown, second)

    # reset: DELETEALL, then the next publish sends every group again
    assert [(m["ns"], m["action"]) for m in arrays[2]] == [(MESH_NS, 3)]
    assert apply(arrays[2:3], shown) == {}
    assert len(arrays[3]) == after_reset.meshed_groups and after_reset.deleted_groups == 0
    assert assert_same_triangles(apply(arrays[3:4]), second) == triangles_second
    print(f"\nmesh groups: {full_first.meshed_groups} sent first ({triangles_first} triangles, "
          f"{full_first.ms:.0f} ms); after a partial frame {len(resent)} of {len(groups)} groups re-sent "
          f"({increment.changed_blocks} changed blocks, {increment.ms:.0f} ms); after reset "
          f"{after_reset.meshed_groups} ({after_reset.ms:.0f} ms)")

    # clouds: x y z rgb sdf_std, one point per surface voxel, on the scene's surface
    for cloud, sdf_map in ((clouds[0], first), (clouds[1], second), (clouds[3], second)):
        assert [f[0] for f in cloud["fields"]] == ["x", "y", "z", "rgb", "sdf_std"]
        assert all(f[2] == 7 and f[3] == 1 for f in cloud["fields"])  # FLOAT32, one each
        assert cloud["frame_id"] == "map" and cloud["height"] == 1 and cloud["point_step"] == 20
        centres, colour, std = expected_cloud(sdf_map)
        points = decode_cloud(cloud)
        assert cloud["width"] == len(centres) > 1000 and cloud["row_step"] == 20 * len(centres)
        xyz = np.stack([points["x"], points["y"], points["z"]], 1).astype(np.float64)
        vs = sdf_map.config.voxel_size
        assert np.abs(xyz - centres).max() <= vs  # moved onto the surface by less than a voxel
        distance = seq.scene.sdf(torch.from_numpy(xyz)).abs().numpy()
        assert np.median(distance) < vs / 20 and np.percentile(distance, 95) < vs / 4
        assert (distance < vs).mean() > 0.995
        rgb = points["rgb"].view(np.uint32)
        unpacked = np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], 1)
        assert np.array_equal(unpacked, colour) and unpacked.std() > 5
        np.testing.assert_allclose(points["sdf_std"], std, rtol=1e-6)
    assert clouds[2]["width"] == 0  # reset clears the cloud
    assert clouds[1]["stamp_ns"] == STAMP_NS + 1_000_000_000


def test_late_subscriber_gets_the_whole_map_and_renders(maps, ros_node, spawn_python, tmp_path):
    """Published in two increments before anyone listened: a late subscriber sees the whole mesh (the
    matched event re-sends it), the last cloud (transient local), and the rendered images. Uncertainty
    colouring: the colours rank with the SDF std at the vertices."""
    from prism_ros.nodes.map_publishing import MapPublisher

    seq, first, second = maps
    publisher = MapPublisher(ros_node, "map", colouring="uncertainty")
    publisher.publish_map(first, STAMP)
    publisher.publish_map(second, STAMP + 1)
    assert publisher.stats.meshed_groups < len(block_groups(second)) / 2
    triangles = len(extract_mesh(second).faces)
    result = render(second, torch.as_tensor(seq.poses[20]), PinholeCamera.from_intrinsics(seq.intrinsics))
    assert result.valid.float().mean() > 0.5
    recorder, out = start_recorder(spawn_python, ros_node, tmp_path, triangles=triangles, clouds=1, images=1)
    got = finish(recorder, out, ros_node, lambda: publisher.publish_render(result, STAMP + 2, "camera_optical"))

    shown = apply(got["arrays"])
    assert assert_same_triangles(shown, second) == triangles
    assert decode_cloud(got["clouds"][-1]).shape == (len(expected_cloud(second)[0]),)
    # uncertainty colours: the std at each vertex through viridis over the fixed range
    points = np.concatenate([m["points"] for m in shown.values()])
    colours = np.concatenate([m["colors"] for m in shown.values()])[:, :3]
    std = second.sample(torch.from_numpy(points).float()).std.numpy()
    low, high = publisher._std_range(second)
    assert (low, high) == (0.0, second.config.truncation / 2)
    np.testing.assert_allclose(colours * 255, colour_map(std, (low, high)), atol=0.01)
    lut = colour_map(np.linspace(low, high, 256), (low, high)).astype(np.float32)
    position = np.argmin(((colours[:, None, :] * 255 - lut[None]) ** 2).sum(-1), 1)
    inside = std < high
    assert spearmanr(position[inside], std[inside]).statistic > 0.99
    # rendered images: 32FC1, NaN where nothing was hit, in the camera frame
    for name, expected in (("depth", result.depth), ("uncertainty", result.sdf_std)):
        image = got[name][0]
        assert image["encoding"] == "32FC1" and image["frame_id"] == "camera_optical"
        assert image["stamp_ns"] == STAMP_NS + 2_000_000_000
        want = np.where(result.valid.numpy(), expected.numpy(), np.nan).astype(np.float32)
        assert np.array_equal(image["pixels"], want, equal_nan=True)
        assert np.isnan(image["pixels"]).sum() == int((~result.valid).sum()) > 0


def test_paused_subscriber_misses_no_increment(maps, ros_node, spawn_python, tmp_path):
    """A reliable reader that stops acknowledging (SIGSTOP) while increments go out: the keep-last writer
    drops the samples it did not get, but each new increment carries the groups of the unacknowledged ones,
    so when it resumes the last sample alone gives it the whole mesh."""
    from prism_ros.nodes.map_publishing import MapPublisher

    _, first, second = maps
    publisher = MapPublisher(ros_node, "map")
    triangles = len(extract_mesh(second).faces)
    recorder, out = start_recorder(spawn_python, ros_node, tmp_path, triangles=triangles, clouds=1)
    wait_for_subscriber(ros_node, publisher)
    os.kill(recorder.pid, signal.SIGSTOP)
    try:
        publisher.publish_map(first, STAMP)
        shown_first = len(publisher.published_groups)
        publisher.publish_map(second, STAMP + 1)
        stats = publisher.stats
        assert not publisher.wait_delivered(0.2)
    finally:
        os.kill(recorder.pid, signal.SIGCONT)
    assert stats.meshed_groups < shown_first and stats.carried_groups > 0
    assert stats.meshed_groups + stats.carried_groups >= shown_first
    got = finish(recorder, out, ros_node)
    assert assert_same_triangles(apply(got["arrays"]), second) == triangles
    assert publisher.wait_delivered(10)
    publisher.publish_map(second, STAMP + 2)  # acknowledged now: nothing to carry, nothing changed
    assert publisher.stats.carried_groups == 0 and publisher.stats.meshed_groups == 0


def test_max_groups_spreads_the_meshing_over_calls(maps, ros_node):
    from prism_ros.nodes.map_publishing import MapPublisher

    _, first, _ = maps
    publisher = MapPublisher(ros_node, "map", max_groups=20)
    calls = 0
    while calls == 0 or publisher.stats.pending_groups:
        publisher.publish_map(first, STAMP)
        assert publisher.stats.meshed_groups + publisher.stats.deleted_groups <= 20
        calls += 1
    assert calls >= 3
    shown = sum(len(publisher._meshes[g].faces) for g in publisher.published_groups)
    assert shown == len(extract_mesh(first).faces)


def test_bad_settings_are_value_errors():
    from prism_ros.nodes.map_publishing import MapPublisher

    with pytest.raises(ValueError, match="'colour', 'uncertainty'.*'normals'"):
        MapPublisher(None, "map", colouring="normals")
    with pytest.raises(ValueError, match="group_size"):
        MapPublisher(None, "map", group_size=0)
    with pytest.raises(ValueError, match="std_range"):
        MapPublisher(None, "map", std_range=(0.02, 0.01))
    with pytest.raises(ValueError, match="sensor or reliable"):
        MapPublisher(None, "map", image_qos="fast")


def test_group_ids_are_stable_and_unique(ros_node):
    from prism_ros.nodes.map_publishing import MapPublisher

    publisher = MapPublisher(ros_node, "map")
    other = MapPublisher(ros_node, "map")
    near = [(x, y, z) for x in (-512, -1, 0, 1, 511) for y in (-3, 0, 5) for z in (-512, 0, 511)]
    ids = [publisher.group_id(g) for g in near]
    assert ids == [other.group_id(g) for g in near] and len(set(ids)) == len(near)
    assert all(0 <= i < 2**30 for i in ids) and publisher.group_id((0, 0, 0)) == (512 << 20) | (512 << 10) | 512
    far = [(512, 0, 0), (0, -513, 0), (10**6, 0, 0)]
    far_ids = [publisher.group_id(g) for g in far]
    assert len(set(far_ids)) == 3 and all(2**30 <= i < 2**31 for i in far_ids)
    assert publisher.group_id((512, 0, 0)) == far_ids[0]  # remembered


def test_the_map_thread_copies_and_meshes_nothing_until_someone_watches(maps, ros_node, spawn_python, tmp_path):
    """MapStream: while neither the mesh nor the cloud has a subscriber, no snapshot is taken (no map copy, no
    meshing); a subscriber that joins later gets the whole map and the cloud."""
    import threading

    from prism_ros.nodes.map_publishing import MapPublisher, MapStream

    _, _, second = maps
    publisher = MapPublisher(ros_node, "map")
    snapshots, errors = [], []

    def snapshot(force: bool):
        snapshots.append(force)
        return (second, STAMP, stream.generation) if len(snapshots) == 1 else None  # the map changed once

    stream = MapStream(publisher, lambda: 0.05, snapshot, errors.append)
    stop = threading.Event()
    stream.start(stop, name="test_map")
    try:
        spin_until(ros_node, lambda: False, 1.0)  # 20 periods with nobody watching
        assert snapshots == []
        triangles = len(extract_mesh(second).faces)
        recorder, out = start_recorder(spawn_python, ros_node, tmp_path, triangles=triangles, clouds=1)
        got = finish(recorder, out, ros_node)
    finally:
        stop.set()
        stream.join(5.0)
    assert errors == [] and snapshots
    assert assert_same_triangles(apply(got["arrays"]), second) == triangles
    assert decode_cloud(got["clouds"][-1]).shape == (len(expected_cloud(second)[0]),)


def test_changes_noted_while_only_the_cloud_is_watched_go_out_when_the_mesh_is(maps, ros_node, spawn_python,
                                                                              tmp_path):
    """publish_map(mesh=False) notes the changed groups without meshing them, cloud=False leaves the cloud stale
    (``owes`` says what is left); a later publish with the mesh sends every noted group: the subscriber sees
    the whole map."""
    from prism_ros.nodes.map_publishing import MapPublisher

    _, first, second = maps
    publisher = MapPublisher(ros_node, "map")
    publisher.publish_map(first, STAMP, mesh=False, cloud=False)
    assert publisher.stats.meshed_groups == 0 and publisher.stats.pending_groups > 0
    assert publisher.owes(mesh=True, cloud=False) and publisher.owes(mesh=False, cloud=True)
    publisher.publish_map(second, STAMP + 1, mesh=False, cloud=True)  # only the cloud watched
    assert publisher.stats.meshed_groups == 0 and publisher.stats.cloud_points > 0
    assert not publisher.owes(mesh=False, cloud=True) and publisher.owes(mesh=True, cloud=False)
    triangles = len(extract_mesh(second).faces)
    recorder, out = start_recorder(spawn_python, ros_node, tmp_path, triangles=triangles, clouds=1)
    wait_for_subscriber(ros_node, publisher)
    publisher.publish_map(second, STAMP + 2)  # nothing changed since the last call, but the groups were noted
    assert publisher.stats.changed_blocks == 0 and publisher.stats.meshed_groups > 0
    assert not publisher.owes(mesh=True, cloud=True)
    got = finish(recorder, out, ros_node)
    assert assert_same_triangles(apply(got["arrays"]), second) == triangles
