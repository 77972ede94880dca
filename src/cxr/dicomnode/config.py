"""The node's settings, checked once at the boundary: :class:`NodeConfig` and where results
go (:class:`Destination`, parsed from ``AET@HOST:PORT`` or an ``http(s)://…`` DICOMweb URL).

Every bad value raises :class:`DicomNodeError` naming the field and its ``cxr dicom listen``
flag, e.g. ``ae_title (--ae-title): 'A-VERY-LONG-AE-TITLE' has 20 characters; a DICOM AE
title has at most 16``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cxr.choices import CAM_METHODS
from cxr.errors import CxrError

__all__ = [
    "LOOPBACK",
    "Destination",
    "DicomNodeError",
    "NodeConfig",
    "check_ae_title",
    "is_loopback",
    "parse_destination",
]

#: The default address the node listens on: this machine only.
LOOPBACK = "127.0.0.1"

_FLAGS = {
    "ae_title": "--ae-title",
    "host": "--host",
    "port": "--port",
    "spool": "--spool",
    "send_to": "--send-to",
    "allow_aets": "--allow-aet",
    "allow_any_aet": "--allow-any-aet",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_ca": "--tls-ca",
    "send_ca": "--send-ca",
    "max_associations": "--max-associations",
    "max_pdu": "--max-pdu",
    "network_timeout": "--network-timeout",
    "acse_timeout": "--acse-timeout",
    "dimse_timeout": "--dimse-timeout",
    "max_instance_bytes": "--max-instance-mb",
    "spool_quota_bytes": "--spool-quota-mb",
    "send_attempts": "--send-attempts",
    "retry_delay": "--retry-delay",
    "retry_max_delay": "--retry-max-delay",
    "top_k": "--top-k",
    "method": "--method",
    "batch_size": "--batch-size",
}


class DicomNodeError(CxrError, ValueError):
    """A bad setting of the DICOM node, or a spool that cannot be used."""


def _bad(name: str, message: str) -> DicomNodeError:
    flag = _FLAGS.get(name)
    return DicomNodeError(f"{name} ({flag}): {message}" if flag else f"{name}: {message}")


def check_ae_title(value: object, name: str = "ae_title") -> str:
    """``value`` as an AE title (1-16 characters of printable ASCII without a backslash,
    leading/trailing spaces removed), or a :class:`DicomNodeError` naming ``name``."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(name, f"{value!r} is not an AE title (1 to 16 characters, e.g. CXR)")
    title = value.strip()
    if len(title) > 16:
        raise _bad(name, f"{title!r} has {len(title)} characters; a DICOM AE title has at most 16")
    if not all(" " <= c <= "~" for c in title) or "\\" in title:
        raise _bad(name, f"{title!r}: an AE title holds printable ASCII only, no backslash")
    return title


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) means this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise _bad(name, f"{value!r} is not a TCP port ({low} to 65535)")
    return value


@dataclass(frozen=True)
class Destination:
    """Where results are sent: ``kind`` ``"cstore"`` (``ae_title``, ``host``, ``port``) or
    ``"stow"`` (``url``, the DICOMweb service root ending in e.g. ``/dicom-web``)."""

    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    def __str__(self) -> str:
        if self.kind == "stow":
            return self.url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


_CSTORE = re.compile(r"^(?P<aet>[^@]+)@(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")


def parse_destination(text: object, name: str = "send_to") -> Destination:
    """``AET@HOST:PORT`` (C-STORE; an IPv6 host in brackets) or ``http(s)://HOST/…``
    (STOW-RS to that DICOMweb root) as a :class:`Destination`."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(name, f"{text!r}: give AET@HOST:PORT (C-STORE) or an http(s)://…/dicom-web URL")
    text = text.strip()
    if text.lower().startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname:
            raise _bad(name, f"{text!r} names no host; e.g. https://pacs.example.org/dicom-web")
        return Destination("stow", url=text.rstrip("/"))
    match = _CSTORE.match(text)
    if match is None:
        raise _bad(
            name,
            f"{text!r} is neither AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242) nor an "
            "http(s)://…/dicom-web URL",
        )
    aet = check_ae_title(match["aet"], name)
    port = _port(int(match["port"]), name)
    return Destination("cstore", ae_title=aet, host=match["v6"] or match["host"], port=port)


def _positive(name: str, value: object, integer: bool = False, zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise _bad(name, f"{value!r} is not {'an integer' if integer else 'a number'}")
    assert isinstance(value, int | float)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise _bad(name, f"{value!r} must be {'>= 0' if zero else '> 0'}")


def _file(name: str, value: Path | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise _bad(name, f"{path} is not a file")
    return path


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one :class:`~cxr.dicomnode.node.DicomNode` (checked on construction).

    - ``model``: the model file (.safetensors or .onnx), as for ``cxr predict``.
    - ``spool``: the spool folder (created): received instances and unsent results.
    - ``send_to``: ``AET@HOST:PORT`` or an ``http(s)://…/dicom-web`` URL (:attr:`destination`).
    - ``ae_title``: the node's AE title (callers must call it by this name).
    - ``host``, ``port``: where it listens (loopback by default; port 0: any free port).
    - ``allow_aets``: calling AE titles accepted; every other caller's association is
      rejected. Empty is an error unless ``allow_any_aet`` says to accept every caller.
    - ``tls_cert``, ``tls_key``: PEM files; TLS 1.2 or newer when given. ``tls_ca``: PEM
      CA bundle; callers must then present a certificate it signed.
    - ``send_ca``: PEM CA bundle to verify the destination (https STOW-RS, or TLS C-STORE).
    - ``max_associations`` (>= 1), ``max_pdu`` (bytes, 0 = unlimited), ``network_timeout``,
      ``acse_timeout``, ``dimse_timeout`` (seconds, > 0).
    - ``max_instance_bytes``: largest instance accepted (bytes, > 0); ``spool_quota_bytes``:
      the spool's size (bytes, > 0) above which new instances are refused (0xA700).
    - ``send_attempts`` (>= 1) tries per result, the n-th retry after
      ``min(retry_delay * 2 ** (n - 1), retry_max_delay)`` seconds.
    - ``top_k``, ``method``: heatmap tiles of the Secondary Capture (as ``--dicom-out``).
    - ``device``, ``batch_size``: the predictor's device and images per forward pass.
    """

    model: Path
    spool: Path
    send_to: str
    ae_title: str = "CXR"
    host: str = LOOPBACK
    port: int = 11112
    allow_aets: tuple[str, ...] = ()
    allow_any_aet: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    send_ca: Path | None = None
    max_associations: int = 4
    max_pdu: int = 16382
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    max_instance_bytes: int = 256 * 2**20
    spool_quota_bytes: int = 10 * 2**30
    send_attempts: int = 8
    retry_delay: float = 2.0
    retry_max_delay: float = 600.0
    top_k: int = 3
    method: str = "gradcam"
    device: str = "cpu"
    batch_size: int = 8
    destination: Destination = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "model", Path(self.model))
        set_(self, "spool", Path(self.spool))
        if self.spool.exists() and not self.spool.is_dir():
            raise _bad("spool", f"{self.spool} exists and is not a folder")
        set_(self, "destination", parse_destination(self.send_to))
        set_(self, "ae_title", check_ae_title(self.ae_title))
        if not isinstance(self.host, str) or not self.host.strip():
            raise _bad("host", f"{self.host!r} is not a host name or address")
        _port(self.port, "port", low=0)
        if isinstance(self.allow_aets, str):
            raise _bad("allow_aets", "give a list of AE titles, not one string")
        set_(self, "allow_aets", tuple(check_ae_title(a, "allow_aets") for a in self.allow_aets))
        if not self.allow_aets and not self.allow_any_aet:
            raise _bad(
                "allow_aets",
                "no calling AE title is allowed, so every caller would be refused; name the "
                "PACS (--allow-aet ORTHANC), or accept any caller with --allow-any-aet",
            )
        for name in ("tls_cert", "tls_key", "tls_ca", "send_ca"):
            set_(self, name, _file(name, getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _bad("tls_key", "TLS needs both --tls-cert and --tls-key")
        if self.tls_ca is not None and self.tls_cert is None:
            raise _bad("tls_ca", "client certificates need TLS: give --tls-cert and --tls-key")
        for name in ("max_associations", "send_attempts", "top_k", "batch_size"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("max_instance_bytes", "spool_quota_bytes"):
            _positive(name, getattr(self, name), integer=True)
        _positive("max_pdu", self.max_pdu, integer=True, zero=True)
        for name in ("network_timeout", "acse_timeout", "dimse_timeout", "retry_max_delay"):
            _positive(name, getattr(self, name))
        _positive("retry_delay", self.retry_delay, zero=True)
        if self.method not in CAM_METHODS:
            raise _bad("method", f"{self.method!r} is not one of {', '.join(CAM_METHODS)}")

    @property
    def tls(self) -> bool:
        """Whether the node listens with TLS."""
        return self.tls_cert is not None

    def retry_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed try (>= 1) of one result."""
        return float(min(self.retry_delay * 2 ** max(attempts - 1, 0), self.retry_max_delay))

    def exposure_warnings(self) -> list[str]:
        """Why listening as configured is risky: bound beyond loopback without TLS or
        without an allow-list (empty when neither holds)."""
        if is_loopback(self.host):
            return []
        out = []
        if not self.tls:
            out.append(
                f"listening on {self.host}, beyond this machine, without TLS: images cross "
                "the network unencrypted (give --tls-cert and --tls-key)"
            )
        if self.allow_any_aet:
            out.append(
                f"listening on {self.host}, beyond this machine, accepting any calling AE "
                "title (name the PACS with --allow-aet)"
            )
        return out
