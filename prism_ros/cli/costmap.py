"""`prism-ros costmap`: collision cost and cost-to-go on a slice of a saved map (PNG, NPZ, one-line summary).

Mounted by :mod:`prism_ros.cli.main` (``app.command(name="costmap")``); torch and the map are imported when the
command runs. Bad input is one line with exit code 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_ros.cli.support import parse_floats
from prism_ros.errors import InputError, reports_input_errors
from prism_ros.threads import use_cpu_threads


@reports_input_errors
def costmap_command(
    map_path: Annotated[Path, typer.Option("--map", help="Map file written by GaussianSdfMap.save (map.pt).")],
    height: Annotated[float, typer.Option(help="Slice height along --up (metres, map world frame).")],
    up: Annotated[str, typer.Option(help="Up axis: z, y, x, -z, -y or -x (-y for 7-Scenes/TUM worlds).")] = "z",
    resolution: Annotated[float, typer.Option(help="Cell size (m).")] = 0.05,
    robot_radius: Annotated[float, typer.Option(help="Lethal within this clearance (m).")] = 0.2,
    inflation_scale: Annotated[float, typer.Option(help="Cost e-folding distance beyond the radius (m).")] = 0.3,
    confidence_k: Annotated[float, typer.Option(help="Obstacles where SDF mean - k std <= 0.")] = 1.0,
    unknown: Annotated[str, typer.Option(help="Unobserved cells: free (ignored) or obstacle (lethal).")] = "free",
    goal: Annotated[Optional[str], typer.Option(help="Cost-to-go goal 'U,V' in the slice plane (m): x,y for "
                                                "up z, x,z for up -y.")] = None,
    box: Annotated[Optional[str], typer.Option(help="Slice box 'U0,V0,U1,V1' (m); default: the map's.")] = None,
    cost_weight: Annotated[float, typer.Option(help="Cost-to-go: 1 + w x cost per metre.")] = 10.0,
    out: Annotated[Path, typer.Option(help="Output folder (costmap.png, costmap.npz).")] = Path("out/costmap"),
    npz: Annotated[bool, typer.Option(help="Also write costmap.npz (every layer + grid geometry).")] = True,
):
    """Collision cost (0 far from obstacles, 1 at them) and cost-to-go to --goal on a slice of the SDF map.

    Example: prism-ros costmap --map out/synth/map.pt --height 0.3 --up z --goal 1.0,0.5 --out out/costmap
    """
    from prism_ros.dynamics.costmap import CostmapConfig, build_costmap, map_height_range, save_png
    from prism_ros.prism.map import GaussianSdfMap

    use_cpu_threads(1)
    config = CostmapConfig(resolution=resolution, robot_radius=robot_radius, inflation_scale=inflation_scale,
                           confidence_k=confidence_k, unknown=unknown, up=up, cost_weight=cost_weight)
    goal_uv = parse_floats(goal, 2, "--goal", "1.0,2.0")
    box_uv = parse_floats(box, 4, "--box", "0,0,4,3")
    sdf_map = GaussianSdfMap.load(map_path)
    if sdf_map.num_blocks == 0:
        raise InputError("the map is empty (no blocks)", "build a map first", map_path)
    low, high = map_height_range(sdf_map, up)
    if not low <= height <= high:
        raise InputError(f"--height {height:g} lies outside the map along {up} ({low:.2f} .. {high:.2f} m)",
                         "pick a height inside that range, or another --up", map_path)
    costmap = build_costmap(sdf_map, height, config, box_uv, goal_uv)
    out.mkdir(parents=True, exist_ok=True)
    save_png(costmap, out / "costmap.png")
    if npz:
        costmap.save_npz(out / "costmap.npz")
    seconds = costmap.seconds["total"] + costmap.seconds.get("cost_to_go", 0.0)
    typer.echo(f"{costmap.summary_line()}; {seconds * 1e3:.0f} ms -> {out}")
