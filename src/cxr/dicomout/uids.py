"""UIDs derived from the source image and the model, and the checks on the source image.

Re-sending the same image to the same model must give result objects with the same UIDs,
so that a retry replaces a stored object and never duplicates it. Every UID here is
``2.25.<n>`` where ``n`` is the integer form of a name-based (version 5) UUID of the
inputs (DICOM PS3.5 B.2: UUID-derived UIDs; at most 44 characters):

- the series of the SR / of the SC: from the study's StudyInstanceUID, the model's SHA-256
  and the kind (one cxr series per study, model and kind, whatever the number of images);
- each SR / SC instance: from the source SOP Instance UID, the model's SHA-256 and the kind;
- tracking identifiers of the findings: from the SR instance UID and the label.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cxr.dicomout.record import DicomOutError

__all__ = [
    "ResultUids",
    "SourceImage",
    "derive_uid",
    "result_source",
    "result_uids",
    "source_image",
]

# a fixed namespace for cxr's result UIDs (itself a name-based UUID, so it never changes)
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr:dicomout:result-uids:v1")


def derive_uid(*parts: str) -> str:
    """``2.25.<integer of uuid5(cxr namespace, parts joined by "|")>``: the same parts
    always give the same UID; any other part gives another."""
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise DicomOutError(f"derive_uid: non-empty text parts needed, got {parts!r}")
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


@dataclass(frozen=True)
class SourceImage:
    """What the writers need of the source image (a pydicom Dataset): its UIDs (text) and
    instance number (>= 1; 1 when the source has none)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int


def source_image(dataset: Any) -> SourceImage:
    """Check that ``dataset`` (a pydicom Dataset) names its study, series and instance;
    a :class:`DicomOutError` names the missing attribute."""
    values: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = getattr(dataset, keyword, None)
        if value is None or not str(value).strip():
            raise DicomOutError(
                f"the source image has no {keyword}: a result cannot join its study"
            )
        values[keyword] = str(value)
    number = getattr(dataset, "InstanceNumber", None)
    try:
        instance_number = int(number) if number not in (None, "") else 1
    except (TypeError, ValueError):
        instance_number = 1
    return SourceImage(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        instance_number=max(instance_number, 1),
    )


@dataclass(frozen=True)
class ResultUids:
    """The series and instance UID of one result object (SR or SC)."""

    series_uid: str
    instance_uid: str


def result_uids(kind: str, source: SourceImage, model_sha256: str) -> ResultUids:
    """The UIDs of the ``kind`` (``"sr"`` or ``"sc"``) result of ``source`` by the model
    whose file has SHA-256 ``model_sha256``."""
    return ResultUids(
        series_uid=derive_uid("series", kind, source.study_uid, model_sha256),
        instance_uid=derive_uid("instance", kind, source.sop_instance_uid, model_sha256),
    )


#: Type 2 patient and study attributes that highdicom copies from the source into a result:
#: empty when a source lacks them (as its own IOD allows), so that such a file still gets one.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def result_source(dataset: Any) -> Any:
    """The source image's header as a result is built from: a copy of ``dataset`` (a pydicom
    Dataset) without its pixel data, the Type 2 patient and study attributes it lacks added
    empty. A :class:`DicomOutError` names a missing UID or a missing Modality (Type 1 in CR,
    DX and every image IOD)."""
    import copy

    from pydicom.dataset import Dataset

    source_image(dataset)
    modality = getattr(dataset, "Modality", None)
    if modality is None or not str(modality).strip():
        raise DicomOutError("the source image has no Modality: a result cannot reference it")
    header = Dataset()
    for element in dataset:
        if element.keyword != "PixelData":
            header.add(copy.deepcopy(element))
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        header.file_meta = copy.deepcopy(meta)
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    return header
