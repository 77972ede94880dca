"""The small JSON records of the spool (:mod:`cxr.dicomnode.spool`), written atomically.

One record per source instance and stage, keyed by the source's SOP Instance UID (``key``)
and carrying only UIDs, file names, times and reasons: never a patient's name, ID or any
other identifying attribute.

- a result waiting in the outbox: ``state`` ``"pending"``, the result ``files``, the
  ``destination`` it was last tried at, ``attempts``, ``next_try`` (Unix time, seconds) and
  ``last_error``;
- after the destination confirmed it: ``"sent"`` with ``sent_at``;
- given up: ``"failed"`` with ``stage`` (``"receiving"``, ``"processing"`` or ``"sending"``),
  ``reason`` and ``failed_at``.

``id`` names one result (a fresh hex id per processing run), so that a record of a sent
result never stands for a newer result of the same source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cxr.dicomnode.config import DicomNodeError
from cxr.modelformat.atomic import write_atomic

__all__ = ["RECORD", "STATES", "Record", "check_key", "fsync_dir", "read_record", "write_record"]

#: The record file inside a result folder.
RECORD = "record.json"
#: The states a record can be in.
STATES = ("pending", "sent", "failed")
#: A DICOM UID: digits in dot-separated components, at most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_key(uid: object) -> str:
    """``uid`` if it is a valid DICOM UID (used as a file name in the spool), else a
    :class:`DicomNodeError`."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise DicomNodeError(f"SOP Instance UID {uid!r} is not a valid DICOM UID")
    return uid


@dataclass(frozen=True)
class Record:
    """One source instance's result record (see the module docstring); times in Unix
    seconds."""

    id: str
    key: str
    state: str = "pending"
    files: tuple[str, ...] = ()
    destination: str = ""
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    created: float = 0.0
    sent_at: float | None = None
    failed_at: float | None = None
    stage: str = ""
    reason: str = ""
    notes: tuple[str, ...] = field(default=())

    def with_(self, **changes: Any) -> Record:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["files"] = tuple(known.get("files", ()))
        known["notes"] = tuple(known.get("notes", ()))
        record = cls(**known)
        if record.state not in STATES:
            raise ValueError(f"unknown state {record.state!r}")
        return record


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_record(path: Path, record: Record) -> None:
    """Write ``record`` as JSON at ``path`` atomically (temporary file, fsync, rename)."""
    data = json.dumps(record.to_dict(), indent=1, sort_keys=True).encode("utf-8")
    write_atomic(path, data)
    fsync_dir(path.parent)


def read_record(path: Path) -> Record:
    """The record at ``path``; a :class:`DicomNodeError` naming the file when it is not
    one."""
    try:
        return Record.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        raise DicomNodeError(f"{path} is not a spool record: {err}") from None


@dataclass(frozen=True)
class Claim:
    """One instance taken by the worker: ``source`` is ``work/ID/K.dcm``."""

    key: str
    id: str
    folder: Path

    @property
    def source(self) -> Path:
        return self.folder / f"{self.key}.dcm"
