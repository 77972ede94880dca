"""``cxr dicom listen`` and ``cxr dicom status`` (src/cxr/cli/dicom.py).

The listener runs as a real process: started, sent a study, stopped with SIGTERM; and
killed with SIGKILL right after a study arrived, then started again: every result
arrives exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.dicomnode.spool import Spool
from cxr.dicomnode.status import spool_status
from dicomnode_net import (
    Receiver,
    echo,
    free_port,
    make_model,
    phantom_dx,
    send,
    sr_source_uid,
)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def _spool(root: Path) -> Spool:
    """A spool with one instance waiting, one result pending, one sent, one failed."""
    spool = Spool(root)
    spool.enqueue("1.1", b"a")
    for key in ("1.2", "1.3", "1.4"):
        spool.enqueue(key, b"x")
        claim = spool.claim(key)
        assert claim is not None
        if key == "1.4":
            spool.fail_claim(claim, "processing", "wrong-modality: Modality is CT")
        else:
            spool.commit(claim, [], "PACS@127.0.0.1:4242", [])
    (sent,) = [r for r in spool.outbox() if r.key == "1.3"]
    spool.mark_sent(sent, "PACS@127.0.0.1:4242")
    (pending,) = spool.outbox()
    spool.mark_attempt(pending, "PACS@127.0.0.1:4242", "association rejected", 30.0, 5)
    return spool


def test_status_text_and_json(tmp_path, capsys):
    _spool(tmp_path / "s")
    assert main(["dicom", "status", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "1 waiting, 0 processing, 1 to send, 1 sent, 1 failed" in text
    assert re.search(r"1\.2  tries 1, next in \d+ s, last error: association rejected", text)
    assert "1.4  processing: wrong-modality: Modality is CT" in text
    assert "1.3  to PACS@127.0.0.1:4242 at " in text
    assert main(["dicom", "status", str(tmp_path / "s"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["incoming"] == ["1.1"]
    assert [r["key"] for r in data["pending"]] == ["1.2"] and data["pending"][0]["attempts"] == 1
    assert [r["key"] for r in data["sent"]] == ["1.3"]
    assert data["failed"][0]["reason"] == "wrong-modality: Modality is CT"


def test_status_of_no_spool(tmp_path, capsys):
    assert main(["dicom", "status", str(tmp_path / "missing")]) == 2
    assert "spool folder" in capsys.readouterr().err
    assert main(["dicom", "status", str(tmp_path)]) == 2
    assert "is not a spool folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--ae-title", "A-VERY-LONG-AE-TITLE", "--allow-aet", "ORTHANC"], "ae_title (--ae-title)"),
        (["--allow-aet", "ORTHANC", "--port", "99999"], "port (--port)"),
        ([], "--allow-any-aet"),
        (["--allow-aet", "ORTHANC", "--tls-cert", "cert.pem"], "tls_cert (--tls-cert)"),
    ],
)
def test_listen_refuses_bad_settings_in_one_line(tmp_path, model, capsys, extra, words):
    args = ["dicom", "listen", str(model), "--spool", str(tmp_path / "s"), "--port", "0"]
    args += ["--send-to", "PACS@127.0.0.1:4242", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxr dicom: error: ") and words in err and len(err.splitlines()) == 1


class _Listener:
    """``cxr dicom listen`` in a child process; ``port`` from its start line."""

    def __init__(self, model: Path, spool: Path, send_to: str) -> None:
        cmd = [sys.executable, "-m", "cxr", "dicom", "listen", str(model), "--port", "0"]
        cmd += ["--spool", str(spool), "--send-to", send_to, "--allow-aet", "ORTHANC"]
        cmd += ["--retry-delay", "0.2", "--retry-max-delay", "0.5", "--send-attempts", "50"]
        cmd += ["--network-timeout", "5", "--acse-timeout", "5", "--dimse-timeout", "5"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        started = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                found = re.search(r"listening as CXR on 127\.0\.0\.1:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(120) or not self.port:
            self.proc.kill()
            raise AssertionError("the listener did not start:\n" + "".join(self.lines))

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)


@pytest.mark.slow
def test_listen_serves_until_sigterm(tmp_path, model):
    rx = Receiver()
    try:
        node = _Listener(model, tmp_path / "spool", rx.send_to)
        try:
            assert echo(node.port) == 0x0000
            assert [int(s.Status) for s in send(node.port, [phantom_dx(1)])] == [0]
            assert len(rx.wait_for(2, timeout=60)) == 2
        finally:
            node.proc.send_signal(signal.SIGTERM)
            code = node.wait()
    finally:
        rx.stop()
    log = "".join(node.lines)
    assert code == 0, log
    assert f"C-STORE {phantom_dx(1).SOPInstanceUID} from ORTHANC" in log
    assert "Phantom" not in log and "PHANTOM-1" not in log


@pytest.mark.slow
def test_kill_9_then_restart_sends_each_result_once(tmp_path, model):
    port = free_port()  # the destination is down while the first node runs
    spool = tmp_path / "spool"
    images = [phantom_dx(i) for i in (1, 2, 3)]
    first = _Listener(model, spool, f"PACS@127.0.0.1:{port}")
    try:
        assert [int(s.Status) for s in send(first.port, images)] == [0, 0, 0]
        time.sleep(0.3)  # somewhere in processing or trying to send
    finally:
        first.proc.kill()  # SIGKILL: no clean-up at all
        first.wait()
    rx = Receiver(port=port)
    try:
        second = _Listener(model, spool, rx.send_to)
        try:
            got = rx.wait_for(6, timeout=120)
            deadline = time.monotonic() + 60
            while spool_status(spool)["pending"] and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # nothing more arrives
            got = list(rx.received)
        finally:
            second.proc.send_signal(signal.SIGTERM)
            second.wait()
    finally:
        rx.stop()
    refs = Counter(sr_source_uid(d) for d in got if d.SOPClassUID == SR_CLASS)
    assert refs == Counter({ds.SOPInstanceUID: 1 for ds in images}), "".join(second.lines)
    assert len(got) == 6
