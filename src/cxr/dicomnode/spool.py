"""The node's durable state: a spool folder that survives a crash or ``kill -9``.

Layout (``K`` is the source instance's SOP Instance UID)::

    SPOOL/lock               held (flock) by the running node: one node per spool
    SPOOL/tmp/               partial writes; emptied when a node starts
    SPOOL/incoming/K.dcm     received, not yet processed
    SPOOL/work/ID/K.dcm      claimed by the worker (+ its results, then record.json)
    SPOOL/outbox/K/          results waiting to be sent: record.json + the SR and the SC
    SPOOL/sent/K.json        the record of the last result of K the destination confirmed
    SPOOL/failed/K/          record.json with the reason (+ the results, if sending failed)

Every step is one atomic rename of a file or folder written and flushed (fsync) beforehand,
so after a crash at any point :meth:`Spool.recover` finds each instance in exactly one
place and its work is done once:

- a claimed instance without a complete result goes back to ``incoming/``;
- a claimed instance whose results and record were complete is committed to the outbox;
- a result whose ``sent/`` record has the same ``id`` was confirmed: it is removed, never
  sent again. A send cut off before the destination confirmed it is sent again; the
  result objects' UIDs are derived from the source and the model, so the destination
  replaces the first copy instead of keeping two.

The quota is the size of every file under the spool (bytes); :meth:`Spool.enqueue`
refuses an instance that would pass it (:class:`SpoolFull`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.records import (
    RECORD,
    Claim,
    Record,
    check_key,
    fsync_dir,
    read_record,
    write_record,
)
from cxr.dicomnode.status import spool_status, spool_usage
from cxr.errors import CxrError

__all__ = ["Claim", "Spool", "SpoolFull"]

_FOLDERS = ("tmp", "incoming", "work", "outbox", "sent", "failed")


class SpoolFull(CxrError, OSError):
    """The spool's quota (or the disk) has no room for an instance."""


class Spool:
    """A spool folder (created with its sub-folders). ``quota_bytes``: None = no quota.

    Thread-safe: the SCP's handler threads enqueue, the worker claims and commits, the
    sender marks results sent or failed; each change is one locked, atomic step.
    """

    def __init__(self, root: str | os.PathLike[str], quota_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._lock = threading.RLock()
        self._lock_file: IO[bytes] | None = None
        try:
            for name in _FOLDERS:
                (self.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DicomNodeError(f"spool (--spool): cannot create {self.root}: {err}") from None

    def path(self, folder: str, *parts: str) -> Path:
        return self.root.joinpath(folder, *parts)

    # ownership ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the spool for this process (an exclusive ``flock`` on ``SPOOL/lock``,
        released by the OS when the process dies); a :class:`DicomNodeError` when another
        node holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fh = open(self.root / "lock", "ab")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise DicomNodeError(
                f"spool (--spool): {self.root} is in use by another running node; stop it or "
                "give another folder"
            ) from None
        self._lock_file = fh

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # receiving ---------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes the quota counts: every file under the spool but the small records of
        sent results (``sent/``), which are kept for ``cxr dicom status``."""
        return spool_usage(self.root, skip=("sent",))

    def enqueue(self, key: str, data: bytes) -> Path:
        """Store a received instance (the DICOM file's bytes) as ``incoming/K.dcm``
        atomically; a newer copy of the same instance replaces a waiting one.

        Raises:
            SpoolFull: the quota or the disk has no room (nothing is left behind).
            DicomNodeError: ``key`` is not a DICOM UID.
        """
        key = check_key(key)
        with self._lock:
            if self.quota_bytes is not None:
                used = self.usage()
                if used + len(data) > self.quota_bytes:
                    raise SpoolFull(
                        f"the spool holds {used} bytes; {len(data)} more would pass its quota "
                        f"of {self.quota_bytes} bytes"
                    )
            tmp = self.path("tmp", f"{key}.{uuid.uuid4().hex}.dcm")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                target = self.path("incoming", f"{key}.dcm")
                os.replace(tmp, target)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise SpoolFull(f"cannot store the instance in {self.root}: {err}") from None
            fsync_dir(target.parent)
            return target

    def incoming(self) -> list[str]:
        """Keys waiting in ``incoming/``, oldest first."""
        items = []
        for entry in os.scandir(self.path("incoming")):
            if entry.name.endswith(".dcm") and entry.is_file():
                try:
                    items.append((entry.stat().st_mtime_ns, entry.name[:-4]))
                except FileNotFoundError:
                    continue
        return [key for _, key in sorted(items)]

    # processing --------------------------------------------------------------------------
    def claim(self, key: str) -> Claim | None:
        """Move ``incoming/K.dcm`` into a fresh ``work/ID/`` folder; None when it is gone."""
        with self._lock:
            source = self.path("incoming", f"{key}.dcm")
            if not source.is_file():
                return None
            claim = Claim(key, uuid.uuid4().hex, self.path("work", uuid.uuid4().hex))
            claim.folder.mkdir()
            os.replace(source, claim.source)
            fsync_dir(claim.folder)
            fsync_dir(source.parent)
            return claim

    def commit(self, claim: Claim, files: list[str], destination: str, notes: list[str]) -> Record:
        """The claim's results (``files`` in its folder) become the outbox entry of its key
        (replacing an unsent older one); the source file is removed."""
        now = time.time()
        record = Record(
            id=claim.id,
            key=claim.key,
            files=tuple(files),
            destination=destination,
            created=now,
            next_try=now,
            notes=tuple(notes),
        )
        write_record(claim.folder / RECORD, record)
        self._finish_commit(claim.folder, record)
        return record

    def _finish_commit(self, folder: Path, record: Record) -> None:
        with self._lock:
            (folder / f"{record.key}.dcm").unlink(missing_ok=True)
            target = self.path("outbox", record.key)
            self._replace_folder(folder, target)

    def _replace_folder(self, folder: Path, target: Path) -> None:
        if target.exists():
            trash = self.path("tmp", f"old.{uuid.uuid4().hex}")
            os.replace(target, trash)
            os.replace(folder, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(folder, target)
        fsync_dir(target.parent)
        fsync_dir(folder.parent)

    def fail_claim(self, claim: Claim, stage: str, reason: str) -> Record:
        """Give up on a claimed instance: ``failed/K/record.json`` with the reason; the
        source file is removed."""
        now = time.time()
        record = Record(
            id=claim.id,
            key=claim.key,
            state="failed",
            created=now,
            failed_at=now,
            stage=stage,
            reason=reason,
        )
        with self._lock:
            write_record(claim.folder / RECORD, record)
            self._finish_failure(claim.folder, record)
        return record

    def _finish_failure(self, folder: Path, record: Record) -> None:
        for path in folder.iterdir():
            if path.name != RECORD:
                path.unlink()
        self._replace_folder(folder, self.path("failed", record.key))

    def unclaim(self, claim: Claim) -> None:
        """Put a claimed instance back into ``incoming/`` (a transient error: it is tried
        again), unless a newer copy arrived meanwhile (which replaces it)."""
        with self._lock:
            target = self.path("incoming", f"{claim.key}.dcm")
            if claim.source.is_file() and not target.exists():
                os.replace(claim.source, target)
                fsync_dir(target.parent)
            shutil.rmtree(claim.folder, ignore_errors=True)

    # sending -----------------------------------------------------------------------------
    def outbox(self) -> list[Record]:
        """Every pending result record, by next try time then creation."""
        out = []
        for entry in os.scandir(self.path("outbox")):
            path = Path(entry.path) / RECORD
            if path.is_file():
                try:
                    record = read_record(path)
                except DicomNodeError:
                    continue
                if record.state == "pending":
                    out.append(record)
        return sorted(out, key=lambda r: (r.next_try, r.created, r.key))

    def result_files(self, record: Record) -> list[Path]:
        return [self.path("outbox", record.key, name) for name in record.files]

    def _current(self, record: Record) -> Record | None:
        path = self.path("outbox", record.key, RECORD)
        try:
            current = read_record(path)
        except DicomNodeError:
            return None
        return current if current.id == record.id else None

    def mark_sent(self, record: Record, destination: str) -> bool:
        """The destination confirmed ``record``'s result: ``sent/K.json`` is written, then
        the outbox entry removed. False when a newer result replaced it meanwhile (the
        newer one stays pending)."""
        with self._lock:
            current = self._current(record)
            if current is None:
                return False
            now = time.time()
            sent = current.with_(
                state="sent", sent_at=now, attempts=current.attempts + 1, destination=destination
            )
            write_record(self.path("sent", f"{record.key}.json"), sent)
            shutil.rmtree(self.path("outbox", record.key))
            fsync_dir(self.path("outbox"))
            return True

    def mark_attempt(
        self, record: Record, destination: str, error: str, retry_after: float, max_attempts: int
    ) -> Record | None:
        """Count a failed try of ``record``: pending again ``retry_after`` seconds from now,
        or moved to ``failed/K/`` (with its result files) after ``max_attempts`` tries.
        Returns the new record (None when a newer result replaced it meanwhile)."""
        with self._lock:
            current = self._current(record)
            if current is None:
                return None
            now = time.time()
            attempts = current.attempts + 1
            if attempts >= max_attempts:
                failed = current.with_(
                    state="failed",
                    attempts=attempts,
                    destination=destination,
                    last_error=error,
                    failed_at=now,
                    stage="sending",
                    reason=f"not sent after {attempts} tries to {destination}: {error}",
                )
                folder = self.path("outbox", record.key)
                write_record(folder / RECORD, failed)
                self._replace_folder(folder, self.path("failed", record.key))
                return failed
            pending = current.with_(
                attempts=attempts,
                destination=destination,
                last_error=error,
                next_try=now + retry_after,
            )
            write_record(self.path("outbox", record.key, RECORD), pending)
            return pending

    # recovery and status -----------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Bring the spool to a clean state after a crash (see the module docstring).

        Returns counts: ``requeued`` (claims put back), ``committed`` (complete claims
        moved to the outbox), ``failed`` (failures recorded, moved to ``failed/``),
        ``confirmed`` (sent results removed from the outbox),
        ``incoming`` and ``outbox`` (pending work afterwards).
        """
        counts = {"requeued": 0, "committed": 0, "failed": 0, "confirmed": 0}
        with self._lock:
            shutil.rmtree(self.path("tmp"), ignore_errors=True)
            self.path("tmp").mkdir(exist_ok=True)
            for entry in list(os.scandir(self.path("work"))):
                counts[self._recover_claim(Path(entry.path))] += 1
            for entry in list(os.scandir(self.path("outbox"))):
                folder = Path(entry.path)
                if self._recover_outbox(folder):
                    counts["confirmed"] += 1
        counts["incoming"] = len(self.incoming())
        counts["outbox"] = len(self.outbox())
        return counts

    def _recover_claim(self, folder: Path) -> str:
        if not folder.is_dir() or folder.is_symlink():  # not a claim: nothing to keep
            folder.unlink(missing_ok=True)
            return "requeued"
        record_path = folder / RECORD
        if record_path.is_file():
            try:
                record = read_record(record_path)
            except DicomNodeError:
                record = None
            if record is not None and record.state == "pending":
                self._finish_commit(folder, record)
                return "committed"
            if record is not None and record.state == "failed":
                self._finish_failure(folder, record)
                return "failed"
        sources = [p for p in folder.glob("*.dcm") if not p.name.endswith(("_sr.dcm", "_sc.dcm"))]
        for source in sources:
            target = self.path("incoming", source.name)
            if not target.exists():
                os.replace(source, target)
        fsync_dir(self.path("incoming"))
        shutil.rmtree(folder, ignore_errors=True)
        return "requeued"

    def _recover_outbox(self, folder: Path) -> bool:
        """Remove an outbox entry already confirmed sent (or one without a record, which
        an atomic commit never leaves); True when it was confirmed."""
        try:
            record = read_record(folder / RECORD)
        except DicomNodeError:
            shutil.rmtree(folder, ignore_errors=True)
            return False
        if record.state == "failed":  # given up, killed before the move to failed/
            self._replace_folder(folder, self.path("failed", record.key))
            return False
        sent_path = self.path("sent", f"{record.key}.json")
        if sent_path.is_file():
            try:
                sent = read_record(sent_path)
            except DicomNodeError:
                return False
            if sent.id == record.id:
                shutil.rmtree(folder, ignore_errors=True)
                return True
        return False

    def status(self) -> dict[str, Any]:
        """What the spool holds: ``incoming`` (keys), ``processing`` (count), ``pending``,
        ``sent`` and ``failed`` (record dicts, oldest first) and ``bytes`` used."""
        return spool_status(self.root)
