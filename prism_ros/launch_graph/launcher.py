"""Fallback for ``ros2 launch`` when launch/launch_ros are not installed: run NodeSpecs as subprocesses.

Each node runs as its console script from this interpreter's bin folder (or ``python -m module``)
with ``--ros-args -r __node:=NAME -p key:=value -r from:=to``, exactly what launch_ros would pass.
Children run in their own session so a terminal Ctrl-C reaches only the launcher, which forwards
SIGINT to every child once, then SIGTERM/SIGKILL after a grace period. With ``loopback=True`` all
children share one random DDS domain and the loopback-only Fast DDS profile.

    python -m prism_ros.launch_graph.launcher play BAG [--rate R] [--loop] [--loopback] [--dry-run]
    python -m prism_ros.launch_graph.launcher prism [BAG] [--sensor euroc] [--config FILE] [--rviz]
                                             [--use-sim-time auto|true|false] [--rate R] [--loop] ...
    python -m prism_ros.launch_graph.launcher suite [BAG] [--ace] [--ace-map MAP] [--dmn] [--dmn-contexts FILE] [...]

``prism`` runs :func:`prism_ros.launch_graph.graph.prism_graph`, the graph of ``prism.launch.py``: the bag
player (when a BAG is given), prism_node with ``--params-file`` config and sensor preset, rviz2.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from prism_ros.errors import InputError
from prism_ros.launch_graph.graph import GRAPHS, SENSORS, USE_SIM_TIME, NodeSpec, missing_files
from prism_ros.loopback import loopback_env, random_domain_id

LAUNCHER_PID_VARIABLE = "PRISM_ROS_LAUNCHER_PID"  # nodes started here end with this process (nodes.runner)


def parameter_argument(name: str, value) -> str:
    """``name:=value`` with the value in YAML flow form (JSON is valid YAML), as rcl parses it."""
    return f"{name}:={json.dumps(value)}"


def executable_command(spec: NodeSpec, python: str = sys.executable, missing_ok: bool = False) -> list[str]:
    """How to start the node's program: console script next to ``python``, PATH, or ``python -m``.

    Not found: FileNotFoundError, or with ``missing_ok`` the bare executable name (for ``--dry-run``)."""
    beside = Path(python).parent / spec.executable
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if spec.module:
        return [python, "-m", spec.module]
    found = shutil.which(spec.executable)
    if found:
        return [found]
    if missing_ok:
        return [spec.executable]
    raise FileNotFoundError(f"{spec.executable} not found beside {python} or on PATH and no module "
                            f"fallback; install {spec.package} (pip install -e .)")


def node_command(spec: NodeSpec, python: str = sys.executable, missing_ok: bool = False) -> list[str]:
    """Full command line of one node, ROS arguments included (parameter files before ``-p`` values,
    so the values win, as with launch_ros)."""
    command = executable_command(spec, python, missing_ok) + list(spec.arguments)
    command += ["--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        command += ["-r", f"__ns:={spec.namespace}"]
    for path in spec.parameter_files:
        command += ["--params-file", str(path)]
    for name, value in spec.parameters.items():
        if value is not None:
            command += ["-p", parameter_argument(name, value)]
    for source, target in spec.remappings:
        command += ["-r", f"{source}:={target}"]
    return command


@dataclass
class RunningNode:
    """One started node: its spec and process."""

    spec: NodeSpec
    process: subprocess.Popen


class RunningGraph:
    """Started node processes; wait for them, interrupt them, or stop them with escalation."""

    def __init__(self, nodes: list[RunningNode], domain_id: int | None):
        self.nodes, self.domain_id = nodes, domain_id

    def returncodes(self) -> list[int | None]:
        return [n.process.poll() for n in self.nodes]

    def interrupt(self) -> None:
        """Send SIGINT to every child still running."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> list[int | None]:
        """Wait until all children exit (or ``timeout``); their return codes (None = running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(code is None for code in self.returncodes()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return self.returncodes()

    def stop(self, grace: float = 5.0) -> list[int | None]:
        """SIGINT, then SIGTERM and SIGKILL after ``grace`` seconds each; the return codes."""
        for send in (self.interrupt, self.terminate, self.kill):
            send()
            if all(code is not None for code in self.wait(grace)):
                break
        return self.returncodes()

    def terminate(self) -> None:
        """SIGTERM every child still running."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.terminate()

    def kill(self) -> None:
        """SIGKILL every child still running."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()


def node_environment(spec: NodeSpec, base: dict, loopback: bool) -> dict:
    """The node's process environment: ``base`` plus its ``env``, except with ``loopback``, whose profile (same
    transport sizes, traffic kept on this machine) stays."""
    return dict(base) if loopback else {**base, **dict(spec.env)}


def start_graph(specs: Sequence[NodeSpec], loopback: bool = False, domain_id: int | None = None,
                env: dict | None = None, python: str = sys.executable, **popen_kwargs) -> RunningGraph:
    """Start every node (environment: :func:`node_environment`); with ``loopback`` all share one (random
    unless given) domain, loopback only. The nodes end (SIGTERM) when this process does, even when it is
    killed; call it from a thread that lives as long as the graph (Linux signals a child when the thread that
    started it ends)."""
    base = dict(os.environ if env is None else env)
    base[LAUNCHER_PID_VARIABLE] = str(os.getpid())  # the nodes end with this process (runner.die_with_launcher)
    if loopback:
        domain_id = random_domain_id() if domain_id is None else domain_id
        base = loopback_env(domain_id, base)
    elif domain_id is not None:
        base["ROS_DOMAIN_ID"] = str(domain_id)
    nodes = []
    try:
        for spec in specs:
            process = subprocess.Popen(node_command(spec, python), env=node_environment(spec, base, loopback),
                                       start_new_session=True,
                                       **popen_kwargs)
            nodes.append(RunningNode(spec, process))
    except BaseException:
        RunningGraph(nodes, domain_id).stop(grace=1.0)
        raise
    return RunningGraph(nodes, domain_id)


def run_graph(specs: Sequence[NodeSpec], timeout: float | None = None, grace: float = 5.0,
              **start_kwargs) -> list[int | None]:
    """Start the graph, wait for it (forwarding SIGINT/SIGTERM to children), return exit codes.

    On ``timeout`` the children are stopped (SIGINT, then escalation) and their codes returned.
    """
    graph = start_graph(specs, **start_kwargs)
    previous = _forward_signals(graph)
    try:
        codes = graph.wait(timeout)
        if any(code is None for code in codes):
            codes = graph.stop(grace)
        return codes
    except KeyboardInterrupt:
        return graph.stop(grace)
    finally:
        _restore_signals(previous)
        if any(code is None for code in graph.returncodes()):
            graph.stop(grace=1.0)


def _forward_signals(graph: RunningGraph) -> dict:
    """Forward SIGINT/SIGTERM to the children: the 1st as SIGINT, the 2nd as SIGTERM, then SIGKILL.

    Main thread only (Python's rule for signal handlers); returns the handlers it replaced.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    escalation = [graph.interrupt, graph.terminate, graph.kill]
    received = []

    def forward(_signum, _frame) -> None:
        escalation[min(len(received), len(escalation) - 1)]()
        received.append(_signum)

    return {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def exit_code(codes: Sequence[int | None]) -> int:
    """0 when every node exited 0, else the first non-zero code (negative signals as 128+n)."""
    for code in codes:
        if code is None:
            return 1
        if code != 0:
            return 128 - code if code < 0 else code
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prism_ros.launch_graph.launcher",
                                description="Run a prism_ros node graph without ROS 2 launch.")
    p.add_argument("graph", choices=sorted(GRAPHS))
    p.add_argument("bag", nargs="?", default=None, help="bag for the player (required by play, optional for prism)")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--loop", action="store_true")
    prism = p.add_argument_group("prism graph (prism.launch.py's arguments)")
    prism.add_argument("--config", default="prism.yaml",
                       help="node parameter YAML: a path, or a file name in the installed config/ folder")
    prism.add_argument("--sensor", default="tum", choices=SENSORS, help="sensor preset config/sensors/<name>.yaml")
    prism.add_argument("--use-sim-time", default="auto", choices=USE_SIM_TIME,
                       help="auto: true exactly when a bag plays (it publishes /clock)")
    prism.add_argument("--rviz", action="store_true", help="also start rviz2 with rviz/prism.rviz")
    prism.add_argument("--namespace", default="", help="namespace of the nodes, e.g. robot1 (rviz2 stays global)")
    prism.add_argument("--no-autostart", dest="autostart", action="store_false",
                       help="prism_node waits unconfigured for a lifecycle manager")
    prism.add_argument("--fastdds-profile", default="auto",
                       help="Fast DDS profile of the nodes: auto (config/fastdds_large_data.xml unless the "
                            "environment sets a profile), none (the environment's), or a file")
    suite = p.add_argument_group("suite graph (suite.launch.py's arguments, plus the prism graph's)")
    suite.add_argument("--ace", action="store_true", help="also start ace_node (relocalization, recovery)")
    suite.add_argument("--ace-map", default="", help="ACE map file for ace_node (default: config/ace.yaml's)")
    suite.add_argument("--dmn", action="store_true", help="also start dmn_node (DMN particle-filter localization)")
    suite.add_argument("--dmn-contexts", default="", help="DMN context file (default: config/dmn.yaml's)")
    p.add_argument("--loopback", action="store_true",
                   help="random DDS domain, traffic on 127.0.0.1/shared memory only")
    p.add_argument("--domain-id", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="stop the graph after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def _resolved(value: str) -> str:
    """An existing file's absolute path (the nodes run elsewhere), else the value as given (a keyword or a name in
    the installed config/)."""
    path = Path(value).expanduser()
    return str(path.resolve()) if value and path.is_file() else value


def graph_arguments(args: argparse.Namespace) -> dict:
    """Keyword arguments of the chosen graph function from the parsed command line."""
    bag = None if args.bag is None else str(Path(args.bag).resolve())
    if args.graph == "play":
        return {"bag": bag, "rate": args.rate, "loop": args.loop}
    arguments = {"bag": bag, "rate": args.rate, "loop": args.loop, "sensor": args.sensor, "rviz": args.rviz,
                 "use_sim_time": args.use_sim_time, "config": _resolved(args.config),
                 "namespace": args.namespace, "autostart": args.autostart,
                 "fastdds_profile": _resolved(args.fastdds_profile)}
    if args.graph == "suite":
        arguments.update(ace=args.ace, ace_map=str(Path(args.ace_map).resolve()) if args.ace_map else "",
                         dmn=args.dmn, dmn_contexts=str(Path(args.dmn_contexts).resolve()) if args.dmn_contexts else "")
    return arguments


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m prism_ros.launch_graph.launcher``: exit 0 when every node exited 0 (not a node itself,
    hence no console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.graph == "play" and args.bag is None:
        parser.error("the play graph needs a BAG")
    try:
        specs = GRAPHS[args.graph](**graph_arguments(args))
    except InputError as error:
        print(f"launcher: {error}", file=sys.stderr)
        return 2
    missing = missing_files(specs)
    if args.dry_run:
        for path in missing:
            print(f"launcher: warning: {path} does not exist", file=sys.stderr)
        for spec in specs:
            env = [] if args.loopback else [f"{key}={value}" for key, value in spec.env]
            print(shlex.join(env + node_command(spec, missing_ok=True)))
        return 0
    if missing:
        print(f"launcher: {', '.join(missing)} not found -> give existing files (--config) or install "
              f"prism_ros with its config/ and rviz/ folders", file=sys.stderr)
        return 2
    try:  # every executable is there before anything starts
        for spec in specs:
            node_command(spec)
    except FileNotFoundError as error:
        print(f"launcher: {error}", file=sys.stderr)
        return 2
    codes = run_graph(specs, timeout=args.timeout, loopback=args.loopback, domain_id=args.domain_id)
    for spec, code in zip(specs, codes):
        print(f"launcher: {spec.name} exited with {code}", file=sys.stderr)
    return exit_code(codes)


if __name__ == "__main__":
    sys.exit(cli())
