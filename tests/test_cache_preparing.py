"""cxr.cache.preparing: the prepare job end to end, as the package exports it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cxr.cache
from cxr.cache import PreparedCache, prepare
from cxr.cache.preparing import prepare as prepare_here
from cxr.table import LabelTable


def test_the_package_exports_the_job_and_every_old_name():
    assert prepare is prepare_here
    for name in ("CacheError", "PrepareSettings", "PrepareSummary", "PreparedCache"):
        assert hasattr(cxr.cache, name), name
    assert set(cxr.cache.__all__) >= {"file_stamps", "prepare", "STORED", "REJECTED"}


def test_prepare_writes_a_complete_cache_and_a_second_run_does_nothing(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"i{i}.png"
        Image.fromarray(np.full((50, 70), 60 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    table = LabelTable.from_columns(paths, ["a", "b", "c"], np.eye(3, 2), ["Mass", "Nodule"])
    first = prepare(table, tmp_path / "c", 32, workers=1, progress=False, source="here")
    assert (first.total, first.stored, first.rejected, first.decoded) == (3, 3, 0, 3)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["source"] == "here"
    assert manifest["labels"] == ["Mass", "Nodule"] and manifest["size"] == 32
    cache = PreparedCache(tmp_path / "c")
    assert cache.read([0, 1, 2]).shape == (3, 32, 32)
    again = prepare(table, tmp_path / "c", 32, workers=1, progress=False)
    assert again.decoded == 0 and any("already complete" in n for n in again.notes)


def test_an_empty_table_is_refused(tmp_path):
    empty = LabelTable.from_columns([], [], np.zeros((0, 1)), ["Mass"])
    with pytest.raises(ValueError, match="no images"):
        prepare(empty, tmp_path / "c", 32, workers=1, progress=False)
