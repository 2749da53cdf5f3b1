"""ACE map files: the scene-specific heads (fp16) and what is needed to use them correctly.

A map holds one head per chunk (one for a plain map, k for an ensemble) with its mean offset and chunk
centre, the id of the encoder whose features the heads read, the working image height (queries are
resized to it), the mapping camera's intrinsics (for the record and a warning when queries differ
a lot), the recipe and a sha256 of the head weights. :func:`load_map` validates all of it and raises
:class:`~prism_ros.errors.InputError` for a corrupt, truncated, foreign or mismatched file.
Stored with ``torch.save`` (zip of tensors) and read with ``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prism_ros.ace.head import Head
from prism_ros.errors import InputError, read_torch_file

MAP_FORMAT = "prism_ros.ace.map"
MAP_VERSION = 1


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
                "heads": records, "sha256": _digest(records), "meta": dict(ace_map.meta)}, path)
    return path


def load_map(path: str | Path, encoder_id: str | None = None, device="cpu") -> AceMap:
    """Read and validate a map; with ``encoder_id`` also check that it was made with that encoder."""
    path = Path(path)
    if not path.is_file():
        raise InputError("map file not found", "give the file written by `prism-ros ace map --out`", path)
    blob = read_torch_file(path, "cannot read the map",
                           "the file is corrupt or truncated: map the scene again with `prism-ros ace map`")
    if not isinstance(blob, dict) or blob.get("format") != MAP_FORMAT:
        raise InputError("not an ACE map file", "give a file written by `prism-ros ace map --out`", path)
    if blob.get("version") != MAP_VERSION:
        raise InputError(f"map format version {blob.get('version')} is not supported (this build reads {MAP_VERSION})",
                         "map the scene again with this version of prism_ros", path)
    try:
        records, centres = blob["heads"], blob["centres"].numpy()
        if not records or len(centres) != len(records):
            raise ValueError(f"{len(records)} heads but {len(centres)} chunk centres")
        if _digest(records) != blob["sha256"]:
            raise ValueError("checksum of the head weights does not match (file altered or damaged)")
        heads = [Head.from_record(r).to(device) for r in records]
        intrinsics = tuple(blob["intrinsics"])
        if len(intrinsics) != 6 or int(blob["image_height"]) < 8:
            raise ValueError("bad intrinsics or image height")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise InputError(f"invalid map file ({str(error)[:200]})",
                         "map the scene again with `prism-ros ace map`", path) from None
    if encoder_id is not None and blob["encoder_id"] != encoder_id:
        raise InputError(f"map was made with encoder {blob['encoder_id']}, but the encoder loaded is {encoder_id}",
                         "pass --encoder with the weights used for mapping (or map again with this encoder)", path)
    return AceMap(heads, centres, blob["encoder_id"], int(blob["image_height"]), intrinsics, blob.get("meta", {}))
