"""Shared test fixtures.

Real public chest X-rays live in ``../shared/datasets`` beside the repository (see its
README). Tests that use them take the ``shared_datasets`` fixture and are skipped where
the folder is absent, so a user's own clone still passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of ``../shared/datasets``; skips the test when it is absent."""
    if not (SHARED_DATASETS / "README.md").is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
