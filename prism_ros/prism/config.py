"""One configuration for the whole filter, built from the components' own config dataclasses.

YAML files mirror the nesting (``map:``, ``render:``, ``tracking:``, ``dynamics:`` plus the
top-level keys below); anything not given keeps its default. Unknown keys are an error that names
the key and the file, so a typo never silently falls back to a default. Presets per dataset format
live in ``config/prism_<format>.yaml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prism_ros.dynamics.model import DynamicsConfig
from prism_ros.errors import InputError
from prism_ros.prism.map import MapConfig
from prism_ros.prism.render import RenderConfig
from prism_ros.prism.tracking import TrackingConfig

IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def resolve_device(name: str) -> str:
    """A torch device name: 'auto' picks CUDA when available; 'cuda[:N]' without CUDA, or a name torch does not
    know, is an input error (the filter, the ACE tools and the nodes all choose devices this way)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available", "use --device cpu or --device auto")
    try:
        torch.device(name)
    except RuntimeError as error:
        raise InputError(f"device {name!r} is not valid ({error})", "use auto, cpu, cuda or cuda:N") from None
    return name


AUTO_MAP_PIXELS = 100_000  # map_level auto: QVGA (76,800 pixels) fuses at full resolution, VGA at half


@dataclass
class FilterConfig:
    map: MapConfig = field(default_factory=MapConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    levels: int = 3  # observation pyramid levels
    render_level: int = 1  # the one render per frame is at this level (1 = half resolution)
    # the map fuses depth at this pyramid level (colour always at full resolution); "auto": the finest level
    # with at most AUTO_MAP_PIXELS pixels (full resolution up to QVGA, half resolution for VGA)
    map_level: int | str = 0
    max_depth: float = 5.0  # metres; farther depth is ignored (noise grows with z^2)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # per-frame stages: fused Warp kernels (prism_ros.prism.kernels) or the torch reference;
    # auto = fused when Warp loads
    backend: str = "auto"  # auto | fused | torch
    # torch CPU threads. 1 by default: per-frame tensors are small, and extra OpenMP threads spin and
    # contend with each other and with other processes for few cores
    cpu_threads: int = 1
    # CPU threads of the fused kernels (each range of a launch on its own thread, no spinning); 0 = one per core
    kernel_threads: int = 0
    T_body_camera: tuple[float, ...] = IDENTITY  # row-major 4x4, camera -> body (IMU) frame
    # scale of the map-frame drift random walk added to the reported pose covariance (prism_ros.prism.drift);
    # 0 reports the map-relative Laplace covariance alone
    map_drift: float = 1.0
    initial_velocity_std: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5, 0.5, 0.5)

    def __post_init__(self):
        from prism_ros.prism.kernels import BACKENDS

        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}", f"use one of {', '.join(BACKENDS)}")
        if self.map_level != "auto" and not isinstance(self.map_level, int):
            raise InputError(f"map_level {self.map_level!r} is neither a pyramid level nor auto",
                             "give a level (0 = full resolution) or auto")
        map_level = 0 if self.map_level == "auto" else self.map_level
        if not 0 <= self.render_level < self.levels or not 0 <= map_level < self.levels:
            raise InputError(f"render_level {self.render_level} and map_level {self.map_level} must be pyramid "
                             f"levels 0..{self.levels - 1}", "lower them or raise `levels`")

    def map_level_for(self, width: int, height: int) -> int:
        """The pyramid level the map fuses depth at, for images of this size (resolves "auto")."""
        if self.map_level != "auto":
            return self.map_level
        level = 0
        while level + 1 < self.levels and (width >> level) * (height >> level) > AUTO_MAP_PIXELS:
            level += 1
        return level

    def resolved_device(self) -> str:
        """The torch device name of :attr:`device` (see :func:`resolve_device`)."""
        return resolve_device(self.device)

    def resolved_backend(self) -> str:
        """'fused' or 'torch' (see :func:`prism_ros.prism.kernels.resolve_backend`)."""
        from prism_ros.prism.kernels import resolve_backend

        return resolve_backend(self.backend)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: dict, source: object = None) -> "FilterConfig":
        return fill_dataclass(FilterConfig, values, source, "")

    @staticmethod
    def from_yaml(*paths: str | Path) -> "FilterConfig":
        """Later files override earlier ones (e.g. a format preset, then the user's file)."""
        merged: dict = {}
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise InputError("config file not found", "check the path given to --config", path)
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as error:
                raise InputError(f"not valid YAML ({error})", "fix the file's syntax", path) from None
            if not isinstance(values, dict):
                raise InputError("expected a mapping of settings at the top level", "see config/prism.yaml", path)
            merged = deep_merge(merged, values)
        return FilterConfig.from_dict(merged, source=", ".join(map(str, paths)))


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def fill_dataclass(cls, values: dict, source: object, prefix: str):
    """Instantiate ``cls`` from a (nested) dict, rejecting unknown keys by their dotted name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise InputError(f"unknown setting(s) {names}", f"valid keys here: {', '.join(sorted(fields))}", source)
    defaults, kwargs = cls(), {}  # every config dataclass has defaults for all fields
    for name, value in values.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = fill_dataclass(type(default), value, source, f"{prefix}{name}.")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def preset_files(dataset, user_file: str | Path | None = None) -> list[Path]:
    """The YAML files behind :func:`preset_config`: the data's preset where one exists, then the user's file."""
    from prism_ros.resources import config_file

    preset = config_file(f"prism_{getattr(dataset, 'preset_name', dataset.format_name)}.yaml", required=False)
    return [Path(p) for p in (preset, user_file) if p is not None]


def preset_config(dataset, user_file: str | Path | None = None) -> FilterConfig:
    """The data's preset (``config/prism_<preset_name>.yaml``, when present) overridden by the user's file;
    the camera->body extrinsic comes from the dataset when it has an IMU."""
    import numpy as np


    files = preset_files(dataset, user_file)
    settings = FilterConfig.from_yaml(*files) if files else FilterConfig()
    if dataset.T_imu_camera is not None and settings.dynamics.model != "constant_velocity":
        settings.T_body_camera = tuple(float(x) for x in np.asarray(dataset.T_imu_camera).ravel())
    return settings
