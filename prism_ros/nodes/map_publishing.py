"""Map and render visualisation of the PRISM node: incremental mesh markers, surface cloud, rendered images.

Topics (relative to the node, ``~/``):
- ``mesh`` (visualization_msgs/MarkerArray): one TRIANGLE_LIST marker (ns ``prism_mesh``) per *block group*
  (``group_size``^3 map blocks; 4 -> 32^3 voxels, 64 cm cubes at 2 cm voxels), id a stable function of the
  group's coordinates. Each ``publish_map`` re-meshes and re-sends only the groups whose blocks changed
  since the last publish (ADD), and DELETEs groups that became empty. Changes are found from a per-block
  signature (sum of observation counts and of SDF precision, one vectorised reduction over the map's
  tensors) keyed by block coordinates, so a replaced or reloaded map is diffed correctly too. A changed
  block dirties its own group and the groups of its -x/-y/-z neighbours, whose border cubes read its first
  voxel layer; groups are meshed with :func:`prism_ros.prism.mesh.extract_mesh` restricted to their blocks, which
  reads that one-voxel overlap, so the union of the group meshes is the whole map's mesh (same triangles;
  vertices on group borders are duplicated).
- ``map_cloud`` (sensor_msgs/PointCloud2): surface points x, y, z, rgb (packed float32, the RViz
  convention) and sdf_std (posterior SDF std, m) of the observed voxels (precision above 1/truncation^2,
  as the mesh) whose posterior SDF mean is under half a voxel, each moved onto the zero level of the
  trilinear SDF along its gradient (one Newton step; the voxel centre where the gradient is degenerate).
- ``rendered/depth`` and ``rendered/uncertainty`` (sensor_msgs/Image 32FC1, metres; NaN where the ray
  hit nothing): the render's depth and its SDF std at the hit, in the camera's frame.

QoS: mesh and cloud are reliable + transient_local, keep last ``qos_depth`` (the last message waits for
late subscribers). The mesh goes out in increments, which keep-last alone would lose in two ways:
- a late subscriber gets only the last increment: when a new subscription matches (the publisher's matched
  event, served when the node spins; or, failing that, a subscription count found higher at the next
  ``publish_map``) the whole mesh is re-sent, after a DELETEALL, from the meshes kept per group (compact
  numpy arrays, no re-meshing);
- a reliable keep-last writer drops a sample that a slow reader has not acknowledged yet when the next one
  is written: so while the previous samples are not acknowledged by every reliable reader (checked without
  waiting), the groups (and any DELETEALL) they carried are sent again with the next increment. The last
  sample therefore always holds everything since the last moment all readers were up to date.
Best-effort mesh readers can still miss increments (nothing tells the writer). The rendered images use
sensor-data QoS (best effort, volatile; ``image_qos="reliable"`` for readers that insist on reliable).

Colour: ``colouring="colour"`` gives the fused colour; ``"uncertainty"`` maps the SDF std through
``colormap`` over ``std_range`` (metres; default 0 .. truncation / 2), one fixed range so that the colours
of groups meshed at different times compare. The cloud's rgb follows the same choice (its sdf_std field
is there either way).

Cost (one CPU thread, 2 cm voxels; test/ros_helpers/mappub_bench.py --subscriber): meshing is most of it,
about 2 ms per group; the markers go out as CDR written from the mesh arrays (:mod:`prism_ros.nodes.cdr`,
no Python object per point), about 0.2 us per triangle; the cloud (sample_surface on the surface voxels)
about 30 ms at 60k points. A 2100-block map (110k triangles) publishes whole in ~0.2 s; a frame that touched
1000 of its blocks in ~0.15 s; a quarter frame in ~50 ms; nothing changed: ~2 ms; re-sending the whole mesh
to a late subscriber ~50 ms.
``max_groups`` bounds the groups re-meshed per call (the rest stay pending for the next calls).
Call ``publish_map`` from the thread that updates the map (or under its lock): it reads the map's tensors.
"""
from __future__ import annotations

import array
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from prism_ros.nodes.cdr import to_cdr
from prism_ros.nodes.compat import qos_by_name
from prism_ros.nodes.conversions import as_stamp, make_header, numpy_to_image
from prism_ros.prism.map import block_keys, coords_of_keys
from prism_ros.prism.mesh import Mesh, colour_map, extract_mesh

COLOURINGS = ("colour", "uncertainty")
MESH_NS = "prism_mesh"
_ID_BITS = 10  # marker id = group coordinates packed 10 bits per axis (+-512 groups, +-327 m at 64 cm groups)
_ID_OFFSET = 1 << (_ID_BITS - 1)
_FALLBACK_ID = 1 << (3 * _ID_BITS)  # groups outside that range get sequential ids from here
_NOW = Duration(seconds=0)
_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("sdf_std", "<f4")])
_CLOUD_FIELDS = [PointField(name=name, offset=_CLOUD_DTYPE.fields[name][1], datatype=PointField.FLOAT32, count=1)
                 for name in _CLOUD_DTYPE.names]


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable, transient_local, keep last ``depth``: late subscribers get the last ``depth`` messages."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class PublishStats:
    """What the last ``publish_map`` did."""

    blocks: int = 0
    changed_blocks: int = 0
    dirty_groups: int = 0  # groups found changed by this call
    meshed_groups: int = 0  # groups re-meshed and sent (ADD)
    deleted_groups: int = 0  # groups that became empty (DELETE)
    pending_groups: int = 0  # dirty groups left for later calls (max_groups)
    carried_groups: int = 0  # unchanged groups sent again: the sample that last carried them is not acknowledged
    triangles_sent: int = 0
    cloud_points: int = 0
    ms: float = 0.0
    phases_ms: dict = field(default_factory=dict)


class MapPublisher:
    """Publishes a :class:`~prism_ros.prism.map.GaussianSdfMap` as mesh markers and a surface cloud, and a
    :class:`~prism_ros.prism.render.RenderResult` as depth and uncertainty images (see the module docstring).
    Thread-safe: ``publish_map``/``reset`` and the matched-event re-send may run on different threads."""

    def __init__(self, node, map_frame: str, colouring: str = "colour", qos_depth: int = 1, *,
                 group_size: int = 4, std_range: tuple[float, float] | None = None, colormap: str = "viridis",
                 image_qos: str = "sensor", max_groups: int | None = None):
        if colouring not in COLOURINGS:
            raise ValueError(f"colouring must be one of {COLOURINGS}, got {colouring!r}")
        if int(group_size) < 1:
            raise ValueError(f"group_size must be >= 1 (blocks per group side), got {group_size}")
        if max_groups is not None and int(max_groups) < 1:
            raise ValueError(f"max_groups must be >= 1 or None, got {max_groups}")
        if std_range is not None and not 0 <= std_range[0] < std_range[1]:
            raise ValueError(f"std_range must be (low, high) with 0 <= low < high, got {std_range}")
        if int(qos_depth) < 1:
            raise ValueError(f"qos_depth must be >= 1, got {qos_depth}")
        images = qos_by_name(image_qos, int(qos_depth))  # ValueError naming sensor and reliable
        self.node = node
        self.map_frame = map_frame
        self.colouring = colouring
        self.group_size = int(group_size)
        self.std_range = None if std_range is None else (float(std_range[0]), float(std_range[1]))
        self.colormap = colormap
        self.max_groups = None if max_groups is None else int(max_groups)
        self.stats = PublishStats()
        self._lock = threading.Lock()
        self._resend_requested = False
        self._mesh_pub = node.create_publisher(
            MarkerArray, "~/mesh", latched_qos(int(qos_depth)),
            event_callbacks=PublisherEventCallbacks(matched=self._on_mesh_matched))
        self._cloud_pub = node.create_publisher(PointCloud2, "~/map_cloud", latched_qos(int(qos_depth)))
        self._depth_pub = node.create_publisher(Image, "~/rendered/depth", images)
        self._std_pub = node.create_publisher(Image, "~/rendered/uncertainty", images)
        self._forget()

    # ------------------------------------------------------------------ state
    def _forget(self) -> None:
        self._keys = torch.empty(0, dtype=torch.int64)  # sorted block keys seen at the last publish
        self._signatures = torch.empty((0, 2), dtype=torch.float64)  # (count sum, precision sum) per key
        self._meshes: dict[tuple[int, int, int], Mesh] = {}  # published groups' meshes
        self._pending: set[tuple[int, int, int]] = set()
        self._unacked: set[tuple[int, int, int]] = set()  # groups last sent in a sample not yet acknowledged
        self._unacked_clear = False  # a DELETEALL not yet acknowledged
        self._fallback_ids: dict[tuple[int, int, int], int] = {}
        self._stamp = as_stamp(None)
        self._subscribers = 0
        self._cloud_sent = False

    def reset(self) -> None:
        """Clear the display (a DELETEALL marker and an empty cloud) and forget what was published: the next
        ``publish_map`` sends every group (after a map reset or load)."""
        with self._lock:
            stamp = self._stamp
            self._forget()
            self._send_mesh({}, stamp, clear=True)
            self._cloud_pub.publish(self._cloud_message(np.zeros(0, _CLOUD_DTYPE), stamp))

    @property
    def published_groups(self) -> list[tuple[int, int, int]]:
        """Coordinates of the groups whose markers are currently shown."""
        with self._lock:
            return sorted(self._meshes)

    def group_id(self, group: tuple[int, int, int]) -> int:
        """Marker id of a group (block coordinates // group_size): the coordinates packed 10 bits per axis
        (the same id in every run), or a sequential id >= 2^30 for groups beyond +-512 per axis."""
        shifted = [int(g) + _ID_OFFSET for g in group]
        if all(0 <= s < (1 << _ID_BITS) for s in shifted):
            return (shifted[0] << (2 * _ID_BITS)) | (shifted[1] << _ID_BITS) | shifted[2]
        key = tuple(int(g) for g in group)
        if key not in self._fallback_ids:
            self._fallback_ids[key] = _FALLBACK_ID + len(self._fallback_ids)
        return self._fallback_ids[key]

    # ------------------------------------------------------------------ map
    def publish_map(self, sdf_map, stamp=None, *, mesh: bool = True, cloud: bool = True) -> None:
        """Send the mesh groups that changed since the last call (and DELETE emptied ones), and the surface
        cloud when anything changed. ``stamp``: builtin_interfaces/Time or seconds. ``mesh=False`` only notes
        the changed groups (they go out with a later call that meshes); ``cloud=False`` leaves the cloud stale
        (the next call with ``cloud`` sends it)."""
        with self._lock:
            self._publish_map(sdf_map, as_stamp(stamp), mesh, cloud)
        self._serve_resend()

    def watched(self) -> tuple[bool, bool]:
        """(mesh, cloud): whether each has a subscriber now."""
        return self._mesh_pub.get_subscription_count() > 0, self._cloud_pub.get_subscription_count() > 0

    def owes(self, mesh: bool, cloud: bool) -> bool:
        """Whether a publish with these outputs would send something although the map did not change: groups
        left pending, or a stale cloud."""
        return (mesh and bool(self._pending)) or (cloud and not self._cloud_sent)

    def _publish_map(self, sdf_map, stamp, mesh: bool, cloud: bool) -> None:
        start = time.perf_counter()
        phases = {}
        self._stamp = stamp
        count = self._mesh_pub.get_subscription_count()
        if count > self._subscribers and self._meshes:  # joined since the last call, matched event not served
            self._resend_requested = True
        self._subscribers = count
        coords = sdf_map.block_coords.cpu()
        changed, removed = self._diff_blocks(sdf_map, coords)
        dirty = self._groups_reading(torch.cat([coords[changed], removed]))
        self._pending |= dirty
        phases["diff"] = (time.perf_counter() - start) * 1e3
        todo = sorted(self._pending) if mesh else []
        if self.max_groups is not None:
            todo = todo[: self.max_groups]
        self._pending.difference_update(todo)
        markers, meshed, deleted, triangles = self._mesh_groups(sdf_map, coords, todo, stamp)
        phases["mesh"] = (time.perf_counter() - start) * 1e3 - sum(phases.values())
        carried = self._send_mesh(markers, stamp)
        phases["mesh_publish"] = (time.perf_counter() - start) * 1e3 - sum(phases.values())
        points = 0
        self._cloud_sent &= not dirty
        if cloud and not self._cloud_sent:
            surface = self.surface_cloud(sdf_map)
            points = len(surface)
            phases["cloud"] = (time.perf_counter() - start) * 1e3 - sum(phases.values())
            self._cloud_pub.publish(self._cloud_message(surface, stamp))
            self._cloud_sent = True
            phases["cloud_publish"] = (time.perf_counter() - start) * 1e3 - sum(phases.values())
        self.stats = PublishStats(len(coords), int(changed.sum()), len(dirty), meshed, deleted, len(self._pending),
                                  carried, triangles, points, (time.perf_counter() - start) * 1e3, phases)

    def _send_mesh(self, markers: dict, stamp, clear: bool = False) -> int:
        """Publish the markers of the groups in ``markers`` (group -> Marker), preceded by a DELETEALL where
        ``clear``. The mesh goes out in increments, but a reliable keep-last writer drops a sample that a
        slow reader has not acknowledged when the next one is written: so while the previous samples are not
        acknowledged by every reader, the groups (and DELETEALL) they carried go out again with this one
        (from the kept meshes). Returns how many groups were carried like that."""
        if self._mesh_pub.wait_for_all_acked(_NOW):
            self._unacked.clear()
            self._unacked_clear = False
        self._unacked_clear |= clear
        carried = sorted(self._unacked - markers.keys())
        out = [(Marker(header=make_header(self.map_frame, stamp), ns=MESH_NS, action=Marker.DELETEALL), None)
               ] if self._unacked_clear else []
        out += list(markers.values())
        out += [self._marker(group, self._meshes[group], stamp) if group in self._meshes
                else self._delete_marker(group, stamp) for group in carried]
        if out:
            packed = {id(marker): arrays for marker, arrays in out if arrays is not None}
            self._mesh_pub.publish(to_cdr(MarkerArray(markers=[marker for marker, _ in out]), packed))
        self._unacked |= markers.keys()
        return len(carried)

    def wait_delivered(self, timeout_s: float = 5.0) -> bool:
        """Wait until every reliable subscriber acknowledged the last mesh and cloud (True), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for publisher in (self._mesh_pub, self._cloud_pub):
            left = max(0.0, deadline - time.monotonic())
            if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
                return False
        return True

    def _diff_blocks(self, sdf_map, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(changed (N,) bool over the map's blocks, coordinates (R,3) of blocks gone since the last call);
        remembers the new signatures."""
        n = len(coords)
        if n:
            counts = sdf_map.count.reshape(n, -1).sum(1, dtype=torch.int64).double()
            precision = sdf_map.precision.reshape(n, -1).sum(1, dtype=torch.float64)
            signatures = torch.stack([counts, precision], 1).cpu()
        else:
            signatures = torch.empty((0, 2), dtype=torch.float64)
        keys = block_keys(coords)
        keys, order = torch.sort(keys)
        signatures = signatures[order]
        previous, before = self._keys, self._signatures
        changed = torch.ones(n, dtype=torch.bool)
        if len(previous):
            at = torch.searchsorted(previous, keys).clamp_max_(len(previous) - 1)
            same = (previous[at] == keys) & (before[at] == signatures).all(1)
            changed[order] = ~same
            kept = torch.searchsorted(keys, previous).clamp_max_(max(n - 1, 0))
            gone = ~(keys[kept] == previous) if n else torch.ones(len(previous), dtype=torch.bool)
            removed = coords_of_keys(previous[gone]).reshape(-1, 3)
        else:
            removed = torch.empty((0, 3), dtype=torch.int64)
        self._keys, self._signatures = keys, signatures
        return changed, removed

    def _groups_reading(self, blocks: torch.Tensor) -> set[tuple[int, int, int]]:
        """Groups whose mesh reads any of ``blocks`` (K,3): their own, and those of their -x/-y/-z neighbours."""
        if not len(blocks):
            return set()
        offsets = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        readers = (blocks[:, None, :] - offsets).reshape(-1, 3)
        keys = torch.unique(block_keys(torch.div(readers, self.group_size, rounding_mode="floor")))
        return set(map(tuple, coords_of_keys(keys).tolist()))

    def _mesh_groups(self, sdf_map, coords: torch.Tensor, groups, stamp):
        """Re-mesh ``groups``; (group -> marker to send, groups meshed, groups deleted, triangles)."""
        markers, meshed, deleted, triangles = {}, 0, 0, 0
        if not groups:
            return markers, meshed, deleted, triangles
        block_groups = torch.div(coords, self.group_size, rounding_mode="floor")
        group_keys, order = torch.sort(block_keys(block_groups))
        wanted = block_keys(torch.tensor(groups, dtype=torch.int64))
        first = torch.searchsorted(group_keys, wanted).tolist()
        last = torch.searchsorted(group_keys, wanted, right=True).tolist()
        std_range = self._std_range(sdf_map)
        for group, lo, hi in zip(groups, first, last):
            mesh = Mesh.empty()
            if hi > lo:
                mesh = extract_mesh(sdf_map, colour_by=self.colouring, std_range=std_range,
                                    colormap=self.colormap, blocks=coords[order[lo:hi]])
            if len(mesh.faces):
                self._meshes[group] = mesh
                markers[group] = self._marker(group, mesh, stamp)
                meshed += 1
                triangles += len(mesh.faces)
            elif self._meshes.pop(group, None) is not None:
                markers[group] = self._delete_marker(group, stamp)
                deleted += 1
        return markers, meshed, deleted, triangles

    def _std_range(self, sdf_map) -> tuple[float, float]:
        return self.std_range or (0.0, 0.5 * sdf_map.config.truncation)

    def _delete_marker(self, group, stamp) -> tuple[Marker, None]:
        return Marker(header=make_header(self.map_frame, stamp), ns=MESH_NS, id=self.group_id(group),
                      action=Marker.DELETE), None

    def _marker(self, group, mesh: Mesh, stamp) -> tuple[Marker, dict]:
        """TRIANGLE_LIST marker of a group's mesh, and its points and colours (three per face) as the arrays
        :func:`~prism_ros.nodes.cdr.to_cdr` packs."""
        marker = Marker(header=make_header(self.map_frame, stamp), ns=MESH_NS, id=self.group_id(group),
                        type=Marker.TRIANGLE_LIST, action=Marker.ADD)
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = 1.0
        marker.color.r = marker.color.g = marker.color.b = marker.color.a = 1.0
        corners = mesh.faces.reshape(-1)
        rgba = np.ones((len(mesh.colours), 4), np.float32)
        rgba[:, :3] = mesh.colours.astype(np.float32) / 255.0
        return marker, {"points": mesh.vertices.astype(np.float64)[corners], "colors": rgba[corners]}

    # ------------------------------------------------------------------ late subscribers
    def _on_mesh_matched(self, info) -> None:
        """A subscription matched: re-send the whole mesh (on the executor's thread, as the event comes)."""
        if info.current_count_change > 0:
            self._resend_requested = True
            self._serve_resend()

    def _serve_resend(self) -> None:
        """Send every published group's marker when a subscriber joined (never blocks on a running publish:
        that one serves the request when it ends)."""
        while self._resend_requested and self._lock.acquire(blocking=False):
            try:
                self._resend_requested = False
                self._subscribers = self._mesh_pub.get_subscription_count()
                if self._meshes:
                    self._send_mesh({group: self._marker(group, mesh, self._stamp)
                                     for group, mesh in sorted(self._meshes.items())}, self._stamp, clear=True)
            finally:
                self._lock.release()

    def republish(self) -> None:
        """Send the whole mesh (every shown group) again, from the kept meshes."""
        self._resend_requested = True
        self._serve_resend()

    # ------------------------------------------------------------------ cloud
    def surface_cloud(self, sdf_map) -> np.ndarray:
        """Surface points (P,) of ``_CLOUD_DTYPE`` (x, y, z, rgb, sdf_std): observed voxels (precision above
        1/truncation^2) with posterior |mean| < voxel_size / 2, moved onto the trilinear zero level."""
        c = sdf_map.config
        n = sdf_map.num_blocks
        if n == 0:
            return np.zeros(0, _CLOUD_DTYPE)
        precision, raw_mean = sdf_map.precision.reshape(-1), sdf_map.mean.reshape(-1)
        prior_precision = 1.0 / c.prior_std**2
        mean = (prior_precision * c.prior_mean + precision * raw_mean) / (prior_precision + precision)
        rows = ((precision > 1.0 / c.truncation**2) & (mean.abs() < 0.5 * c.voxel_size)).nonzero()[:, 0]
        b3 = c.block_size**3
        local = torch.stack(torch.meshgrid(*(torch.arange(c.block_size, device=rows.device),) * 3, indexing="ij"),
                            -1).reshape(-1, 3)
        voxels = sdf_map.block_coords.index_select(0, rows // b3) * c.block_size + local.index_select(0, rows % b3)
        centres = voxels.float() * c.voxel_size
        points = self._onto_surface(sdf_map, centres)
        std = (precision.index_select(0, rows) + prior_precision).rsqrt()
        if self.colouring == "colour":
            colour = sdf_map.colour.reshape(-1, 3).index_select(0, rows)
            rgb = (colour * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        else:
            rgb = colour_map(std.cpu().numpy(), self._std_range(sdf_map), self.colormap)
        cloud = np.empty(len(rows), _CLOUD_DTYPE)
        xyz = points.cpu().numpy()
        cloud["x"], cloud["y"], cloud["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
        cloud["rgb"] = packed.view(np.float32)
        cloud["sdf_std"] = std.cpu().numpy()
        return cloud

    @staticmethod
    def _onto_surface(sdf_map, centres: torch.Tensor) -> torch.Tensor:
        """One Newton step p - f(p) g / |g|^2 on the trilinear mean f (gradient g); the centre itself where
        |g| is far from 1 (an SDF's gradient is a unit vector) or the step exceeds a voxel."""
        if not len(centres):
            return centres
        sample, gradient = sdf_map.sample_surface(centres)
        norm2 = (gradient * gradient).sum(1)
        step = (sample.mean / norm2.clamp_min(1e-12))[:, None] * gradient
        ok = (norm2 > 0.25) & (norm2 < 2.25) & (step.norm(dim=1) < sdf_map.config.voxel_size) & sample.observed
        return torch.where(ok[:, None], centres - step, centres)

    def _cloud_message(self, cloud: np.ndarray, stamp) -> PointCloud2:
        data = array.array("B")
        data.frombytes(cloud.tobytes())
        return PointCloud2(header=make_header(self.map_frame, stamp), height=1, width=len(cloud),
                           fields=_CLOUD_FIELDS, is_bigendian=sys.byteorder == "big",
                           point_step=_CLOUD_DTYPE.itemsize, row_step=_CLOUD_DTYPE.itemsize * len(cloud),
                           data=data, is_dense=True)

    # ------------------------------------------------------------------ render
    def publish_render(self, render, stamp, camera_frame: str) -> None:
        """Depth (m) and SDF-std images (32FC1, NaN where invalid) of a RenderResult, in ``camera_frame``; each
        only while it has a subscriber."""
        wanted = [(publisher, image) for publisher, image in ((self._depth_pub, render.depth),
                                                              (self._std_pub, render.sdf_std))
                  if publisher.get_subscription_count()]
        if not wanted:  # nothing to copy off the device on the frame path
            return
        valid = render.valid.cpu().numpy().astype(bool)
        stamp = as_stamp(stamp)
        for publisher, image in wanted:
            values = np.where(valid, image.cpu().numpy(), np.float32(np.nan)).astype(np.float32)
            publisher.publish(numpy_to_image(values, "32FC1", stamp, camera_frame))


class MapStream:
    """A node's map thread: every ``period()`` seconds (steady clock), the mesh and cloud of a snapshot of its
    map through ``publisher``.

    Nothing is copied or meshed while neither the mesh nor the cloud has a subscriber (as ROS drivers publish
    lazily); what changed meanwhile goes out once one subscribes. ``snapshot(force)`` gives (map copy, stamp,
    generation) when the map changed since its last call or ``force``, else None; it copies the map
    (``GaussianSdfMap.clone``, a few ms) and reads :attr:`generation` under the map's lock, so frames keep
    flowing while the mesh is built and sent. The mesh goes out in messages of at most the publisher's
    ``max_groups`` block groups (meshing a whole map at once would take the cores, and the GIL between its
    steps, from the filter for as long), and the thread rests ``(1 - duty) / duty`` times what each message
    took, so it takes at most ``duty`` of the time; a larger map updates more slowly instead of slowing the
    poses. ``on_error(error)``: an unexpected error of one round (the thread goes on)."""

    def __init__(self, publisher: MapPublisher, period, snapshot, on_error, duty: float = 0.25):
        self.publisher, self.period, self.snapshot, self.on_error, self.duty = publisher, period, snapshot, \
            on_error, duty
        self.generation = 0  # +1 per reset or load: a snapshot of an older map is not published
        self._lock = threading.Lock()  # publishing a part vs clearing the display
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """After a reset or load (the map's lock held): clear the display; the next snapshot sends everything."""
        self.generation += 1
        with self._lock:
            self.publisher.reset()

    def start(self, stop: threading.Event, name: str = "map") -> None:
        self._thread = threading.Thread(target=self._run, args=(stop,), name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.period()):
            try:
                mesh, cloud = self.publisher.watched()
                if not (mesh or cloud):  # nobody watches: no copy, no meshing (what changed waits)
                    continue
                snapshot = self.snapshot(self.publisher.owes(mesh, cloud))
                while snapshot is not None and not stop.is_set():
                    started = time.perf_counter()
                    if not self._publish_part(*snapshot, mesh, cloud):
                        break
                    stop.wait((time.perf_counter() - started) * (1.0 - self.duty) / self.duty)
            except Exception as error:
                if stop.is_set():
                    return
                self.on_error(error)

    def _publish_part(self, sdf_map, stamp, generation: int, mesh: bool, cloud: bool) -> bool:
        """Publish the next part of the snapshot's changes; whether groups are left for another part."""
        with self._lock:
            if generation != self.generation:  # reset or loaded meanwhile: that snapshot is stale
                return False
            self.publisher.publish_map(sdf_map, stamp, mesh=mesh, cloud=cloud)
            return mesh and self.publisher.stats.pending_groups > 0
