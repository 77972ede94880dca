"""The DICOM SR that ``/v1/predict`` offers for each DICOM upload.

For every predicted upload whose bytes are DICOM (``DICM`` at byte 128, as
:func:`cxr.images.load_bytes` decides), :class:`SrOffers` builds the Comprehensive 3D SR
(TID 1500) of exactly the prediction the JSON answer shows: the record comes from
:func:`cxr.dicomout.from_prediction.image_result` (the function ``cxr predict --dicom-out``
uses) on the same :class:`~cxr.inference.ImagePrediction`, and the SR from
:func:`cxr.dicomout.build_sr` on the upload's own header. The SR file is kept in a
:class:`~cxr.serving.results.ResultStore` and the image's ``sr`` names its URL
(``<root>/v1/results/<token>/sr.dcm``).

An image gets ``sr: null``, and ``sr_note`` says why, when it was a PNG or JPEG (an SR
must reference a DICOM source image by its study, series and SOP instance UIDs), when the
DICOM lacks those UIDs or attributes highdicom needs, or when highdicom (the
``dicom-node`` extra) is not installed (then the answer's ``notes`` say so too; otherwise
they stay those of ``cxr predict``). Research use only: nothing the service answers is a
diagnosis.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from typing import Any

from cxr.dicomout import DicomOutError, MissingExtraError, build_sr
from cxr.dicomout.from_prediction import image_result
from cxr.inference import ImagePrediction, PredictionResult, Predictor
from cxr.serving.results import ResultStore
from cxr.serving.uploads import Upload

__all__ = [
    "NOT_DICOM",
    "SR_MEDIA_TYPE",
    "SrOffers",
    "is_dicom_upload",
    "sr_bytes",
    "sr_filename",
    "sr_path",
]

log = logging.getLogger("cxr.serving")

#: The media type of a DICOM file (RFC 3240).
SR_MEDIA_TYPE = "application/dicom"
#: ``sr_note`` of a PNG or JPEG upload.
NOT_DICOM = (
    "not a DICOM upload: an SR must reference a DICOM source image's study, series and SOP "
    "instance UIDs"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DICOM_SUFFIX = re.compile(r"\.(dcm|dicom)$", re.IGNORECASE)


def is_dicom_upload(data: bytes) -> bool:
    """Whether the bytes are a DICOM file (``DICM`` at byte 128), as the decoder decides."""
    return data[128:132] == b"DICM"


def sr_filename(name: str) -> str:
    """The download name of an upload's SR: its display name without ``.dcm``/``.dicom``,
    letters, digits, ``.``, ``_`` and ``-`` only (at most 80), then ``_sr.dcm``."""
    stem = _UNSAFE.sub("_", _DICOM_SUFFIX.sub("", name)).strip("._-")[:80]
    return f"{stem or 'image'}_sr.dcm"


def sr_path(root_path: str, token: str) -> str:
    """The URL path of a kept SR, under the ASGI ``root_path`` (behind a proxy)."""
    return f"{root_path.rstrip('/')}/v1/results/{token}/sr.dcm"


def sr_bytes(
    data: bytes,
    predictor: Predictor,
    result: PredictionResult,
    item: ImagePrediction,
    model_sha256: str,
) -> bytes:
    """The SR file (with its file meta header) of ``item``, the prediction of the DICOM
    upload ``data``, with ``result``'s labels and thresholds (see
    :func:`~cxr.dicomout.from_prediction.image_result`). Raises DicomOutError,
    MissingExtraError, or pydicom's and highdicom's errors for sources they cannot use."""
    import pydicom

    record = image_result(predictor, result, item, model_sha256)
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    buffer = io.BytesIO()
    build_sr(source, record).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class SrOffers:
    """Builds the SRs of the DICOM uploads of a prediction and keeps them in ``store``.

    Args:
        predictor: the service's predictor (its backbone names the algorithm in the SR).
        model_sha256: the model file's SHA-256 (64 hex digits).
        store: where the SR files are kept for download.
    """

    def __init__(self, predictor: Predictor, model_sha256: str, store: ResultStore) -> None:
        self.predictor, self.model_sha256, self.store = predictor, model_sha256, store

    def attach(
        self,
        uploads: Sequence[Upload],
        items: Sequence[ImagePrediction],
        body: dict[str, Any],
        root_path: str = "",
    ) -> None:
        """Set ``sr`` and ``sr_note`` of each image of ``body`` (the answer of
        ``/v1/predict`` for ``items``, the predictions of ``uploads`` in order; skipped
        items have no image): ``sr`` the URL path of its SR or None, ``sr_note`` "" or why
        it has none. Without highdicom, ``body["notes"]`` says so once. Never raises for
        one image: the prediction stands without its SR. Runs in a worker thread."""
        result = PredictionResult(tuple(body["labels"]), dict(body["thresholds"]))
        images = iter(body["images"])
        missing_extra = ""
        for upload, item in zip(uploads, items, strict=True):
            if not item.ok:
                continue
            image = next(images)
            image["sr"], image["sr_note"] = None, NOT_DICOM
            if not is_dicom_upload(upload.data):
                continue
            if missing_extra:
                image["sr_note"] = missing_extra
                continue
            try:
                data = sr_bytes(upload.data, self.predictor, result, item, self.model_sha256)
            except MissingExtraError as err:
                image["sr_note"] = missing_extra = str(err)
                body.setdefault("notes", []).append(f"no DICOM SRs: {err}")
                continue
            except DicomOutError as err:
                image["sr_note"] = str(err)
                continue
            except Exception as err:  # pydicom's or highdicom's refusal of this source
                log.warning("no DICOM SR for an upload: %s", type(err).__name__)
                image["sr_note"] = f"highdicom cannot use this source: {type(err).__name__}: {err}"
                continue
            token = self.store.put(data, sr_filename(upload.name), SR_MEDIA_TYPE)
            if token is None:
                image["sr_note"] = "the SR is larger than the service keeps (results_max_bytes)"
                continue
            image["sr"], image["sr_note"] = sr_path(root_path, token), ""
