"""ACE map files: the scene-specific heads (fp16) and what is needed to use them correctly.

A map holds one head per chunk (one for a plain map, k for an ensemble) with its mean offset and chunk
centre, the id of the encoder whose features the heads read, the working image height (queries are
resized to it), the mapping camera's intrinsics (for the record and a warning when queries differ
a lot), the recipe and a sha256 of the head weights. Maps made with depth also hold what the hybrid answer
(:mod:`prism_ros.ace.hybrid`) needs: the map cloud of the depth check (float32 points and normals) and the SIFT
keyframes of the second opinion (pixels, fp16 descriptors, float32 world points, poses); older files without
them still load. :func:`load_map` validates all of it and raises :class:`~prism_ros.errors.InputError` for a
corrupt, truncated, foreign or mismatched file.
Stored with ``torch.save`` (zip of tensors) and read with ``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from prism_ros.ace.features import FeatureConfig, FeatureMap, Keyframe
from prism_ros.ace.head import Head, HeadConfig
from prism_ros.ace.verify import MapCloud
from prism_ros.errors import (
    InputError,
    check_int,
    check_number,
    check_tensor,
    check_weights,
    file_kind,
    read_torch_file,
)

MAP_FORMAT = "prism_ros.ace.map"
MAP_VERSION = 1
MAX_EXTENT_M = 1e4  # chunk centres and head means: no mapped scene reaches 10 km from its origin
MAX_IMAGE_SIDE = 8192  # px: image_height (queries are resized to it) and the mapping images
MAX_HEAD_WIDTH, MAX_HEAD_BLOCKS = 4096, 16  # the recipes use widths 128-512 and 1 block


@dataclass
class AceMap:
    """Heads (one per chunk), chunk centres (k,3), encoder id, working height, mapping intrinsics
    (fx, fy, cx, cy, width, height of the original images) and a free-form ``meta`` record."""

    heads: list[Head]
    centres: np.ndarray
    encoder_id: str
    image_height: int
    intrinsics: tuple[float, float, float, float, int, int]
    meta: dict = field(default_factory=dict)
    cloud: MapCloud | None = None  # the mapped surfaces, for the depth check of a pose (maps made with depth)
    features: FeatureMap | None = None  # SIFT keyframes, the second opinion (maps made with depth)

    def to(self, device) -> "AceMap":
        self.heads = [h.to(device) for h in self.heads]
        return self


def _digest(records: list[dict]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record["mean"].numpy().tobytes())
        for key in sorted(record["state_dict"]):
            digest.update(key.encode())
            digest.update(record["state_dict"][key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_map(ace_map: AceMap, path: str | Path) -> Path:
    """Write the map (heads in fp16, ~1 MB per CPU head, ~4 MB per reference head)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [h.to_record() for h in ace_map.heads]
    torch.save({"format": MAP_FORMAT, "version": MAP_VERSION, "encoder_id": ace_map.encoder_id,
                "image_height": int(ace_map.image_height),
                "intrinsics": [float(x) for x in ace_map.intrinsics[:4]] + [int(x) for x in ace_map.intrinsics[4:6]],
                "centres": torch.as_tensor(np.asarray(ace_map.centres, dtype=np.float64)).reshape(-1, 3),
                "heads": records, "sha256": _digest(records), "meta": dict(ace_map.meta),
                "cloud": _cloud_record(ace_map.cloud), "features": _features_record(ace_map.features)}, path)
    return path


def _cloud_record(cloud: MapCloud | None) -> dict | None:
    if cloud is None:
        return None
    return {"points": torch.from_numpy(cloud.points), "normals": torch.from_numpy(cloud.normals)}


def _features_record(features: FeatureMap | None) -> dict | None:
    if features is None:
        return None
    fp16 = features.config.detector == "sift"  # SIFT's float descriptors; ORB's are bytes already
    return {"config": asdict(features.config),
            "keyframes": [{"index": int(k.index), "pose": torch.from_numpy(np.asarray(k.T_world_camera, np.float64)),
                           "pixels": torch.from_numpy(np.asarray(k.pixels, np.float32)),
                           "descriptors": torch.from_numpy(k.descriptors.astype(np.float16 if fp16 else np.uint8)),
                           "world": torch.from_numpy(np.asarray(k.world, np.float32))}
                          for k in features.keyframes]}


def _read_cloud(record, fix: str, path: Path) -> MapCloud | None:
    if record is None:
        return None
    if not isinstance(record, dict):
        raise InputError(f"invalid map file (cloud must be a dict, got {type(record).__name__})", fix, path)
    points = check_tensor(record.get("points"), "map cloud points", (None, 3), fix, path, limit=MAX_EXTENT_M)
    normals = check_tensor(record.get("normals"), "map cloud normals", (len(points), 3), fix, path, limit=1.01)
    return MapCloud(points.numpy(), normals.numpy())


def _read_features(record, fix: str, path: Path) -> FeatureMap | None:
    if record is None:
        return None
    keyframes = record.get("keyframes") if isinstance(record, dict) else None
    config = record.get("config") if isinstance(record, dict) else None
    names = {f.name for f in fields(FeatureConfig)}
    if not isinstance(config, dict) or set(config) != names or not isinstance(keyframes, list) or not keyframes:
        raise InputError("invalid map file (features need a config with the FeatureConfig keys and keyframes)",
                         fix, path)
    config = FeatureConfig(**config)
    width, kind = (128, (torch.float16,)) if config.detector == "sift" else (32, (torch.uint8,))
    out = []
    for i, k in enumerate(keyframes):
        if not isinstance(k, dict):
            raise InputError(f"invalid map file (feature keyframe {i} is not a dict)", fix, path)
        pose = check_tensor(k.get("pose"), f"feature keyframe {i} pose", (4, 4), fix, path, limit=MAX_EXTENT_M)
        pixels = check_tensor(k.get("pixels"), f"feature keyframe {i} pixels", (None, 2), fix, path,
                              limit=MAX_IMAGE_SIDE)
        n = len(pixels)
        descriptors = check_tensor(k.get("descriptors"), f"feature keyframe {i} descriptors", (n, width), fix, path,
                                   dtypes=kind)
        world = check_tensor(k.get("world"), f"feature keyframe {i} world points", (n, 3), fix, path,
                             limit=MAX_EXTENT_M)
        raw = descriptors.numpy()
        out.append(Keyframe(check_int(k.get("index"), f"feature keyframe {i} index", 0, 2**62, fix, path),
                            pose.double().numpy(), pixels.numpy(),
                            raw.astype(np.float32) if config.detector == "sift" else raw, world.double().numpy()))
    return FeatureMap(out, config)


def load_map(path: str | Path, encoder_id: str | None = None, device="cpu") -> AceMap:
    """Read and validate a map; with ``encoder_id`` also check that it was made with that encoder. Every size is
    checked before a head is built, and every weight, mean and centre must be finite."""
    path = Path(path)
    if not path.exists():
        raise InputError("map file not found", "give the file written by `prism-ros ace map --out`", path)
    blob = read_torch_file(path, "cannot read the map",
                           "the file is corrupt or truncated: map the scene again with `prism-ros ace map`")
    if not isinstance(blob, dict) or blob.get("format") != MAP_FORMAT:
        raise InputError(f"not an ACE map file{file_kind(blob)}", "give a file written by `prism-ros ace map --out`",
                         path)
    if blob.get("version") != MAP_VERSION:
        raise InputError(f"map format version {blob.get('version')!r} is not supported (this build reads "
                         f"{MAP_VERSION})", "map the scene again with this version's `prism-ros ace map`", path)
    fix = "map the scene again with `prism-ros ace map`"
    missing = sorted({"encoder_id", "image_height", "intrinsics", "centres", "heads", "sha256"} - set(blob))
    if missing:
        raise InputError(f"invalid map file (missing {', '.join(missing)})", fix, path)
    if not isinstance(blob["encoder_id"], str) or not isinstance(blob["sha256"], str):
        raise InputError("invalid map file (encoder_id and sha256 must be strings)", fix, path)
    records = blob["heads"]
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise InputError("invalid map file (heads must be a non-empty list of head records)", fix, path)
    centres = check_tensor(blob["centres"], "chunk centres", (len(records), 3), fix, path, limit=MAX_EXTENT_M)
    height = check_int(blob["image_height"], "image_height", 8, MAX_IMAGE_SIDE, fix, path)
    intrinsics = blob["intrinsics"]
    if not isinstance(intrinsics, (list, tuple)) or len(intrinsics) != 6:
        raise InputError(f"intrinsics must be [fx, fy, cx, cy, width, height], got {intrinsics!r:.80}", fix, path)
    fx, fy, cx, cy = (check_number(v, f"intrinsics {name}", low, 1e6, fix, path)
                      for v, name, low in zip(intrinsics[:4], ("fx", "fy", "cx", "cy"), (1e-3, 1e-3, -1e6, -1e6)))
    width, rows = (check_int(v, f"intrinsics {n}", 1, MAX_IMAGE_SIDE, fix, path)
                   for v, n in zip(intrinsics[4:], ("width", "height")))
    feature_width = _feature_width(blob["encoder_id"])
    heads = [_head(record, k, feature_width, fix, path) for k, record in enumerate(records)]
    if _digest(records) != blob["sha256"]:
        raise InputError("invalid map file (checksum of the head weights does not match: file altered or damaged)",
                         fix, path)
    if encoder_id is not None and blob["encoder_id"] != encoder_id:
        raise InputError(f"map was made with encoder {blob['encoder_id']}, but the encoder loaded is {encoder_id}",
                         "pass --encoder with the weights used for mapping (or map again with this encoder)", path)
    meta = blob.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError(f"invalid map file (meta must be a dict, got {type(meta).__name__})", fix, path)
    return AceMap([head.to(device) for head in heads], centres.numpy(), blob["encoder_id"], height,
                  (fx, fy, cx, cy, width, rows), meta, _read_cloud(blob.get("cloud"), fix, path),
                  _read_features(blob.get("features"), fix, path))


def _feature_width(encoder_id: str) -> int | None:
    """Feature width of a known encoder configuration named in ``<config>:<digest>``, else None."""
    from prism_ros.ace.encoder import CONFIGS

    config = CONFIGS.get(encoder_id.partition(":")[0])
    return config.out if config else None


def _head(record: dict, index: int, feature_width: int | None, fix: str, path: Path) -> Head:
    """Head ``index`` of a map file: sizes checked before it is built, weights checked against its shapes."""
    name = f"head {index}"
    config = record.get("config")
    names = {f.name for f in fields(HeadConfig)}
    if not isinstance(config, dict) or set(config) != names:
        raise InputError(f"{name} config must have the keys {sorted(names)}, got {config!r:.80}", fix, path)
    config = HeadConfig(check_int(config["in_channels"], f"{name} in_channels", 1, MAX_HEAD_WIDTH, fix, path),
                        check_int(config["width"], f"{name} width", 1, MAX_HEAD_WIDTH, fix, path),
                        check_int(config["blocks"], f"{name} blocks", 0, MAX_HEAD_BLOCKS, fix, path))
    if feature_width is not None and config.in_channels != feature_width:
        raise InputError(f"{name} reads {config.in_channels} features but its encoder gives {feature_width}", fix,
                         path)
    mean = check_tensor(record.get("mean"), f"{name} mean", (3,), fix, path, limit=MAX_EXTENT_M)
    state = record.get("state_dict")
    state = check_weights(lambda: Head(config), {**state, "mean": mean} if isinstance(state, dict) else state,
                          f"{name} weights", fix, path)
    head = Head(config)
    head.load_state_dict(state)
    return head.eval()
