"""Inputs and peers for the tests of cxr.dicomnode: a tiny model, DX files made from
phantoms, a pynetdicom SCU (the "PACS" that sends) and a pynetdicom Storage SCP (the
destination that receives the results), all on loopback ports the OS picks."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from cxr.dicomnode import NodeConfig
from cxr.dicomout import codes
from cxr.modelfile import save_model
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.synth.render import render_phantom
from dicomout_files import source_dx

LABELS = ("Cardiomegaly", "Effusion", "Mass", "Nodule")
STUDY = "1.2.826.0.1.3680043.8.498.7"
CALLING = "ORTHANC"


def make_model(path: Path) -> Path:
    """A random cxr-small-cnn (input 64 px) with thresholds for three labels."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=64))
    ).eval()
    save_model(path, model, thresholds={"Cardiomegaly": 0.0, "Effusion": 1.0, "Mass": 0.5})
    return path


def phantom_dx(index: int = 1, size: int = 96, study: str = STUDY, **attrs: object) -> Dataset:
    """A DX (for presentation) of a chest phantom, uint16 (size, size), SOP Instance UID
    ``{study}.{index}``; ``attrs`` override attributes (e.g. ``Modality="CT"``)."""
    rng = np.random.default_rng(index)
    image, _ = render_phantom(rng, size, ["Effusion"] if index % 2 else [])
    uid = f"{study}.{index}"
    ds = source_dx(sop_uid=uid, size=size)
    ds.StudyInstanceUID = study
    ds.InstanceNumber = index
    ds.PixelData = (image.astype(np.uint16) * 16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_dx(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, model: Path, send_to: str, **changes: object) -> NodeConfig:
    """A node on a free loopback port with short timeouts and quick retries."""
    settings: dict[str, object] = dict(
        port=0,
        allow_aets=(CALLING,),
        network_timeout=5.0,
        acse_timeout=5.0,
        dimse_timeout=5.0,
        retry_delay=0.2,
        retry_max_delay=1.0,
        send_attempts=20,
    )
    settings.update(changes)
    return NodeConfig(model=model, spool=tmp / "spool", send_to=send_to, **settings)  # type: ignore[arg-type]


# the PACS that sends -----------------------------------------------------------------------
def scu(
    port: int,
    calling: str = CALLING,
    called: str = "CXR",
    contexts: tuple[str, ...] = (DigitalXRayImageStorageForPresentation, Verification),
    tls_args: tuple | None = None,
):
    """An association from ``calling`` to ``called`` on loopback (check ``is_established``)."""
    ae = AE(ae_title=calling)
    for sop_class in contexts:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


def send(port: int, datasets: list[Dataset], **kwargs) -> list[Dataset]:
    """C-STORE ``datasets`` in one association; the response statuses."""
    assoc = scu(port, **kwargs)
    assert assoc.is_established, "association not established"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def echo(port: int, **kwargs) -> int | None:
    """The C-ECHO status, or None when the association was not established."""
    assoc = scu(port, **kwargs)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


# the destination that receives -------------------------------------------------------------
class Receiver:
    """A Storage SCP (AE title ``PACS``) that keeps every dataset it receives."""

    def __init__(self, port: int = 0, status: int = 0x0000) -> None:
        self.received: list[Dataset] = []
        self.status = status
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    @property
    def send_to(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return self.status

    def wait_for(self, n: int, timeout: float = 60.0) -> list[Dataset]:
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.received) < n:
            time.sleep(0.05)
        return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()


# reading results ---------------------------------------------------------------------------
def _items(seq, code: str):
    return [it for it in seq if it.ConceptNameCodeSequence[0].CodeValue == code]


def sr_probabilities(ds: Dataset) -> dict[str, float]:
    """label -> probability read from a TID 1500 SR written by cxr.dicomout."""
    (measurements,) = _items(ds.ContentSequence, "126010")
    out = {}
    for group in _items(measurements.ContentSequence, "125007"):
        (tracking,) = _items(group.ContentSequence, "112039")
        probs = _items(group.ContentSequence, codes.PROBABILITY.value)
        if probs:
            out[tracking.TextValue] = float(probs[0].MeasuredValueSequence[0].FloatingPointValue)
    return out


def sr_source_uid(ds: Dataset) -> str:
    """The SOP Instance UID of the image an SR refers to."""
    return str(
        ds.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
    )


def predicted(model_predictor, path: Path) -> dict[str, float]:
    """label -> probability of ``cxr predict``'s path (Predictor.predict_images)."""
    result = model_predictor.predict_images([path])
    (item,) = result.items
    return dict(zip(result.labels, map(float, item.values()), strict=True))


def ct_dataset(uid: str = f"{STUDY}.900") -> Dataset:
    ds = phantom_dx(900)
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.Modality = "CT"
    return ds


def roundtrip(ds: Dataset) -> Dataset:
    """``ds`` written and read back (as a file on disk would be)."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)
