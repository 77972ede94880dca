"""``cxr demo``: the pipeline runs on a few phantoms and writes what it says it wrote."""

from __future__ import annotations

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.cache import PreparedCache
from cxr.demo import run_demo
from cxr.leakage import find_leakage
from cxr.table import LabelTable


def test_demo_writes_phantoms_split_and_caches(tmp_path):
    lines: list[str] = []
    written = run_demo(tmp_path / "demo", n_images=40, size=32, workers=1, echo=lines.append)
    assert lines[0] == RESEARCH_NOTICE
    for name in ("train", "val", "test"):
        cache = PreparedCache(written[f"cache_{name}"])
        split = LabelTable.read_csv(written[name])
        assert cache.size == 32
        assert cache.read(np.arange(len(cache))).shape == (len(cache), 32, 32)
        assert sorted(cache.table.paths) == sorted(split.paths)
    parts = {n: PreparedCache(written[f"cache_{n}"]).table for n in ("train", "val", "test")}
    assert sum(len(t) for t in parts.values()) == 40
    assert not find_leakage(parts).leaked
    assert any(str(written["phantoms"]) in line for line in lines)
