"""Sending result objects to the destination: C-STORE (pynetdicom SCU) or STOW-RS
(dicomweb-client).

:func:`send_datasets` sends every dataset of one result (the SR and the SC) in one
association or one STOW-RS request, and returns only when the destination confirmed each
(C-STORE status success or warning; STOW-RS without a Failed SOP Sequence). Anything else
raises :class:`SendError` with a one-line reason: the sender counts the try and retries
later (:mod:`cxr.dicomnode.worker`).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.dicomnode.config import Destination, DicomNodeError
from cxr.errors import CxrError

__all__ = ["SendError", "SendSettings", "client_ssl_context", "send_datasets"]

#: C-STORE statuses that mean stored: success, and the warnings (coercion of data
#: elements, elements discarded, data set does not match SOP class).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


class SendError(CxrError, OSError):
    """The destination did not confirm a result (unreachable, refused, failed status)."""


class SendSettings:
    """How to reach the destination: the node's own AE title (the calling AE title of a
    C-STORE), timeouts in seconds, and ``ca`` (a PEM CA bundle: verify an https
    destination against it; a C-STORE destination is then reached over TLS)."""

    def __init__(
        self,
        calling_aet: str,
        network_timeout: float = 60.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 30.0,
        ca: Path | None = None,
    ) -> None:
        self.calling_aet = calling_aet
        self.network_timeout = network_timeout
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.ca = ca


def client_ssl_context(ca: Path) -> ssl.SSLContext:
    """A TLS 1.2+ client context that trusts the certificates ``ca`` signed."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as err:
        raise DicomNodeError(f"send_ca (--send-ca): cannot load {ca}: {err}") from None
    return ctx


def _cstore(datasets: Sequence[Any], dest: Destination, settings: SendSettings) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=settings.calling_aet)
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.network_timeout
    tls = None if settings.ca is None else (client_ssl_context(settings.ca), dest.host)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
    except (OSError, ssl.SSLError) as err:
        raise SendError(f"cannot connect to {dest}: {err}") from None
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "aborted or unreachable"
        raise SendError(f"association with {dest} {how}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                raise SendError(f"no answer from {dest} to C-STORE (timeout or aborted)")
            code = int(status.Status)
            if code not in _STORED:
                comment = str(status.get("ErrorComment", "")).strip()
                raise SendError(
                    f"{dest} answered C-STORE with status 0x{code:04X}"
                    + (f": {comment}" if comment else "")
                )
    finally:
        if assoc.is_established:
            assoc.release()


def _stow(datasets: Sequence[Any], dest: Destination, settings: SendSettings) -> None:
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    session = create_session()
    if settings.ca is not None:
        session.verify = str(settings.ca)
    client = DICOMwebClient(dest.url, session=session, timeout=settings.network_timeout)
    client.set_http_retry_params(retry=False)  # the sender retries, with backoff
    try:
        answer = client.store_instances(list(datasets))
    except Exception as err:  # requests' HTTP and connection errors, and the client's own
        text = " ".join(str(err).split())[:300]
        raise SendError(f"STOW-RS to {dest} failed: {type(err).__name__}: {text}") from None
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reasons = sorted({f"0x{int(it.get('FailureReason', 0)):04X}" for it in failed})
        raise SendError(
            f"STOW-RS to {dest}: {len(failed)} instance(s) not stored (reasons {reasons})"
        )


def send_datasets(datasets: Sequence[Any], dest: Destination, settings: SendSettings) -> None:
    """Send ``datasets`` (pydicom Datasets with file meta) to ``dest``; returns when each
    was confirmed, else raises :class:`SendError`."""
    if not datasets:
        return
    if dest.kind == "stow":
        _stow(datasets, dest, settings)
    else:
        _cstore(datasets, dest, settings)
