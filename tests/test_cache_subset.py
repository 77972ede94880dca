"""cxr.cache.subset: a prepared cache of some rows of another, written whole or not at all,
reused when identical, refusing rows it cannot hold."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.cache import CacheError, PreparedCache, cache_digest, prepare, write_subset
from cxr.cache.subset import ROWS_FILE
from cxr.table import LabelTable

SIZE = 32
N = 10


def _source(root: Path, flip: bool = False) -> PreparedCache:
    """N random PNGs (image 3 unreadable: a rejected row) of 5 patients, prepared."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(N):
        p = root / "img" / f"img{i:02d}.png"
        if i == 3:
            p.write_bytes(b"not a png")
        elif not p.exists():
            Image.fromarray(rng.integers(0, 256, (40 + i, 50), dtype=np.uint8)).save(p)
        paths.append(str(p))
    labels = np.stack([np.arange(N) % 2, (np.arange(N) // 3) % 2], axis=1).astype(np.float32)
    if flip:
        labels = 1 - labels
    table = LabelTable.from_columns(
        paths, [f"p{i // 2}" for i in range(N)], labels, ["Mass", "Nodule"]
    )
    prepare(table, root / "cache", SIZE, workers=1, progress=False)
    return PreparedCache(root / "cache")


@pytest.fixture
def source(tmp_path) -> PreparedCache:
    cache = _source(tmp_path / "src")
    assert len(cache) == N - 1  # the unreadable image is not a row of the table
    return cache


def test_a_subset_reads_back_the_chosen_images_and_labels(source, tmp_path):
    rows = np.array([6, 0, 3, 8])  # table rows: 3 and later sit one pixel row further on
    sub = write_subset(source, rows, tmp_path / "sub")
    again = PreparedCache(tmp_path / "sub")  # opens as any cache
    assert len(again) == 4 and again.size == SIZE and again.fit == source.fit
    np.testing.assert_array_equal(again.read(np.arange(4)), source.read(rows))
    np.testing.assert_array_equal(again.labels(np.arange(4)), source.labels(rows))
    assert again.table.paths == [source.table.paths[r] for r in rows]
    assert list(again.table.patient_ids) == list(source.table.patient_ids[rows])
    assert again.table.pathologies == source.table.pathologies
    origin = again.manifest["subset_of"]
    assert origin["path"] == str(source.path.resolve()) and origin["rows"] == 4
    assert origin["cache_digest"] == cache_digest(source)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / ROWS_FILE), rows)
    assert "subset of" in again.manifest["source"] and sub.path == tmp_path / "sub"
    mask = np.zeros(len(source), dtype=bool)
    mask[[1, 2]] = True  # a boolean mask is taken as the rows it marks
    by_mask = write_subset(source, mask, tmp_path / "mask")
    assert by_mask.table.paths == [source.table.paths[1], source.table.paths[2]]


def test_an_identical_subset_is_reused_and_another_replaces_it(source, tmp_path):
    out = tmp_path / "o" / "sub"
    write_subset(source, np.array([1, 2]), out)
    before = os.stat(out / "pixels.npy")
    write_subset(source, np.array([1, 2]), out)
    after = os.stat(out / "pixels.npy")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = write_subset(source, np.array([2, 1, 0]), out)  # other rows: rewritten
    assert other.table.paths == [source.table.paths[i] for i in (2, 1, 0)]
    assert [p.name for p in out.parent.iterdir()] == ["sub"]  # nothing left beside it


def test_a_changed_source_rewrites_the_subset(tmp_path):
    source = _source(tmp_path / "src")
    first = write_subset(source, np.array([0, 1]), tmp_path / "sub")
    assert list(first.labels([0, 1])[:, 0]) == [0, 1]
    changed = _source(tmp_path / "src", flip=True)  # the same images, other labels
    assert cache_digest(changed) != cache_digest(source)
    second = write_subset(changed, np.array([0, 1]), tmp_path / "sub")
    assert list(second.labels([0, 1])[:, 0]) == [1, 0]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.array([], dtype=np.int64), "no rows given; a cache needs at least one image"),
        (np.array([0, 9]), r"row 9 is out of range; the cache has 9 images \(rows 0 to 8\)"),
        (np.array([-1]), "row -1 is out of range"),
        (np.array([2, 4, 2]), "row 2 is given more than once"),
        (np.array([[0, 1]]), "rows must be a 1-D array"),
        (np.array([0.0, 1.0]), "rows must be whole row numbers"),
        (np.ones(3, dtype=bool), r"a boolean mask needs one value per image \(9\)"),
    ],
)
def test_bad_rows_are_refused_and_write_nothing(source, tmp_path, rows, message):
    with pytest.raises(CacheError, match=message) as info:
        write_subset(source, rows, tmp_path / "sub")
    assert str(source.path) in str(info.value)  # the message names the cache
    assert not (tmp_path / "sub").exists()


def test_a_folder_that_is_not_a_subset_is_not_replaced(source, tmp_path):
    with pytest.raises(CacheError, match="is the source cache itself"):
        write_subset(source, np.array([0]), source.path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(CacheError, match="holds files that are not a subset cache"):
        write_subset(source, np.array([0]), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert len(write_subset(source, np.array([0]), tmp_path / "empty")) == 1


def test_a_failed_write_leaves_no_cache_and_no_partial_folder(source, tmp_path, monkeypatch):
    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(LabelTable, "save_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_subset(source, np.array([0, 1]), tmp_path / "o" / "sub")
    assert list((tmp_path / "o").iterdir()) == []  # not even the hidden folder it wrote into


def test_the_folder_of_a_killed_writer_never_opens_and_is_cleaned_up(source, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "o" / "sub"
    left = out.parent / f".sub.partial-{socket.gethostname()}-{int(dead.stdout)}-0000abcd"
    left.mkdir(parents=True)
    (left / "pixels.npy").write_bytes(b"half")  # killed before its manifest was written
    with pytest.raises(CacheError, match="no manifest.json"):
        PreparedCache(left)
    with pytest.raises(CacheError, match="no manifest.json"):
        PreparedCache(out)
    write_subset(source, np.array([0]), out)
    assert [p.name for p in out.parent.iterdir()] == ["sub"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["stored"] == 1
