"""The decode-once cache: every image decoded and resized once, then read as memory.

``prepare(table, out_dir, size=224)`` writes into ``out_dir``:

- ``pixels.npy``: uint8 array (N, size, size), memory-mappable (``np.load(mmap_mode="r")``);
  row i holds image i of ``labels.csv`` (rows of rejected images stay zero);
- ``labels.csv``: the label table of all N images (:meth:`LabelTable.save_csv` format);
- ``status.npy``: int8 (N,), 0 = not yet decoded, 1 = stored, 2 = rejected;
- ``stamps.npy``: int64 (N, 2), each image file's size in bytes and mtime in ns (-1 if missing);
- ``rejects.csv``: path, reason, detail of every rejected image;
- ``manifest.json``: format version, settings, source, counts, fingerprints, state.

The run is resumable. Progress is checkpointed every few seconds (pixels are written
straight into the shared file mapping by the workers, then ``status.npy`` is replaced
atomically), so a killed run continues where it stopped. A repeated run with the same
inputs and settings does nothing. Changed settings, or a different image list, are
refused with a message saying what changed (``overwrite=True`` rebuilds). Image files
whose size or modification time changed, and images that were missing and now exist,
are decoded again; changed labels are rewritten without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.dicom import (
    DicomPolicy,
    DicomWarning,
    dicom_policy,
    get_dicom_policy,
    set_dicom_policy,
)
from cxr.images import FIT_MODES, ImageReadError, is_dicom, load_for_cache
from cxr.prepared_cache import (
    FORMAT_VERSION,
    PENDING,
    REJECTED,
    STORED,
    CacheError,
    PreparedCache,
)
from cxr.table import LabelTable

__all__ = [
    "CacheError",
    "PrepareSettings",
    "PrepareSummary",
    "PreparedCache",
    "file_stamps",
    "prepare",
]

_CHUNK = 32  # images per worker task
_CHECKPOINT_SECONDS = 2.0


@dataclass(frozen=True)
class PrepareSettings:
    """What determines the pixels: output side in pixels and how the aspect ratio is kept."""

    size: int = 224
    fit: str = "pad"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= 4096:
            raise ValueError(f"size must be an integer from 16 to 4096 pixels, got {self.size!r}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")


@dataclass
class PrepareSummary:
    """What a prepare run did. ``decoded`` counts images decoded by this run."""

    out_dir: Path
    total: int
    stored: int
    rejected: int
    decoded: int
    seconds: float
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def to_text(self) -> str:
        lines = [
            f"cache: {self.out_dir}",
            f"images: {self.total}  stored: {self.stored}  rejected: {self.rejected}",
            f"decoded this run: {self.decoded} in {self.seconds:.1f} s"
            + (f" ({self.images_per_second:.0f} images/s)" if self.decoded else ""),
        ]
        lines += self.notes
        if self.rejects:
            lines.append(f"rejected images (all listed in {self.out_dir / 'rejects.csv'}):")
            lines += [f"  {p}: {r}: {d}" for p, r, d in self.rejects[:10]]
            if len(self.rejects) > 10:
                lines.append(f"  ... and {len(self.rejects) - 10} more")
        return "\n".join(lines)


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


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:32]


def _paths_digest(table: LabelTable) -> str:
    return _digest("\n".join(table.paths).encode())


def _labels_digest(table: LabelTable) -> str:
    meta = table.meta[["patient_id", "view", "split"]].to_csv(index=False).encode()
    names = "\n".join(table.pathologies).encode()
    return _digest(meta, names, np.ascontiguousarray(table.labels).tobytes())


# worker side --------------------------------------------------------------------------
_W: dict = {}


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


def _worker_run(
    indices: list[int],
) -> tuple[list[tuple[int, str, str]], list[tuple[str, bool]]]:
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


# state on disk ------------------------------------------------------------------------
def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_rejects(out_dir: Path, table: LabelTable, status: np.ndarray, reasons: dict) -> list:
    rows = [
        (table.meta.at[i, "path"], *reasons.get(i, ("unreadable", "reason not recorded")))
        for i in np.flatnonzero(status == REJECTED)
    ]
    frame = pd.DataFrame(rows, columns=["path", "reason", "detail"])
    _atomic_write_text(out_dir / "rejects.csv", frame.to_csv(index=False))
    return [tuple(r) for r in rows]


def _read_rejects(out_dir: Path, table: LabelTable) -> dict[int, tuple[str, str]]:
    path = out_dir / "rejects.csv"
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {p: i for i, p in enumerate(table.paths)}
    return {index[p]: (r, d) for p, r, d in frame.itertuples(index=False) if p in index}


def _describe_change(old: dict, new: dict, old_paths: list[str], new_paths: list[str]) -> str:
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


# the job ------------------------------------------------------------------------------
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
        "paths_digest": _paths_digest(table),
        "labels_digest": _labels_digest(table),
        "stamps_digest": _digest(stamps.tobytes()),
        "dicom": policy.to_dict(),
    }
    notes: list[str] = []
    status, reasons = _resume_state(out_dir, table, wanted, stamps, overwrite, notes)
    pixels_path = out_dir / "pixels.npy"
    if status is None:  # fresh start
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
    _atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    _atomic_save_npy(out_dir / "status.npy", status)

    pending = np.flatnonzero(status == PENDING).tolist()
    with dicom_policy(policy):
        decoded = _decode(
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
    rejects = _write_rejects(out_dir, table, status, reasons)
    manifest.update(
        state="complete",
        stored=int((status == STORED).sum()),
        rejected=int((status == REJECTED).sum()),
    )
    _atomic_save_npy(out_dir / "status.npy", status)
    _atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    if not pending:
        notes.append("nothing to decode: the cache is already complete for these inputs")
    return PrepareSummary(
        out_dir,
        len(table),
        manifest["stored"],
        manifest["rejected"],
        decoded,
        time.perf_counter() - start,
        rejects,
        notes,
    )


def _cxr_version() -> str:
    from cxr import __version__

    return __version__


def _resume_state(out_dir, table, wanted, stamps, overwrite, notes):
    """Return (status, reasons) to continue from, or (None, None) for a fresh start."""
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
        status[redo] = PENDING
        for i in redo:
            reasons.pop(int(i), None)
        if len(redo):
            notes.append(f"other DICOM settings than the last run; decoding {len(redo)} again")
    changed = np.flatnonzero((old_stamps != stamps).any(axis=1))
    if len(changed):
        status[changed] = PENDING
        for i in changed:
            reasons.pop(int(i), None)
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


def _maybe_dicom(path: str) -> bool:
    return os.path.splitext(path)[1].lower() not in (".png", ".jpg", ".jpeg") and is_dicom(path)


def _decode(
    table, pixels_path, settings, status, reasons, pending, out_dir, workers, progress, dicom=None
):
    """Decode the pending rows, checkpointing status and rejects; return how many were done."""
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
    pool = None
    results: Iterator[tuple[list[tuple[int, str, str]], list[tuple[str, bool]]]]
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
                _atomic_save_npy(out_dir / "status.npy", status)
                _write_rejects(out_dir, table, status, reasons)
                last = time.monotonic()
    finally:
        # whatever happened (Ctrl-C included), keep what is done
        if pool is not None:
            pool.terminate()
            pool.join()
        else:
            _worker_close()
        _atomic_save_npy(out_dir / "status.npy", status)
        _write_rejects(out_dir, table, status, reasons)
        bar.close()
        _W.clear()
    return done
