"""cxr.dicomnode.config: the node's settings are checked once, with messages naming the
field and its flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.dicomnode.config import (
    Destination,
    DicomNodeError,
    NodeConfig,
    check_ae_title,
    is_loopback,
    parse_destination,
)
from cxr.errors import CxrError


def _config(tmp_path: Path, **changes) -> NodeConfig:
    settings = dict(
        model=tmp_path / "m.safetensors",
        spool=tmp_path / "spool",
        send_to="PACS@127.0.0.1:4242",
        allow_aets=("ORTHANC",),
    )
    settings.update(changes)
    return NodeConfig(**settings)


def test_destinations_parse():
    d = parse_destination("ORTHANC@127.0.0.1:4242")
    assert d == Destination("cstore", ae_title="ORTHANC", host="127.0.0.1", port=4242)
    assert str(d) == "ORTHANC@127.0.0.1:4242"
    v6 = parse_destination("PACS@[::1]:104")
    assert (v6.host, v6.port, str(v6)) == ("::1", 104, "PACS@[::1]:104")
    stow = parse_destination("https://pacs.example.org/dicom-web/")
    assert (stow.kind, stow.url) == ("stow", "https://pacs.example.org/dicom-web")


@pytest.mark.parametrize(
    "text, words",
    [
        ("ORTHANC:4242", "neither AET@HOST:PORT"),
        ("ORTHANC@host", "neither AET@HOST:PORT"),
        ("ORTHANC@host:70000", "not a TCP port"),
        ("A-VERY-LONG-AE-TITLE@host:104", "at most 16"),
        ("https:///dicom-web", "names no host"),
        ("", "give AET@HOST:PORT"),
    ],
)
def test_bad_destinations_name_the_flag(text, words):
    with pytest.raises(DicomNodeError, match="send_to \\(--send-to\\)") as info:
        parse_destination(text)
    assert words in str(info.value)
    assert isinstance(info.value, CxrError)


def test_ae_titles():
    assert check_ae_title("  CXR ") == "CXR"
    with pytest.raises(DicomNodeError, match=r"ae_title \(--ae-title\).*17 characters"):
        check_ae_title("X" * 17)
    with pytest.raises(DicomNodeError, match="backslash"):
        check_ae_title("A\\B")
    with pytest.raises(DicomNodeError, match="not an AE title"):
        check_ae_title("   ")


def test_config_checks_each_field(tmp_path):
    config = _config(tmp_path)
    assert config.destination.port == 4242 and config.ae_title == "CXR"
    assert config.host == "127.0.0.1" and not config.tls
    cases = {
        "ae_title": ("X" * 20, "ae_title (--ae-title)"),
        "port": (70000, "port (--port)"),
        "max_associations": (0, "max_associations (--max-associations)"),
        "max_pdu": (-1, "max_pdu (--max-pdu)"),
        "dimse_timeout": (float("nan"), "dimse_timeout (--dimse-timeout)"),
        "spool_quota_bytes": (0, "spool_quota_bytes (--spool-quota-mb)"),
        "send_attempts": (True, "send_attempts (--send-attempts)"),
        "method": ("saliency", "method (--method)"),
        "allow_aets": ("ORTHANC", "allow_aets (--allow-aet)"),
        "tls_ca": (tmp_path / "missing.pem", "tls_ca (--tls-ca)"),
    }
    for name, (value, words) in cases.items():
        with pytest.raises(DicomNodeError) as info:
            _config(tmp_path, **{name: value})
        assert words in str(info.value), (name, str(info.value))


def test_unknown_callers_are_refused_unless_said_otherwise(tmp_path):
    with pytest.raises(DicomNodeError, match="--allow-any-aet"):
        _config(tmp_path, allow_aets=())
    assert _config(tmp_path, allow_aets=(), allow_any_aet=True).allow_any_aet


def test_tls_needs_both_files(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(DicomNodeError, match="both --tls-cert and --tls-key"):
        _config(tmp_path, tls_cert=cert)
    with pytest.raises(DicomNodeError, match="client certificates need TLS"):
        _config(tmp_path, tls_ca=cert)
    assert _config(tmp_path, tls_cert=cert, tls_key=cert, tls_ca=cert).tls


def test_backoff_doubles_up_to_the_cap(tmp_path):
    config = _config(tmp_path, retry_delay=2.0, retry_max_delay=10.0)
    assert [config.retry_after(n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_exposure_warnings(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert _config(tmp_path).exposure_warnings() == []
    open_ = _config(tmp_path, host="0.0.0.0", allow_aets=(), allow_any_aet=True)
    warnings = open_.exposure_warnings()
    assert len(warnings) == 2 and "without TLS" in warnings[0] and "any calling AE" in warnings[1]
