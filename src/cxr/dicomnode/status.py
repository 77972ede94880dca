"""Reading a spool folder's state without changing it: what ``cxr dicom status`` shows.

:func:`spool_status` works while a node runs on the spool (it takes no lock and writes
nothing); :func:`spool_usage` is the size the quota counts (every file, in bytes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.records import RECORD, read_record

__all__ = ["spool_status", "spool_usage"]


def _files(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        yield entry
        except FileNotFoundError:
            continue


def spool_usage(root: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of every file under ``root``, leaving out its sub-folders named in ``skip``."""
    total = 0
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        if name in skip:
            continue
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            continue
        for entry in _files(path):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        try:
            out.append(read_record(path).to_dict())
        except DicomNodeError:
            continue
    return sorted(out, key=lambda r: r.get("sent_at") or r.get("failed_at") or r["created"])


def spool_status(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The status of the spool at ``root`` (read only; a running node may hold it); a
    :class:`DicomNodeError` when ``root`` is not a spool folder."""
    base = Path(root)
    if not (base / "outbox").is_dir() or not (base / "incoming").is_dir():
        raise DicomNodeError(
            f"{base} is not a spool folder (no incoming/ and outbox/); give the folder "
            "that `cxr dicom listen --spool` uses"
        )

    def listing(name: str) -> list[Path]:
        folder = base / name
        return sorted(folder.iterdir()) if folder.is_dir() else []

    incoming = sorted(p.name[:-4] for p in listing("incoming") if p.name.endswith(".dcm"))
    return {
        "spool": str(base),
        "incoming": incoming,
        "processing": len(listing("work")),
        "pending": _records([p / RECORD for p in listing("outbox")]),
        "sent": _records([p for p in listing("sent") if p.suffix == ".json"]),
        "failed": _records([p / RECORD for p in listing("failed")]),
        "bytes": spool_usage(base),
    }
