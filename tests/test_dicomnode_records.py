"""cxr.dicomnode.records: the spool's JSON records round-trip, are written atomically and
carry UIDs only."""

from __future__ import annotations

import json

import pytest

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.records import Record, check_key, read_record, write_record


def test_a_record_round_trips(tmp_path):
    record = Record(
        id="ab" * 16,
        key="1.2.3",
        files=("1.2.3_sr.dcm", "1.2.3_sc.dcm"),
        destination="PACS@127.0.0.1:4242",
        attempts=2,
        next_try=12.5,
        last_error="refused",
        created=10.0,
        notes=("no heatmaps",),
    )
    path = tmp_path / "r" / "record.json"
    write_record(path, record)
    assert read_record(path) == record
    assert json.loads(path.read_text())["files"] == ["1.2.3_sr.dcm", "1.2.3_sc.dcm"]
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary left
    assert record.with_(attempts=3).attempts == 3 and record.attempts == 2


def test_bad_records_name_the_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{not json")
    with pytest.raises(DicomNodeError, match="record.json is not a spool record"):
        read_record(path)
    path.write_text(json.dumps({"id": "x", "key": "1.2", "state": "lost"}))
    with pytest.raises(DicomNodeError, match="unknown state"):
        read_record(path)


@pytest.mark.parametrize("uid", ["1.2.840.10008", "0", "1." + "2" * 62])
def test_uids_are_keys(uid):
    assert check_key(uid) == uid


@pytest.mark.parametrize("uid", ["", "1..2", "1.2.", "a.1", "../x", "1." + "2" * 63, None])
def test_other_text_is_no_key(uid):
    with pytest.raises(DicomNodeError, match="not a valid DICOM UID"):
        check_key(uid)
