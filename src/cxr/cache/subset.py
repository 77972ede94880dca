"""A prepared cache of some rows of another: :func:`write_subset`.

The subset folder has the layout of :mod:`cxr.cache` (``pixels.npy``, ``labels.csv``,
``status.npy``, ``stamps.npy``, ``rejects.csv``, ``manifest.json``), so that
:class:`~cxr.prepared_cache.PreparedCache`, ``cxr train`` and ``cxr evaluate`` open it like
any cache. Its manifest notes where it came from (``subset_of``: the source folder, the
source's fingerprint :func:`cache_digest`, the number of rows and their fingerprint), and
``subset_rows.npy`` keeps the source's table rows it holds, in order.

A subset is written into a hidden sibling folder and renamed into place when complete: a
killed writer never leaves a folder that opens as a cache. Writing the same subset again
(same source fingerprint, same rows in the same order) reuses the folder; another subset
there is replaced. A folder that is not a subset is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cxr.cache.manifest import atomic_write_text, digest, labels_digest, paths_digest
from cxr.prepared_cache import FORMAT_VERSION, STORED, CacheError, PreparedCache

__all__ = ["ROWS_FILE", "cache_digest", "write_subset"]

#: The source's table rows a subset holds: int64 (M,).
ROWS_FILE = "subset_rows.npy"
#: Bytes of pixels copied at a time.
_CHUNK_BYTES = 64 << 20
#: Manifest fields that do not change what a cache holds.
_NOT_CONTENT = ("cxr_version",)


def cache_digest(cache: PreparedCache) -> str:
    """Fingerprint of what a cache holds: its manifest (image list, labels, file stamps,
    settings; not the cxr version) and which of its rows are stored. 32 hex digits."""
    manifest = {k: v for k, v in cache.manifest.items() if k not in _NOT_CONTENT}
    text = json.dumps(manifest, sort_keys=True, default=str).encode()
    return digest(text, np.ascontiguousarray(cache.rows, dtype=np.int64).tobytes())


def _check_rows(cache: PreparedCache, rows: Any, out: Path) -> np.ndarray:
    """``rows`` as int64 (M,) table rows of ``cache``, or a CacheError saying what is wrong."""
    given = np.asarray(rows)
    where = f"write_subset({cache.path} -> {out})"
    if given.dtype == bool:
        if given.shape != (len(cache),):
            raise CacheError(
                f"{where}: a boolean mask needs one value per image ({len(cache)}), "
                f"got shape {given.shape}"
            )
        given = np.flatnonzero(given)
    if given.ndim != 1:
        raise CacheError(f"{where}: rows must be a 1-D array of row numbers, got {given.shape}")
    if given.size == 0:
        raise CacheError(f"{where}: no rows given; a cache needs at least one image")
    if not np.issubdtype(given.dtype, np.integer):
        raise CacheError(f"{where}: rows must be whole row numbers, got dtype {given.dtype}")
    out_of_range = given[(given < 0) | (given >= len(cache))]
    if out_of_range.size:
        raise CacheError(
            f"{where}: row {int(out_of_range[0])} is out of range; the cache has {len(cache)} "
            f"images (rows 0 to {len(cache) - 1})"
        )
    values, counts = np.unique(given, return_counts=True)
    if (counts > 1).any():
        raise CacheError(
            f"{where}: row {int(values[counts > 1][0])} is given more than once; "
            "a subset holds each image once"
        )
    return given.astype(np.int64)


def _origin(cache: PreparedCache, rows: np.ndarray) -> dict[str, Any]:
    return {
        "path": str(cache.path.resolve()),
        "cache_digest": cache_digest(cache),
        "rows": len(rows),
        "rows_digest": digest(rows.tobytes()),
        "source_images": len(cache),
    }


def _reusable(out: Path, origin: dict[str, Any]) -> PreparedCache | None:
    """The subset in ``out`` when it holds exactly ``origin``'s rows; else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        theirs = manifest.get("subset_of") or {}
        if any(theirs.get(k) != origin[k] for k in ("cache_digest", "rows", "rows_digest")):
            return None
        return PreparedCache(out)
    except (OSError, ValueError, CacheError):
        return None


def _is_subset(out: Path) -> bool:
    try:
        return isinstance(json.loads((out / "manifest.json").read_text()).get("subset_of"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _clean_partials(out: Path) -> None:
    """Remove folders left by killed writers of ``out`` on this host."""
    host = socket.gethostname()
    for old in out.parent.glob(f".{out.name}.partial-{host}-*"):
        try:
            pid = int(old.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _write(cache: PreparedCache, rows: np.ndarray, origin: dict[str, Any], tmp: Path) -> None:
    """Write the whole subset into the new folder ``tmp``, the manifest last."""
    tmp.mkdir(parents=True)
    size = cache.size
    pixels = np.lib.format.open_memmap(
        tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(rows), size, size)
    )
    step = max(1, _CHUNK_BYTES // (size * size))
    for start in range(0, len(rows), step):
        pixels[start : start + step] = cache.read(rows[start : start + step])
    pixels.flush()
    del pixels
    table = cache.table.subset(rows)
    table.save_csv(tmp / "labels.csv")
    np.save(tmp / "status.npy", np.full(len(rows), STORED, dtype=np.int8))
    stamps = np.full((len(rows), 2), -1, dtype=np.int64)
    source_stamps = cache.path / "stamps.npy"
    if source_stamps.is_file():
        full = np.load(source_stamps)
        if full.shape == (len(cache.pixels), 2):
            stamps = full[cache.rows[rows]].astype(np.int64)
    np.save(tmp / "stamps.npy", stamps)
    (tmp / "rejects.csv").write_text("path,reason,detail\n")
    np.save(tmp / ROWS_FILE, rows)
    from cxr import __version__

    manifest = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "fit": cache.fit,
        "count": len(rows),
        "paths_digest": paths_digest(table),
        "labels_digest": labels_digest(table),
        "stamps_digest": digest(stamps.tobytes()),
        "dicom": cache.manifest.get("dicom"),
        "cxr_version": __version__,
        "source": f"subset of {origin['path']} ({len(rows)} of {len(cache)} images)",
        "labels": list(table.pathologies),
        "state": "complete",
        "stored": len(rows),
        "rejected": 0,
        "subset_of": origin,
    }
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))


def write_subset(cache: PreparedCache, rows: np.ndarray, out: str | Path) -> PreparedCache:
    """Write the cache folder ``out`` holding only ``rows`` of ``cache``; returns it opened.

    Args:
        cache: the source cache.
        rows: int (M,) table rows of ``cache`` (0..len(cache)-1), each at most once, in the
            order the subset keeps; or a boolean mask (len(cache),).
        out: the subset's folder. An identical subset there (same source fingerprint, same
            rows) is reused as it is; another subset there is replaced.

    Returns:
        The subset, opened: row j holds ``cache``'s table row ``rows[j]`` (image and labels).

    Raises:
        CacheError: bad rows (none, out of range, repeated, not whole numbers), ``out`` is
            the source folder, or ``out`` holds something that is not a subset.
    """
    out = Path(out)
    rows = _check_rows(cache, rows, out)
    if out.resolve() == cache.path.resolve():
        raise CacheError(f"write_subset: {out} is the source cache itself; choose another folder")
    origin = _origin(cache, rows)
    found = _reusable(out, origin)
    if found is not None:
        return found
    if out.exists() and not out.is_dir():
        raise CacheError(f"write_subset: {out} is a file; choose a folder for the subset")
    if out.is_dir() and any(out.iterdir()) and not _is_subset(out):
        raise CacheError(
            f"write_subset: {out} holds files that are not a subset cache; choose another "
            "folder or empty it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_partials(out)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.partial-{tag}"
    old = out.parent / f".{out.name}.old-{tag}"
    try:
        _write(cache, rows, origin, tmp)
        if out.is_dir():
            with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                os.rename(out, old)  # the outdated subset (or an empty folder) steps aside
        try:
            os.rename(tmp, out)
        except OSError:
            found = _reusable(out, origin)  # another writer put the same subset there first
            if found is None:
                raise
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return PreparedCache(out)
