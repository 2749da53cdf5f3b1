"""Where the package's installed files live (config/, launch/, rviz/): the source tree or share/prism_ros."""
from __future__ import annotations

import sys
from pathlib import Path


def share_dirs() -> list[Path]:
    """Candidate roots, most specific first: the source checkout, the ament index, the venv's share."""
    roots = [Path(__file__).resolve().parent.parent]
    try:  # installed by colcon: share/prism_ros
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory("prism_ros")))
    except Exception:
        pass
    roots.append(Path(sys.prefix) / "share" / "prism_ros")
    return roots


def config_file(name: str, required: bool = True) -> Path | None:
    """``config/<name>`` from the first root that has it; None (or FileNotFoundError) when none does."""
    candidates = [root / "config" / name for root in share_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    if required:
        raise FileNotFoundError(f"{name} not found (looked in {', '.join(map(str, candidates))}); "
                                "run from the prism_ros source tree or install the package.")
    return None
