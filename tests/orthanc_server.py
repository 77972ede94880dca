"""Orthanc, the PACS of the end-to-end tests of cxr.dicomnode: started by the tests in a
temporary folder on free loopback ports, with the DICOMweb plugin, and talked to through
its REST API.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide it (``make orthanc``).
Without the ``Orthanc`` binary (or ``CXR_ORTHANC``, another one) the tests that use it
fail, saying what to install; ``CXR_SKIP_ORTHANC=1`` skips them instead. The Debian
service is never used: each :class:`Orthanc` has its own configuration, storage and log
under its folder, HTTP on loopback only (``RemoteAccessAllowed`` false, no
authentication), and accepts DICOM C-STORE and C-ECHO from the modalities it is given
only (``DicomModalities``, calling AE title and host checked)::

    with Orthanc(tmp / "pacs", [Modality("cxr", "CXR", node_port)]) as pacs:
        source = pacs.upload(dx_file)["ID"]           # POST /instances
        pacs.store("cxr", [source])                   # POST /modalities/cxr/store
        pacs.wait_for_instances(study_id, 3)          # GET /studies/<id>/instances

The fixture :func:`orthanc` starts one or more per test and stops them after it;
bench/dicom_node_throughput.py uses :class:`Orthanc` directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

INSTALL = (
    "the tests against a PACS need Orthanc (Debian's orthanc and orthanc-dicomweb "
    "packages): run `make orthanc` (or `sudo apt-get install orthanc orthanc-dicomweb`), "
    "set CXR_ORTHANC to an Orthanc binary, or set CXR_SKIP_ORTHANC=1 to skip them"
)
#: Where Debian's orthanc-dicomweb puts the plugin (CXR_ORTHANC_DICOMWEB: another path).
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
ORTHANC_AET = "ORTHANC"


def _missing(what: str) -> None:
    if os.environ.get("CXR_SKIP_ORTHANC") == "1":
        pytest.skip(f"{what} (CXR_SKIP_ORTHANC=1)")
    pytest.fail(f"{what}; {INSTALL}")


def orthanc_binary() -> str:
    """The Orthanc executable: ``CXR_ORTHANC``, else ``Orthanc`` on the PATH or in
    /usr/sbin (where Debian puts it). Missing: the test fails (skips with
    ``CXR_SKIP_ORTHANC=1``)."""
    named = os.environ.get("CXR_ORTHANC")
    if named:
        if os.access(named, os.X_OK):
            return named
        _missing(f"CXR_ORTHANC={named} is not an executable")
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        _missing("no Orthanc binary on the PATH or in /usr/sbin")
    assert found is not None
    return found


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin (``CXR_ORTHANC_DICOMWEB``, else Debian's path)."""
    named = os.environ.get("CXR_ORTHANC_DICOMWEB")
    for candidate in [named] if named else DICOMWEB_PLUGINS:
        if Path(candidate).is_file():
            return Path(candidate)
    _missing(f"no DICOMweb plugin for Orthanc at {named or ' or '.join(DICOMWEB_PLUGINS)}")
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Modality:
    """A peer Orthanc may talk to: its name in the REST API (``/modalities/<name>``), AE
    title, port on ``host``, whether Orthanc's C-STORE to it uses DICOM TLS, and the
    calling AE title Orthanc uses towards it (``local_aet``; empty: Orthanc's own)."""

    name: str
    aet: str
    port: int
    host: str = "127.0.0.1"
    tls: bool = False
    local_aet: str = ""

    def entry(self) -> dict[str, Any]:
        out = {"AET": self.aet, "Host": self.host, "Port": self.port, "UseDicomTls": self.tls}
        return out | ({"LocalAet": self.local_aet} if self.local_aet else {})


@dataclass(frozen=True)
class OrthancTls:
    """PEM files for Orthanc's DICOM TLS: its certificate and key (presented as a client
    when it sends, and as a server when ``server`` is true), and the certificates it
    trusts (the test's CA)."""

    certificate: Path
    key: Path
    trusted: Path
    server: bool = False


class OrthancRestError(AssertionError):
    """Orthanc's REST API answered with an HTTP error (status and body in the text)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Orthanc:
    """One Orthanc process, its configuration, storage and log under ``folder``.

    Args:
        folder: its own folder (created): ``config.json``, ``db/``, ``tmp/``, ``orthanc.log``.
        modalities: the peers allowed to store into it and that it may send to.
        tls: DICOM TLS settings (None: plain DICOM).
        aet: its AE title (its calling AE title when it sends).
    """

    def __init__(
        self,
        folder: Path,
        modalities: Sequence[Modality] = (),
        tls: OrthancTls | None = None,
        aet: str = ORTHANC_AET,
    ) -> None:
        self.folder = Path(folder)
        self.modalities = list(modalities)
        self.tls = tls
        self.aet = aet
        self.http_port = 0
        self.dicom_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The REST API's root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root (STOW-RS: POST ``{dicomweb}/studies``)."""
        return f"{self.url}/dicom-web"

    @property
    def send_to(self) -> str:
        """Orthanc as a C-STORE destination, ``AET@127.0.0.1:PORT``."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"

    # life cycle -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration file's content (see the module docstring)."""
        cfg: dict[str, Any] = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "TemporaryDirectory": str(self.folder / "tmp"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "DicomModalities": {m.name: m.entry() for m in self.modalities},
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True,
            "DicomScuTimeout": 20,
            "DicomAssociationCloseDelay": 0,
            "OverwriteInstances": True,  # a re-sent result replaces the stored one
            "SaveJobs": False,
            "StableAge": 1,
        }
        if self.tls is not None:
            cfg.update(
                DicomTlsEnabled=self.tls.server,
                DicomTlsCertificate=str(self.tls.certificate),
                DicomTlsPrivateKey=str(self.tls.key),
                DicomTlsTrustedCertificates=str(self.tls.trusted),
                DicomTlsRemoteCertificateRequired=False,
            )
        return cfg

    def start(self, timeout: float = 30.0, tries: int = 3) -> Orthanc:
        """Start it on free loopback ports and wait until ``/system`` answers (a port
        taken in between: another try on new ports). Raises with the log's tail."""
        exe = orthanc_binary()
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        for attempt in range(tries):
            self.http_port, self.dicom_port = free_port(), free_port()
            path = self.folder / "config.json"
            path.write_text(json.dumps(self.config(), indent=2))
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [exe, "--no-jobs", str(path)], stdout=log, stderr=subprocess.STDOUT
                )
            end = time.monotonic() + timeout
            while time.monotonic() < end and self.process.poll() is None:
                try:
                    if self.get_json("/system").get("DicomPort") == self.dicom_port:
                        return self
                except (OSError, OrthancRestError):
                    pass
                time.sleep(0.1)
            self.stop()
            if attempt == tries - 1:
                break
        raise RuntimeError(f"Orthanc did not start; its log ends:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate it (then kill after ``timeout`` seconds). Safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # REST -------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> bytes:
        """One REST call; the answer's body. HTTP errors raise :class:`OrthancRestError`."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=120) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            raise OrthancRestError(method, path, err.code, text) from None

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, data: Any) -> Any:
        answer = self.request("POST", path, json.dumps(data).encode(), "application/json")
        return json.loads(answer) if answer.strip() else None

    def upload(self, path: Path) -> dict[str, Any]:
        """POST /instances: store a DICOM file; Orthanc's answer (``ID``, ``ParentStudy``,
        ``Status``)."""
        answer: dict[str, Any] = json.loads(
            self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")
        )
        return answer

    def store(self, modality: str, resources: Sequence[str]) -> dict[str, Any]:
        """POST /modalities/<modality>/store, synchronous: returns when the C-STORE ended
        (a failed one raises :class:`OrthancRestError`)."""
        answer: dict[str, Any] = self.post_json(
            f"/modalities/{modality}/store", {"Resources": list(resources), "Synchronous": True}
        )
        return answer

    def store_job(self, modality: str, resources: Sequence[str]) -> str:
        """The same as a job (``Asynchronous``); its ID (see :meth:`wait_job`)."""
        answer = self.post_json(
            f"/modalities/{modality}/store", {"Resources": list(resources), "Asynchronous": True}
        )
        return str(answer["ID"])

    def wait_job(self, job: str, timeout: float = 60.0) -> dict[str, Any]:
        """GET /jobs/<job> until its ``State`` is ``Success`` or ``Failure``."""
        end = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.get_json(f"/jobs/{job}")
            if info["State"] in ("Success", "Failure") or time.monotonic() > end:
                return info
            time.sleep(0.1)

    def instances(self, study: str) -> list[dict[str, Any]]:
        """GET /studies/<study>/instances (each with ``ID``, ``ParentSeries``,
        ``MainDicomTags``)."""
        answer: list[dict[str, Any]] = self.get_json(f"/studies/{study}/instances")
        return answer

    def series(self, study: str) -> list[dict[str, Any]]:
        """GET /studies/<study>/series (each with ``MainDicomTags`` and ``Instances``)."""
        answer: list[dict[str, Any]] = self.get_json(f"/studies/{study}/series")
        return answer

    def wait_for_instances(
        self, study: str, count: int, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Poll the study until it holds ``count`` instances or more (bounded by
        ``timeout`` seconds); its instances then."""
        end = time.monotonic() + timeout
        while True:
            got = self.instances(study)
            if len(got) >= count or time.monotonic() > end:
                return got
            time.sleep(0.1)

    def file(self, instance: str) -> bytes:
        """GET /instances/<instance>/file: the DICOM file as stored."""
        return self.request("GET", f"/instances/{instance}/file")

    def changes(self, since: int = 0, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Every entry of GET /changes after ``since`` (``ChangeType``, ``ID``, ``Seq``,
        ``Date``), following the pages."""
        while True:
            page = self.get_json(f"/changes?since={since}&limit={limit}")
            yield from page["Changes"]
            since = int(page["Last"])
            if page["Done"]:
                return


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``orthanc(modalities, tls=None)`` starts an :class:`Orthanc` in a new
    folder under ``tmp_path`` (waits for ``/system``) and returns it (``.url``,
    ``.dicomweb``, ``.send_to``); every one started is stopped after the test (terminate,
    then kill), its log's tail printed when the test failed."""
    started: list[Orthanc] = []

    def start(modalities: Sequence[Modality] = (), tls: OrthancTls | None = None) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc-{len(started)}", modalities, tls)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        print(f"--- {server.log} (tail)\n{server.log_tail(15)}")
