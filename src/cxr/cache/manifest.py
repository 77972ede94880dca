"""A cache folder's state on disk: fingerprints of the inputs, atomic writes, the rejects
list, and what a repeated ``prepare`` may continue from (:func:`resume_state`).

The layout of the folder: see :mod:`cxr.cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.images import is_dicom
from cxr.prepared_cache import PENDING, REJECTED, CacheError
from cxr.table import LabelTable

__all__ = [
    "atomic_save_npy",
    "atomic_write_text",
    "digest",
    "file_stamps",
    "labels_digest",
    "paths_digest",
    "resume_state",
    "write_rejects",
]

#: (reason, detail) of each rejected row, by row of the label table.
Reasons = dict[int, tuple[str, str]]


# fingerprints -------------------------------------------------------------------------
def file_stamps(paths: Sequence[str]) -> np.ndarray:
    """int64 (N, 2): size in bytes and mtime in ns of each file; (-1, -1) when missing."""
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[i] = (st.st_size, st.st_mtime_ns)
    return out


def digest(*parts: bytes) -> str:
    """32 hex digits of the sha256 of the parts' sha256 digests."""
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:32]


def paths_digest(table: LabelTable) -> str:
    """Fingerprint of the image list, in order."""
    return digest("\n".join(table.paths).encode())


def labels_digest(table: LabelTable) -> str:
    """Fingerprint of the labels, label names, patients, views and splits."""
    meta = table.meta[["patient_id", "view", "split"]].to_csv(index=False).encode()
    names = "\n".join(table.pathologies).encode()
    return digest(meta, names, np.ascontiguousarray(table.labels).tobytes())


# state on disk ------------------------------------------------------------------------
def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, then rename into place."""
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name, then rename into place."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_rejects(
    out_dir: Path, table: LabelTable, status: np.ndarray, reasons: Reasons
) -> list[tuple[str, str, str]]:
    """Rewrite ``rejects.csv``; returns its rows (path, reason, detail)."""
    rows = [
        (table.meta.at[i, "path"], *reasons.get(int(i), ("unreadable", "reason not recorded")))
        for i in np.flatnonzero(status == REJECTED)
    ]
    frame = pd.DataFrame(rows, columns=["path", "reason", "detail"])
    atomic_write_text(out_dir / "rejects.csv", frame.to_csv(index=False))
    return [(str(p), str(r), str(d)) for p, r, d in rows]


def _read_rejects(out_dir: Path, table: LabelTable) -> Reasons:
    path = out_dir / "rejects.csv"
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {p: i for i, p in enumerate(table.paths)}
    return {index[p]: (r, d) for p, r, d in frame.itertuples(index=False) if p in index}


def _describe_change(
    old: dict[str, Any], new: dict[str, Any], old_paths: list[str], new_paths: list[str]
) -> str:
    changes = []
    for key in ("size", "fit", "format_version"):
        if old.get(key) != new[key]:
            changes.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    if old.get("paths_digest") != new["paths_digest"]:
        gone = sorted(set(old_paths) - set(new_paths))
        added = sorted(set(new_paths) - set(old_paths))
        detail = f"image list changed ({len(old_paths)} -> {len(new_paths)} images"
        if added:
            detail += f"; new e.g. {added[0]}"
        if gone:
            detail += f"; no longer listed e.g. {gone[0]}"
        if not added and not gone:
            detail += "; same images in another order"
        changes.append(detail + ")")
    return "; ".join(changes)


# resuming -----------------------------------------------------------------------------
def resume_state(
    out_dir: Path,
    table: LabelTable,
    wanted: dict[str, Any],
    stamps: np.ndarray,
    overwrite: bool,
    notes: list[str],
) -> tuple[np.ndarray | None, Reasons | None]:
    """Return (status, reasons) to continue from, or (None, None) for a fresh start.

    ``wanted`` is the manifest this run would write; ``notes`` grows by what changed."""
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.is_file():
        if (out_dir / "pixels.npy").exists() and not overwrite:
            raise CacheError(
                f"{out_dir} holds pixels.npy but no manifest.json; it is not a cxr cache "
                "or was damaged. Choose another --out folder or pass overwrite."
            )
        return None, None
    try:
        old = json.loads(manifest_path.read_text())
        status = np.load(out_dir / "status.npy")
        old_stamps = np.load(out_dir / "stamps.npy")
        old_paths = pd.read_csv(out_dir / "labels.csv", usecols=["path"], dtype=str)[
            "path"
        ].tolist()
    except (OSError, ValueError, KeyError) as err:
        if overwrite:
            return None, None
        raise CacheError(
            f"the cache in {out_dir} is damaged ({err}); pass overwrite to rebuild"
        ) from err
    same_layout = all(
        old.get(k) == wanted[k] for k in ("format_version", "size", "fit", "paths_digest")
    )
    if not same_layout:
        if overwrite:
            notes.append(f"rebuilt: {_describe_change(old, wanted, old_paths, table.paths)}")
            return None, None
        raise CacheError(
            f"{out_dir} holds a cache of other settings or images: "
            f"{_describe_change(old, wanted, old_paths, table.paths)}. "
            "Use another output folder, or pass overwrite (--overwrite) to rebuild it."
        )
    reasons = _read_rejects(out_dir, table)
    if old.get("dicom") != wanted["dicom"]:  # e.g. --allow-any-modality: the DICOMs again
        redo = np.flatnonzero([_maybe_dicom(p) for p in table.paths])
        _redo(status, reasons, redo)
        if len(redo):
            notes.append(f"other DICOM settings than the last run; decoding {len(redo)} again")
    changed = np.flatnonzero((old_stamps != stamps).any(axis=1))
    if len(changed):
        _redo(status, reasons, changed)
        notes.append(
            f"{len(changed)} image file(s) changed since the last run; decoding them again"
        )
    if old.get("labels_digest") != wanted["labels_digest"]:
        notes.append("labels changed since the last run; labels.csv rewritten")
    if old.get("state") != "complete":
        notes.append(
            f"resuming: {int((status != PENDING).sum())} of {len(status)} images already done"
        )
    return status, reasons


def _redo(status: np.ndarray, reasons: Reasons, rows: np.ndarray) -> None:
    """Mark ``rows`` pending again and forget why they were rejected."""
    status[rows] = PENDING
    for i in rows:
        reasons.pop(int(i), None)


def _maybe_dicom(path: str) -> bool:
    return os.path.splitext(path)[1].lower() not in (".png", ".jpg", ".jpeg") and is_dicom(path)
