"""cxr.dicomnode.spool: every step is atomic, the quota holds, and recovery after a crash
leaves each instance and result in exactly one place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.records import RECORD, read_record, write_record
from cxr.dicomnode.spool import Spool, SpoolFull

UID = "1.2.3.4"


def _result(spool: Spool, key: str = UID) -> None:
    """Enqueue, claim and commit ``key`` with two fake result files."""
    spool.enqueue(key, b"source")
    claim = spool.claim(key)
    assert claim is not None
    for kind in ("sr", "sc"):
        (claim.folder / f"{key}_{kind}.dcm").write_bytes(b"result " + kind.encode())
    spool.commit(claim, [f"{key}_sr.dcm", f"{key}_sc.dcm"], "PACS@h:1", [])


def test_an_instance_moves_from_incoming_to_sent(tmp_path):
    spool = Spool(tmp_path / "s")
    path = spool.enqueue(UID, b"DICM data")
    assert path == tmp_path / "s" / "incoming" / f"{UID}.dcm" and path.read_bytes() == b"DICM data"
    assert spool.incoming() == [UID]
    claim = spool.claim(UID)
    assert claim is not None and claim.source.read_bytes() == b"DICM data"
    assert spool.incoming() == [] and spool.claim(UID) is None
    (claim.folder / "r_sr.dcm").write_bytes(b"sr")
    record = spool.commit(claim, ["r_sr.dcm"], "PACS@h:1", ["a note"])
    assert not claim.folder.exists() and list((tmp_path / "s" / "work").iterdir()) == []
    (pending,) = spool.outbox()
    assert pending == record and pending.files == ("r_sr.dcm",) and pending.notes == ("a note",)
    assert not (tmp_path / "s" / "outbox" / UID / f"{UID}.dcm").exists()  # source removed
    assert [p.read_bytes() for p in spool.result_files(pending)] == [b"sr"]
    assert spool.mark_sent(pending, "PACS@h:1")
    assert spool.outbox() == []
    sent = read_record(tmp_path / "s" / "sent" / f"{UID}.json")
    assert (sent.state, sent.id, sent.attempts) == ("sent", record.id, 1)
    assert spool.status()["sent"][0]["key"] == UID


def test_enqueue_checks_the_key_and_leaves_no_partial_file(tmp_path):
    spool = Spool(tmp_path / "s")
    with pytest.raises(DicomNodeError, match="not a valid DICOM UID"):
        spool.enqueue("../../etc/passwd", b"x")
    assert list((tmp_path / "s" / "tmp").iterdir()) == []


def test_the_quota_refuses_what_does_not_fit(tmp_path):
    spool = Spool(tmp_path / "s", quota_bytes=100)
    spool.enqueue("1.1", b"x" * 60)
    with pytest.raises(SpoolFull, match="quota of 100 bytes"):
        spool.enqueue("1.2", b"x" * 41)
    spool.enqueue("1.2", b"x" * 40)  # exactly full
    assert spool.usage() == 100 and spool.incoming() == ["1.1", "1.2"]


def test_failed_tries_back_off_then_give_up(tmp_path):
    spool = Spool(tmp_path / "s")
    _result(spool)
    (record,) = spool.outbox()
    first = spool.mark_attempt(record, "PACS@h:1", "refused", 5.0, max_attempts=2)
    assert first is not None and first.state == "pending" and first.attempts == 1
    assert first.next_try >= record.created + 5.0 and first.last_error == "refused"
    second = spool.mark_attempt(first, "PACS@h:1", "refused again", 5.0, max_attempts=2)
    assert second is not None and second.state == "failed" and second.stage == "sending"
    assert "not sent after 2 tries to PACS@h:1: refused again" in second.reason
    failed = tmp_path / "s" / "failed" / UID
    assert sorted(p.name for p in failed.iterdir()) == [f"{UID}_sc.dcm", f"{UID}_sr.dcm", RECORD]
    assert spool.outbox() == [] and spool.status()["failed"][0]["reason"] == second.reason


def test_a_newer_result_is_never_marked_by_an_older_send(tmp_path):
    spool = Spool(tmp_path / "s")
    _result(spool)
    (old,) = spool.outbox()
    _result(spool)  # the same image received and processed again meanwhile
    (new,) = spool.outbox()
    assert new.id != old.id
    assert not spool.mark_sent(old, "PACS@h:1")
    assert spool.mark_attempt(old, "PACS@h:1", "x", 1.0, 5) is None
    assert spool.outbox() == [new]


def test_a_failed_instance_keeps_only_the_reason(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.enqueue(UID, b"x")
    claim = spool.claim(UID)
    assert claim is not None
    record = spool.fail_claim(claim, "processing", "wrong-modality: Modality is CT")
    folder = tmp_path / "s" / "failed" / UID
    assert [p.name for p in folder.iterdir()] == [RECORD]
    assert read_record(folder / RECORD) == record and record.stage == "processing"


def test_unclaim_puts_the_instance_back(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.enqueue(UID, b"old")
    claim = spool.claim(UID)
    assert claim is not None
    spool.unclaim(claim)
    assert spool.incoming() == [UID] and not claim.folder.exists()
    claim = spool.claim(UID)
    assert claim is not None
    spool.enqueue(UID, b"newer")  # a newer copy arrived meanwhile: it wins
    spool.unclaim(claim)
    assert (tmp_path / "s" / "incoming" / f"{UID}.dcm").read_bytes() == b"newer"


def test_recovery_after_a_crash_at_each_step(tmp_path):
    root = tmp_path / "s"
    spool = Spool(root)
    # 1. received, never claimed
    spool.enqueue("1.1", b"a")
    # 2. claimed, killed while predicting: back to incoming
    spool.enqueue("1.2", b"b")
    assert spool.claim("1.2") is not None
    # 3. results and record complete, killed before the rename into the outbox: committed
    spool.enqueue("1.3", b"c")
    claim = spool.claim("1.3")
    assert claim is not None
    (claim.folder / "1.3_sr.dcm").write_bytes(b"sr")
    write_record(
        claim.folder / RECORD,
        read_record_like(claim.id, "1.3", ("1.3_sr.dcm",)),
    )
    # 4. confirmed sent, killed before the outbox entry was removed: dropped, not re-sent
    _result(spool, "1.4")
    (sent,) = [r for r in spool.outbox() if r.key == "1.4"]
    shutil.copytree(root / "outbox" / "1.4", tmp_path / "keep")
    assert spool.mark_sent(sent, "PACS@h:1")
    shutil.copytree(tmp_path / "keep", root / "outbox" / "1.4")
    # 5. sent before, then received and processed again: the new result stays pending
    _result(spool, "1.5")
    (first,) = [r for r in spool.outbox() if r.key == "1.5"]
    assert spool.mark_sent(first, "PACS@h:1")
    _result(spool, "1.5")
    # 6. a half-written file in tmp/
    (root / "tmp" / "1.6.abc.dcm").write_bytes(b"partial")
    # 7. processing failed: record written, killed before the move to failed/
    spool.enqueue("1.7", b"g")
    claim = spool.claim("1.7")
    assert claim is not None
    write_record(
        claim.folder / RECORD,
        read_record_like(claim.id, "1.7", ()).with_(state="failed", reason="unreadable: x"),
    )
    # 8. sending given up: record written, killed before the move to failed/
    _result(spool, "1.8")
    (gave_up,) = [r for r in spool.outbox() if r.key == "1.8"]
    write_record(root / "outbox" / "1.8" / RECORD, gave_up.with_(state="failed", reason="r"))

    counts = Spool(root).recover()
    assert counts == {
        "requeued": 1,
        "committed": 1,
        "failed": 1,
        "confirmed": 1,
        "incoming": 2,
        "outbox": 2,
    }
    assert sorted(Spool(root).incoming()) == ["1.1", "1.2"]
    assert sorted(r.key for r in spool.outbox()) == ["1.3", "1.5"]
    assert (root / "incoming" / "1.2.dcm").read_bytes() == b"b"
    assert not (root / "outbox" / "1.3" / "1.3.dcm").exists()
    assert list((root / "work").iterdir()) == [] and list((root / "tmp").iterdir()) == []
    assert sorted(r["key"] for r in spool.status()["failed"]) == ["1.7", "1.8"]
    assert [p.name for p in (root / "failed" / "1.7").iterdir()] == [RECORD]  # source gone
    assert len(list((root / "failed" / "1.8").glob("*.dcm"))) == 2  # results kept
    # a second recovery changes nothing
    assert Spool(root).recover()["incoming"] == 2 and len(spool.outbox()) == 2


def read_record_like(id_: str, key: str, files: tuple[str, ...]):
    from cxr.dicomnode.records import Record

    return Record(id=id_, key=key, files=files, destination="PACS@h:1", created=1.0)


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_one_node_per_spool(tmp_path):
    a, b = Spool(tmp_path / "s"), Spool(tmp_path / "s")
    a.acquire()
    with pytest.raises(DicomNodeError, match="in use by another running node"):
        b.acquire()
    a.release()
    b.acquire()
    b.release()


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DicomNodeError, match="cannot create"):
        Spool(Path(tmp_path / "file"))
