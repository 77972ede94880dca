"""cxr.cache.summary: the settings of a prepare run and its summary text."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.cache import PrepareSettings, PrepareSummary


def test_settings_refuse_a_bad_size_or_fit():
    assert PrepareSettings().size == 224 and PrepareSettings().fit == "pad"
    with pytest.raises(ValueError, match="size must be an integer from 16 to 4096"):
        PrepareSettings(8)
    with pytest.raises(ValueError, match="fit must be one of"):
        PrepareSettings(64, "stretch")


def test_summary_text_counts_and_lists_at_most_ten_rejects():
    rejects = [(f"img{i}.png", "unreadable", "bad") for i in range(12)]
    s = PrepareSummary(Path("c"), 20, 8, 12, 20, 4.0, rejects, ["a note"])
    assert s.images_per_second == 5.0
    text = s.to_text()
    assert "images: 20  stored: 8  rejected: 12" in text
    assert "(5 images/s)" in text and "a note" in text
    assert "img9.png" in text and "img10.png" not in text and "... and 2 more" in text
    assert PrepareSummary(Path("c"), 1, 1, 0, 0, 0.0).images_per_second == 0.0
