"""DICOM objects that carry cxr's results into the source image's study.

- :mod:`cxr.dicomout.record`: :class:`ImageResult`, one image's result (labels,
  calibrated probabilities, thresholds, decisions, the gate's flag, the model's identity),
  checked once; the errors :class:`DicomOutError` and :class:`MissingExtraError`.
- :mod:`cxr.dicomout.codes`: the one table of codes (SNOMED CT where verified, else cxr's
  own scheme ``99CXR``) and :func:`codes_markdown` for the README.
- :mod:`cxr.dicomout.sr`: the Comprehensive 3D SR with the TID 1500 measurement report
  (:func:`build_sr`, :func:`write_sr`).
- :mod:`cxr.dicomout.sc`: the Secondary Capture with the heatmap and the findings burnt in
  (:func:`build_sc`, :func:`write_sc`).
- :mod:`cxr.dicomout.uids`: UIDs derived from the source SOP Instance UID and the model's
  SHA-256 (a re-sent image gives the same objects).
- :mod:`cxr.dicomout.from_prediction`: :func:`write_dicom_results`, the SR and the SC of
  every DICOM image of a :class:`cxr.inference.PredictionResult` (``cxr predict
  --dicom-out``); imported from there, not here (it imports the heatmap code).

highdicom (the ``dicom-node`` extra: ``pip install 'cxr[dicom-node]'``) is imported only
when an object is built; without it the builders raise :class:`MissingExtraError`.
Research use only: cxr is not a medical device and its outputs are not a diagnosis.
"""

from __future__ import annotations

from cxr.dicomout.codes import FINDING_CODES, codes_markdown, finding_code
from cxr.dicomout.record import DicomOutError, ImageResult, MissingExtraError
from cxr.dicomout.sc import build_sc, write_sc
from cxr.dicomout.sr import build_sr, write_sr
from cxr.dicomout.uids import derive_uid, result_uids

__all__ = [
    "FINDING_CODES",
    "DicomOutError",
    "ImageResult",
    "MissingExtraError",
    "build_sc",
    "build_sr",
    "codes_markdown",
    "derive_uid",
    "finding_code",
    "result_uids",
    "write_sc",
    "write_sr",
]
