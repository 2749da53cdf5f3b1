"""Collision cost and cost-to-go on a 2-D slice of the Gaussian SDF map, for a ground robot's planner.

Slice: the map is sampled (trilinear posterior mean and std, one batched read) at the centres of a grid
in the plane ``up . p = height``. ``up`` is a signed world axis ("z" for the synthetic room, "-y" for
7-Scenes/TUM worlds whose first camera is level, since a camera's y points down). The grid frame (u, v, up)
is right-handed: up z -> (u, v) = (x, y); x -> (y, z); y -> (z, x); -z -> (y, x); -x -> (z, y); -y -> (x, z).
Arrays are (rows, cols) = (v, u), row 0 at the lowest v: the layout of nav_msgs/OccupancyGrid ``data``.

Known cells: all 8 trilinear corners observed and the posterior std below ``max_std`` (default: the
truncation; a std above it says nothing about where the surface is, as for the mesh). The map only
allocates blocks within a truncation of observed surfaces, so open space more than ~10-25 cm from any
surface is unknown, not free. ``unknown="free"`` (the default, as costmap_2d without
``track_unknown_space``: on a real map most of the open floor is unknown, and treating it as lethal leaves
nothing to plan in) ignores them: obstacles are the observed surfaces, and the unseen core of a solid object
stays walled in by its lethal shell. ``unknown="obstacle"`` makes unknown cells lethal (a robot that must
not enter what it has not seen). The summary reports the unknown fraction either way.

Probabilistic occupancy: a known cell is occupied where the lower confidence bound of its signed distance,
mean - k std (``confidence_k``), is <= 0: a surface whose position is uncertain is treated as if it
could be k std closer, so the inflation grows with the map's uncertainty.

Clearance (in-plane distance to the nearest obstacle, metres): the SDF is truncated, so far from surfaces
it is rebuilt with ``scipy.ndimage.distance_transform_edt`` on the occupied mask. The exact transform
measures to the nearest occupied cell *centre* q; the SDF gives the sub-voxel correction: the surface lies
|d(q)| in front of q, so clearance = |p - q| + d(q) (d(q) = mean - k std clipped to [-resolution, 0];
-resolution / 2 for unknown obstacle cells: their boundary is taken at the cell edge). That is exact for a
plane seen along its normal and within a cell otherwise; within 2 cells of an obstacle, the cell's own SDF
bound (unclipped) is used where it is smaller. It is an in-plane distance (a 2-D footprint): floors and
ceilings parallel to the slice do not count unless the slice cuts them. Inside obstacles the
clearance is minus the distance to the nearest free cell centre, plus half a cell.

Collision cost in [0, 1] (costmap_2d's inflation, normalised): 1 (LETHAL) where clearance <= robot_radius
(the robot's disc touches an obstacle), exp(-(clearance - robot_radius) / inflation_scale) beyond: below
0.01 past 4.6 scales, so ~0 far from obstacles and 1 at them.

Cost-to-go to a goal: the minimum over paths of the integral of (1 + ``cost_weight`` x collision cost)
per metre, by ``skimage.graph.MCP_Geometric`` (8-connected, diagonal steps weighted by sqrt 2); lethal
cells are impassable, so it is inf at and behind obstacles, 0 at the goal, and equals the path length in
metres where the collision cost is 0. Without a goal, the collision cost is the "collision cost-to-go".

Outputs: :meth:`Costmap.to_occupancy_values` (int8, 0..100, -1 unknown, row-major) and
:meth:`Costmap.origin_pose` fill a nav_msgs/OccupancyGrid without ROS imports here; :func:`save_png` draws
cost and cost-to-go (or clearance) side by side; :meth:`Costmap.save_npz` keeps every array.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from prism_ros.errors import InputError

UP_AXES = ("x", "y", "z", "-x", "-y", "-z")
UNKNOWN = ("obstacle", "free")
LETHAL = 1.0
_AXIS = {"x": 0, "y": 1, "z": 2}
_PLANE = {"z": ("x", "y"), "x": ("y", "z"), "y": ("z", "x")}  # (u, v) for +up; swapped for -up


@dataclass
class CostmapConfig:
    """Slice and cost settings (metres unless stated)."""

    resolution: float = 0.05  # cell size
    robot_radius: float = 0.2  # lethal within this clearance
    inflation_scale: float = 0.3  # e-folding distance of the cost beyond the robot radius
    confidence_k: float = 1.0  # occupancy and the sub-cell correction use mean - k std
    max_std: float | None = None  # known = observed and std below this; None: the map's truncation
    unknown: str = "free"  # "free" (ignored) or "obstacle" (lethal)
    up: str = "z"  # signed world axis the height is measured along (see the module docstring)
    cost_weight: float = 10.0  # cost-to-go: per-metre travel cost is 1 + cost_weight * collision cost

    def __post_init__(self):
        positive = ("resolution", "robot_radius", "inflation_scale")
        bad = [name for name in positive if not getattr(self, name) > 0]
        bad += [name for name in ("confidence_k", "cost_weight") if not getattr(self, name) >= 0]
        if self.max_std is not None and not self.max_std > 0:
            bad.append("max_std")
        if bad:
            raise InputError(f"bad costmap settings {bad}", "use positive sizes and non-negative weights")
        if self.unknown not in UNKNOWN:
            raise InputError(f"unknown must be one of {UNKNOWN}, got {self.unknown!r}")
        if self.up not in UP_AXES:
            raise InputError(f"up must be one of {UP_AXES}, got {self.up!r}")


def plane_axes(up: str) -> np.ndarray:
    """Rotation (3,3) whose columns are the world directions of the grid's u, v and up axes."""
    sign, axis = (-1.0, up[1]) if up.startswith("-") else (1.0, up)
    u, v = _PLANE[axis] if sign > 0 else _PLANE[axis][::-1]
    R = np.zeros((3, 3))
    R[_AXIS[u], 0], R[_AXIS[v], 1], R[_AXIS[axis], 2] = 1.0, 1.0, sign
    return R


@dataclass
class Costmap:
    """A costmap slice: grid geometry, the map read at the cell centres and the derived layers (rows, cols) =
    (v, u). ``origin``: (u, v) of the outer corner of cell [0, 0]; cell [r, c] is centred at origin +
    ((c + 0.5), (r + 0.5)) x resolution. ``cost_to_go`` is None without a goal."""

    origin: tuple[float, float]
    height: float
    config: CostmapConfig
    mean: np.ndarray  # posterior SDF mean (float32), prior-filled where unobserved
    std: np.ndarray  # posterior SDF std (float32)
    known: np.ndarray  # bool
    occupied: np.ndarray  # bool: the obstacles (known with mean - k std <= 0, plus unknown cells if lethal)
    clearance: np.ndarray  # float32, metres (in-plane; negative inside obstacles)
    cost: np.ndarray  # float32 in [0, 1]; LETHAL = 1
    cost_to_go: np.ndarray | None = None  # float64, metres-equivalent; inf where unreachable
    goal: tuple[float, float] | None = None  # (u, v)
    seconds: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.cost.shape

    @property
    def resolution(self) -> float:
        return self.config.resolution

    @property
    def up(self) -> str:
        return self.config.up

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(u (cols,), v (rows,)) of the cell centres."""
        rows, cols = self.shape
        return (self.origin[0] + (np.arange(cols) + 0.5) * self.resolution,
                self.origin[1] + (np.arange(rows) + 0.5) * self.resolution)

    def cell_of(self, u: float, v: float) -> tuple[int, int]:
        """(row, col) of the cell holding the plane point (u, v); InputError outside the grid."""
        col = math.floor((u - self.origin[0]) / self.resolution + 1e-9)  # 0.6 / 0.05 is 11.999...
        row = math.floor((v - self.origin[1]) / self.resolution + 1e-9)
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            high = (self.origin[0] + cols * self.resolution, self.origin[1] + rows * self.resolution)
            raise InputError(f"point ({u:.2f}, {v:.2f}) lies outside the grid ({self.origin[0]:.2f}..{high[0]:.2f}, "
                             f"{self.origin[1]:.2f}..{high[1]:.2f})", "pick a point inside the slice")
        return row, col

    def world_points(self) -> np.ndarray:
        """World coordinates (rows, cols, 3) of the cell centres."""
        u, v = self.cell_centres()
        uu, vv = np.meshgrid(u, v)
        plane = np.stack([uu, vv, np.full_like(uu, self.height)], -1)
        return plane @ plane_axes(self.up).T

    def origin_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """nav_msgs/OccupancyGrid info.origin in the map's world frame: position (3,) of cell [0, 0]'s outer
        corner and orientation quaternion (4,) x, y, z, w of the grid frame (u, v, up)."""
        from scipy.spatial.transform import Rotation

        R = plane_axes(self.up)
        position = R @ np.array([self.origin[0], self.origin[1], self.height])
        return position, Rotation.from_matrix(R).as_quat()

    def fractions(self) -> dict:
        """Shares of the cells that are lethal, free (cost < 0.01) and unknown."""
        return {"lethal": float((self.cost >= LETHAL).mean()), "free": float((self.cost < 0.01).mean()),
                "unknown": float((~self.known).mean())}

    def to_occupancy_values(self, mark_unknown: bool = True) -> np.ndarray:
        """nav_msgs/OccupancyGrid ``data`` (rows * cols,) int8, row-major from cell [0, 0]: 100 lethal, 0..99 the
        inflation cost (round(99 cost)), -1 at unknown cells (``mark_unknown``; else the cost the unknown policy
        gives them: 100 as obstacles, their clearance cost as free)."""
        values = np.where(self.cost >= LETHAL, 100, np.minimum(np.round(99.0 * self.cost), 99)).astype(np.int8)
        if mark_unknown:
            values[~self.known] = -1
        return values.reshape(-1)

    def summary_line(self) -> str:
        rows, cols = self.shape
        share = self.fractions()
        goal = "" if self.goal is None else f", cost-to-go to ({self.goal[0]:.2f}, {self.goal[1]:.2f}): " \
            f"{np.isfinite(self.cost_to_go).mean() * 100:.0f}% reachable"
        return (f"{cols}x{rows} cells at {self.resolution * 100:g} cm, {self.up} = {self.height:g} m: "
                f"{share['lethal'] * 100:.1f}% lethal, {share['free'] * 100:.1f}% free, "
                f"{share['unknown'] * 100:.1f}% unknown (as {self.config.unknown}){goal}")

    def save_npz(self, path: str | Path) -> None:
        """Every layer and the grid geometry in one compressed .npz."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}
        position, quaternion = self.origin_pose()
        np.savez_compressed(path, **arrays, origin=np.array(self.origin), resolution=self.resolution,
                            height=self.height, up=self.up, unknown=self.config.unknown,
                            robot_radius=self.config.robot_radius, inflation_scale=self.config.inflation_scale,
                            confidence_k=self.config.confidence_k,
                            origin_position=position, origin_quaternion=quaternion,
                            occupancy=self.to_occupancy_values(),
                            goal=np.array(self.goal if self.goal is not None else (np.nan, np.nan)))


# ----------------------------------------------------------------------------- building
def block_box(sdf_map, up: str) -> tuple[np.ndarray, np.ndarray]:
    """Low and high corners (3,) of the allocated blocks' bounding box in grid coordinates (u, v, up), metres."""
    if sdf_map.num_blocks == 0:
        raise InputError("the map is empty (no blocks)", "build a map first")
    extent = sdf_map.config.block_extent
    coords = sdf_map.block_coords.cpu().double().numpy() * extent
    corners = np.concatenate([coords, coords + extent]) @ plane_axes(up)  # (2N,3) in (u, v, up)
    return corners.min(0), corners.max(0)


def map_plane_bounds(sdf_map, up: str) -> tuple[float, float, float, float]:
    """(u0, v0, u1, v1): the allocated blocks' bounding box projected on the grid plane (metres)."""
    low, high = block_box(sdf_map, up)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def map_height_range(sdf_map, up: str) -> tuple[float, float]:
    """The allocated blocks' extent along the up axis (metres)."""
    low, high = block_box(sdf_map, up)
    return float(low[2]), float(high[2])


def slice_grid(sdf_map, height: float, config: CostmapConfig | None = None, box=None) -> Costmap:
    """Read the map on the slice ``up . p = height`` and derive occupancy, clearance and collision cost.

    ``box``: (u0, v0, u1, v1) in metres; default: the map's bounding box on the plane. The map is read once,
    batched (``GaussianSdfMap.sample``), in chunks of a million cells, over the box padded by robot_radius + 5
    inflation scales, so that obstacles just outside the box still count (farther ones change the cost by < 0.007).
    """
    c = config or CostmapConfig()
    started = time.perf_counter()
    u0, v0, u1, v1 = map_plane_bounds(sdf_map, c.up) if box is None else (float(b) for b in box)
    if not (u1 > u0 and v1 > v0):
        raise InputError(f"empty slice box ({u0}, {v0}, {u1}, {v1})", "give u0 < u1 and v0 < v1")
    cols, rows = math.ceil((u1 - u0) / c.resolution), math.ceil((v1 - v0) / c.resolution)
    if rows * cols > 50_000_000:
        raise InputError(f"slice of {cols}x{rows} cells is too large", "use a coarser --resolution or a box")
    pad = math.ceil((c.robot_radius + 5 * c.inflation_scale) / c.resolution)
    shape = (rows + 2 * pad, cols + 2 * pad)
    padded = Costmap((u0 - pad * c.resolution, v0 - pad * c.resolution), float(height), c, *(np.empty(shape),) * 6)
    points = torch.from_numpy(padded.world_points().reshape(-1, 3).astype(np.float32)).to(sdf_map.device)
    samples = [sdf_map.sample(chunk) for chunk in points.split(1 << 20)]
    read = lambda name: torch.cat([getattr(s, name) for s in samples]).cpu().numpy().reshape(shape)
    mean, std, observed = read("mean"), read("std"), read("observed")
    padded.seconds["sample"] = time.perf_counter() - started
    max_std = c.max_std if c.max_std is not None else sdf_map.config.truncation
    known = observed & (std < max_std)
    bound = mean - c.confidence_k * std  # lower confidence bound of the distance
    occupied = known & (bound <= 0.0)
    boundary = np.clip(bound, -c.resolution, 0.0)  # sub-cell offset of the surface in front of each obstacle cell
    if c.unknown == "obstacle":
        occupied = occupied | ~known
        boundary = np.where(known, boundary, -0.5 * c.resolution)
    clearance = signed_clearance(occupied, boundary, c.resolution)
    # next to an obstacle (within 2 cells) the cell's own unclipped SDF bound is the sharper distance; not farther
    # out, where a floor or ceiling near the slice would be the surface it measures
    own = known & ~occupied & (mean < 0.99 * sdf_map.config.truncation) & (clearance <= 2 * c.resolution)
    clearance = np.where(own, np.minimum(clearance, bound), clearance)
    cost = collision_cost(clearance, c.robot_radius, c.inflation_scale)
    crop = (slice(pad, pad + rows), slice(pad, pad + cols))
    costmap = Costmap((u0, v0), float(height), c, *(np.ascontiguousarray(layer[crop]) for layer in
                                                    (mean, std, known, occupied, clearance, cost)))
    costmap.seconds.update(padded.seconds, total=time.perf_counter() - started)
    return costmap


def signed_clearance(occupied: np.ndarray, boundary: np.ndarray, resolution: float) -> np.ndarray:
    """In-plane distance (float32, metres) from every free cell centre to the nearest obstacle surface: the exact
    Euclidean distance to the nearest occupied cell centre q plus ``boundary[q]`` (<= 0: how far in front of q
    the surface lies); minus the distance to the nearest free centre, plus half a cell, inside obstacles.
    No obstacle at all: +inf everywhere."""
    from scipy.ndimage import distance_transform_edt

    if not occupied.any():
        return np.full(occupied.shape, np.inf, np.float32)
    distance, (row, col) = distance_transform_edt(~occupied, sampling=resolution, return_indices=True)
    outside = np.maximum(distance + boundary[row, col], 0.0)
    if occupied.all():
        return np.full(occupied.shape, -np.inf, np.float32)
    inside = -np.maximum(distance_transform_edt(occupied, sampling=resolution) - 0.5 * resolution, 0.0)
    return np.where(occupied, inside, outside).astype(np.float32)


def collision_cost(clearance: np.ndarray, robot_radius: float, inflation_scale: float) -> np.ndarray:
    """LETHAL (1) where clearance <= robot_radius, exp(-(clearance - robot_radius) / inflation_scale) beyond."""
    excess = np.asarray(clearance, np.float64) - robot_radius
    cost = np.where(excess <= 0.0, LETHAL, np.exp(-np.maximum(excess, 0.0) / inflation_scale))
    return cost.astype(np.float32)


def cost_to_go(costmap: Costmap, goal: tuple[float, float], cost_weight: float = 10.0) -> np.ndarray:
    """Minimum accumulated travel cost (float64, metres-equivalent) from every cell to the goal's cell: per
    metre 1 + cost_weight x collision cost, lethal cells impassable (inf), by MCP_Geometric (8-connected).
    Also stores it (and the goal) on ``costmap``. InputError if the goal is outside the grid or lethal."""
    from skimage.graph import MCP_Geometric

    row, col = costmap.cell_of(*goal)
    if costmap.cost[row, col] >= LETHAL:
        reason = "unknown" if not costmap.known[row, col] else f"{costmap.clearance[row, col]:.2f} m from an obstacle"
        raise InputError(f"goal ({goal[0]:.2f}, {goal[1]:.2f}) is in a lethal cell ({reason})",
                         "pick a goal in free space (see the PNG), or use --unknown free")
    started = time.perf_counter()
    travel = 1.0 + cost_weight * costmap.cost.astype(np.float64)
    travel[costmap.cost >= LETHAL] = np.inf
    # MCP_Geometric charges a step the mean of its two cells' costs times its length (in cells)
    costs, _ = MCP_Geometric(travel, fully_connected=True).find_costs([(row, col)])
    costmap.cost_to_go = costs * costmap.resolution
    costmap.goal = (float(goal[0]), float(goal[1]))
    costmap.seconds["cost_to_go"] = time.perf_counter() - started
    return costmap.cost_to_go


def build_costmap(sdf_map, height: float, config: CostmapConfig | None = None, box=None,
                  goal: tuple[float, float] | None = None) -> Costmap:
    """:func:`slice_grid`, then :func:`cost_to_go` when a goal (u, v) is given."""
    config = config or CostmapConfig()
    costmap = slice_grid(sdf_map, height, config, box)
    if goal is not None:
        cost_to_go(costmap, goal, config.cost_weight)
    return costmap


# ----------------------------------------------------------------------------- figure
def save_png(costmap: Costmap, path: str | Path) -> None:
    """Collision cost (left) and cost-to-go, or clearance without a goal (right), axes in metres, colour bars;
    observed obstacles black, unknown cells greyed (opaque where they are obstacles, see-through where free)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    rows, cols = costmap.shape
    u0, v0 = costmap.origin
    extent = (u0, u0 + cols * costmap.resolution, v0, v0 + rows * costmap.resolution)
    u_name, v_name = (axis_name(column) for column in plane_axes(costmap.up).T[:2])
    figure = Figure(figsize=(12, 5.2), dpi=110)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    image = left.imshow(costmap.cost, origin="lower", extent=extent,
                        cmap="magma_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=left, label="collision cost (1 = lethal)")
    left.set_title(f"collision cost (robot radius {costmap.config.robot_radius:g} m, "
                   f"scale {costmap.config.inflation_scale:g} m)")
    if costmap.cost_to_go is not None:
        layer = np.ma.masked_invalid(np.where(np.isfinite(costmap.cost_to_go), costmap.cost_to_go, np.nan))
        image = right.imshow(layer, origin="lower", extent=extent, cmap="viridis", interpolation="nearest")
        figure.colorbar(image, ax=right, label="cost-to-go (m-equivalent)")
        right.plot(*costmap.goal, marker="*", color="red", markersize=14, markeredgecolor="white")
        right.set_title("cost-to-go to the goal (*)")
    else:
        layer = np.ma.masked_where(costmap.occupied, costmap.clearance)
        image = right.imshow(layer, origin="lower", extent=extent, cmap="viridis", interpolation="nearest")
        figure.colorbar(image, ax=right, label="clearance (m)")
        right.set_title("clearance to the nearest obstacle")
    grey = ListedColormap([(0.75, 0.75, 0.75, 1.0 if costmap.config.unknown == "obstacle" else 0.5)])
    black = ListedColormap([(0.0, 0.0, 0.0, 1.0)])
    for axes in (left, right):
        axes.imshow(np.ma.masked_where(costmap.known, np.ones(costmap.shape)), origin="lower", extent=extent,
                    cmap=grey, interpolation="nearest")
        axes.imshow(np.ma.masked_where(~(costmap.occupied & costmap.known), np.ones(costmap.shape)), origin="lower",
                    extent=extent, cmap=black, interpolation="nearest")
        axes.set_xlabel(f"{u_name} (m)")
        axes.set_ylabel(f"{v_name} (m)")
    figure.suptitle(f"slice {costmap.up} = {costmap.height:g} m; black: obstacles, grey: unknown "
                    f"(treated as {costmap.config.unknown})")
    figure.tight_layout()
    figure.savefig(path)


def axis_name(direction: np.ndarray) -> str:
    """'x', '-y', ... of a signed unit world axis (3,)."""
    index = int(np.argmax(np.abs(direction)))
    return ("-" if direction[index] < 0 else "") + "xyz"[index]
