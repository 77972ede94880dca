"""The findings of one image as a Comprehensive 3D SR (TID 1500 "Measurement Report").

The content tree (built with highdicom, read back by any TID 1500 reader):

- the root container "Imaging Measurement Report": language, observation context (the
  device observer: the model), procedure reported (:data:`~.codes.PROCEDURE_REPORTED`),
  the image library (the source image);
- "Imaging Measurements": one TID 1501 measurement group per finding, in the model's
  label order: tracking identifier (the label, and a UID derived from the SR and the
  label), finding (:func:`~.codes.finding_code`), algorithm identification (TID 4019:
  the model's name and version, parameters ``model-sha256=<hex>`` and
  ``cxr-version=<version>``), the source image, the measurements "Probability" (the
  calibrated probability, a NUM item with UCUM unit ``1``; the exact float64 is kept in
  Floating Point Value besides the decimal string) and "Threshold Value" (same unit;
  absent when the model stores no threshold), and the qualitative evaluation
  ``<finding> = Present`` (probability >= threshold) or ``Absent`` (below it; absent when
  there is no threshold). When the model has a not-a-chest-X-ray gate, one more group
  with finding :data:`~.codes.NOT_CHEST_XRAY` and the evaluation Present (flagged) or
  Absent. A flagged image's SR holds that group only: no findings;
- "Qualitative Evaluations" (TID 1500 rows 12-14): TEXT "Summary" (the headline of
  :meth:`~.record.ImageResult.headline`) and TEXT "Research use notice"
  (:data:`cxr.RESEARCH_NOTICE`).

The SR joins the source's study (patient and study attributes copied by highdicom) in a
new series; its UIDs come from :func:`~.uids.result_uids` (same image and model -> same
UIDs). Research use only: cxr is not a medical device and its outputs are not a diagnosis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxr import RESEARCH_NOTICE, __version__
from cxr.dicomout import codes
from cxr.dicomout.files import save_dataset
from cxr.dicomout.record import DicomOutError, ImageResult, require_highdicom
from cxr.dicomout.uids import derive_uid, result_source, result_uids, source_image

__all__ = ["SR_SERIES_DESCRIPTION", "SR_SERIES_NUMBER", "build_sr", "write_sr"]

#: Series number and description of cxr's SR series in the source's study.
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "cxr findings (research use only)"
_MANUFACTURER = "cxr"
# modalities whose library entry needs PatientOrientation and ImagerPixelSpacing (highdicom)
_PROJECTION = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})


def build_sr(source: Any, result: ImageResult, *, series_number: int = SR_SERIES_NUMBER) -> Any:
    """The SR of ``result`` for ``source`` (a pydicom Dataset of the image the model read),
    as a ``highdicom.sr.Comprehensive3DSR`` (a pydicom Dataset). A
    :class:`~.record.DicomOutError` when the source lacks its UIDs; a
    :class:`~.record.MissingExtraError` without highdicom."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes as dcm_codes

    if not isinstance(result, ImageResult):
        raise DicomOutError(f"build_sr: an ImageResult is needed, got {type(result).__name__}")
    source = result_source(source)  # no pixels; empty Type 2 patient/study attributes added
    src = source_image(source)
    uids = result_uids("sr", src, result.model_sha256)
    sr = hd.sr
    algorithm = sr.AlgorithmIdentification(
        name=result.model_name,
        version=result.model_version,
        parameters=[f"model-sha256={result.model_sha256}", f"cxr-version={__version__}"],
        manufacturer=_MANUFACTURER,
    )
    observer = sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device", result.model_sha256),
            name=result.model_name,
            manufacturer_name=_MANUFACTURER,
            model_name=result.model_version,
        ),
    )
    source_ref = sr.SourceImageForMeasurementGroup.from_source_image(source)

    def group(
        key: str, finding: codes.Concept, measurements: list[Any], decision: bool | None
    ) -> Any:
        evaluations = (
            []
            if decision is None
            else [
                sr.QualitativeEvaluation(
                    name=finding.code(),
                    value=(codes.PRESENT if decision else codes.ABSENT).code(),
                )
            ]
        )
        return sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(
                uid=derive_uid("tracking", uids.instance_uid, key), identifier=key
            ),
            finding_type=finding.code(),
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
            source_images=[source_ref],
        )

    def number(concept: codes.Concept, value: float) -> Any:
        return sr.Measurement(name=concept.code(), value=float(value), unit=codes.UNIT_ONE.code())

    groups: list[Any] = []
    if not result.not_chest:
        for label, p, t, d in zip(
            result.labels, result.probabilities, result.thresholds, result.decisions, strict=True
        ):
            values = [number(codes.PROBABILITY, p)]
            if t is not None:
                values.append(number(codes.THRESHOLD, t))
            groups.append(group(label, codes.finding_code(label), values, d))
    if result.not_chest is not None:
        groups.append(group("not-a-chest-X-ray gate", codes.NOT_CHEST_XRAY, [], result.not_chest))

    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED.code(),
        imaging_measurements=groups,
        referenced_images=[source] if _library_ready(source) else None,
    )
    if not _library_ready(source):
        # insert the image library before "Imaging Measurements", as highdicom would
        root = report[0].ContentSequence
        root.insert(len(root) - 1, _minimal_library(sr, source))
    notes = sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS.code(),
        relationship_type=sr.RelationshipTypeValues.CONTAINS,
    )
    notes.ContentSequence = sr.ContentSequence(
        [
            sr.TextContentItem(
                name=codes.SUMMARY.code(),
                value=result.headline(),
                relationship_type=sr.RelationshipTypeValues.CONTAINS,
            ),
            sr.TextContentItem(
                name=codes.RESEARCH_NOTICE_CONCEPT.code(),
                value=RESEARCH_NOTICE,
                relationship_type=sr.RelationshipTypeValues.CONTAINS,
            ),
        ]
    )
    report[0].ContentSequence.append(notes)
    scheme = codes.CXR_SCHEME
    return sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=uids.series_uid,
        series_number=series_number,
        sop_instance_uid=uids.instance_uid,
        instance_number=src.instance_number,
        manufacturer=_MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=f"cxr {__version__}",
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=scheme.designator,
                name=scheme.name,
                version=scheme.version,
                responsible_organization=scheme.responsible_organization,
            )
        ],
    )


def _library_ready(source: Any) -> bool:
    """Whether highdicom can describe the source in the image library: a projection
    radiograph (CR, DX, ...) needs a two-valued PatientOrientation and ImagerPixelSpacing,
    which images from the field do not always carry."""
    if str(getattr(source, "Modality", "")) not in _PROJECTION:
        return "Modality" in source and "Rows" in source and "Columns" in source
    orientation = getattr(source, "PatientOrientation", None)
    spacing = getattr(source, "ImagerPixelSpacing", None)
    return (
        orientation is not None
        and not isinstance(orientation, str)
        and len(orientation) == 2
        and spacing is not None
        and len(spacing) == 2
        and "Rows" in source
        and "Columns" in source
    )


def _minimal_library(sr: Any, source: Any) -> Any:
    """TID 1600 Image Library with one entry for ``source``: its reference, modality and,
    where known, its rows and columns (TID 1602) -- for sources highdicom cannot describe."""
    from pydicom.sr.codedict import codes as dcm_codes

    modality = str(getattr(source, "Modality", "") or "OT")
    coded = next(
        (
            getattr(dcm_codes.cid29, n)
            for n in dcm_codes.cid29.dir()
            if getattr(dcm_codes.cid29, n).value == modality
        ),
        sr.CodedConcept(value="OT", scheme_designator="DCM", meaning="Other"),
    )
    acq = sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    descriptors = [
        sr.CodeContentItem(name=dcm_codes.DCM.Modality, value=coded, relationship_type=acq)
    ]
    pixels = sr.CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="Pixels")
    for keyword, name in (
        ("Rows", dcm_codes.DCM.PixelDataRows),
        ("Columns", dcm_codes.DCM.PixelDataColumns),
    ):
        if keyword in source:
            descriptors.append(
                sr.NumContentItem(
                    name=name, value=int(source[keyword].value), unit=pixels, relationship_type=acq
                )
            )
    image = sr.ImageContentItem(
        name=sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source"),
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=sr.RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = sr.ContentSequence(descriptors)
    group = sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibraryGroup, relationship_type=sr.RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = sr.ContentSequence([image])
    library = sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibrary, relationship_type=sr.RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = sr.ContentSequence([group])
    return library


def write_sr(
    path: str | os.PathLike[str],
    source: Any,
    result: ImageResult,
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Path:
    """:func:`build_sr`, written to ``path`` (:func:`save_dataset`). Returns the path."""
    return save_dataset(build_sr(source, result, series_number=series_number), path)
