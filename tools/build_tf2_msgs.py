#!/usr/bin/env python3
"""Build the ROS 2 message package tf2_msgs (TFMessage only) into a virtualenv.

There are no PyPI wheels for tf2_msgs, but the PyPI ROS 2 Kilted wheels ship ament_cmake and
the rosidl generators. This script builds tools/tf2_msgs (package.xml, CMakeLists.txt,
msg/TFMessage.msg) with cmake against the ROS prefix inside the venv and installs the result
into that same prefix, laid out like the other message wheels:

  <venv>/lib/libtf2_msgs__rosidl_*.so                   C/C++ type supports
  <venv>/lib/python3.X/site-packages/tf2_msgs/          Python package + extension modules
  <venv>/share/tf2_msgs/, <venv>/share/ament_index/...  CMake config, .msg/.idl, ament index
  <venv>/include/tf2_msgs/                              generated headers

At run time nothing needs to be set by hand: the ros-wheels-bootstrapper .pth that comes with
the wheels re-executes the venv's python with <venv>/lib on LD_LIBRARY_PATH, which is how the
libraries of every message wheel (and the type supports rmw dlopens) are found.

Usage:  .venv/bin/python tools/build_tf2_msgs.py --venv .venv [--force] [--uninstall]
Stdlib only; it may be run by any python 3 as long as --venv names the target venv.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

SOURCE_DIR = Path(__file__).resolve().parent / "tf2_msgs"
# PyPI wheels the build needs beyond `pip install -e .[ros]`. The ros-kilted-* meta-packages pin
# the Kilted versions. Their own metadata is incomplete: ament_cmake_core's scripts import
# catkin_pkg and ament_package, and the rosidl generators find_package() ament_cmake_ros_core,
# ament_cmake_include_directories and rosidl_core_generators, none of which pip pulls in itself.
BUILD_WHEELS = [
    "ros-kilted-ament-cmake",
    "ros-kilted-ament-package",
    "ros-kilted-ament-cmake-include-directories",
    "ros-kilted-ament-cmake-ros-core",
    "ros-kilted-rosidl-default-generators",
    "ros-kilted-rosidl-core-generators",
    "catkin-pkg",
]
MANIFEST = "share/tf2_msgs/install_manifest.txt"
CHECK = (
    "from tf2_msgs.msg import TFMessage\n"
    "from geometry_msgs.msg import TransformStamped\n"
    "from rclpy.serialization import serialize_message, deserialize_message\n"
    "t = TransformStamped(child_frame_id='b'); t.transform.translation.x = 1.5\n"
    "m = deserialize_message(serialize_message(TFMessage(transforms=[t])), TFMessage)\n"
    "assert m.transforms[0].child_frame_id == 'b' and m.transforms[0].transform.translation.x == 1.5\n"
)


def say(msg: str) -> None:
    print(f"[build_tf2_msgs] {msg}", flush=True)


def fail(msg: str) -> NoReturn:
    print(f"[build_tf2_msgs] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def child_env(prefix: Path) -> dict:
    env = os.environ.copy()
    # Let the venv python's bootstrapper set LD_LIBRARY_PATH for *its* prefix, even when this
    # script runs under another interpreter; also put <prefix>/lib first for cmake's tools.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    parts = [str(prefix / "lib")] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def run(cmd: list, env: dict, log: Path | None = None, cwd: Path | None = None) -> None:
    if log is None:
        res = subprocess.run(cmd, env=env, cwd=cwd)
    else:
        with open(log, "ab") as fh:
            res = subprocess.run(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        tail = ""
        if log is not None and log.exists():
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        fail(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}{tail}")


def importable(py: Path, env: dict) -> bool:
    return subprocess.run([str(py), "-c", CHECK], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def venv_info(py: Path, env: dict) -> tuple[Path, Path, str]:
    code = ("import sys, sysconfig; print(sys.prefix); print(sysconfig.get_paths()['purelib']); "
            "print(sysconfig.get_paths()['include'])")
    out = subprocess.run([str(py), "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"cannot run {py}: {out.stderr.strip()}")
    prefix, purelib, include = out.stdout.strip().splitlines()[-3:]
    return Path(prefix), Path(purelib), include


def find_tool(names: list[str], venv: Path) -> str | None:
    for name in names:
        for cand in (venv / "bin" / name, shutil.which(name)):
            if cand and os.access(cand, os.X_OK):
                return str(cand)
    return None


def uninstall(prefix: Path) -> None:
    manifest = prefix / MANIFEST
    if not manifest.exists():
        say(f"nothing to uninstall ({manifest} not found)")
        return
    files = [Path(p) for p in manifest.read_text().splitlines() if p.strip()] + [manifest]
    dirs = set()
    for f in files:
        if f.is_file() or f.is_symlink():
            f.unlink()
        dirs.update(p for p in f.parents if prefix in p.parents)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    # Trees only tf2_msgs owns: __pycache__ left by imports, empty dirs cmake installs.
    for tree in [*(prefix / "lib").glob("python*/site-packages/tf2_msgs"),
                 prefix / "include" / "tf2_msgs", prefix / "share" / "tf2_msgs"]:
        shutil.rmtree(tree, ignore_errors=True)
    say(f"removed {len(files)} files listed in {MANIFEST}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default=os.environ.get("VIRTUAL_ENV") or ".venv",
                    help="virtualenv with the ROS 2 Kilted wheels (default: $VIRTUAL_ENV or .venv)")
    ap.add_argument("--force", action="store_true", help="rebuild even if tf2_msgs already works")
    ap.add_argument("--uninstall", action="store_true", help="remove what an earlier run installed")
    ap.add_argument("--build-dir", help="keep the cmake build here (default: a temporary dir)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    t0 = time.monotonic()
    venv = Path(args.venv).absolute()
    py = venv / "bin" / "python"
    if not py.exists():
        fail(f"no python at {py}: create the venv first (make venv)")
    prefix, purelib, py_include = venv_info(py, child_env(venv))
    env = child_env(prefix)

    if args.uninstall:
        uninstall(prefix)
        return 0
    if not args.force and importable(py, env):
        say(f"tf2_msgs already importable from {py}; nothing to do (--force rebuilds)")
        return 0

    say(f"ROS prefix: {prefix}")
    missing = [m for m in ("share/geometry_msgs/cmake/geometry_msgsConfig.cmake",
                           "share/rosidl_generator_py/cmake", "lib/librcutils.so")
               if not (prefix / m).exists()]
    if missing:
        fail(f"ROS 2 Kilted wheels not found in {prefix} (missing {', '.join(missing)}); "
             "install them first: pip install -e '.[ros]' (or make venv)")
    if not (Path(py_include) / "Python.h").exists():
        fail(f"Python development headers missing ({py_include}/Python.h); install the -dev "
             "package of the interpreter the venv was made from")
    cmake = find_tool(["cmake"], venv)
    if cmake is None:
        fail("cmake (>= 3.16) not found on PATH: apt-get install cmake, or pip install cmake "
             "into the venv")
    for names, what in ((["cc", "gcc", "clang"], "C"), (["c++", "g++", "clang++"], "C++")):
        if find_tool(names, venv) is None and not os.environ.get("CC" if what == "C" else "CXX"):
            fail(f"no {what} compiler found (tried {', '.join(names)}): apt-get install g++")
    if not (SOURCE_DIR / "package.xml").exists():
        fail(f"package sources missing: {SOURCE_DIR}")

    say("pip: ensuring build wheels: " + " ".join(BUILD_WHEELS))
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *BUILD_WHEELS], env)

    tmp = None
    if args.build_dir:
        build = Path(args.build_dir).absolute()
        if build.exists() and any(build.iterdir()) and not (build / "CMakeCache.txt").exists():
            fail(f"--build-dir {build} is not empty and not a cmake build folder: give an empty or new folder")
        build.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tf2_msgs_build_")
        build = Path(tmp.name)
    log = build / "build.log"
    generator = ["-G", "Ninja"] if find_tool(["ninja"], venv) else []
    say(f"cmake configure ({build})")
    run([cmake, "-S", str(SOURCE_DIR), "-B", str(build), *generator,
         f"-DCMAKE_PREFIX_PATH={prefix}", f"-DCMAKE_INSTALL_PREFIX={prefix}",
         f"-DPython3_EXECUTABLE={py}",
         "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_TESTING=OFF"], env, log)
    say(f"cmake build (-j{args.jobs})")
    run([cmake, "--build", str(build), "-j", str(args.jobs)], env, log)
    say("cmake install")
    run([cmake, "--install", str(build)], env, log)

    installed = [p for p in (build / "install_manifest.txt").read_text().splitlines() if p.strip()]
    (prefix / MANIFEST).write_text("\n".join(installed) + "\n")
    if not (purelib / "tf2_msgs" / "msg" / "__init__.py").exists():
        fail(f"python package was not installed into {purelib} (see {log})")
    if not importable(py, env):
        err = subprocess.run([str(py), "-c", CHECK], env=env, capture_output=True, text=True)
        fail(f"built and installed, but the check import fails:\n{err.stderr.strip()}")
    if tmp is not None:
        tmp.cleanup()
    say(f"done: {len(installed)} files into {prefix} (list: {MANIFEST}), "
        f"{time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
