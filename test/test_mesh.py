"""Mesh extraction from the Gaussian SDF map, uncertainty colouring and binary PLY round trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prism_ros.frame import Frame, Intrinsics
from prism_ros.prism.map import GaussianSdfMap, MapConfig
from prism_ros.prism.mesh import Mesh, colour_map, cube_mask, extract_mesh, read_ply, write_ply
from prism_ros.prism.observation import Observation
from prism_ros.synthetic.scene import ROOM_SIZE, Scene, make_materials, render_scene

INTRINSICS = Intrinsics(131.25, 131.25, 79.5, 59.5, 160, 120)
CENTRE, RADIUS = np.array([3.0, 2.5, 1.2]), 0.4



def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_world_camera (optical frame: x right, y down, z forward) of a camera at ``eye`` facing ``target``."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.stack([x, np.cross(z, x), z], 1), eye
    return T


@pytest.fixture(scope="module")
def sphere_map():
    """A sphere in the room, seen from 18 views on three rings around it (below, level, above): (map, scene)."""
    scene = Scene(torch.tensor(ROOM_SIZE, dtype=torch.float64),
                  torch.tensor([[*CENTRE, RADIUS]], dtype=torch.float64),
                  torch.zeros((0, 7), dtype=torch.float64), torch.zeros((0, 5), dtype=torch.float64),
                  make_materials(np.random.default_rng(3), 7))
    sdf_map = GaussianSdfMap(MapConfig())
    rings = [(angle, height) for height in (-0.9, 0.2, 1.1) for angle in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    for angle, height in rings:
        eye = CENTRE + np.array([1.2 * np.cos(angle + height), 1.2 * np.sin(angle + height), height])
        T = look_at(eye, CENTRE)
        view = render_scene(scene, T, INTRINSICS)
        rgb = (view.rgb.numpy() * 255).round().astype(np.uint8)
        obs = Observation.from_frame(Frame(0, 0.0, rgb, view.depth.float().numpy(), INTRINSICS), levels=1)
        sdf_map.integrate(obs.finest, obs.colour, T)
    return sdf_map, scene


def test_mesh_vertices_lie_on_the_surface(sphere_map):
    sdf_map, scene = sphere_map
    mesh = extract_mesh(sdf_map)
    assert len(mesh.faces) > 1000 and mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    distance = scene.sdf(torch.from_numpy(mesh.vertices).double()).abs().numpy()
    on_sphere = np.linalg.norm(mesh.vertices - CENTRE, axis=1) < RADIUS + 0.1
    vs = sdf_map.config.voxel_size
    print(f"\nsphere scene mesh: {len(mesh.vertices)} vertices, |sdf| mean {distance.mean() * 1e3:.3f} mm, "
          f"p99 {np.percentile(distance, 99) * 1e3:.3f} mm, sphere max {distance[on_sphere].max() * 1e3:.3f} mm")
    assert on_sphere.sum() > 500
    assert distance[on_sphere].max() < vs / 4
    assert np.percentile(distance, 99) < vs / 4
    # faces are wound counter-clockwise seen from free space: normals point away from the sphere centre
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(b - a, c - a)
    sphere_faces = on_sphere[mesh.faces].all(1)
    outward = (normals[sphere_faces] * (a[sphere_faces] - CENTRE)).sum(1) > 0
    assert outward.mean() > 0.99


def test_mesh_carries_colour_and_uncertainty(sphere_map):
    sdf_map, _ = sphere_map
    coloured = extract_mesh(sdf_map, colour_by="colour")
    uncertain = extract_mesh(sdf_map, colour_by="uncertainty")
    assert np.array_equal(coloured.vertices, uncertain.vertices)
    assert (coloured.sdf_std > 0).all() and np.isfinite(coloured.sdf_std).all()
    assert coloured.colours.std() > 5  # textured
    assert np.array_equal(uncertain.colours, colour_map(uncertain.sdf_std))
    low, high = np.argmin(uncertain.sdf_std), np.argmax(uncertain.sdf_std)
    assert tuple(uncertain.colours[low]) == (68, 1, 84) and tuple(uncertain.colours[high]) == (253, 231, 37)
    with pytest.raises(Exception, match="colour_by"):
        extract_mesh(sdf_map, colour_by="normals")


def test_min_weight_drops_weak_voxels(sphere_map):
    sdf_map, _ = sphere_map
    everything = extract_mesh(sdf_map, min_weight=0.0)
    strong = extract_mesh(sdf_map, min_weight=float(np.percentile(sdf_map.precision[sdf_map.precision > 0], 50)))
    assert 0 < len(strong.faces) < len(everything.faces)


def test_ply_round_trip_with_sdf_std(sphere_map, tmp_path):
    mesh = extract_mesh(sphere_map[0], colour_by="uncertainty")
    path = tmp_path / "mesh.ply"
    write_ply(mesh, path)
    assert b"property float sdf_std" in path.read_bytes()[:600]
    back = read_ply(path)
    for name in ("vertices", "faces", "colours", "sdf_std"):
        assert np.array_equal(getattr(back, name), getattr(mesh, name)), name
    o3d = pytest.importorskip("open3d")
    other = o3d.io.read_triangle_mesh(str(path))
    assert len(other.vertices) == len(mesh.vertices) and len(other.triangles) == len(mesh.faces)
    np.testing.assert_allclose(np.asarray(other.vertices), mesh.vertices, atol=1e-6)
    np.testing.assert_allclose(np.asarray(other.vertex_colors) * 255, mesh.colours, atol=0.5)


def test_empty_map_gives_an_empty_mesh(tmp_path):
    mesh = extract_mesh(GaussianSdfMap())
    assert len(mesh.vertices) == len(mesh.faces) == 0
    write_ply(mesh, tmp_path / "empty.ply")
    assert len(read_ply(tmp_path / "empty.ply").vertices) == 0


def test_read_ply_rejects_other_files(tmp_path):
    path = tmp_path / "notes.ply"
    path.write_text("ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(Exception, match="notes.ply"):
        read_ply(path)


def test_cube_mask_needs_all_eight_corners():
    observed = np.ones((5, 5, 5), bool)
    observed[2, 2, 2] = False
    mask = cube_mask(observed)
    # cube (i..i+1, j..j+1, k..k+1) is processed at its far corner (i+1, j+1, k+1)
    expected = np.zeros((5, 5, 5), bool)
    expected[1:, 1:, 1:] = True
    expected[2:4, 2:4, 2:4] = False
    assert np.array_equal(mask, expected)


def test_mesh_type_is_plain_numpy():
    empty = Mesh.empty()
    assert empty.vertices.shape == (0, 3) and empty.colours.dtype == np.uint8 and empty.sdf_std.dtype == np.float32


def _triangles(mesh: Mesh) -> np.ndarray:
    return mesh.vertices[mesh.faces].astype(np.float64)


def test_block_meshes_tile_the_whole_mesh(sphere_map):
    """Meshes of disjoint block sets (here groups of 2^3 blocks) read the one-voxel overlap into their
    neighbours: together they hold exactly the whole mesh's triangles, wound the same way, with the same
    vertex colours and std; only the vertices on the sets' borders are duplicated."""
    from scipy.spatial import cKDTree

    sdf_map, _ = sphere_map
    std_range = (0.0, 0.02)  # a fixed range: parts' colours compare
    full = extract_mesh(sdf_map, colour_by="uncertainty", std_range=std_range)
    coords = sdf_map.block_coords
    groups, inverse = torch.unique(torch.div(coords, 2, rounding_mode="floor"), dim=0, return_inverse=True)
    parts = [extract_mesh(sdf_map, colour_by="uncertainty", std_range=std_range, blocks=coords[inverse == k])
             for k in range(len(groups))]
    assert sum(len(part.faces) for part in parts) == len(full.faces) > 1000
    triangles = np.concatenate([_triangles(part) for part in parts])
    distance, match = cKDTree(_triangles(full).mean(1)).query(triangles.mean(1))
    assert distance.max() < 1e-6 and len(np.unique(match)) == len(full.faces)
    assert np.abs(triangles - _triangles(full)[match]).max() < 1e-6  # same corners in the same (winding) order
    colours = np.concatenate([part.colours[part.faces] for part in parts])
    std = np.concatenate([part.sdf_std[part.faces] for part in parts])
    np.testing.assert_allclose(std, full.sdf_std[full.faces][match], rtol=1e-4)  # vertices differ by float rounding
    same_colour = (colours == full.colours[full.faces][match]).all(-1)
    assert same_colour.mean() > 0.9999, same_colour.mean()  # a std a float rounding off can change colour bin
    duplicated = sum(len(part.vertices) for part in parts) - len(full.vertices)
    assert 0 < duplicated < 0.5 * len(full.vertices)
    print(f"\n{len(groups)} groups of 2^3 blocks: {len(full.faces)} triangles in both, "
          f"{duplicated} border vertices duplicated ({len(full.vertices)} in the whole mesh)")


def test_block_mesh_of_every_block_is_the_whole_mesh(sphere_map):
    sdf_map, _ = sphere_map
    full = extract_mesh(sdf_map)
    everything = extract_mesh(sdf_map, blocks=sdf_map.block_coords)
    assert np.array_equal(everything.vertices, full.vertices) and np.array_equal(everything.faces, full.faces)
    assert np.array_equal(everything.colours, full.colours)


def test_block_mesh_of_no_or_unallocated_blocks_is_empty(sphere_map):
    sdf_map, _ = sphere_map
    assert len(extract_mesh(sdf_map, blocks=np.zeros((0, 3), np.int64)).faces) == 0
    far = sdf_map.block_coords.max(0).values + 10
    assert len(extract_mesh(sdf_map, blocks=far[None]).faces) == 0
    assert len(extract_mesh(GaussianSdfMap(), blocks=[[0, 0, 0]]).faces) == 0
