"""cxr.dicomnode.status: a spool's state read without changing it."""

from __future__ import annotations

import pytest

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.spool import Spool
from cxr.dicomnode.status import spool_status, spool_usage


def test_status_lists_each_stage(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.enqueue("1.1", b"a" * 10)
    spool.enqueue("1.2", b"b" * 20)
    claim = spool.claim("1.2")
    assert claim is not None
    spool.fail_claim(claim, "processing", "unreadable: truncated")
    spool.enqueue("1.3", b"c")
    claim = spool.claim("1.3")
    assert claim is not None
    spool.commit(claim, [], "PACS@h:1", [])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    status = spool_status(tmp_path / "s")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # read only
    assert status["incoming"] == ["1.1"] and status["processing"] == 0
    assert [r["key"] for r in status["pending"]] == ["1.3"]
    assert status["failed"][0]["reason"] == "unreadable: truncated"
    assert status["sent"] == []
    assert status["bytes"] == spool_usage(tmp_path / "s") > 10


def test_usage_counts_every_file(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").write_bytes(b"1" * 7)
    (tmp_path / "a" / "b" / "y").write_bytes(b"1" * 5)
    assert spool_usage(tmp_path) == 12
    assert spool_usage(tmp_path / "missing") == 0


def test_a_folder_that_is_no_spool(tmp_path):
    with pytest.raises(DicomNodeError, match="is not a spool folder"):
        spool_status(tmp_path)


def test_usage_can_leave_folders_out(tmp_path):
    for name, size in (("incoming", 3), ("sent", 100)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"1" * size)
    (tmp_path / "lock").write_bytes(b"")
    assert spool_usage(tmp_path) == 103
    assert spool_usage(tmp_path, skip=("sent",)) == 3
