"""Shared test fixtures: where the published data sets live, and skip rules when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Published data sets (GSM8K, Azure traces, published energy sweeps) sit in a folder `shared/data` beside
# the checkout on CI; DCSIM_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("DCSIM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"published data sets not found at {SHARED_DATA} (set DCSIM_SHARED_DATA)")
    return SHARED_DATA
