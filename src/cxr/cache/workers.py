"""The decoding side of ``prepare``: worker processes (or this one) decode images straight
into ``pixels.npy``; :func:`decode_pending` hands them the pending rows in chunks and
checkpoints ``status.npy`` and ``rejects.csv`` every few seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterator
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np

from cxr.cache.manifest import Reasons, atomic_save_npy, write_rejects
from cxr.cache.summary import PrepareSettings
from cxr.dicom import DicomPolicy, DicomWarning, set_dicom_policy
from cxr.images import ImageReadError, load_for_cache
from cxr.prepared_cache import REJECTED, STORED
from cxr.table import LabelTable

__all__ = ["decode_pending"]

_CHUNK = 32  # images per worker task
_CHECKPOINT_SECONDS = 2.0

#: One chunk's outcome: (row, reason, detail) per image (reason "" = stored) and the
#: warnings issued while decoding, as (text, is a DicomWarning).
ChunkResult = tuple[list[tuple[int, str, str]], list[tuple[str, bool]]]

# this process's state as a worker: the open pixels file, its data offset, the inputs
_W: dict[str, Any] = {}


def _worker_init(
    pixels_path: str, paths: list[str], size: int, fit: str, dicom: DicomPolicy | None = None
) -> None:
    # plain positioned writes, not a writable memory map: mapped pages would count in the
    # worker's resident memory until the whole cache (GBs at NIH scale) had passed through it
    with open(pixels_path, "rb") as f:
        if np.lib.format.read_magic(f) == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    _worker_close()
    _W.update(fd=os.open(pixels_path, os.O_WRONLY), offset=offset, paths=paths, size=size, fit=fit)
    if dicom is not None:  # this process's policy (prepare restores its own when in-process)
        set_dicom_policy(dicom)


def _worker_close() -> None:
    if "fd" in _W:
        os.close(_W.pop("fd"))


def _worker_run(indices: list[int]) -> ChunkResult:
    """Decode images into pixels.npy; return (index, reason, detail), reason '' = ok, and
    the warnings issued while decoding as (text, is a DicomWarning), for the parent to show
    (a spawned worker's own stderr would show them in Python's raw format)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DicomWarning)
        out = _worker_decode(indices)
    return out, [(str(w.message), issubclass(w.category, DicomWarning)) for w in caught]


def _worker_decode(indices: list[int]) -> list[tuple[int, str, str]]:
    out = []
    fd, offset, frame = _W["fd"], _W["offset"], _W["size"] * _W["size"]
    for i in indices:
        try:
            image = load_for_cache(_W["paths"][i], _W["size"], _W["fit"])
            os.pwrite(fd, np.ascontiguousarray(image, dtype=np.uint8).tobytes(), offset + i * frame)
            out.append((i, "", ""))
        except ImageReadError as err:
            out.append((i, err.reason, err.detail))
        except Exception as err:  # a bug or a decoder crash must not stop the whole run
            out.append((i, "unreadable", f"{type(err).__name__}: {err}"))
    return out


def decode_pending(
    table: LabelTable,
    pixels_path: Path,
    settings: PrepareSettings,
    status: np.ndarray,
    reasons: Reasons,
    pending: list[int],
    out_dir: Path,
    workers: int | None,
    progress: bool,
    dicom: DicomPolicy | None = None,
) -> int:
    """Decode the ``pending`` rows, updating ``status`` (int8 (N,)) and ``reasons`` in
    place and checkpointing them; return how many were done. ``workers``: processes (None
    = all cores, 1 = this process)."""
    if not pending:
        return 0
    from tqdm.auto import tqdm

    paths = table.paths
    chunks = [pending[i : i + _CHUNK] for i in range(0, len(pending), _CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    bar = tqdm(
        total=len(pending), unit="img", desc="prepare", disable=not progress, dynamic_ncols=True
    )
    done = 0
    last = time.monotonic()
    pool: Pool | None = None
    results: Iterator[ChunkResult]
    try:
        if workers == 1:
            _worker_init(str(pixels_path), paths, settings.size, settings.fit, dicom)
            results = map(_worker_run, chunks)
        else:
            pool = mp.get_context("spawn").Pool(
                workers,
                _worker_init,
                (str(pixels_path), paths, settings.size, settings.fit, dicom),
            )
            results = pool.imap_unordered(_worker_run, chunks)
        for result, said in results:
            for text, from_dicom in said:  # the workers' warnings, shown here
                warnings.warn(text, DicomWarning if from_dicom else UserWarning, stacklevel=2)
            for i, reason, detail in result:
                if reason:
                    status[i] = REJECTED
                    reasons[i] = (reason, detail)
                else:
                    status[i] = STORED
            done += len(result)
            bar.update(len(result))
            bar.set_postfix(rejected=int((status == REJECTED).sum()), refresh=False)
            if time.monotonic() - last > _CHECKPOINT_SECONDS:
                atomic_save_npy(out_dir / "status.npy", status)
                write_rejects(out_dir, table, status, reasons)
                last = time.monotonic()
    finally:
        # whatever happened (Ctrl-C included), keep what is done
        if pool is not None:
            pool.terminate()
            pool.join()
        else:
            _worker_close()
        atomic_save_npy(out_dir / "status.npy", status)
        write_rejects(out_dir, table, status, reasons)
        bar.close()
        _W.clear()
    return done
