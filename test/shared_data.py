"""The real samples the tests read: ``../shared/data`` beside the repository (never copied into it)."""
from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sample(name: str) -> Path:
    """Path of a shared sample; the calling test is skipped (with the reason) when it is absent."""
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real sample {path} not found (shared data is expected next to the repository)")
    return path
