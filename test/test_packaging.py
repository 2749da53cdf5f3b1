"""The package is a valid ament_python package: manifest, entry points and installed data files."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_EXEC_DEPENDS = {
    "rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs", "std_srvs",
    "diagnostic_msgs", "tf2_msgs", "message_filters", "cv_bridge", "python3-torch",
    "python3-opencv", "python3-scipy", "python3-open3d-pip", "python3-rosbags-pip",
}


def setup_call_keywords() -> dict:
    """The literal keyword arguments of setup() plus module-level constants they reference."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    constants = {node.targets[0].id: node.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "setup")
    return {kw.arg: kw.value for kw in call.keywords}, constants


def test_package_xml_is_format3_ament_python_with_required_depends():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "prism_ros"
    assert root.find("export/build_type").text == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert REQUIRED_EXEC_DEPENDS <= exec_depends, REQUIRED_EXEC_DEPENDS - exec_depends


def test_every_node_module_with_main_has_a_console_script():
    _, constants = setup_call_keywords()
    nodes = ast.literal_eval(constants["NODES"])
    targets = set(nodes.values())
    for module in sorted((ROOT / "prism_ros" / "nodes").glob("*.py")):
        tree = ast.parse(module.read_text())
        has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        if has_main:
            assert f"prism_ros.nodes.{module.stem}:main" in targets, f"{module.name} has no console script"


def test_setup_cfg_puts_scripts_where_ros2_run_finds_them():
    text = (ROOT / "setup.cfg").read_text()
    assert re.search(r"\[develop\]\s*\nscript_dir=\$base/lib/prism_ros", text)
    assert re.search(r"\[install\]\s*\ninstall_scripts=\$base/lib/prism_ros", text)


@pytest.mark.timeout(300)
def test_wheel_installs_launch_config_rviz_marker_and_manifest(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("prism_ros-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "share/ament_index/resource_index/packages/prism_ros" in data
    assert "share/prism_ros/package.xml" in data
    assert "share/prism_ros/config/fastdds_localhost.xml" in data
    assert any(n.startswith("share/prism_ros/launch/") and n.endswith(".launch.py") for n in data)
    assert any(n.startswith("share/prism_ros/rviz/") and n.endswith(".rviz") for n in data)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "prism-ros = prism_ros.cli.main:main" in text


def test_core_has_no_ros_imports():
    """ROS lives only in prism_ros/nodes/: the core must run offline without rclpy."""
    ros_modules = ("rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "tf2_ros",
                   "message_filters", "cv_bridge", "launch", "visualization_msgs", "diagnostic_msgs")
    offenders = []
    for path in (ROOT / "prism_ros").rglob("*.py"):
        if "nodes" in path.relative_to(ROOT / "prism_ros").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in ros_modules:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    # cli.py imports prism_ros.nodes lazily inside commands (allowed: not a ROS package import)
    assert not offenders, offenders


#: every third-party module the package imports (at load or inside a function) -> the rosdep key that installs
#: it, declared in package.xml so that `rosdep install` + `colcon build` give a node that starts. The keys are
#: those of ros/rosdistro (rosdep/python.yaml; ROS packages by name).
ROSDEP_KEYS = {
    "rclpy": "rclpy", "sensor_msgs": "sensor_msgs", "geometry_msgs": "geometry_msgs", "nav_msgs": "nav_msgs",
    "std_msgs": "std_msgs", "std_srvs": "std_srvs", "visualization_msgs": "visualization_msgs",
    "diagnostic_msgs": "diagnostic_msgs", "rosgraph_msgs": "rosgraph_msgs", "builtin_interfaces": "builtin_interfaces",
    "rcl_interfaces": "rcl_interfaces", "rosidl_parser": "rosidl_parser",
    "ament_index_python": "ament_index_python", "tf2_msgs": "tf2_msgs",
    "message_filters": "message_filters", "cv_bridge": "cv_bridge", "launch_ros": "launch_ros",
    "torch": "python3-torch", "cv2": "python3-opencv", "scipy": "python3-scipy", "numpy": "python3-numpy",
    "yaml": "python3-yaml", "rosbags": "python3-rosbags-pip", "kornia": "python3-kornia-pip",
    "matplotlib": "python3-matplotlib", "skimage": "python3-skimage", "tqdm": "python3-tqdm", "rich": "python3-rich",
    "typer": "python3-typer", "open3d": "python3-open3d-pip",
}
#: modules with no rosdep key: installed with pip (docs), imported only where they are used, so the nodes start
#: without them (warp: the fused kernels, `backend: auto` falls back to torch; evo: trajectory scoring in the CLI)
PIP_ONLY = {"warp": "warp-lang", "evo": "evo"}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the package files that import it (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "prism_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "prism_ros" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_package_xml_declares_every_module_the_package_imports():
    exec_depends = {e.text for e in ET.parse(ROOT / "package.xml").getroot().findall("exec_depend")}
    imported = third_party_imports()
    unknown = {module: sorted(files) for module, files in imported.items() if module not in {*ROSDEP_KEYS, *PIP_ONLY}}
    assert not unknown, f"imported but neither a rosdep key nor pip-only: {unknown}"
    missing = {ROSDEP_KEYS[module] for module in imported if module in ROSDEP_KEYS} - exec_depends
    assert not missing, f"package.xml lacks <exec_depend> for {sorted(missing)}"


def test_nodes_start_without_the_pip_only_modules():
    """What a node imports at start comes from package.xml's keys: the pip-only modules load later, if at all."""
    modules = ["prism_ros.nodes.prism_node", "prism_ros.nodes.ace_node", "prism_ros.nodes.dmn_node",
               "prism_ros.nodes.player", "prism_ros.nodes.recorder", "prism_ros.nodes.imu_odometry"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(PIP_ONLY)!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
