"""cxr.dicomnode.scp: a real pynetdicom SCU talks to the listener on a loopback port.

Verification works; unknown callers and CT images are refused at association; bad
instances get a failure status with the reason, and the listener keeps serving; a full
spool answers 0xA700; TLS with client certificates; no patient data in the log."""

from __future__ import annotations

import datetime
import io
import logging
import ssl
import time

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom.sop_class import CTImageStorage, DigitalXRayImageStorageForPresentation

from cxr.dicomnode.config import DicomNodeError
from cxr.dicomnode.scp import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    check_dataset,
    server_ssl_context,
    start_scp,
)
from cxr.dicomnode.spool import Spool
from dicomnode_net import config, ct_dataset, echo, phantom_dx, scu, send


@pytest.fixture
def listener(tmp_path):
    """(port, spool, stored UIDs) of a listener with a 1 MB quota and 40 kB instance limit."""
    started = []

    def start(**changes):
        settings = dict(spool_quota_bytes=10**6, max_instance_bytes=40_000)
        settings.update(changes)
        cfg = config(tmp_path, tmp_path / "m.safetensors", "PACS@127.0.0.1:1", **settings)
        spool = Spool(cfg.spool, cfg.spool_quota_bytes)
        stored: list[str] = []
        server = start_scp(cfg, spool, stored.append)
        started.append(server)
        return int(server.server_address[1]), spool, stored

    yield start
    for server in started:
        server.shutdown()


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_echo_and_store(listener, caplog):
    caplog.set_level(logging.INFO, logger="cxr.dicomnode")
    port, spool, stored = listener()
    assert echo(port) == 0x0000
    ds = phantom_dx(1)
    (status,) = send(port, [ds])
    assert status.Status == 0x0000
    assert stored == [ds.SOPInstanceUID] and spool.incoming() == [ds.SOPInstanceUID]
    back = pydicom.dcmread(spool.path("incoming", f"{ds.SOPInstanceUID}.dcm"))
    assert back.PixelData == ds.PixelData and back.SOPInstanceUID == ds.SOPInstanceUID
    text = caplog.text
    assert f"C-STORE {ds.SOPInstanceUID} from ORTHANC" in text and "C-ECHO from ORTHANC" in text
    for identifying in ("Phantom", "PHANTOM-1", "19700101", "ACC1"):
        assert identifying not in text


def test_unknown_callers_and_wrong_called_titles_are_rejected(listener, caplog):
    caplog.set_level(logging.WARNING, logger="cxr.dicomnode")
    port, _, _ = listener()
    assoc = scu(port, calling="STRANGER")
    assert assoc.is_rejected and not assoc.is_established
    assert "from STRANGER" in caplog.text and "not on the allow-list" in caplog.text
    assert scu(port, called="OTHER").is_rejected
    assert echo(port) == 0x0000  # still serving


def test_any_caller_when_allowed(listener):
    port, _, _ = listener(allow_aets=(), allow_any_aet=True)
    assert echo(port, calling="STRANGER") == 0x0000


def test_a_ct_image_is_refused_at_association(listener):
    port, spool, _ = listener()
    assoc = scu(port, contexts=(CTImageStorage, DigitalXRayImageStorageForPresentation))
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert CTImageStorage in rejected and CTImageStorage not in accepted
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ct_dataset())
        assert assoc.send_c_store(phantom_dx(2)).Status == 0x0000  # same association
    finally:
        assoc.release()
    assert spool.incoming() == [phantom_dx(2).SOPInstanceUID]


def test_bad_instances_get_a_reason_and_the_listener_keeps_serving(listener):
    port, spool, _ = listener()
    truncated = phantom_dx(3)
    truncated.PixelData = truncated.PixelData[:1000]
    no_pixels = phantom_dx(4)
    del no_pixels.PixelData
    wrong_body = phantom_dx(5, BodyPartExamined="HAND")
    too_big = phantom_dx(6, size=160)  # 51 kB > 40 kB
    good = phantom_dx(7)
    statuses = send(port, [truncated, no_pixels, wrong_body, too_big, good])
    codes = [(int(s.Status), str(s.get("ErrorComment", ""))) for s in statuses]
    assert codes[0] == (CANNOT_UNDERSTAND, f"pixel data truncated: 1000 of {96 * 96 * 2} bytes")
    assert codes[1][0] == DATASET_MISMATCH and "no pixel data" in codes[1][1]
    assert codes[2] == (DATASET_MISMATCH, "BodyPartExamined is HAND, not CHEST")
    assert codes[3][0] == OUT_OF_RESOURCES and "over the limit of 40000" in codes[3][1]
    assert codes[4] == (0x0000, "")
    assert spool.incoming() == [good.SOPInstanceUID]


def test_a_full_spool_answers_out_of_resources(listener):
    port, spool, _ = listener(spool_quota_bytes=30_000)
    first, second = send(port, [phantom_dx(1), phantom_dx(2)])
    assert first.Status == 0x0000
    assert second.Status == OUT_OF_RESOURCES and "spool full" in second.ErrorComment
    assert spool.incoming() == [phantom_dx(1).SOPInstanceUID]
    assert list(spool.path("tmp").iterdir()) == []


def test_associations_over_the_limit_are_rejected(listener):
    port, _, _ = listener(max_associations=1)
    held = scu(port)
    assert held.is_established
    try:
        assert scu(port).is_rejected
    finally:
        held.release()
    end = time.monotonic() + 10  # the released association's thread ends soon after
    while echo(port) != 0x0000:
        assert time.monotonic() < end, "a new association is still refused"
        time.sleep(0.1)


def test_check_dataset_reasons():
    ds = phantom_dx(1)
    data = _bytes(ds)
    uid, cls = ds.SOPInstanceUID, ds.SOPClassUID
    assert check_dataset(data, cls, uid) is None
    assert check_dataset(data, cls, uid + "9") == (
        DATASET_MISMATCH,
        "SOPInstanceUID differs from the request's",
    )
    assert check_dataset(data, CTImageStorage, uid)[0] == DATASET_MISMATCH
    assert check_dataset(data[:200], cls, uid)[0] == CANNOT_UNDERSTAND
    assert check_dataset(_bytes(phantom_dx(1, Modality="MR")), cls, uid) == (
        DATASET_MISMATCH,
        "Modality is MR (magnetic resonance), not a chest radiograph (CR or DX)",
    )
    # compressed pixel data: fragments checked, never decoded
    jpeg = phantom_dx(1)
    jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    jpeg.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 300 + b"\xff\xd9"])
    jpeg["PixelData"].VR = "OB"
    assert check_dataset(_bytes(jpeg), cls, uid) is None
    jpeg.NumberOfFrames = 2  # says two frames, holds one
    problem = check_dataset(_bytes(jpeg), cls, uid)
    assert problem is not None and problem[0] == CANNOT_UNDERSTAND and "truncated" in problem[1]


# TLS ---------------------------------------------------------------------------------------
def _pki(tmp_path):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (PEM)."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(name, issuer_name, issuer_key, key, ca=False, san=None, usage=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name, key, crt):
        (tmp_path / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / f"{name}.pem").write_bytes(crt.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    write("ca", ca_key, cert("cxr test CA", "cxr test CA", ca_key, ca_key, ca=True))
    for name, san, usage in (
        (
            "server",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            ExtendedKeyUsageOID.SERVER_AUTH,
        ),
        ("client", None, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, key, cert(name, "cxr test CA", ca_key, key, san=san, usage=usage))
    return tmp_path


def test_tls_with_client_certificates(listener, tmp_path):
    (tmp_path / "pki").mkdir()
    pki = _pki(tmp_path / "pki")
    tls = dict(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_ca=pki / "ca.pem")
    port, _, _ = listener(**tls)
    ctx = server_ssl_context(config(tmp_path, tmp_path / "m", "PACS@h:1", **tls))
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    mismatched = dict(tls, tls_key=pki / "client.key")
    with pytest.raises(DicomNodeError, match=r"tls_cert \(--tls-cert/--tls-key\): cannot load"):
        server_ssl_context(config(tmp_path, tmp_path / "m", "PACS@h:1", **mismatched))

    def client(with_cert: bool):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if with_cert:
            ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
        return ctx, "localhost"

    assert echo(port, tls_args=client(True)) == 0x0000
    assert echo(port, tls_args=client(False)) is None  # no client certificate
    assert echo(port) is None  # plain TCP
    assert echo(port, tls_args=client(True)) == 0x0000  # still serving


def test_cr_and_dx_for_processing_are_accepted(listener):
    from pynetdicom.sop_class import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForProcessing,
    )

    port, spool, _ = listener()
    datasets = []
    for i, (sop_class, modality) in enumerate(
        ((ComputedRadiographyImageStorage, "CR"), (DigitalXRayImageStorageForProcessing, "DX")),
        start=10,
    ):
        ds = phantom_dx(i, Modality=modality)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        datasets.append(ds)
    contexts = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForProcessing)
    assert [int(s.Status) for s in send(port, datasets, contexts=contexts)] == [0, 0]
    assert sorted(spool.incoming()) == sorted(ds.SOPInstanceUID for ds in datasets)
