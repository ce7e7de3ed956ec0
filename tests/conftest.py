"""Shared fixtures: where the public data lives, and the tiny config used by end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (CI puts it there), or $RATIONALE_LOOP_SHARED_DATA."""
    candidates = [os.environ.get("RATIONALE_LOOP_SHARED_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate, "gsm8k").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("public data not found: set RATIONALE_LOOP_SHARED_DATA or put shared/ beside the checkout")
    return path
