"""The image parts of a dataset report: image sizes and bit depths read from file headers
(no pixel is decoded), and a deterministic grid of sample images per label.

Both look at a seeded sample of the table's files, so they cost the same at NIH scale as
on a small folder; the files that could not be read are listed with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cxr.images import ImageReadError, fit_square, is_dicom, read_gray
from cxr.table import LabelTable

__all__ = ["HeaderStats", "SampleGrid", "read_headers", "sample_grid"]

#: Pillow mode -> bits per sample as stored
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8}
_MODE_BITS.update({"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32})


@dataclass
class HeaderStats:
    """Sizes and depths of the sampled files.

    Attributes:
        sampled: paths looked at (a seeded sample of at most ``limit`` of ``n_paths``).
        n_paths: paths in the table.
        missing: sampled paths that are not files.
        sizes: (width, height) of each readable sampled file, pixels.
        depth: e.g. ``"8-bit gray"``, ``"16-bit gray"``, ``"8-bit RGB"``, ``"DICOM 12-bit"``
            -> count.
        unreadable: (path, reason) of sampled files whose header could not be read.
    """

    sampled: int
    n_paths: int
    missing: int
    sizes: list[tuple[int, int]] = field(default_factory=list)
    depth: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def found(self) -> int:
        return self.sampled - self.missing


def _sample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _header(path: str) -> tuple[int, int, str]:
    """(width, height, depth description) from the file's header."""
    if is_dicom(path):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        bits = getattr(ds, "BitsStored", None) or getattr(ds, "BitsAllocated", "?")
        return int(ds.Columns), int(ds.Rows), f"DICOM {bits}-bit"
    from PIL import Image

    with Image.open(path) as img:  # reads the header only
        kind = (
            "gray"
            if img.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")
            else img.mode
        )
        return img.size[0], img.size[1], f"{_MODE_BITS.get(img.mode, '?')}-bit {kind}"


def read_headers(table: LabelTable, limit: int = 2000, seed: int = 0) -> HeaderStats:
    """Sizes and bit depths of up to ``limit`` files of ``table`` (seeded sample)."""
    paths = table.meta["path"].tolist()
    index = _sample(len(paths), limit, seed)
    stats = HeaderStats(sampled=len(index), n_paths=len(paths), missing=0)
    for i in index:
        path = paths[int(i)]
        if not os.path.isfile(path):
            stats.missing += 1
            continue
        try:
            w, h, depth = _header(path)
        except Exception as err:  # any unreadable header is listed, never fatal
            stats.unreadable.append((path, f"{type(err).__name__}: {err}"[:200]))
            continue
        stats.sizes.append((w, h))
        stats.depth[depth] = stats.depth.get(depth, 0) + 1
    return stats


@dataclass
class SampleGrid:
    """Sample images per row of the grid (each label, then "no finding").

    Attributes:
        rows: row name -> list of (path, uint8 (S, S) pixels, positive labels).
        unreadable: (path, reason) of chosen files that could not be decoded.
    """

    rows: dict[str, list[tuple[str, np.ndarray, tuple[str, ...]]]]
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def paths(self) -> dict[str, list[str]]:
        return {name: [p for p, _, _ in items] for name, items in self.rows.items()}


def sample_grid(
    table: LabelTable, per_label: int = 4, seed: int = 0, size: int = 160
) -> SampleGrid:
    """Up to ``per_label`` readable images with each label present, and as many with no
    finding (every known label absent), chosen in a seeded order: the same seed gives the
    same grid. Images are shown at ``size`` pixels (:func:`cxr.images.read_gray`, then
    :func:`cxr.images.fit_square`; small images too, as thumbnails)."""
    y = table.labels
    paths = table.meta["path"].tolist()
    names = list(table.pathologies)
    rng = np.random.default_rng(seed)
    grid = SampleGrid(rows={})
    failed: set[str] = set()
    wanted = [(n, np.flatnonzero(y[:, j] == 1)) for j, n in enumerate(names)]
    healthy = np.all(np.nan_to_num(y, nan=0.0) == 0, axis=1) if names else np.zeros(len(y), bool)
    wanted.append(("no finding", np.flatnonzero(healthy)))
    for row, candidates in wanted:
        items: list[tuple[str, np.ndarray, tuple[str, ...]]] = []
        for i in rng.permutation(candidates):
            if len(items) >= per_label:
                break
            path = paths[int(i)]
            if path in failed or not os.path.isfile(path):
                continue
            try:
                pixels = fit_square(read_gray(path), size)  # any size: a thumbnail
            except ImageReadError as err:
                failed.add(path)
                grid.unreadable.append((path, f"{err.reason}: {err.detail}"))
                continue
            positive = tuple(n for j, n in enumerate(names) if y[int(i), j] == 1)
            items.append((path, pixels, positive))
        grid.rows[row] = items
    return grid
