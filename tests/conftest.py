"""Shared test fixtures.

Real public chest X-rays live in ``../shared/datasets`` beside the repository (see its
README). Tests that use them take the ``shared_datasets`` fixture and are skipped where
the folder is absent, so a user's own clone still passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: One CPU thread count for the whole suite: CPU kernels sum in an order that depends on it,
#: so tests comparing runs (and subprocesses, which start with the core count) agree.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of ``../shared/datasets``; skips the test when it is absent."""
    if not (SHARED_DATASETS / "README.md").is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def make_phantom_caches(root: Path, n_images: int, size: int, seed: int = 0) -> dict[str, Path]:
    """Phantoms split by patient (80/10/10) and prepared at ``size``: {split: cache folder}."""
    from cxr.cache import prepare
    from cxr.split import split_by_patient, split_tables
    from cxr.synth import SynthConfig, generate_phantoms

    table = generate_phantoms(
        root / "phantoms", SynthConfig(n_images=n_images, size=size * 2, seed=seed), workers=1
    )
    parts = split_tables(table, split_by_patient(table, seed=seed))
    out = {}
    for name, part in parts.items():
        prepare(part, root / "cache" / name, size, workers=1, progress=False)
        out[name] = root / "cache" / name
    out["phantoms"] = root / "phantoms"
    return out


@pytest.fixture(scope="session")
def phantom_caches_small(tmp_path_factory) -> dict[str, Path]:
    """240 phantoms at 32 px, split and prepared: quick training runs."""
    return make_phantom_caches(tmp_path_factory.mktemp("phantoms_small"), 240, 32)


@pytest.fixture(scope="session")
def phantom_caches_300(tmp_path_factory) -> dict[str, Path]:
    """300 phantoms at 64 px, split and prepared: the tuning and tracking runs."""
    return make_phantom_caches(tmp_path_factory.mktemp("phantoms_300"), 300, 64)


@pytest.fixture(scope="session")
def phantom_caches_64(tmp_path_factory) -> dict[str, Path]:
    """1000 phantoms at 64 px, split and prepared: runs that must learn."""
    return make_phantom_caches(tmp_path_factory.mktemp("phantoms_64"), 1000, 64)


#: The recipe of the phantom model shared by the learning and localisation tests.
PHANTOM_MODEL_EPOCHS = 16


@pytest.fixture(scope="session")
def trained_phantom_model(phantom_caches_64, tmp_path_factory):
    """The small CNN (GeM head) trained 16 epochs on ``phantom_caches_64``: a TrainResult."""
    from cxr.training import TrainConfig, train

    config = TrainConfig(
        backbone="cxr-small-cnn",
        pool="gem",
        phase1_epochs=0,
        phase2_epochs=PHANTOM_MODEL_EPOCHS,
        phase2_lr=3e-3,
        batch_size=32,
        device="cpu",
        seed=0,
    )
    c = phantom_caches_64
    return train(
        config,
        c["train"],
        c["val"],
        tmp_path_factory.mktemp("phantom_model") / "run",
        progress=False,
        echo=lambda s: None,
    )
