"""Bad files for the loader tests: from a good file, write one that a loader must refuse with an InputError.

``FILE_CASES`` damage the file itself (missing, a directory, a FIFO, empty, truncated, random bytes,
unreadable); :func:`edited` keeps the container and changes what is in it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _fifo(good: Path, folder: Path) -> Path:
    os.mkfifo(folder / "fifo.pt")  # opening it for reading would block until a writer comes
    return folder / "fifo.pt"


def _unreadable(good: Path, folder: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    path = folder / "unreadable.pt"
    path.write_bytes(good.read_bytes())
    path.chmod(0)
    return path


def _write(name: str, data: bytes):
    def make(good: Path, folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


FILE_CASES = {  # name: (make(good file, folder) -> bad file, pattern of the InputError's message)
    "missing": (lambda good, folder: folder / "missing.pt", "not found"),
    "directory": (lambda good, folder: folder, "a directory"),
    "fifo": (_fifo, "not a regular file"),
    "empty": (_write("empty.pt", b""), "empty"),
    "truncated": (lambda good, folder: _write("half.pt", good.read_bytes()[: good.stat().st_size // 2])(good, folder),
                  "cannot read"),
    "random bytes": (_write("random.pt", bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                             generator=torch.Generator().manual_seed(0)).tolist())),
                     "cannot read"),
    "text": (_write("text.pt", b"images: 3\nposes: [1, 2, 3]\n"), "cannot read"),
    "unreadable": (_unreadable, "cannot read"),
}


def bad_file(case: str, good: Path, folder: Path) -> Path:
    """The file of ``FILE_CASES[case]`` made from ``good`` in ``folder``."""
    return FILE_CASES[case][0](Path(good), Path(folder))


def edited(good: Path, folder: Path, edit) -> Path:
    """A copy of the torch file ``good`` whose loaded dict went through ``edit(blob)`` (in place)."""
    blob = torch.load(good, weights_only=True)
    edit(blob)
    path = Path(folder) / "edited.pt"
    torch.save(blob, path)
    return path
