"""cxr.cache.manifest: fingerprints of a cache's inputs and what a repeated run resumes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cxr.cache import CacheError, prepare
from cxr.cache.manifest import (
    atomic_write_text,
    digest,
    file_stamps,
    labels_digest,
    paths_digest,
    resume_state,
)
from cxr.table import LabelTable


def _table(tmp_path, n=4):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = tmp_path / f"i{i}.png"
        Image.fromarray(np.full((40, 40), 20 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    return LabelTable.from_columns(paths, [str(i) for i in range(n)], np.eye(n, 1), ["Mass"])


def test_file_stamps_are_size_and_mtime_or_minus_one(tmp_path):
    table = _table(tmp_path, 2)
    stamps = file_stamps([*table.paths, str(tmp_path / "gone.png")])
    assert stamps.dtype == np.int64 and stamps.shape == (3, 2)
    assert stamps[0, 0] == os.path.getsize(table.paths[0])
    assert stamps[0, 1] == os.stat(table.paths[0]).st_mtime_ns
    assert stamps[2].tolist() == [-1, -1]


def test_digests_change_with_what_they_fingerprint(tmp_path):
    table = _table(tmp_path)
    assert digest(b"a", b"b") != digest(b"ab") and len(digest(b"a")) == 32
    flipped = LabelTable.from_columns(
        table.paths, [str(i) for i in range(4)], 1 - np.eye(4, 1), ["Mass"]
    )
    assert paths_digest(flipped) == paths_digest(table)
    assert labels_digest(flipped) != labels_digest(table)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "m.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_fresh_folder_starts_fresh_and_a_stranger_is_refused(tmp_path):
    table = _table(tmp_path / "img")
    out = tmp_path / "c"
    out.mkdir()
    assert resume_state(out, table, {}, file_stamps(table.paths), False, []) == (None, None)
    np.save(out / "pixels.npy", np.zeros(1))
    with pytest.raises(CacheError, match="no manifest.json"):
        resume_state(out, table, {}, file_stamps(table.paths), False, [])


def test_a_changed_file_is_pending_again(tmp_path):
    table = _table(tmp_path / "img")
    out = tmp_path / "c"
    prepare(table, out, 32, workers=1, progress=False)
    wanted = json.loads((out / "manifest.json").read_text())
    stamps = file_stamps(table.paths)
    stamps[1, 1] += 1
    notes: list[str] = []
    status, reasons = resume_state(out, table, wanted, stamps, False, notes)
    assert status is not None and status.tolist() == [1, 0, 1, 1] and reasons == {}
    assert any("1 image file(s) changed" in n for n in notes)
