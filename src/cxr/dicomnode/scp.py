"""The node's DICOM listener: a pynetdicom Storage SCP (CR and DX images) and Verification
SCP (C-ECHO).

Only the three chest radiograph storage classes (:data:`ACCEPTED_SOP_CLASSES`) and
Verification are offered: a CT or MR instance's presentation context is rejected when the
association is negotiated. Callers must call the node by its AE title and be on the
allow-list (else the association is rejected); the number of associations, the PDU size
and the network, ACSE and DIMSE timeouts are bounded; TLS 1.2 or newer when a certificate
is given (client certificates required when a CA is given).

The C-STORE handler (:class:`StoreHandler`) only checks the instance and spools it:

- larger than the instance limit, or no room in the spool: ``0xA700`` (out of resources);
- not the negotiated SOP class or instance, not a chest radiograph's modality or body
  part (:func:`cxr.dicom.modality_problem`), no pixel data: ``0xA900`` (data set does not
  match the SOP class);
- a data set that cannot be parsed, pixel data shorter than its rows, columns, samples,
  bits and frames say, or compressed pixel data whose fragments are damaged: ``0xC000``
  (cannot understand);

each with the reason in the response's Error Comment and one log line naming the SOP
Instance UID. The model runs later, in the worker. No log line holds a patient's name, ID
or any other identifying attribute: only UIDs, AE titles, addresses and reasons.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cxr.dicom import get_dicom_policy, modality_problem
from cxr.dicomnode.config import DicomNodeError, NodeConfig
from cxr.dicomnode.spool import Spool, SpoolFull
from cxr.dicomout.record import MissingExtraError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "ACCEPTED_SOP_CLASSES",
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "OUT_OF_RESOURCES",
    "SUCCESS",
    "TRANSFER_SYNTAXES",
    "StoreHandler",
    "check_dataset",
    "server_ssl_context",
    "start_scp",
]

LOG = logging.getLogger("cxr.dicomnode")

#: Computed Radiography, Digital X-Ray for presentation, Digital X-Ray for processing.
ACCEPTED_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
)
VERIFICATION = "1.2.840.10008.1.1"
#: Explicit/implicit VR little endian, deflated, and the compressed syntaxes cxr decodes
#: (JPEG baseline, extended, lossless; JPEG-LS; JPEG 2000; RLE).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)
SUCCESS, OUT_OF_RESOURCES, DATASET_MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000


def _pynetdicom() -> Any:
    try:
        import pynetdicom
    except ImportError as err:  # pragma: no cover - the extra is installed in the tests
        raise MissingExtraError(
            "the DICOM node needs pynetdicom: pip install 'cxr[dicom-node]'"
        ) from err
    return pynetdicom


def _pixel_problem(ds: Dataset, encapsulated: bool) -> tuple[int, str] | None:
    if "PixelData" not in ds:
        return DATASET_MISMATCH, "no pixel data (7FE0,0010): not an image"
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows < 1 or cols < 1 or bits < 1:
        return DATASET_MISMATCH, f"bad image size: {rows} rows, {cols} columns, {bits} bits"
    data = ds.PixelData
    if encapsulated:
        from pydicom.encaps import generate_frames

        try:
            got = [f for f in generate_frames(data, number_of_frames=frames) if f]
        except Exception as err:
            return CANNOT_UNDERSTAND, f"compressed pixel data damaged ({type(err).__name__})"
        if len(got) < frames:
            return CANNOT_UNDERSTAND, f"compressed pixel data truncated: {len(got)}/{frames} frames"
        return None
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if len(data) < expected:
        return CANNOT_UNDERSTAND, f"pixel data truncated: {len(data)} of {expected} bytes"
    return None


def check_dataset(data: bytes, sop_class: str, sop_instance: str) -> tuple[int, str] | None:
    """Why the received instance (the DICOM file's bytes, file meta included) cannot be
    spooled, as (C-STORE status, reason), or None when it can. ``sop_class``,
    ``sop_instance``: the request's Affected SOP Class / Instance UID."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        for _ in ds:  # parse every top-level element now
            pass
        encapsulated = bool(ds.file_meta.TransferSyntaxUID.is_encapsulated)
    except Exception as err:
        return CANNOT_UNDERSTAND, f"cannot parse the data set ({type(err).__name__})"
    if str(ds.get("SOPClassUID", "")) != sop_class:
        return DATASET_MISMATCH, "SOPClassUID differs from the negotiated SOP class"
    if str(ds.get("SOPInstanceUID", "")) != sop_instance:
        return DATASET_MISMATCH, "SOPInstanceUID differs from the request's"
    if not get_dicom_policy().any_modality:
        why = modality_problem(str(ds.get("Modality", "")), str(ds.get("BodyPartExamined", "")))
        if why is not None:
            return DATASET_MISMATCH, why
    try:
        return _pixel_problem(ds, encapsulated)
    except Exception as err:
        return CANNOT_UNDERSTAND, f"cannot read the image attributes ({type(err).__name__})"


def _status(code: int, comment: str = "") -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title} ({requestor.address}:{requestor.port})"


class StoreHandler:
    """The C-STORE handler: check, spool, answer (see the module docstring).

    Args:
        spool: where instances go (its quota applies).
        max_instance_bytes: largest data set accepted, as received (bytes).
        on_stored: called with the SOP Instance UID after each spooled instance (wakes
            the worker); must return at once.
    """

    def __init__(
        self,
        spool: Spool,
        max_instance_bytes: int,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.spool = spool
        self.max_instance_bytes = max_instance_bytes
        self.on_stored = on_stored

    def __call__(self, event: Event) -> Any:
        request = event.request
        uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "?")
        sop_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        peer = _peer(event)
        try:
            size = request.DataSet.getbuffer().nbytes  # type: ignore[union-attr]
            if size > self.max_instance_bytes:
                return self._refuse(
                    uid,
                    peer,
                    OUT_OF_RESOURCES,
                    f"instance of {size} bytes over the limit of {self.max_instance_bytes}",
                )
            data = event.encoded_dataset()
            problem = check_dataset(data, sop_class, uid)
            if problem is not None:
                return self._refuse(uid, peer, *problem)
            try:
                self.spool.enqueue(uid, data)
            except SpoolFull as err:
                return self._refuse(uid, peer, OUT_OF_RESOURCES, f"spool full: {err}")
            except DicomNodeError as err:
                return self._refuse(uid, peer, DATASET_MISMATCH, str(err))
        except Exception as err:  # a bug must not take the listener down
            LOG.error("C-STORE %s from %s: internal error (%s)", uid, peer, type(err).__name__)
            return _status(CANNOT_UNDERSTAND, f"internal error ({type(err).__name__})")
        LOG.info("C-STORE %s from %s: stored (%d bytes)", uid, peer, size)
        if self.on_stored is not None:
            self.on_stored(uid)
        return _status(SUCCESS)

    @staticmethod
    def _refuse(uid: str, peer: str, code: int, reason: str) -> Any:
        LOG.warning("C-STORE %s from %s: refused 0x%04X: %s", uid, peer, code, reason)
        return _status(code, reason)


def _on_echo(event: Event) -> int:
    LOG.info("C-ECHO from %s", _peer(event))
    return SUCCESS


def _on_accepted(event: Event) -> None:
    refused = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
    extra = f"; refused SOP classes: {', '.join(refused)}" if refused else ""
    LOG.info("association from %s accepted%s", _peer(event), extra)


def _on_aborted(event: Event) -> None:
    LOG.info("association from %s aborted", _peer(event))


def _rejected(ae: ApplicationEntity) -> Callable[[Event], None]:
    def handler(event: Event) -> None:
        primitive = event.assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "")).strip()
        called = str(getattr(primitive, "called_ae_title", "")).strip()
        allowed = [a.strip() for a in ae.require_calling_aet]
        if allowed and calling not in allowed:
            why = "calling AE title not on the allow-list"
        elif called != ae.ae_title.strip():
            why = f"called AE title {called!r} is not this node's {ae.ae_title.strip()!r}"
        else:
            why = f"more than {ae.maximum_associations} associations"
        LOG.warning("association from %s rejected: %s", _peer(event), why)

    return handler


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (TLS 1.2 or newer; client certificates signed by
    ``tls_ca`` required when it is given), or None without ``tls_cert``."""
    if config.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as err:
        raise DicomNodeError(
            f"tls_cert (--tls-cert/--tls-key): cannot load {config.tls_cert} with its key "
            f"{config.tls_key}: {err}"
        ) from None
    if config.tls_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(config.tls_ca))
        except (ssl.SSLError, OSError) as err:
            raise DicomNodeError(f"tls_ca (--tls-ca): cannot load {config.tls_ca}: {err}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_ae(config: NodeConfig) -> ApplicationEntity:
    """The node's application entity with its contexts, AE title checks and limits."""
    pynetdicom = _pynetdicom()
    ae: ApplicationEntity = pynetdicom.AE(ae_title=config.ae_title)
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(VERIFICATION, list(TRANSFER_SYNTAXES[:2]))
    ae.require_called_aet = True
    ae.require_calling_aet = [] if config.allow_any_aet else list(config.allow_aets)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu
    ae.network_timeout = config.network_timeout
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    return ae


def start_scp(
    config: NodeConfig, spool: Spool, on_stored: Callable[[str], None] | None = None
) -> ThreadedAssociationServer:
    """Start listening on ``config.host:config.port`` in background threads; returns the
    server (``server.server_address`` is the bound address; ``server.shutdown()`` stops
    it). A :class:`DicomNodeError` when the address cannot be bound."""
    pynetdicom = _pynetdicom()
    evt = pynetdicom.evt
    ae = make_ae(config)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, StoreHandler(spool, config.max_instance_bytes, on_stored)),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_ABORTED, _on_aborted),
        (evt.EVT_REJECTED, _rejected(ae)),
    ]
    context = server_ssl_context(config)
    try:
        server: ThreadedAssociationServer | None = ae.start_server(
            (config.host, config.port), block=False, evt_handlers=handlers, ssl_context=context
        )
    except OSError as err:
        raise DicomNodeError(
            f"port (--port): cannot listen on {config.host}:{config.port}: {err}"
        ) from None
    if server is None:  # pragma: no cover - only a blocking server returns None
        raise DicomNodeError("the listener did not start")
    return server
