"""cxr.dicomnode.send: results reach a C-STORE SCP or a STOW-RS service, and anything
short of a confirmation is a SendError with the reason."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cxr.dicomnode.config import parse_destination
from cxr.dicomnode.send import SendError, SendSettings, send_datasets
from dicomnode_net import Receiver, free_port, phantom_dx, roundtrip

SETTINGS = SendSettings("CXR", network_timeout=5, acse_timeout=5, dimse_timeout=5)


def _datasets():
    return [roundtrip(phantom_dx(1)), roundtrip(phantom_dx(2))]


def test_cstore_sends_each_dataset():
    rx = Receiver()
    try:
        send_datasets(_datasets(), parse_destination(rx.send_to), SETTINGS)
        got = rx.wait_for(2, timeout=10)
    finally:
        rx.stop()
    assert [d.SOPInstanceUID for d in got] == [d.SOPInstanceUID for d in _datasets()]
    assert got[0].PixelData == _datasets()[0].PixelData


def test_cstore_failures_are_send_errors():
    down = parse_destination(f"PACS@127.0.0.1:{free_port()}")
    with pytest.raises(SendError, match="association with PACS@127.0.0.1"):
        send_datasets(_datasets(), down, SETTINGS)
    rx = Receiver(status=0xA700)
    try:
        with pytest.raises(SendError, match="status 0xA700"):
            send_datasets(_datasets(), parse_destination(rx.send_to), SETTINGS)
        wrong_title = parse_destination(f"OTHER@127.0.0.1:{rx.port}")
        send_datasets([], wrong_title, SETTINGS)  # nothing to send: no association
    finally:
        rx.stop()


class _Stow:
    """A minimal STOW-RS service: records each POST and answers ``status`` with ``body``."""

    def __init__(self, status: int = 200, body: dict | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            break
                        data += chunk
                else:
                    data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), data))
                payload = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stow_posts_every_dataset_in_one_request():
    stow = _Stow()
    try:
        send_datasets(_datasets(), parse_destination(stow.url), SETTINGS)
    finally:
        stow.stop()
    ((path, headers, body),) = stow.requests
    assert path == "/dicom-web/studies"
    assert headers["Content-Type"].startswith("multipart/related")
    assert body.count(b"Content-Type: application/dicom") == 2
    for ds in _datasets():
        assert ds.SOPInstanceUID.encode() in body


def test_stow_failures_are_send_errors():
    failed = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.34"]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3"]},
                    "00081197": {"vr": "US", "Value": [272]},
                }
            ],
        }
    }
    for status, body, words in (
        (500, None, "HTTPError"),
        (202, failed, r"1 instance\(s\) not stored \(reasons \['0x0110'\]\)"),
    ):
        stow = _Stow(status, body)
        try:
            with pytest.raises(SendError, match=words):
                send_datasets(_datasets(), parse_destination(stow.url), SETTINGS)
        finally:
            stow.stop()
    down = parse_destination(f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(SendError, match="STOW-RS to http://127.0.0.1"):
        send_datasets(_datasets(), down, SETTINGS)
