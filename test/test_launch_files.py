"""Static checks of launch/*.launch.py, rviz/prism.rviz and the prism graph (ROS 2 launch is not installed
here, so the launch files are parsed with ``ast``, never imported), plus the no-launch launcher's prism graph.

Files the node engineer is still writing are tolerated while absent and checked once present:
:data:`PENDING_FILES` (``config/prism.yaml``, ``config/sensors/<sensor>.yaml``) and
:data:`PENDING_EXECUTABLES` (``prism_node``: allowed in launch files; registered in setup.py's NODES as soon as
its module exists, else test_pending_executables_are_registered_once_written fails).
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prism_ros.errors import InputError
from prism_ros.launch_graph import launcher
from prism_ros.launch_graph.graph import (
    GRAPHS,
    LARGE_DATA_PROFILE,
    SENSORS,
    NodeSpec,
    dds_environment,
    missing_files,
    play_graph,
    prism_graph,
    suite_graph,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"  # the Fast DDS 3 of the PyPI wheels (ROS 2 Kilted)
LAUNCH = ROOT / "launch"
LAUNCH_FILES = sorted(LAUNCH.glob("*.launch.py"))
OURS = ("prism.launch.py", "suite.launch.py")  # launch files with a documented argument table
EXTERNAL_EXECUTABLES = {"rviz2": "rviz2"}  # executable -> its (non-prism_ros) package
#: executables being written by another engineer: allowed in launch files; once the module exists it must be
#: registered in setup.py's NODES (test_pending_executables_are_registered_once_written)
PENDING_EXECUTABLES = {"prism_node": ROOT / "prism_ros" / "nodes" / "prism_node.py"}
PENDING_FILES = ("config/prism.yaml", "config/sensors/*.yaml")


def console_scripts() -> dict[str, str]:
    """setup.py's NODES: console script -> ``module:function``."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no NODES dict")


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def literal(tree: ast.Module, name: str):
    """The literal value of a module-level assignment ``name = ...``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no module-level literal {name}")


def calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def docstring_table(tree: ast.Module) -> dict[str, dict[str, str]]:
    """Rows of the markdown table in the module docstring: argument -> {column: text}."""
    lines = [line.strip() for line in (ast.get_docstring(tree) or "").splitlines() if line.strip().startswith("|")]
    assert len(lines) >= 3, "no argument table in the module docstring"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    return {row[0]: dict(zip(header, row)) for row in rows}


def graph_functions(tree: ast.Module) -> list[str]:
    """Names the launch file imports from prism_ros.launch_graph.graph that build graphs."""
    return [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "prism_ros.launch_graph.graph" for alias in node.names if alias.name.endswith("_graph")]


def every_node(function_name: str) -> list[NodeSpec]:
    """All nodes a graph function can start (every optional node switched on), files in the checkout."""
    if function_name == "play_graph":
        return play_graph("/some/bag")
    if function_name == "prism_graph":
        return prism_graph(bag="/some/bag", rviz=True, share=ROOT)
    if function_name == "suite_graph":
        return suite_graph(bag="/some/bag", rviz=True, ace=True, share=ROOT)
    raise AssertionError(f"unknown graph function {function_name}: teach this test its optional nodes")


def pending(relative: str) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in PENDING_FILES)


# ------------------------------------------------------------------------------------- launch files
def test_launch_files_compile():
    assert {p.name for p in LAUNCH_FILES} >= {"play.launch.py", *OURS}
    for path in LAUNCH_FILES:
        py_compile.compile(str(path), doraise=True)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_executable_is_a_console_script_or_known_external(path):
    tree = parse(path)
    nodes = console_scripts()
    specs = [spec for name in graph_functions(tree) for spec in every_node(name)]
    literal_executables = [kw.value.value for call in calls(tree, "Node") for kw in call.keywords
                           if kw.arg == "executable" and isinstance(kw.value, ast.Constant)]
    assert specs or literal_executables, f"{path.name} starts no node"
    for executable in literal_executables + [s.executable for s in specs]:
        if executable in EXTERNAL_EXECUTABLES or executable in nodes:
            continue
        # registration of a pending one is checked by test_pending_executables_are_registered_once_written
        assert executable in PENDING_EXECUTABLES, \
            f"{path.name}: {executable} is neither a console script in setup.py's NODES nor known external"
    for spec in specs:
        if spec.executable in EXTERNAL_EXECUTABLES:
            assert spec.package == EXTERNAL_EXECUTABLES[spec.executable]
        else:
            assert spec.package == "prism_ros"
            target = nodes.get(spec.executable, f"{spec.module}:main")
            assert target.split(":")[0] == spec.module, f"{spec.executable}: module fallback {spec.module} != {target}"


def test_pending_executables_are_registered_once_written():
    nodes = console_scripts()
    for executable, module in PENDING_EXECUTABLES.items():
        if not module.exists():
            pytest.skip(f"{module.relative_to(ROOT)} not written yet (node engineer); {executable} not checked")
        assert nodes.get(executable) == f"prism_ros.nodes.{module.stem}:main", \
            f"{module.relative_to(ROOT)} exists: add \"{executable}\": " \
            f"\"prism_ros.nodes.{module.stem}:main\" to NODES in setup.py"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_referenced_files_exist_or_are_pending(path):
    tree = parse(path)
    referenced = []
    for name in graph_functions(tree):
        for spec in every_node(name):
            referenced += list(spec.parameter_files)
            if "-d" in spec.arguments:
                referenced.append(spec.arguments[spec.arguments.index("-d") + 1])
    for text in (n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)):
        if text.endswith(".launch.py") and "/" not in text and " " not in text:
            referenced.append(str(LAUNCH / text))  # included launch files sit beside this one
    for file in referenced:
        relative = Path(file).resolve().relative_to(ROOT).as_posix()
        assert Path(file).is_file() or pending(relative), f"{path.name} refers to {relative}, which does not exist"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_launch_argument_has_a_description(path):
    tree = parse(path)
    declared = calls(tree, "DeclareLaunchArgument")
    assert declared, f"{path.name} declares no launch argument"
    for call in declared:
        keywords = {kw.arg: kw.value for kw in call.keywords}
        assert "description" in keywords, f"{path.name}:{call.lineno}: DeclareLaunchArgument without description"
        if isinstance(keywords["description"], ast.Constant):
            assert keywords["description"].value.strip()
    for name, (_, description) in literal(tree, "ARGUMENTS").items():
        assert description.strip(), f"{path.name}: {name} has an empty description"


@pytest.mark.parametrize("name", OURS)
def test_arguments_match_the_documented_table(name):
    tree = parse(LAUNCH / name)
    arguments, choices = literal(tree, "ARGUMENTS"), literal(tree, "CHOICES")
    table = docstring_table(tree)
    assert list(table) == list(arguments), f"{name}: docstring table rows != ARGUMENTS"
    for argument, (default, _) in arguments.items():
        row = table[argument]
        assert row["default"].strip('"') == default, f"{name}: {argument} default {default!r} != table {row}"
        documented = [c.strip() for c in row["choices"].split(",")]
        if argument in choices:
            assert documented == choices[argument], f"{name}: {argument} choices differ from the table"
            assert default in choices[argument]
        assert row["description"]
    used = {call.args[0].value for call in calls(tree, "LaunchConfiguration")
            if call.args and isinstance(call.args[0], ast.Constant)}
    assert used <= set(arguments), f"{name}: LaunchConfiguration of undeclared {used - set(arguments)}"


def test_prism_launch_arguments_are_the_graph_arguments():
    tree = parse(LAUNCH / "prism.launch.py")
    arguments, choices = literal(tree, "ARGUMENTS"), literal(tree, "CHOICES")
    assert {"config", "sensor", "use_sim_time", "rviz", "bag"} <= set(arguments)
    assert tuple(choices["sensor"]) == SENSORS
    # every launch argument is a keyword of prism_graph, and the launch defaults build the default graph
    specs = prism_graph(**{name: default for name, (default, _) in arguments.items()}, share=ROOT)
    assert specs == prism_graph(share=ROOT)
    assert [s.executable for s in specs] == ["prism_node"]
    assert specs[0].parameter_files == (str(ROOT / "config/prism.yaml"), str(ROOT / "config/sensors/tum.yaml"))


def test_suite_launch_arguments_are_the_prism_arguments_plus_ace_and_dmn():
    tree = parse(LAUNCH / "suite.launch.py")
    arguments = literal(tree, "ARGUMENTS")
    prism = literal(parse(LAUNCH / "prism.launch.py"), "ARGUMENTS")
    assert list(arguments)[:len(prism)] == list(prism)
    assert set(arguments) - set(prism) == {"ace", "ace_map", "dmn", "dmn_contexts"}
    assert all(arguments[name] == prism[name] or name == "sensor" for name in prism)
    assert literal(tree, "GRAPH_ARGUMENTS") == tuple(arguments)
    # the launch defaults build the default suite graph: prism_node alone (ACE and DMN off)
    values = {name: default for name, (default, _) in arguments.items()}
    assert [s.executable for s in suite_graph(**values, share=ROOT)] == ["prism_node"]


def test_suite_graph_with_ace_runs_ace_node_on_the_same_sensor_preset():
    specs = suite_graph(sensor="euroc", ace="true", ace_map="/maps/room.ace", bag="/bags/v101", share=ROOT)
    assert [s.executable for s in specs] == ["bag_player", "prism_node", "ace_node"]
    prism, ace = specs[1], specs[2]
    assert ace.parameter_files == (str(ROOT / "config/ace.yaml"), prism.parameter_files[1])
    assert ace.parameters == {"use_sim_time": True, "map_path": "/maps/room.ace"}
    assert not missing_files(specs)
    assert "map_path" not in suite_graph(ace=True, share=ROOT)[1].parameters


def test_suite_graph_with_dmn_runs_dmn_node_on_the_same_camera():
    specs = suite_graph(sensor="tum", ace=True, dmn="true", dmn_contexts="/maps/room.ctx", share=ROOT)
    assert [s.executable for s in specs] == ["prism_node", "ace_node", "dmn_node"]
    prism, dmn = specs[0], specs[2]
    assert dmn.parameter_files == (str(ROOT / "config/dmn.yaml"), prism.parameter_files[1])
    assert dmn.parameters == {"use_sim_time": False, "context_path": "/maps/room.ctx"}
    assert not missing_files(specs)


@pytest.mark.skipif(importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None,
                    reason="ROS 2 launch/launch_ros not installed (no PyPI wheels): the static checks above and "
                           "the launcher tests cover the launch files")
@pytest.mark.parametrize("name", OURS)
def test_launch_file_builds_a_launch_description(name):
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert set(module.ARGUMENTS) <= names


class _Recorded:
    """Stand-in for a launch class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context):
        return context[self.args[0]]


@pytest.fixture
def stub_launch(monkeypatch):
    """Minimal fake launch/launch_ros modules so the launch files' own code runs here (no ROS launch)."""
    import types

    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription", "LogInfo"],
        "launch.conditions": ["IfCondition"],
        "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
        "launch.substitutions": [],
        "launch_ros": [], "launch_ros.actions": ["Node"],
    }
    for module_name, classes in names.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls, type(cls, (_Recorded,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    sys.modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration


def load_launch_file(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prism_launch_file_code_runs_against_stub_launch(stub_launch, monkeypatch):
    """The launch file's own code: arguments declared with choices, nodes built from the resolved values."""
    import prism_ros.launch_graph.graph as graph

    monkeypatch.setattr(graph, "share_dir", lambda: ROOT)
    module = load_launch_file("prism.launch.py")
    entities = module.generate_launch_description().args[0]
    declared = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert list(declared) == list(module.ARGUMENTS)
    assert declared["sensor"]["choices"] == list(SENSORS) and "choices" not in declared["bag"]
    (opaque,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    context = {name: default for name, (default, _) in module.ARGUMENTS.items()}
    context.update(sensor="euroc", bag=str(ROOT / "setup.py"), rviz="true")  # any existing file stands for a bag
    if not (ROOT / "config" / "prism.yaml").is_file():
        context["config"] = str(ROOT / "config" / "sensors" / "tum.yaml")  # pending file: any parameter file
    if missing_files(prism_graph(**context, share=ROOT)):
        pytest.skip(f"pending files missing: {missing_files(prism_graph(**context, share=ROOT))}")
    player, node, rviz = opaque.kwargs["function"](context)
    assert node.kwargs["executable"] == "prism_node" and node.kwargs["package"] == "prism_ros"
    params = node.kwargs["parameters"]
    assert params[1].endswith("config/sensors/euroc.yaml") and params[2] == {"use_sim_time": True, "autostart": True}
    assert player.kwargs["executable"] == "bag_player" and player.kwargs["parameters"][0]["clock"] is True
    assert rviz.kwargs["arguments"] == ["-d", str(ROOT / "rviz" / "prism.rviz")]
    for name in (PROFILE_VARIABLE, "FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_DISTRO"):
        monkeypatch.delenv(name, raising=False)
    assert {str(n.kwargs["additional_env"]) for n in opaque.kwargs["function"](context)} == \
        {str({"FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_large_data.xml")})}
    context["config"] = str(ROOT / "config" / "absent.yaml")
    with pytest.raises(InputError, match="absent.yaml not found"):
        opaque.kwargs["function"](context)


def test_suite_launch_file_code_runs_against_stub_launch(stub_launch, monkeypatch):
    import prism_ros.launch_graph.graph as graph

    monkeypatch.setattr(graph, "share_dir", lambda: ROOT)
    module = load_launch_file("suite.launch.py")
    entities = module.generate_launch_description().args[0]
    kinds = [type(e).__name__ for e in entities]
    assert kinds == ["DeclareLaunchArgument"] * len(module.ARGUMENTS) + ["OpaqueFunction"]
    (opaque,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    context = {name: default for name, (default, _) in module.ARGUMENTS.items()}
    context.update(sensor="tum", ace="true", ace_map="/maps/kitchen.ace")
    prism, ace = opaque.kwargs["function"](context)
    assert prism.kwargs["executable"] == "prism_node" and ace.kwargs["executable"] == "ace_node"
    assert ace.kwargs["parameters"][0].endswith("config/ace.yaml")
    assert ace.kwargs["parameters"][1].endswith("config/sensors/tum.yaml")
    assert ace.kwargs["parameters"][2]["map_path"] == "/maps/kitchen.ace"


# ------------------------------------------------------------------------------------- pending config files
def test_node_config_files_once_present():
    files = [ROOT / "config" / "prism.yaml"] + sorted((ROOT / "config" / "sensors").glob("*.yaml"))
    present = [f for f in files if f.is_file()]
    if not present:
        pytest.skip("config/prism.yaml and config/sensors/*.yaml not written yet (node engineer)")
    for file in present:
        data = yaml.safe_load(file.read_text())
        assert isinstance(data, dict) and data, f"{file.name}: not a YAML mapping"
        sections = [value for key, value in data.items() if key in ("/**", "prism_node", "/prism_node")]
        assert sections and all("ros__parameters" in s for s in sections), \
            f"{file.relative_to(ROOT)}: not a ROS 2 parameter file for prism_node (/** or prism_node: ros__parameters:)"
    if (ROOT / "config" / "sensors").is_dir():
        names = {f.stem for f in (ROOT / "config" / "sensors").glob("*.yaml")}
        assert set(SENSORS) <= names, f"sensor presets missing: {set(SENSORS) - names}"


# ------------------------------------------------------------------------------------- rviz
def test_rviz_config_shows_the_prism_topics_in_map():
    config = yaml.safe_load((ROOT / "rviz" / "prism.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Class"].split("/")[-1] + " " + d.get("Topic", {}).get("Value", ""): d for d in manager["Displays"]}
    for key in ("PoseWithCovariance /prism_node/pose", "Path /prism_node/path", "MarkerArray /prism_node/mesh",
                "PointCloud2 /prism_node/map_cloud", "Image /prism_node/rendered/depth",
                "Image /prism_node/rendered/uncertainty", "TF "):
        assert key in displays, f"rviz/prism.rviz lacks {key}"
        assert displays[key]["Enabled"] is True
    # latched publishers (reliable + transient local) must be read with a compatible QoS
    for key in ("MarkerArray /prism_node/mesh", "PointCloud2 /prism_node/map_cloud", "Map /prism_node/costmap"):
        assert displays[key]["Topic"]["Reliability Policy"] == "Reliable"
        assert displays[key]["Topic"]["Durability Policy"] == "Transient Local"
    # rollouts (reliable publisher) and the predicted path are there for rollout_samples > 0
    assert {"MarkerArray /prism_node/rollouts", "Path /prism_node/predicted_path"} <= displays.keys()


# ------------------------------------------------------------------------------------- the prism graph
def test_prism_graph_without_bag_is_the_node_alone():
    (node,) = prism_graph(sensor="euroc", share=ROOT)
    assert (node.package, node.executable, node.name, node.module) == \
        ("prism_ros", "prism_node", "prism_node", "prism_ros.nodes.prism_node")
    assert node.parameter_files == (str(ROOT / "config/prism.yaml"), str(ROOT / "config/sensors/euroc.yaml"))
    assert node.parameters == {"use_sim_time": False, "autostart": True}


def test_prism_graph_with_bag_plays_it_with_clock_and_sim_time():
    player, node, rviz = prism_graph(bag="/data/run.bag", rviz="true", rate="2.5", loop="true", share=ROOT)
    assert player.executable == "bag_player" and player.module == "prism_ros.nodes.player"
    assert player.parameters["bag"] == "/data/run.bag" and player.parameters["clock"] is True
    assert player.parameters["rate"] == 2.5 and player.parameters["loop"] is True
    assert node.parameters["use_sim_time"] is True and rviz.parameters["use_sim_time"] is True
    assert (rviz.package, rviz.executable, rviz.arguments) == ("rviz2", "rviz2", ("-d", str(ROOT / "rviz/prism.rviz")))
    assert missing_files([rviz]) == []
    # explicit use_sim_time wins over auto, both ways
    assert prism_graph(bag="/b", use_sim_time="false", share=ROOT)[1].parameters["use_sim_time"] is False
    assert prism_graph(use_sim_time=True, share=ROOT)[0].parameters["use_sim_time"] is True
    assert len(prism_graph(bag="", rviz="false", share=ROOT)) == 1  # launch's empty default = no bag


def test_prism_graph_config_is_a_path_or_a_name_in_config(tmp_path):
    mine = tmp_path / "mine.yaml"
    assert prism_graph(config=str(mine), share=ROOT)[0].parameter_files[0] == str(mine)
    assert prism_graph(config="other.yaml", share=ROOT)[0].parameter_files[0] == str(ROOT / "config/other.yaml")
    assert prism_graph(config="", share=ROOT)[0].parameter_files[0] == str(ROOT / "config/prism.yaml")
    assert missing_files(prism_graph(config=str(mine), share=ROOT))[0] == str(mine)


@pytest.mark.parametrize("kwargs, needle", [
    ({"sensor": "kinect"}, "unknown sensor preset"),
    ({"rviz": "maybe"}, "rviz:='maybe' is not a boolean"),
    ({"use_sim_time": "sometimes"}, "use_sim_time"),
    ({"bag": "/b", "rate": "fast"}, "rate:='fast' is not a number"),
])
def test_prism_graph_bad_arguments_raise_input_error(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        prism_graph(share=ROOT, **kwargs)


def test_dds_profile_is_the_large_data_one_unless_the_environment_names_one():
    large = ((PROFILE_VARIABLE, str(ROOT / LARGE_DATA_PROFILE)),)
    assert dds_environment("auto", ROOT, environ={}) == large
    assert dds_environment("auto", ROOT, environ={"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}) == large
    assert dds_environment("auto", ROOT, environ={PROFILE_VARIABLE: "/robot/mine.xml"}) == ()
    assert dds_environment("auto", ROOT, environ={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == ()
    assert dds_environment("none", ROOT, environ={}) == dds_environment("", ROOT, environ={}) == ()
    assert dds_environment("fastdds_localhost.xml", ROOT, environ={PROFILE_VARIABLE: "/x.xml"}) == \
        ((PROFILE_VARIABLE, str(ROOT / "config/fastdds_localhost.xml")),)
    # Fast DDS 2 (Humble, Jazzy) reads only the old name; Fast DDS 3's rmw warns about it
    assert dds_environment("auto", ROOT, environ={"ROS_DISTRO": "jazzy"}) == \
        (("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / LARGE_DATA_PROFILE)),)
    assert dds_environment("auto", ROOT, environ={"FASTRTPS_DEFAULT_PROFILES_FILE": "/robot/mine.xml"}) == ()


def test_every_node_of_a_graph_gets_the_dds_profile(monkeypatch):
    for name in (PROFILE_VARIABLE, "FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_DISTRO"):
        monkeypatch.delenv(name, raising=False)
    specs = suite_graph(bag="/data/run.bag", rviz=True, ace=True, dmn=True, share=ROOT)
    assert len(specs) == 5 and {s.env for s in specs} == {((PROFILE_VARIABLE, str(ROOT / LARGE_DATA_PROFILE)),)}
    assert str(ROOT / LARGE_DATA_PROFILE) not in missing_files(specs)
    assert missing_files(prism_graph(fastdds_profile="/absent/profile.xml", share=ROOT)) == ["/absent/profile.xml"]
    assert {s.env for s in prism_graph(fastdds_profile="none", share=ROOT)} == {()}


def test_launcher_gives_nodes_their_profile_except_on_loopback(monkeypatch, capsys):
    spec = NodeSpec("prism_ros", "prism_node", "prism_node", env=((PROFILE_VARIABLE, "/p.xml"),))
    base = {PROFILE_VARIABLE: "/loopback.xml", "HOME": "/h"}
    assert launcher.node_environment(spec, base, loopback=False) == {PROFILE_VARIABLE: "/p.xml", "HOME": "/h"}
    assert launcher.node_environment(spec, base, loopback=True) == base
    for name in (PROFILE_VARIABLE, "FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_DISTRO"):
        monkeypatch.delenv(name, raising=False)
    assert launcher.cli(["prism", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"{PROFILE_VARIABLE}={ROOT / LARGE_DATA_PROFILE} ")
    assert launcher.cli(["prism", "--dry-run", "--loopback"]) == 0
    assert PROFILE_VARIABLE not in capsys.readouterr().out


def test_prism_is_a_registered_graph():
    assert GRAPHS["prism"] is prism_graph and GRAPHS["play"] is play_graph


# ------------------------------------------------------------------------------------- the launcher
def test_launcher_node_command_passes_parameter_files_before_values():
    spec = NodeSpec("prism_ros", "prism_node", "prism_node", {"use_sim_time": True}, (("/a", "/b"),),
                    module="prism_ros.nodes.prism_node", parameter_files=("/c/prism.yaml", "/c/euroc.yaml"))
    command = launcher.node_command(spec, missing_ok=True)
    ros = command[command.index("--ros-args"):]
    assert ros == ["--ros-args", "-r", "__node:=prism_node", "--params-file", "/c/prism.yaml",
                   "--params-file", "/c/euroc.yaml", "-p", "use_sim_time:=true", "-r", "/a:=/b"]


def test_autostart_false_leaves_prism_node_to_a_lifecycle_manager():
    node = next(s for s in prism_graph(autostart="false", share=ROOT) if s.executable == "prism_node")
    assert node.parameters["autostart"] is False
    with pytest.raises(InputError, match="autostart"):
        prism_graph(autostart="maybe", share=ROOT)


def test_namespace_puts_the_nodes_of_a_graph_in_it_except_rviz():
    specs = suite_graph(bag="/data/run.bag", rviz=True, ace=True, namespace="robot1/", share=ROOT)
    assert {s.executable: s.namespace for s in specs} == {"bag_player": "/robot1", "prism_node": "/robot1",
                                                          "ace_node": "/robot1", "rviz2": ""}
    prism = next(s for s in specs if s.executable == "prism_node")
    command = launcher.node_command(prism, missing_ok=True)
    assert command[command.index("__ns:=/robot1") - 1] == "-r"
    assert all(s.namespace == "" for s in prism_graph(share=ROOT))
    with pytest.raises(InputError, match="not a ROS namespace"):
        prism_graph(namespace="2robots", share=ROOT)


def test_launcher_dry_run_prints_the_prism_graph(capsys, tmp_path):
    bag = tmp_path / "run.bag"
    assert launcher.cli(["prism", str(bag), "--sensor", "euroc", "--rviz", "--rate", "0", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    player, node, rviz = lines
    assert "__node:=bag_player" in player and f'bag:="{bag}"' in player and "clock:=true" in player
    assert "rate:=0.0" in player
    assert "__node:=prism_node" in node and "use_sim_time:=true" in node
    assert "config/prism.yaml" in node and node.index("config/prism.yaml") < node.index("config/sensors/euroc.yaml")
    assert rviz.split()[0].endswith("rviz2") and "rviz/prism.rviz" in rviz and "__node:=rviz2" in rviz


def test_launcher_dry_run_without_bag_and_with_own_config(capsys, tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("/**:\n  ros__parameters: {}\n")
    assert launcher.cli(["prism", "--config", str(config), "--use-sim-time", "true", "--dry-run"]) == 0
    (node,) = capsys.readouterr().out.strip().splitlines()
    assert f"--params-file {config}" in node and "config/sensors/tum.yaml" in node
    assert "use_sim_time:=true" in node


def test_launcher_refuses_missing_files_before_starting(capsys, tmp_path):
    assert launcher.cli(["prism", "--config", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert "absent.yaml" in err and "not found" in err and len(err.strip().splitlines()) == 1


def test_launcher_play_still_needs_a_bag(capsys):
    with pytest.raises(SystemExit) as exited:
        launcher.cli(["play"])
    assert exited.value.code == 2 and "needs a BAG" in capsys.readouterr().err


def test_launcher_module_dry_runs_the_prism_graph():
    result = subprocess.run([sys.executable, "-m", "prism_ros.launch_graph.launcher", "prism", "--sensor", "synthetic",
                             "--dry-run"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "config/sensors/synthetic.yaml" in result.stdout and "__node:=prism_node" in result.stdout
