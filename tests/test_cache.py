import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.cache import CacheError, PreparedCache, prepare
from cxr.cache import workers as cache_mod
from cxr.images import load_for_cache
from cxr.table import LabelTable

SIZE = 32


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n random 8-bit gray PNGs of varying shape; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        p = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def table_of(paths, labels=None) -> LabelTable:
    n = len(paths)
    if labels is None:
        labels = (np.arange(n) % 2).reshape(n, 1)
    return LabelTable.from_columns(paths, [str(i // 2) for i in range(n)], labels, ["Mass"])


def expected_pixels(paths):
    return np.stack([load_for_cache(p, SIZE, "pad") for p in paths])


@pytest.fixture
def good(tmp_path):
    return write_images(tmp_path / "img", 12)


def test_prepare_stores_every_image_and_reads_back(tmp_path, good):
    summary = prepare(table_of(good), tmp_path / "c", SIZE, workers=2, progress=False)
    assert (summary.total, summary.stored, summary.rejected, summary.decoded) == (12, 12, 0, 12)
    cache = PreparedCache(tmp_path / "c")
    assert len(cache) == 12 and cache.size == SIZE
    np.testing.assert_array_equal(cache.read(np.arange(12)), expected_pixels(good))
    batch = cache.read([5, 1])
    assert batch.dtype == np.uint8 and batch.shape == (2, SIZE, SIZE)
    assert isinstance(batch, np.ndarray) and not isinstance(batch, np.memmap)
    np.testing.assert_array_equal(batch[0], load_for_cache(good[5], SIZE, "pad"))
    np.testing.assert_array_equal(cache.labels([5, 1])[:, 0], [1, 1])
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["size"] == SIZE and manifest["count"] == 12


def test_bad_images_are_rejected_with_reasons_and_do_not_stop_the_run(tmp_path, good):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "garbage.png").write_bytes(b"this is not an image" * 10)
    whole = Path(good[0]).read_bytes()
    (bad / "truncated.png").write_bytes(whole[: len(whole) // 2])
    paths = [
        good[0],
        str(bad / "missing.png"),
        str(bad / "empty.png"),
        good[1],
        str(bad / "garbage.png"),
        str(bad / "truncated.png"),
        good[2],
    ]
    summary = prepare(table_of(paths), tmp_path / "c", SIZE, workers=1, progress=False)
    assert (summary.stored, summary.rejected) == (3, 4)
    reasons = {Path(p).name: r for p, r, _ in summary.rejects}
    assert reasons["missing.png"] == "missing"
    assert reasons["empty.png"] == "empty"
    assert reasons["truncated.png"] == "truncated"
    assert reasons["garbage.png"] in {"unsupported", "unreadable"}
    rejects = (tmp_path / "c" / "rejects.csv").read_text()
    assert "missing.png,missing" in rejects and "truncated.png,truncated" in rejects
    assert "missing.png: missing" in summary.to_text()
    cache = PreparedCache(tmp_path / "c")
    assert cache.table.paths == [good[0], good[1], good[2]]
    np.testing.assert_array_equal(cache.read([0, 1, 2]), expected_pixels(good[:3]))


def test_repeated_run_does_nothing(tmp_path, good):
    prepare(table_of(good), tmp_path / "c", SIZE, workers=1, progress=False)
    before = (tmp_path / "c" / "pixels.npy").stat().st_mtime_ns
    again = prepare(table_of(good), tmp_path / "c", SIZE, workers=1, progress=False)
    assert again.decoded == 0 and again.stored == 12
    assert any("already complete" in n for n in again.notes)
    assert (tmp_path / "c" / "pixels.npy").stat().st_mtime_ns == before


def test_changed_setting_is_refused_then_rebuilt_with_overwrite(tmp_path, good):
    prepare(table_of(good), tmp_path / "c", SIZE, workers=1, progress=False)
    with pytest.raises(CacheError, match="size 32 -> 48"):
        prepare(table_of(good), tmp_path / "c", 48, workers=1, progress=False)
    with pytest.raises(CacheError, match="image list changed"):
        prepare(table_of(good[:-1]), tmp_path / "c", SIZE, workers=1, progress=False)
    # the refused runs did not damage the cache
    assert len(PreparedCache(tmp_path / "c")) == 12
    rebuilt = prepare(table_of(good), tmp_path / "c", 48, workers=1, progress=False, overwrite=True)
    assert rebuilt.decoded == 12
    assert PreparedCache(tmp_path / "c").read([0]).shape == (1, 48, 48)


def test_changed_or_new_image_files_are_decoded_again(tmp_path, good):
    paths = good[:4] + [str(tmp_path / "img" / "late.png")]
    first = prepare(table_of(paths), tmp_path / "c", SIZE, workers=1, progress=False)
    assert first.rejected == 1
    Image.fromarray(np.full((50, 70), 200, np.uint8)).save(paths[-1])  # the missing file arrives
    Image.fromarray(np.full((60, 60), 7, np.uint8)).save(paths[1])  # and one image changes
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    second = prepare(table_of(paths), tmp_path / "c", SIZE, workers=1, progress=False)
    assert second.decoded == 2 and second.rejected == 0 and second.stored == 5
    cache = PreparedCache(tmp_path / "c")
    np.testing.assert_array_equal(cache.read(np.arange(5)), expected_pixels(paths))
    assert (tmp_path / "c" / "rejects.csv").read_text().strip() == "path,reason,detail"


def test_changed_labels_are_rewritten_without_decoding(tmp_path, good):
    prepare(table_of(good), tmp_path / "c", SIZE, workers=1, progress=False)
    flipped = 1 - (np.arange(12) % 2).reshape(12, 1)
    again = prepare(table_of(good, flipped), tmp_path / "c", SIZE, workers=1, progress=False)
    assert again.decoded == 0
    assert any("labels changed" in n for n in again.notes)
    np.testing.assert_array_equal(PreparedCache(tmp_path / "c").table.labels, flipped)


def test_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, good, monkeypatch):
    calls = {"n": 0}
    real = cache_mod.load_for_cache

    def flaky(path, size, fit):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real(path, size, fit)

    paths = good + write_images(tmp_path / "more", 60, seed=1)
    monkeypatch.setattr(cache_mod, "_CHUNK", 8)
    monkeypatch.setattr(cache_mod, "load_for_cache", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(table_of(paths), tmp_path / "c", SIZE, workers=1, progress=False)
    status = np.load(tmp_path / "c" / "status.npy")
    assert (status == cache_mod.STORED).sum() == 32  # four whole chunks were checkpointed
    with pytest.raises(CacheError, match="incomplete"):
        PreparedCache(tmp_path / "c")
    monkeypatch.setattr(cache_mod, "load_for_cache", real)
    resumed = prepare(table_of(paths), tmp_path / "c", SIZE, workers=1, progress=False)
    assert resumed.decoded == len(paths) - 32
    assert any("resuming" in n for n in resumed.notes)
    np.testing.assert_array_equal(
        PreparedCache(tmp_path / "c").read(np.arange(len(paths))), expected_pixels(paths)
    )


KILL_SCRIPT = """
import sys, time
import numpy as np
import cxr.cache.workers as c
from cxr.cache import prepare
from cxr.table import LabelTable
real = c.load_for_cache
def slow(p, s, f):
    time.sleep(0.01)
    return real(p, s, f)
c.load_for_cache = slow
c._CHUNK = 4
c._CHECKPOINT_SECONDS = 0.2
t = LabelTable.read_csv(sys.argv[1])
prepare(t, sys.argv[2], int(sys.argv[3]), workers=1, progress=False)
"""


def test_killed_process_resumes(tmp_path):
    paths = write_images(tmp_path / "img", 300)
    table_of(paths).save_csv(tmp_path / "t.csv")
    out = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "t.csv"), str(out), str(SIZE)]
    )
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = int((np.load(out / "status.npy") != 0).sum())
            except (OSError, ValueError, EOFError):
                done = 0
            if done >= 40:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "prepare finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    status = np.load(out / "status.npy")
    assert 40 <= (status != 0).sum() < 300
    resumed = prepare(table_of(paths), out, SIZE, workers=2, progress=False)
    assert resumed.decoded == 300 - int((status != 0).sum())
    np.testing.assert_array_equal(PreparedCache(out).read(np.arange(300)), expected_pixels(paths))


def test_not_a_cache_folder(tmp_path):
    with pytest.raises(CacheError, match="cxr prepare"):
        PreparedCache(tmp_path)


def test_pixels_of_another_type_or_shape_are_refused_by_name(tmp_path, good):
    prepare(table_of(good), tmp_path / "c", SIZE, workers=1, progress=False)
    pixels = tmp_path / "c" / "pixels.npy"
    np.save(pixels, np.zeros((12, SIZE, SIZE), np.float32))
    with pytest.raises(CacheError, match=r"pixels\.npy holds float32 .*not uint8"):
        PreparedCache(tmp_path / "c")
    np.save(pixels, np.zeros((12, SIZE + 1, SIZE + 1), np.uint8))
    with pytest.raises(CacheError, match="pixels.npy holds uint8"):
        PreparedCache(tmp_path / "c")
    pixels.write_bytes(b"not numpy")
    with pytest.raises(CacheError, match="pixels.npy is not a readable numpy array"):
        PreparedCache(tmp_path / "c")


def test_real_nih_fullres(tmp_path, shared_datasets):
    folder = shared_datasets / "nih14-fullres" / "images"
    paths = sorted(str(p) for p in folder.glob("*.png"))
    summary = prepare(table_of(paths), tmp_path / "c", 224, workers=2, progress=False)
    assert summary.stored == len(paths) == 24
    cache = PreparedCache(tmp_path / "c")
    np.testing.assert_array_equal(cache.read([3])[0], load_for_cache(paths[3], 224, "pad"))
    assert cache.read(np.arange(24)).std() > 20  # real radiographs, not blank rows
