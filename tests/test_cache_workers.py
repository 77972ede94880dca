"""cxr.cache.workers: decoding pending rows into pixels.npy, rejects recorded, checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cxr.cache.summary import PrepareSettings
from cxr.cache.workers import decode_pending
from cxr.images import load_for_cache
from cxr.prepared_cache import PENDING, REJECTED, STORED
from cxr.table import LabelTable


def test_pending_rows_are_decoded_in_place_and_bad_ones_rejected(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.arange(48 * 40, dtype=np.uint32).reshape(48, 40).astype(np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths = [str(good), str(bad), str(good)]
    table = LabelTable.from_columns(paths, ["a", "b", "c"], np.zeros((3, 1)), ["Mass"])
    pixels = tmp_path / "pixels.npy"
    np.lib.format.open_memmap(pixels, mode="w+", dtype=np.uint8, shape=(3, 32, 32)).flush()
    status = np.array([PENDING, PENDING, STORED], dtype=np.int8)
    reasons: dict[int, tuple[str, str]] = {}
    done = decode_pending(
        table, pixels, PrepareSettings(32), status, reasons, [0, 1], tmp_path, 1, False
    )
    assert done == 2
    assert status.tolist() == [STORED, REJECTED, STORED]
    assert reasons[1][0] == "unsupported"
    stored = np.load(pixels)
    np.testing.assert_array_equal(stored[0], load_for_cache(good, 32))
    assert not stored[2].any()  # a row that was not pending is left alone
    assert np.load(tmp_path / "status.npy").tolist() == status.tolist()  # checkpointed
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects["path"].tolist() == [str(bad)]


def test_nothing_pending_does_nothing(tmp_path):
    table = LabelTable.from_columns(["x.png"], ["a"], np.zeros((1, 1)), ["Mass"])
    status = np.array([STORED], dtype=np.int8)
    n = decode_pending(
        table, tmp_path / "p.npy", PrepareSettings(32), status, {}, [], tmp_path, 1, False
    )
    assert n == 0 and not any(tmp_path.iterdir())
