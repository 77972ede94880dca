"""cxr.dicomnode.worker: the worker predicts spooled instances through the Predictor and
writes their SR and SC to the outbox; the sender sends them with backoff and gives up
after the last try."""

from __future__ import annotations

import time

import pydicom
import pytest

from cxr.dicomnode.records import read_record
from cxr.dicomnode.spool import Spool
from cxr.dicomnode.worker import Sender, Worker
from cxr.inference import Predictor
from dicomnode_net import (
    Receiver,
    config,
    free_port,
    make_model,
    phantom_dx,
    predicted,
    roundtrip,
    sr_probabilities,
    write_dx,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, batch_size=4)


def _enqueue(spool: Spool, ds) -> str:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    spool.enqueue(ds.SOPInstanceUID, buf.getvalue())
    return ds.SOPInstanceUID


def test_each_image_gets_its_own_result_with_the_predictors_numbers(tmp_path, model, predictor):
    cfg = config(tmp_path, model, "PACS@127.0.0.1:1", top_k=2)
    spool = Spool(cfg.spool)
    woken = []
    worker = Worker(spool, predictor, cfg, on_result=lambda: woken.append(1))
    images = [phantom_dx(1), phantom_dx(2), phantom_dx(3, Modality="MR")]
    keys = [_enqueue(spool, ds) for ds in images]
    spool.enqueue("1.2.3.999", b"not a DICOM file at all")
    assert worker.step() == 0.0  # one batch of four
    assert spool.incoming() == [] and len(woken) == 2
    pending = {r.key: r for r in spool.outbox()}
    assert sorted(pending) == sorted(keys[:2])
    for ds, key in zip(images[:2], keys[:2], strict=True):
        record = pending[key]
        assert record.destination == "PACS@127.0.0.1:1" and record.attempts == 0
        sr_path, sc_path = spool.result_files(record)
        sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID
        expected = predicted(predictor, write_dx(tmp_path / f"{key}.dcm", ds))
        got = sr_probabilities(sr)
        assert got.keys() == expected.keys()
        for label, p in expected.items():
            assert got[label] == pytest.approx(p, abs=1e-6), label
        assert sc.BurnedInAnnotation == "YES"
    status = spool.status()
    reasons = {r["key"]: r["reason"] for r in status["failed"]}
    assert reasons[keys[2]].startswith("wrong-modality: ")
    assert "MR" in reasons[keys[2]]
    assert "1.2.3.999" in reasons and status["processing"] == 0


def test_results_are_the_same_objects_when_processed_again(tmp_path, model, predictor):
    cfg = config(tmp_path, model, "PACS@127.0.0.1:1")
    spool = Spool(cfg.spool)
    worker = Worker(spool, predictor, cfg)
    uids = []
    for _ in range(2):
        _enqueue(spool, phantom_dx(1))
        worker.step()
        (record,) = spool.outbox()
        uids.append([pydicom.dcmread(p).SOPInstanceUID for p in spool.result_files(record)])
    assert uids[0] == uids[1]  # a retry replaces at the destination, never duplicates


def test_a_disk_error_puts_the_instance_back(tmp_path, model, predictor, monkeypatch):
    import cxr.dicomout.from_prediction as fp

    cfg = config(tmp_path, model, "PACS@127.0.0.1:1", retry_delay=3.0)
    spool = Spool(cfg.spool)
    worker = Worker(spool, predictor, cfg)
    key = _enqueue(spool, phantom_dx(1))

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fp, "write_dicom_results", no_room)
    assert worker.step() == 3.0
    assert spool.incoming() == [key] and spool.outbox() == [] and spool.status()["failed"] == []
    monkeypatch.undo()
    assert worker.step() == 0.0 and [r.key for r in spool.outbox()] == [key]


def test_the_sender_retries_with_backoff_then_succeeds(tmp_path, model, predictor):
    port = free_port()
    cfg = config(tmp_path, model, f"PACS@127.0.0.1:{port}", retry_delay=1.0, retry_max_delay=9.0)
    spool = Spool(cfg.spool)
    _enqueue(spool, phantom_dx(1))
    Worker(spool, predictor, cfg).step()
    sender = Sender(spool, cfg)
    before = time.time()
    pause = sender.step()  # destination down: the first try fails
    after = time.time()
    (record,) = spool.outbox()
    assert record.attempts == 1 and "association with PACS@127.0.0.1" in record.last_error
    assert before + 1.0 <= record.next_try <= after + 1.0 and 0.0 < pause <= 1.0
    assert sender.step() > 0.0 and spool.outbox()[0].attempts == 1  # not due yet: no try
    time.sleep(max(record.next_try - time.time(), 0) + 0.05)
    before = time.time()
    sender.step()
    after = time.time()
    record = spool.outbox()[0]
    assert record.attempts == 2 and before + 2.0 <= record.next_try <= after + 2.0  # doubled
    rx = Receiver(port=port)
    try:
        time.sleep(max(record.next_try - time.time(), 0) + 0.05)
        sender.step()
        got = rx.wait_for(2, timeout=10)
    finally:
        rx.stop()
    assert sorted(str(d.SOPClassUID.name) for d in got) == [
        "Comprehensive 3D SR Storage",
        "Secondary Capture Image Storage",
    ]
    assert spool.outbox() == []
    sent = read_record(spool.path("sent", f"{record.key}.json"))
    assert sent.attempts == 3 and sent.destination == f"PACS@127.0.0.1:{port}"


def test_the_sender_gives_up_after_the_last_try(tmp_path, model, predictor):
    cfg = config(tmp_path, model, f"PACS@127.0.0.1:{free_port()}", retry_delay=0, send_attempts=2)
    spool = Spool(cfg.spool)
    _enqueue(spool, phantom_dx(1))
    Worker(spool, predictor, cfg).step()
    sender = Sender(spool, cfg)
    sender.step()
    sender.step()
    assert spool.outbox() == []
    (failed,) = spool.status()["failed"]
    assert failed["stage"] == "sending" and failed["attempts"] == 2
    assert failed["reason"].startswith(f"not sent after 2 tries to {cfg.destination}")
    folder = spool.path("failed", failed["key"])
    assert len(list(folder.glob("*.dcm"))) == 2  # the results are kept for a manual send
    assert roundtrip(pydicom.dcmread(next(folder.glob("*_sr.dcm")))).Modality == "SR"


def test_results_due_together_go_in_one_association_and_a_failed_batch_goes_one_by_one(
    tmp_path, model, predictor, monkeypatch
):
    import cxr.dicomnode.worker as worker_module
    from cxr.dicomnode.send import SendError

    port = free_port()
    cfg = config(tmp_path, model, f"PACS@127.0.0.1:{port}", retry_delay=0)
    spool = Spool(cfg.spool)
    for i in range(3):
        _enqueue(spool, phantom_dx(10 + i))
    Worker(spool, predictor, cfg).step()
    assert len(spool.outbox()) == 3
    calls: list[int] = []
    real = worker_module.send_datasets

    def counted(datasets, dest, settings, fail_batches=False):
        calls.append(len(datasets))
        if fail_batches and len(datasets) > 2:
            raise SendError("the batch was refused")
        return real(datasets, dest, settings)

    rx = Receiver(port=port)
    try:
        monkeypatch.setattr(worker_module, "send_datasets", counted)
        Sender(spool, cfg).step()
        assert calls == [6] and spool.outbox() == []  # 3 SR + 3 SC, one association
        assert len(rx.wait_for(6, timeout=10)) == 6
        for i in range(3):
            _enqueue(spool, phantom_dx(20 + i))
        Worker(spool, predictor, cfg).step()
        calls.clear()
        monkeypatch.setattr(
            worker_module, "send_datasets", lambda *a: counted(*a, fail_batches=True)
        )
        Sender(spool, cfg).step()
    finally:
        rx.stop()
    assert calls == [6, 2, 2, 2] and spool.outbox() == []  # refused batch, then one by one
    assert len(spool.status()["sent"]) == 6
