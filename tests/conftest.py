"""Shared test fixtures: where the published data sets live, and skip rules when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Published data sets (GSM8K, Azure traces, published energy sweeps) sit in a folder `shared/data` beside
# the checkout on CI; DCSIM_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("DCSIM_SHARED_DATA", REPO.parent / "shared" / "data"))
# Small real cuts of each of those data sets, shipped with the project (tests/data/README.md): same file names,
# columns and rows as the originals, so tests of format, parsing, conservation and behaviour run everywhere.
SAMPLE_DATA = REPO / "tests" / "data"


def require_shared(name: str = "") -> Path:
    """The full published data set `name` (or the whole folder), or skip: for tests of the whole data set's figures
    (its request count, published values, fitted profiles), which the samples in tests/data cannot check."""
    path = SHARED_DATA / name if name else SHARED_DATA
    if not path.is_dir():
        pytest.skip(f"full published data not found at {path} (set DCSIM_SHARED_DATA): this test checks the whole "
                    "data set, not the samples in tests/data")
    return path


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


@pytest.fixture
def sample_data() -> Path:
    """tests/data: a few hundred real rows (or a few whole files) of each published data set, with its licence."""
    return SAMPLE_DATA
