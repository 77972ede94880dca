"""A prepared cache on disk, opened for reading: :class:`PreparedCache`.

The layout (written by :func:`cxr.cache.prepare`): ``pixels.npy`` uint8 (N, size, size),
``labels.csv``, ``status.npy`` (:data:`PENDING`, :data:`STORED`, :data:`REJECTED` per row),
``manifest.json`` (format version, settings, state).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.table import LabelTable

__all__ = ["FORMAT_VERSION", "PENDING", "REJECTED", "STORED", "CacheError", "PreparedCache"]

#: Version of the cache layout; a cache of another version is refused.
FORMAT_VERSION = 1
#: Row statuses in ``status.npy``.
PENDING, STORED, REJECTED = 0, 1, 2


class CacheError(CxrError, RuntimeError):
    """A cache folder that cannot be used as asked (settings or inputs differ, incomplete...)."""


class PreparedCache:
    """A complete cache folder opened for reading.

    Attributes:
        table: the label table of the stored (accepted) images only, M rows.
        rows: int64 (M,), the row of ``pixels`` holding each table row.
        pixels: read-only memory map, uint8 (N, size, size), N >= M.
        size, fit: the settings the cache was built with.
        manifest: the parsed manifest.json.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise CacheError(
                f"{self.path} is not a prepared cache (no manifest.json); run `cxr prepare` first"
            )
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{self.path} has cache format {self.manifest.get('format_version')}, "
                f"this cxr reads format {FORMAT_VERSION}; prepare it again"
            )
        if self.manifest.get("state") != "complete":
            raise CacheError(
                f"the cache in {self.path} is incomplete (an interrupted prepare); "
                "run the same `cxr prepare` command again to finish it"
            )
        full = LabelTable.read_csv(self.path / "labels.csv")
        status = np.load(self.path / "status.npy")
        pixels_path = self.path / "pixels.npy"
        try:
            self.pixels = np.load(pixels_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheError(f"{pixels_path} is not a readable numpy array ({err})") from None
        size = self.manifest.get("size")
        if self.pixels.dtype != np.uint8 or self.pixels.shape[1:] != (size, size):
            raise CacheError(
                f"{pixels_path} holds {self.pixels.dtype} {tuple(self.pixels.shape)}, not uint8 "
                f"(N, {size}, {size}) as its manifest says; prepare the cache again"
            )
        if self.pixels.shape[0] != len(full) or len(status) != len(full):
            raise CacheError(
                f"{self.path}: pixels.npy, status.npy and labels.csv disagree in length"
            )
        self.rows = np.flatnonzero(status == STORED)
        self.table = full.subset(self.rows)
        self.size = int(self.manifest["size"])
        self.fit = str(self.manifest["fit"])

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of the given table rows: uint8 (B, size, size), a copy (no decoding)."""
        return self.pixels[self.rows[np.asarray(indices, dtype=np.int64)]]

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 (B, L) labels of the given table rows (NaN = unknown)."""
        return self.table.labels[np.asarray(indices, dtype=np.int64)]
