"""cxr.dicomnode.node: the whole node on loopback, a pynetdicom SCU as the PACS and a
pynetdicom Storage SCP as the destination.

A DX study of two phantom images comes back as an SR and an SC per image, with the
Predictor's probabilities; refusals leave the node serving; a destination that is down is
retried until it is up; after a crash a new node finishes every pending image and sends
every pending result exactly once."""

from __future__ import annotations

import io
import shutil
import time
from collections import Counter

import pydicom
import pytest

from cxr.dicomnode import DicomNode, DicomNodeError, DicomNodeWarning
from cxr.dicomnode.spool import Spool
from cxr.dicomnode.worker import Sender, Worker
from cxr.inference import Predictor
from dicomnode_net import (
    Receiver,
    config,
    ct_dataset,
    echo,
    free_port,
    make_model,
    phantom_dx,
    predicted,
    scu,
    send,
    sr_probabilities,
    sr_source_uid,
    write_dx,
)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model)


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.stop()


def test_a_study_comes_back_as_sr_and_sc_per_image(tmp_path, model, predictor, receiver):
    images = [phantom_dx(1), phantom_dx(2)]
    with DicomNode(config(tmp_path, model, receiver.send_to), predictor) as node:
        port = node.address[1]
        assert echo(port) == 0x0000
        assert [int(s.Status) for s in send(port, images)] == [0, 0]
        assert node.wait_idle(60)
        got = receiver.wait_for(4, timeout=30)
        status = node.status()
    assert len(got) == 4
    srs = {sr_source_uid(d): d for d in got if d.SOPClassUID == SR_CLASS}
    scs = [d for d in got if d.SOPClassUID != SR_CLASS]
    assert sorted(srs) == sorted(ds.SOPInstanceUID for ds in images) and len(scs) == 2
    for ds in images:
        sr = srs[ds.SOPInstanceUID]
        assert sr.StudyInstanceUID == ds.StudyInstanceUID
        expected = predicted(
            predictor, write_dx(tmp_path / "files" / f"{ds.InstanceNumber}.dcm", ds)
        )
        got_p = sr_probabilities(sr)
        assert got_p.keys() == expected.keys()
        for label, p in expected.items():
            assert got_p[label] == pytest.approx(p, abs=1e-6), label
    assert {d.StudyInstanceUID for d in scs} == {images[0].StudyInstanceUID}
    assert sorted(r["key"] for r in status["sent"]) == sorted(d.SOPInstanceUID for d in images)
    assert status["pending"] == [] and status["failed"] == []


def test_refusals_leave_the_node_serving(tmp_path, model, predictor, receiver):
    with DicomNode(config(tmp_path, model, receiver.send_to), predictor) as node:
        port = node.address[1]
        assert scu(port, calling="STRANGER").is_rejected
        truncated = phantom_dx(3)
        truncated.PixelData = truncated.PixelData[:500]
        (status,) = send(port, [truncated])
        assert status.Status == 0xC000 and "truncated" in status.ErrorComment
        from pynetdicom.sop_class import CTImageStorage

        assoc = scu(port, contexts=(CTImageStorage,))  # no context accepted: no association
        assert not assoc.is_established
        with pytest.raises(RuntimeError):
            assoc.send_c_store(ct_dataset())
        assert [int(s.Status) for s in send(port, [phantom_dx(4)])] == [0]
        assert node.wait_idle(60)
    assert len(receiver.wait_for(2, timeout=30)) == 2


def test_a_destination_that_is_down_gets_the_results_once_it_is_up(tmp_path, model, predictor):
    port = free_port()
    cfg = config(tmp_path, model, f"PACS@127.0.0.1:{port}", retry_delay=0.1, retry_max_delay=0.4)
    with DicomNode(cfg, predictor) as node:
        send(node.address[1], [phantom_dx(1)])
        end = time.monotonic() + 60
        while not (node.status()["pending"] and node.status()["pending"][0]["attempts"] >= 2):
            assert time.monotonic() < end, "no retry seen"
            time.sleep(0.05)
        assert "association with PACS" in node.status()["pending"][0]["last_error"]
        rx = Receiver(port=port)
        try:
            assert node.wait_idle(60)
            got = rx.wait_for(2, timeout=10)
        finally:
            rx.stop()
        (sent,) = node.status()["sent"]
    assert len(got) == 2 and sent["attempts"] >= 3


def _enqueue(spool: Spool, ds) -> None:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    spool.enqueue(ds.SOPInstanceUID, buf.getvalue())


def test_after_a_crash_every_pending_image_and_result_is_sent_exactly_once(
    tmp_path, model, predictor, receiver
):
    cfg = config(tmp_path, model, receiver.send_to)
    spool = Spool(cfg.spool)
    worker = Worker(spool, predictor, cfg)
    # C: processed, result in the outbox, never sent
    _enqueue(spool, phantom_dx(3))
    worker.step()
    # D: sent and confirmed; killed before its outbox entry was removed
    _enqueue(spool, phantom_dx(4))
    worker.step()
    (d_record,) = [r for r in spool.outbox() if r.key == phantom_dx(4).SOPInstanceUID]
    keep = tmp_path / "keep"
    shutil.copytree(spool.path("outbox", d_record.key), keep)
    elsewhere = Receiver()
    try:
        assert Sender(spool, config(tmp_path, model, elsewhere.send_to)).send(d_record)
    finally:
        elsewhere.stop()
    shutil.copytree(keep, spool.path("outbox", d_record.key))
    # B: claimed by the worker, killed while predicting
    _enqueue(spool, phantom_dx(2))
    assert spool.claim(phantom_dx(2).SOPInstanceUID) is not None
    # A: received, not processed
    _enqueue(spool, phantom_dx(1))
    assert receiver.received == []

    with DicomNode(cfg, predictor) as node:
        assert node.recovered["requeued"] == 1 and node.recovered["confirmed"] == 1
        assert node.wait_idle(60)
        got = receiver.wait_for(6, timeout=30)
        time.sleep(0.5)  # nothing more arrives
        status = node.status()
    got = list(receiver.received)
    refs = Counter(sr_source_uid(d) for d in got if d.SOPClassUID == SR_CLASS)
    assert refs == Counter({phantom_dx(i).SOPInstanceUID: 1 for i in (1, 2, 3)})
    assert len(got) == 6 and len({d.SOPInstanceUID for d in got}) == 6
    assert {r["key"] for r in status["sent"]} == {
        phantom_dx(i).SOPInstanceUID for i in (1, 2, 3, 4)
    }
    assert status["pending"] == [] and status["incoming"] == [] and status["processing"] == 0


def test_one_node_per_spool_and_a_clear_error(tmp_path, model, predictor, receiver):
    cfg = config(tmp_path, model, receiver.send_to)
    with DicomNode(cfg, predictor) as node:
        with pytest.raises(DicomNodeError, match="in use by another running node"):
            DicomNode(cfg, predictor).start()
        assert echo(node.address[1]) == 0x0000  # the first one is unharmed
    assert not node.running
    with pytest.raises(DicomNodeError, match="not running"):
        _ = node.address


def test_listening_beyond_loopback_without_tls_warns(tmp_path, model, predictor, receiver):
    cfg = config(tmp_path, model, receiver.send_to, host="0.0.0.0")
    with pytest.warns(DicomNodeWarning, match="without TLS"), DicomNode(cfg, predictor) as node:
        assert node.address[0] == "0.0.0.0"


def test_the_node_reads_what_it_stored(tmp_path, model, predictor, receiver):
    """The instance on disk is the sender's data set, byte for byte in its values."""
    ds = phantom_dx(5)
    cfg = config(tmp_path, model, receiver.send_to)
    node = DicomNode(cfg, predictor).start()
    try:
        node._worker.stop()  # keep the instance in the spool  # noqa: SLF001
        node._worker.join(10)  # noqa: SLF001
        send(node.address[1], [ds])
        stored = pydicom.dcmread(cfg.spool / "incoming" / f"{ds.SOPInstanceUID}.dcm")
    finally:
        node.stop()
    assert stored.PixelData == ds.PixelData and stored.PatientID == ds.PatientID
