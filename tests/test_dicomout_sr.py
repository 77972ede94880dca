"""The Comprehensive 3D SR of cxr's findings: written, read back, validated by dciodvfy."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cxr import RESEARCH_NOTICE
from cxr.dicomout import DicomOutError, build_sr, codes, write_sr
from dicomout_files import (
    LABELS,
    PROBS,
    SERIES_UID,
    SHA_A,
    SHA_B,
    SOP_UID,
    STUDY_UID,
    THRESHOLDS,
    dciodvfy,
    result,
    source_dx,
)


def _items(seq, code: str):
    """Content items of a sequence whose concept name has code value ``code``."""
    return [it for it in seq if it.ConceptNameCodeSequence[0].CodeValue == code]


def _walk(seq):
    for it in seq:
        yield it
        yield from _walk(getattr(it, "ContentSequence", []))


def _groups(ds) -> dict[str, pydicom.Dataset]:
    """Measurement groups (125007) by tracking identifier (112039)."""
    (measurements,) = _items(ds.ContentSequence, "126010")
    out = {}
    for group in _items(measurements.ContentSequence, "125007"):
        (tracking,) = _items(group.ContentSequence, "112039")
        out[tracking.TextValue] = group
    return out


def _number(group, code: str) -> float | None:
    found = _items(group.ContentSequence, code)
    return float(found[0].MeasuredValueSequence[0].FloatingPointValue) if found else None


def _notes(ds) -> dict[str, str]:
    (container,) = _items(ds.ContentSequence, codes.QUALITATIVE_EVALUATIONS.value)
    return {
        it.ConceptNameCodeSequence[0].CodeMeaning: it.TextValue for it in container.ContentSequence
    }


def test_sr_holds_every_probability_threshold_and_decision(tmp_path: Path):
    r = result()
    path = write_sr(tmp_path / "sr.dcm", source_dx(), r)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == STUDY_UID and ds.SeriesInstanceUID != SERIES_UID
    assert ds.PatientID == "PHANTOM-1" and ds.AccessionNumber == "ACC1"
    assert ds.InstanceNumber == 3 and ds.CompletionFlag == "COMPLETE"
    groups = _groups(ds)
    assert list(groups) == [*LABELS, "not-a-chest-X-ray gate"]
    for i, label in enumerate(LABELS):
        g = groups[label]
        (finding,) = _items(g.ContentSequence, "121071")
        concept = codes.finding_code(label)
        assert finding.ConceptCodeSequence[0].CodeValue == concept.value
        assert finding.ConceptCodeSequence[0].CodingSchemeDesignator == concept.scheme
        assert _number(g, "122157") == float(PROBS[i])  # exact: Floating Point Value
        (prob,) = _items(g.ContentSequence, "122157")
        assert prob.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "1"
        assert _number(g, "122411") == THRESHOLDS.get(label)
        evaluations = _items(g.ContentSequence, concept.value)
        if r.decisions[i] is None:
            assert evaluations == []
        else:
            (ev,) = evaluations
            expected = codes.PRESENT if r.decisions[i] else codes.ABSENT
            assert ev.ConceptCodeSequence[0].CodeValue == expected.value
        refs = [it for it in g.ContentSequence if it.ValueType == "IMAGE"]
        assert refs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_UID
        texts = {
            it.ConceptNameCodeSequence[0].CodeMeaning: it.TextValue
            for it in _walk(g.ContentSequence)
            if it.ValueType == "TEXT"
        }
        assert texts["Algorithm Name"] == "cxr-densenet121-nih"
        assert texts["Algorithm Version"] == "0.1.0"
    params = [
        it.TextValue
        for it in _walk(ds.ContentSequence)
        if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue == "111002"
    ]
    assert f"model-sha256={SHA_A}" in params
    (gate,) = _items(groups["not-a-chest-X-ray gate"].ContentSequence, "G0001")
    assert gate.ConceptCodeSequence[0].CodeValue == codes.ABSENT.value
    assert _notes(ds) == {"Summary": r.headline(), "Research use notice": RESEARCH_NOTICE}
    library = [it for it in _walk(ds.ContentSequence) if it.ValueType == "IMAGE"]
    assert all(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_UID for it in library)
    schemes = [it.CodingSchemeDesignator for it in ds.CodingSchemeIdentificationSequence]
    assert "99CXR" in schemes


def test_highdicom_reads_the_report_back(tmp_path: Path):
    path = write_sr(tmp_path / "sr.dcm", source_dx(), result())
    sr = hd.sr.srread(path)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(LABELS) + 1
    by_name = {g.tracking_identifier: g for g in groups}
    for i, label in enumerate(LABELS):
        (m,) = by_name[label].get_measurements(name=codes.PROBABILITY.code())
        assert m.value == float(PROBS[i]) and m.unit.value == "1"


def test_flagged_image_holds_no_findings_and_says_why(tmp_path: Path):
    r = result(not_chest=True)
    ds = pydicom.dcmread(write_sr(tmp_path / "gated.dcm", source_dx(), r))
    groups = _groups(ds)
    assert list(groups) == ["not-a-chest-X-ray gate"]
    (gate,) = _items(groups["not-a-chest-X-ray gate"].ContentSequence, "G0001")
    assert gate.ConceptCodeSequence[0].CodeValue == codes.PRESENT.value
    (measurements,) = _items(ds.ContentSequence, "126010")
    assert not [it for it in _walk(measurements.ContentSequence) if it.ValueType == "NUM"]
    finding_values = {row.concept.value for row in codes.FINDING_CODES}
    for it in _walk(ds.ContentSequence):
        if it.ValueType == "CODE":
            assert it.ConceptCodeSequence[0].CodeValue not in finding_values
    assert _notes(ds)["Summary"] == "Not a chest X-ray: no findings reported"
    assert _notes(ds)["Research use notice"] == RESEARCH_NOTICE


def test_model_without_gate_has_no_gate_group():
    ds = build_sr(source_dx(), result(not_chest=None))
    assert list(_groups(ds)) == list(LABELS)


def test_uids_are_derived_from_the_source_and_the_model():
    a1, a2 = build_sr(source_dx(), result()), build_sr(source_dx(), result())
    assert (a1.SOPInstanceUID, a1.SeriesInstanceUID) == (a2.SOPInstanceUID, a2.SeriesInstanceUID)
    assert a1.SOPInstanceUID.startswith("2.25.") and len(a1.SOPInstanceUID) <= 64
    b = build_sr(source_dx(), result(sha=SHA_B))
    assert b.SOPInstanceUID != a1.SOPInstanceUID and b.SeriesInstanceUID != a1.SeriesInstanceUID
    other = build_sr(source_dx(sop_uid=SOP_UID + ".1"), result())
    assert other.SOPInstanceUID != a1.SOPInstanceUID
    assert other.SeriesInstanceUID == a1.SeriesInstanceUID  # one cxr SR series per study
    assert a1.SOPInstanceUID not in {SOP_UID, SERIES_UID, STUDY_UID}


def test_source_without_uids_is_refused():
    src = source_dx()
    del src.StudyInstanceUID
    with pytest.raises(DicomOutError, match="StudyInstanceUID"):
        build_sr(src, result())


@pytest.mark.parametrize("case", ["findings", "gated", "bare-source"])
def test_sr_passes_dciodvfy(tmp_path: Path, case: str):
    src = source_dx()
    if case == "bare-source":  # no ImagerPixelSpacing, no PatientOrientation: own library
        del src.ImagerPixelSpacing, src.PatientOrientation
    r = result(not_chest=case == "gated")
    path = write_sr(tmp_path / f"{case}.dcm", src, r)
    lines = dciodvfy(path)
    assert not [ln for ln in lines if ln.startswith("Error")], lines
    assert len(_groups(pydicom.dcmread(path))) == (1 if case == "gated" else len(LABELS) + 1)


def test_probabilities_equal_the_input_for_random_values(tmp_path: Path):
    rng = np.random.default_rng(0)
    probs = rng.random(len(LABELS)).astype(np.float32)
    ds = pydicom.dcmread(write_sr(tmp_path / "r.dcm", source_dx(), result(probs=probs)))
    groups = _groups(ds)
    assert [_number(groups[n], "122157") for n in LABELS] == [float(p) for p in probs]


def test_source_without_patient_and_study_attributes_still_gets_valid_results(tmp_path: Path):
    from cxr.dicomout import write_sc

    src = source_dx()
    patient_and_study = (
        "PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime StudyID "
        "AccessionNumber ReferringPhysicianName"
    )
    for keyword in patient_and_study.split():
        if keyword in src:
            delattr(src, keyword)
    sr_path = write_sr(tmp_path / "sr.dcm", src, result())
    sc_path = write_sc(tmp_path / "sc.dcm", src, np.zeros((64, 64, 3), np.uint8), result())
    for path in (sr_path, sc_path):
        assert not [ln for ln in dciodvfy(path) if ln.startswith("Error")]
        assert pydicom.dcmread(path).PatientID == ""
    assert "PatientID" not in src  # the caller's dataset is left as it was


def test_source_without_modality_is_refused_by_name():
    src = source_dx()
    del src.Modality
    with pytest.raises(DicomOutError, match="no Modality"):
        build_sr(src, result())
