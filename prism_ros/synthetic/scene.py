"""Procedural indoor room: exact analytic SDF, exact ray casting and view-independent shading.

The room is the box [0, 6] x [0, 5] x [0, 3] m (z up) seen from inside; objects (yawed boxes resting
on the floor, spheres, vertical capped cylinders) are placed by seed away from the camera path.
Depth comes from exact ray-primitive intersection in float64 (no marching error), so it lies on the
zero set of :meth:`Scene.sdf` to rounding. Colour is a function of the hit point only: a procedural
albedo per surface (soft checker, stripes and value noise along seeded directions) times a fixed
directional Lambert term (and, optionally, an SDF ambient-occlusion term), so it is the same from every
view (photometric consistency). Everything is batched torch on the scene's device; objects are ray cast
only inside the pixel window of their bounding sphere, so a 640x480 view costs ~0.1 s on one CPU core.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from prism_ros.frame import Intrinsics

ROOM_SIZE = (6.0, 5.0, 3.0)
LIGHT = (0.35, 0.55, 0.75)  # direction towards the (infinitely far) light, normalised at use
N_ROOM_FACES = 6  # surface ids 0..5: x=0, x=X, y=0, y=Y, z=0 (floor), z=Z (ceiling)


@dataclass
class Scene:
    """Room size (3,), spheres (S,4) [centre, radius], boxes (B,7) [centre, half extents, yaw],
    cylinders (C,5) [x, y, z0, z1, radius] and one material row per surface (6 + S + B + C, 22).
    Surface ids: room faces, then spheres, boxes, cylinders in that order."""

    size: torch.Tensor
    spheres: torch.Tensor
    boxes: torch.Tensor
    cylinders: torch.Tensor
    materials: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.size.device

    def to(self, device) -> "Scene":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("size", "spheres", "boxes", "cylinders", "materials")})

    def objects(self):
        """(surface id, kind, parameters (1,P)) of every object, in surface-id order."""
        surface = N_ROOM_FACES
        for kind in KINDS:
            for row in self.params(kind):
                yield surface, kind, row[None]
                surface += 1

    def object_sdfs(self, points: torch.Tensor) -> torch.Tensor:
        """Signed distance (N, S+B+C) of points (N,3) to each object (negative inside)."""
        return torch.cat([KINDS[kind].sdf(points, self.params(kind)) for kind in KINDS], dim=-1)

    def params(self, kind: str) -> torch.Tensor:
        """Parameter rows of all objects of one kind ("sphere", "box" or "cylinder")."""
        return {"sphere": self.spheres, "box": self.boxes, "cylinder": self.cylinders}[kind]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Exact signed distance (N,) to the scene surface, positive in free space."""
        room = room_sdf(points, self.size)
        objects = self.object_sdfs(points)
        return room if objects.shape[-1] == 0 else torch.minimum(room, objects.min(-1).values)

    def intersect(self, origin: torch.Tensor, dirs: torch.Tensor):
        """First hit of rays ``origin + t dirs`` (origin (3,), dirs (N,3), not normalised) from inside
        the room: (t (N,), surface id (N,), unit normal (N,3) facing free space)."""
        full = [(0, 1, 0, len(dirs))] * (self.count - N_ROOM_FACES)
        t, surface, normal = cast(self, origin, dirs[None], full)
        return t[0], surface[0], normal[0]

    @property
    def count(self) -> int:
        """Number of surfaces (room faces and objects)."""
        return len(self.materials)

    def describe(self) -> dict:
        """Plain-Python description (for the sequence's yaml)."""
        return {"room_size": self.size.tolist(), "spheres": self.spheres.tolist(), "boxes": self.boxes.tolist(),
                "cylinders": self.cylinders.tolist(),
                "columns": {"spheres": "x y z radius", "boxes": "x y z half_x half_y half_z yaw",
                            "cylinders": "x y z_bottom z_top radius"}}

    @staticmethod
    def from_description(description: dict, device="cpu") -> "Scene":
        """The scene's geometry back from :meth:`describe` (materials are not stored: grey, for SDF use)."""
        rows = lambda key, n: torch.tensor(description[key], dtype=torch.float64).reshape(-1, n)
        spheres, boxes, cylinders = rows("spheres", 4), rows("boxes", 7), rows("cylinders", 5)
        count = N_ROOM_FACES + len(spheres) + len(boxes) + len(cylinders)
        size = torch.tensor(description["room_size"], dtype=torch.float64)
        return Scene(size, spheres, boxes, cylinders, torch.full((count, 22), 0.5)).to(device)


# ----------------------------------------------------------------------------- signed distances
def room_sdf(p: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Distance (N,) to the nearest wall from inside the room (negative outside)."""
    return torch.minimum(p, size - p).min(-1).values


def sphere_sdf(p: torch.Tensor, spheres: torch.Tensor) -> torch.Tensor:
    return (p[:, None, :] - spheres[:, :3]).norm(dim=-1) - spheres[:, 3]


def box_sdf(p: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    q = box_local_all(p, boxes).abs() - boxes[:, 3:6]
    return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)


def cylinder_sdf(p: torch.Tensor, cylinders: torch.Tensor) -> torch.Tensor:
    radial = (p[:, None, :2] - cylinders[:, :2]).norm(dim=-1) - cylinders[:, 4]
    z_mid, half = 0.5 * (cylinders[:, 2] + cylinders[:, 3]), 0.5 * (cylinders[:, 3] - cylinders[:, 2])
    axial = (p[:, None, 2] - z_mid).abs() - half
    q = torch.stack([radial, axial], -1)
    return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)


def box_local_all(p: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Points (N,3) in the frame of every box (N,B,3)."""
    return rotate_to_box(p[:, None, :] - boxes[:, :3], boxes[:, 6])


def rotate_to_box(d: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Rotate world offsets (...,3) by -yaw about z (world -> box frame)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    x, y = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
    return torch.stack([x, y, d[..., 2].expand_as(x)], -1)


# ----------------------------------------------------------------------------- ray intersections
INF = float("inf")


def ray_room(o: torch.Tensor, d: torch.Tensor, size: torch.Tensor):
    """Exit distance (N,) of rays from inside the room and the face id (N,) they leave through."""
    d_safe = torch.where(d == 0, torch.ones_like(d), d)
    bound = torch.where(d > 0, size.expand_as(d), torch.zeros_like(d))
    t_axis = torch.where(d == 0, INF, (bound - o) / d_safe)  # a ray parallel to a face never leaves through it
    t, axis = t_axis.min(-1)
    face = 2 * axis + (d.gather(-1, axis[:, None])[:, 0] > 0).long()
    return t, face


def ray_spheres(o: torch.Tensor, d: torch.Tensor, spheres: torch.Tensor) -> torch.Tensor:
    """Nearest positive hit (N,S) of each sphere, inf on a miss (the camera is outside the spheres)."""
    oc = o - spheres[:, :3]  # (S,3)
    a = (d * d).sum(-1, keepdim=True)  # (N,1)
    b = d @ oc.T  # (N,S) half the linear coefficient
    c = (oc * oc).sum(-1) - spheres[:, 3] ** 2
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc >= 0) & (t > 0), t, INF)


def ray_boxes(o: torch.Tensor, d: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Entry distance (N,B) into each yawed box (slab method in the box frame), inf on a miss."""
    o_l = rotate_to_box(o - boxes[:, :3], boxes[:, 6])  # (B,3)
    d_l = rotate_to_box(d[:, None, :], boxes[:, 6])  # (N,B,3)
    d_l = torch.where(d_l == 0, torch.full_like(d_l, 1e-300), d_l)
    t1, t2 = (-boxes[:, 3:6] - o_l) / d_l, (boxes[:, 3:6] - o_l) / d_l
    t_near = torch.minimum(t1, t2).max(-1).values
    t_far = torch.maximum(t1, t2).min(-1).values
    return torch.where((t_near <= t_far) & (t_near > 0), t_near, INF)


def ray_cylinders(o: torch.Tensor, d: torch.Tensor, cylinders: torch.Tensor) -> torch.Tensor:
    """Entry distance (N,C) into each vertical capped cylinder (side or cap), inf on a miss."""
    oc = o[:2] - cylinders[:, :2]  # (C,2)
    dxy = d[:, :2]
    a = (dxy * dxy).sum(-1, keepdim=True).clamp_min(1e-300)
    b = dxy @ oc.T
    c = (oc * oc).sum(-1) - cylinders[:, 4] ** 2
    disc = b * b - a * c
    t_side = (-b - disc.clamp_min(0).sqrt()) / a
    z_side = o[2] + t_side * d[:, 2:3]
    side_ok = (disc >= 0) & (t_side > 0) & (z_side >= cylinders[:, 2]) & (z_side <= cylinders[:, 3])
    t_hit = torch.where(side_ok, t_side, INF)
    dz = torch.where(d[:, 2:3] == 0, torch.full_like(d[:, 2:3], 1e-300), d[:, 2:3])
    for cap in (cylinders[:, 2], cylinders[:, 3]):
        t_cap = (cap - o[2]) / dz
        xy = o[:2] + t_cap[..., None] * dxy[:, None, :] - cylinders[:, :2]
        cap_ok = (t_cap > 0) & ((xy * xy).sum(-1) <= cylinders[:, 4] ** 2)
        t_hit = torch.minimum(t_hit, torch.where(cap_ok, t_cap, INF))
    return t_hit


def cast(scene: Scene, origin: torch.Tensor, dirs: torch.Tensor, windows):
    """Ray cast a grid of rays ``dirs`` (H,W,3) from ``origin``: the room for every ray, each object only
    inside its pixel window (v0, v1, u0, u1) (None: not visible). Returns depth/t (H,W), surface (H,W)
    and normal (H,W,3)."""
    h, w, _ = dirs.shape
    t, face = ray_room(origin, dirs.reshape(-1, 3), scene.size)
    t, surface = t.reshape(h, w), face.reshape(h, w)
    normal = room_normal(surface, dirs.dtype)
    for (surface_id, kind, params), window in zip(scene.objects(), windows):
        if window is None:
            continue
        v0, v1, u0, u1 = window
        block = dirs[v0:v1, u0:u1]
        t_obj = KINDS[kind].ray(origin, block.reshape(-1, 3), params)[:, 0].reshape(block.shape[:2])
        closer = t_obj < t[v0:v1, u0:u1]
        if not bool(closer.any()):
            continue
        points = origin + t_obj.clamp_max(1e3)[..., None] * block
        n_obj = KINDS[kind].normal(points.reshape(-1, 3), params.expand(closer.numel(), -1))
        t[v0:v1, u0:u1] = torch.where(closer, t_obj, t[v0:v1, u0:u1])
        surface[v0:v1, u0:u1] = torch.where(closer, surface_id, surface[v0:v1, u0:u1])
        normal[v0:v1, u0:u1] = torch.where(closer[..., None], n_obj.reshape(block.shape),
                                           normal[v0:v1, u0:u1])
    return t, surface, normal


# ----------------------------------------------------------------------------- normals
def room_normal(face: torch.Tensor, dtype) -> torch.Tensor:
    """Inward normals of the room faces (N,3)."""
    table = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                         dtype=dtype, device=face.device)
    return table[face]


def sphere_normal(p: torch.Tensor, sphere: torch.Tensor) -> torch.Tensor:
    n = p - sphere[:, :3]
    return n / n.norm(dim=-1, keepdim=True)


def box_normal(p: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Normal of the face nearest to each point (N,3) of its box (N,7)."""
    q = rotate_to_box(p - box[:, :3], box[:, 6])
    axis = (q.abs() - box[:, 3:6]).argmax(-1, keepdim=True)
    local = torch.zeros_like(q).scatter(-1, axis, torch.sign(q.gather(-1, axis)))
    c, s = torch.cos(box[:, 6]), torch.sin(box[:, 6])
    return torch.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], -1)


def cylinder_normal(p: torch.Tensor, cyl: torch.Tensor) -> torch.Tensor:
    radial = p[:, :2] - cyl[:, :2]
    r = radial.norm(dim=-1, keepdim=True)
    z_mid, half = 0.5 * (cyl[:, 2] + cyl[:, 3]), 0.5 * (cyl[:, 3] - cyl[:, 2])
    on_cap = ((p[:, 2] - z_mid).abs() - half) > (r[:, 0] - cyl[:, 4])
    side = torch.cat([radial / r.clamp_min(1e-12), torch.zeros_like(r)], -1)
    cap = torch.zeros_like(p)
    cap[:, 2] = torch.sign(p[:, 2] - z_mid)
    return torch.where(on_cap[:, None], cap, side)


def bounding_sphere(kind: str, params: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of a sphere enclosing one object (its parameter row)."""
    if kind == "sphere":
        return params[:3], float(params[3])
    if kind == "box":
        return params[:3], float(np.linalg.norm(params[3:6]))
    half = 0.5 * (params[3] - params[2])
    return np.array([params[0], params[1], params[2] + half]), float(np.hypot(params[4], half))


class Kind(NamedTuple):
    """The closed forms of one primitive type."""

    ray: Callable  # (origin (3,), dirs (N,3), params (K,P)) -> t (N,K), inf on a miss
    normal: Callable  # (points (N,3), params (N,P)) -> unit normals (N,3)
    sdf: Callable  # (points (N,3), params (K,P)) -> signed distance (N,K)


KINDS = {  # in surface-id order
    "sphere": Kind(ray_spheres, sphere_normal, sphere_sdf),
    "box": Kind(ray_boxes, box_normal, box_sdf),
    "cylinder": Kind(ray_cylinders, cylinder_normal, cylinder_sdf),
}


# ----------------------------------------------------------------------------- appearance
NOISE_PERIOD = 32  # the value-noise volume tiles every 32 lattice units


@lru_cache(maxsize=4)
def noise_volume(device: str) -> torch.Tensor:
    """A fixed tileable two-octave value-noise volume (1,1,65,65,65) in [0, 1], two samples per lattice
    unit: a random lattice upsampled trilinearly plus a half-weight lattice twice as fine."""
    rng = np.random.default_rng(12345)
    coarse = torch.from_numpy(rng.random((NOISE_PERIOD,) * 3, dtype=np.float32))
    fine = torch.from_numpy(rng.random((2 * NOISE_PERIOD,) * 3, dtype=np.float32))
    up = coarse
    for dim in range(3):  # periodic linear upsampling by 2 along each axis
        up = torch.stack([up, 0.5 * (up + up.roll(-1, dim))], dim + 1).flatten(dim, dim + 1)
    volume = (up + 0.5 * fine) / 1.5
    for dim in range(3):  # repeat the first slice at the end so the volume tiles under grid_sample
        volume = torch.cat([volume, volume.narrow(dim, 0, 1)], dim)
    return volume[None, None].to(device)


def value_noise(x: torch.Tensor) -> torch.Tensor:
    """Tileable smooth noise in [0, 1] (N,) at points (N,3) in lattice units (one trilinear lookup)."""
    grid = torch.remainder(x, NOISE_PERIOD) * (2.0 / NOISE_PERIOD) - 1.0
    volume = noise_volume(str(x.device))
    return F.grid_sample(volume, grid.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                         align_corners=True).view(-1)


def albedo(points: torch.Tensor, material: torch.Tensor) -> torch.Tensor:
    """Procedural albedo (N,3) in [0, 1] at surface points (N,3) with their material rows (N,22):
    two colours blended by a soft checker, stripes and value noise along seeded directions."""
    p, m = points.float(), material
    phase = (m[:, 6:15].view(-1, 3, 3) * p[:, None, :]).sum(-1) * m[:, [15, 15, 16]]
    waves = torch.sin(phase)
    checker = 0.5 + 0.5 * torch.tanh(3 * waves[:, 0] * waves[:, 1])
    stripes = 0.5 + 0.5 * waves[:, 2]
    noise = value_noise(p * m[:, 17:18] + m[:, 21:22])  # the shift column decorrelates surfaces
    w = m[:, 18:21]
    mix = ((w[:, 0] * checker + w[:, 1] * stripes + w[:, 2] * noise) / w.sum(-1))[:, None]
    return m[:, 0:3] + (m[:, 3:6] - m[:, 0:3]) * mix


def ambient_occlusion(scene: Scene, points: torch.Tensor, normals: torch.Tensor,
                      steps=(0.05, 0.15, 0.4), weights=(0.25, 0.25, 0.25)) -> torch.Tensor:
    """SDF ambient occlusion in [0.25, 1] (N,): how much closer than ``step`` the scene gets along the
    normal. It depends on the surface point only, not on the view (but costs 3 SDF evaluations)."""
    occlusion = torch.zeros_like(points[:, 0])
    for step, weight in zip(steps, weights):
        occlusion = occlusion + weight * ((step - scene.sdf(points + step * normals)) / step).clamp(0, 1)
    return (1 - occlusion).float()


def shade(scene: Scene, points: torch.Tensor, normals: torch.Tensor, surface: torch.Tensor,
          ao: bool = False) -> torch.Tensor:
    """View-independent colour (N,3) in [0, 1]: albedo x (ambient + Lambert towards LIGHT) [x occlusion]."""
    light = torch.tensor(LIGHT, dtype=torch.float32, device=normals.device)
    lambert = 0.7 + 0.3 * (normals.float() @ (light / light.norm()))
    colour = albedo(points, F.embedding(surface, scene.materials)) * lambert[:, None]
    if ao:
        colour = colour * ambient_occlusion(scene, points, normals)[:, None]
    return colour.clamp(0, 1)


# ----------------------------------------------------------------------------- rendering
@dataclass
class Render:
    """Rendered view, all (H,W[,3]) torch on the scene device: rgb float32 in [0, 1], exact depth
    float64 (metres along the optical axis), world normals, surface ids and |cos| of the incidence angle."""

    rgb: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    surface: torch.Tensor
    cos_incidence: torch.Tensor


def pixel_rays(intrinsics: Intrinsics, device=None) -> torch.Tensor:
    """Camera-frame rays (H,W,3) through pixel centres with z = 1 (so ray distance = depth)."""
    v, u = torch.meshgrid(torch.arange(intrinsics.height, dtype=torch.float64, device=device),
                          torch.arange(intrinsics.width, dtype=torch.float64, device=device), indexing="ij")
    x, y = (u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy
    return torch.stack([x, y, torch.ones_like(x)], -1)


def pixel_window(centre_cam: np.ndarray, radius: float, intrinsics: Intrinsics):
    """Pixel window (v0, v1, u0, u1) holding the image of a sphere given in camera coordinates, or
    None when it is behind the camera or off the image (exact tangent-plane bounds, 1 px margin)."""
    x, y, z = centre_cam
    if z < -radius:
        return None
    spans = []
    for c, f, centre, size in ((x, intrinsics.fx, intrinsics.cx, intrinsics.width),
                               (y, intrinsics.fy, intrinsics.cy, intrinsics.height)):
        if z <= radius * 1.001:  # the sphere reaches the image plane: no finite bound
            spans.append((0, size))
            continue
        root = radius * np.sqrt(c * c + z * z - radius * radius)
        lo, hi = ((c * z - root) / (z * z - radius * radius), (c * z + root) / (z * z - radius * radius))
        first, last = int(np.floor(f * lo + centre)) - 1, int(np.ceil(f * hi + centre)) + 2
        first, last = max(first, 0), min(last, size)
        if first >= last:
            return None
        spans.append((first, last))
    (u0, u1), (v0, v1) = spans
    return v0, v1, u0, u1


def object_windows(scene: Scene, T_world_camera: np.ndarray, intrinsics: Intrinsics) -> list:
    """Pixel window of every object (None when not in view)."""
    R, o = T_world_camera[:3, :3], T_world_camera[:3, 3]
    windows = []
    for _, kind, params in scene.objects():
        centre, radius = bounding_sphere(kind, params[0].cpu().numpy())
        windows.append(pixel_window(R.T @ (centre - o), radius, intrinsics))
    return windows


def render_scene(scene: Scene, T_world_camera, intrinsics: Intrinsics, ao: bool = False) -> Render:
    """Render the scene from a 4x4 camera-to-world pose (optical frame) with pinhole ``intrinsics``."""
    T_np = np.asarray(torch.as_tensor(T_world_camera).cpu(), dtype=np.float64)
    T = torch.as_tensor(T_np, device=scene.device)
    dirs = pixel_rays(intrinsics, scene.device) @ T[:3, :3].T
    depth, surface, normal = cast(scene, T[:3, 3], dirs, object_windows(scene, T_np, intrinsics))
    points = T[:3, 3] + depth[..., None] * dirs
    rgb = shade(scene, points.reshape(-1, 3), normal.reshape(-1, 3), surface.reshape(-1), ao)
    cos_incidence = (normal * dirs).sum(-1).abs() / dirs.norm(dim=-1)
    return Render(rgb.reshape(*depth.shape, 3), depth, normal, surface, cos_incidence)


# ----------------------------------------------------------------------------- sensor models
@dataclass(frozen=True)
class DepthNoise:
    """Kinect-like depth sensor: Gaussian noise sigma(z) = a + b z^2, quantisation to 1/scale m, and
    invalid pixels (outside [min_range, max_range], incidence beyond ``max_incidence_deg``, random
    ``dropout`` fraction)."""

    a: float = 0.0012
    b: float = 0.0019
    scale: float = 5000.0
    min_range: float = 0.3
    max_range: float = 6.0
    max_incidence_deg: float = 80.0
    dropout: float = 0.01


def noisy_depth(depth: torch.Tensor, cos_incidence: torch.Tensor, model: DepthNoise,
                generator: torch.Generator) -> torch.Tensor:
    """Depth float32 (H,W) as the sensor reports it, NaN where invalid."""
    noise = torch.randn(depth.shape, generator=generator, device=depth.device, dtype=depth.dtype)
    measured = torch.round((depth + (model.a + model.b * depth**2) * noise) * model.scale) / model.scale
    drop = torch.rand(depth.shape, generator=generator, device=depth.device) < model.dropout
    invalid = ((depth < model.min_range) | (depth > model.max_range) | drop
               | (cos_incidence < np.cos(np.deg2rad(model.max_incidence_deg))))
    return torch.where(invalid, torch.nan, measured).float()


def rgb_to_uint8(rgb: torch.Tensor, sigma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Float colour in [0, 1] -> uint8 with optional Gaussian pixel noise of ``sigma`` grey levels."""
    value = rgb * 255.0
    if sigma > 0:
        value = value + sigma * torch.randn(rgb.shape, generator=generator, device=rgb.device, dtype=rgb.dtype)
    return value.round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- procedural content
def make_scene(seed: int = 0, keep_out=None, clearance: float = 0.5, n_boxes: int = 5, n_spheres: int = 3,
               n_cylinders: int = 3, device="cpu") -> Scene:
    """A seeded room with objects at least ``clearance`` m from every ``keep_out`` point (M,3),
    e.g. the camera path. Objects that cannot be placed after many tries are left out."""
    rng = np.random.default_rng([seed, 7])
    size = torch.tensor(ROOM_SIZE, dtype=torch.float64)
    keep_out = torch.zeros((0, 3), dtype=torch.float64) if keep_out is None else \
        torch.as_tensor(np.asarray(keep_out), dtype=torch.float64).reshape(-1, 3)
    placed: list[tuple[np.ndarray, float]] = []  # bounding spheres of accepted objects
    kinds = {"sphere": [], "box": [], "cylinder": []}
    for kind, count in (("box", n_boxes), ("sphere", n_spheres), ("cylinder", n_cylinders)):
        for _ in range(count):
            params = place(rng, kind, keep_out, clearance, placed)
            if params is not None:
                kinds[kind].append(params)
    tensor = lambda rows, n: torch.tensor(np.array(rows).reshape(-1, n), dtype=torch.float64)
    spheres, boxes, cylinders = tensor(kinds["sphere"], 4), tensor(kinds["box"], 7), tensor(kinds["cylinder"], 5)
    materials = make_materials(rng, N_ROOM_FACES + len(spheres) + len(boxes) + len(cylinders))
    return Scene(size, spheres, boxes, cylinders, materials).to(device)


def random_object(rng, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Parameters, bounding-sphere centre and radius of a random object of ``kind``."""
    X, Y, _ = ROOM_SIZE
    if kind == "box":
        half = np.array([rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.5)])
        centre = np.array([rng.uniform(0.2, X - 0.2), rng.uniform(0.2, Y - 0.2), half[2]])
        return np.r_[centre, half, rng.uniform(0, np.pi)], centre, float(np.linalg.norm(half))
    if kind == "sphere":
        r = rng.uniform(0.12, 0.35)
        centre = np.array([rng.uniform(r + 0.1, X - r - 0.1), rng.uniform(r + 0.1, Y - r - 0.1), rng.uniform(r, 2.2)])
        return np.r_[centre, r], centre, r
    r, top = rng.uniform(0.08, 0.25), rng.uniform(0.6, 2.4)
    centre = np.array([rng.uniform(r + 0.1, X - r - 0.1), rng.uniform(r + 0.1, Y - r - 0.1), top / 2])
    return np.r_[centre[:2], 0.0, top, r], centre, float(np.hypot(r, top / 2))


def place(rng, kind: str, keep_out: torch.Tensor, clearance: float, placed: list, tries: int = 200):
    """Rejection-sample an object clear of ``keep_out`` and of the ``placed`` bounding spheres."""
    sdf = {"sphere": sphere_sdf, "box": box_sdf, "cylinder": cylinder_sdf}[kind]
    for _ in range(tries):
        params, centre, radius = random_object(rng, kind)
        if any(np.linalg.norm(centre - c) < radius + r + 0.1 for c, r in placed):
            continue
        if len(keep_out) and sdf(keep_out, torch.tensor(params)[None]).min() < clearance:
            continue
        placed.append((centre, radius))
        return params
    return None


def make_materials(rng, count: int) -> torch.Tensor:
    """One float32 material row per surface (count, 22): colours c0 (3) and c1 (3), unit directions of
    the checker (2 x 3) and stripes (3), checker and stripe angular frequencies and the noise frequency
    (periods 8-60 cm), the three pattern weights, and a noise shift that decorrelates surfaces."""
    rows = []
    for surface in range(count):
        c0 = rng.uniform(0.35, 0.95, 3)
        c1 = np.clip(c0 * rng.uniform(0.2, 0.5) + rng.uniform(0.0, 0.2, 3), 0.03, 1.0)
        dirs = rng.normal(size=(3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        big = surface < N_ROOM_FACES  # room faces get larger patterns than objects
        periods = rng.uniform(0.25, 0.6, 3) if big else rng.uniform(0.08, 0.25, 3)
        freq = np.r_[2 * np.pi / periods[:2], 1 / periods[2]]
        weights = rng.dirichlet(np.ones(3)) + 0.2
        rows.append(np.r_[c0, c1, dirs.reshape(-1), freq, weights, rng.uniform(0, NOISE_PERIOD)])
    return torch.tensor(np.array(rows), dtype=torch.float32)
