"""The prepare job: :func:`prepare` decodes and resizes every image of a label table once
into a cache folder (the layout: see :mod:`cxr.cache`), resuming what an earlier run left.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxr.cache.manifest import (
    atomic_save_npy,
    atomic_write_text,
    digest,
    file_stamps,
    labels_digest,
    paths_digest,
    resume_state,
    write_rejects,
)
from cxr.cache.summary import PrepareSettings, PrepareSummary
from cxr.cache.workers import decode_pending
from cxr.dicom import DicomPolicy, dicom_policy, get_dicom_policy
from cxr.prepared_cache import FORMAT_VERSION, PENDING, REJECTED, STORED
from cxr.table import LabelTable

__all__ = ["prepare"]


def prepare(
    table: LabelTable,
    out_dir: str | Path,
    size: int = 224,
    fit: str = "pad",
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    source: str = "",
    dicom: DicomPolicy | None = None,
) -> PrepareSummary:
    """Decode and resize every image of ``table`` once into the cache folder ``out_dir``.

    Args:
        table: the images and labels; image paths must be readable from here.
        out_dir: cache folder (created; an existing cache there is resumed or checked).
        size: side of the square output in pixels.
        fit: ``"pad"`` (keep the whole image, pad with black) or ``"crop"`` (centre crop).
        workers: decoding processes; None = all cores, 1 = in this process.
        progress: show a progress bar on stderr.
        overwrite: rebuild from scratch when the folder holds a cache of other settings
            or another image list (otherwise that is a :class:`CacheError`).
        source: where the table came from, recorded in the manifest.
        dicom: which DICOM files are decoded (:class:`cxr.dicom.DicomPolicy`: the modality
            check, multi-frame files); default: the process-wide policy. Recorded in the
            manifest; a run with another policy decodes the DICOM files again.

    Returns:
        A :class:`PrepareSummary`. Unreadable, truncated, empty or missing images do not
        stop the run: they are listed in ``rejects.csv`` and in the summary.
    """
    settings = PrepareSettings(size, fit)
    policy = dicom or get_dicom_policy()
    if len(table) == 0:
        raise ValueError("the label table has no images; nothing to prepare")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stamps = file_stamps(table.paths)
    wanted = {
        "format_version": FORMAT_VERSION,
        **asdict(settings),
        "count": len(table),
        "paths_digest": paths_digest(table),
        "labels_digest": labels_digest(table),
        "stamps_digest": digest(stamps.tobytes()),
        "dicom": policy.to_dict(),
    }
    notes: list[str] = []
    status, reasons = resume_state(out_dir, table, wanted, stamps, overwrite, notes)
    pixels_path = out_dir / "pixels.npy"
    if status is None or reasons is None:  # fresh start
        for name in ("manifest.json", "status.npy", "rejects.csv"):
            (out_dir / name).unlink(missing_ok=True)
        np.lib.format.open_memmap(
            pixels_path, mode="w+", dtype=np.uint8, shape=(len(table), size, size)
        ).flush()
        status = np.zeros(len(table), dtype=np.int8)
        reasons = {}
    table.save_csv(out_dir / "labels.csv")
    np.save(out_dir / "stamps.npy", stamps)
    manifest = {
        **wanted,
        "cxr_version": _cxr_version(),
        "source": source or table.source,
        "labels": list(table.pathologies),
        "state": "in-progress",
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    atomic_save_npy(out_dir / "status.npy", status)

    pending = np.flatnonzero(status == PENDING).tolist()
    with dicom_policy(policy):
        decoded = decode_pending(
            table,
            pixels_path,
            settings,
            status,
            reasons,
            pending,
            out_dir,
            workers,
            progress,
            policy,
        )
    rejects = write_rejects(out_dir, table, status, reasons)
    stored, rejected = int((status == STORED).sum()), int((status == REJECTED).sum())
    manifest.update(state="complete", stored=stored, rejected=rejected)
    atomic_save_npy(out_dir / "status.npy", status)
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    if not pending:
        notes.append("nothing to decode: the cache is already complete for these inputs")
    return PrepareSummary(
        out_dir,
        len(table),
        stored,
        rejected,
        decoded,
        time.perf_counter() - start,
        rejects,
        notes,
    )


def _cxr_version() -> str:
    from cxr import __version__

    return __version__
