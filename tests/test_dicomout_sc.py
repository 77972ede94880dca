"""The Secondary Capture with the heatmap and the findings burnt in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr import RESEARCH_NOTICE
from cxr.dicomout import DicomOutError, build_sc, build_sr, write_sc
from cxr.dicomout.sc import panel_lines, render_panel
from dicomout_files import (
    SERIES_UID,
    SHA_B,
    SOP_UID,
    STUDY_UID,
    dciodvfy,
    overlay,
    result,
    source_dx,
)


def test_sc_is_the_overlay_with_a_text_panel(tmp_path: Path):
    rgb = overlay(96, 80)
    path = write_sc(tmp_path / "sc.dcm", source_dx(), rgb, result())
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.BurnedInAnnotation == "YES"
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert ds.BitsAllocated == 8 and ds.ImageComments == RESEARCH_NOTICE
    assert ds.StudyInstanceUID == STUDY_UID and ds.SeriesInstanceUID != SERIES_UID
    assert ds.PatientID == "PHANTOM-1" and ds.InstanceNumber == 3
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == SOP_UID
    assert list(ds.PatientOrientation) == ["L", "F"]
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[0] > 96 and pixels.shape[1] >= 80
    np.testing.assert_array_equal(pixels[:96, :80], rgb)  # the overlay, untouched
    panel = pixels[96:]
    bright = (panel.max(axis=2) > 128).sum()
    assert bright > 500, "the text panel is blank"
    assert (panel.max(axis=2) == 0).sum() > bright  # text on black, not a filled block
    # one text line per label, plus headline and notice: rows with ink in several bands
    ink_rows = np.flatnonzero(panel.max(axis=(1, 2)) > 128)
    bands = 1 + int((np.diff(ink_rows) > 1).sum())
    assert bands >= len(panel_lines(result())) - 1


def test_panel_lines_show_the_records_numbers():
    lines = [text for text, _ in panel_lines(result())]
    assert lines[0] == result().headline() and lines[-1] == RESEARCH_NOTICE
    assert "Cardiomegaly  p=0.812  threshold 0.500  present" in lines
    # float32 0.42 is below the threshold 0.42: shown with the digits that tell them apart
    assert "Effusion  p=0.4200  threshold 0.4200  absent" not in lines
    assert any(t.startswith("Effusion  p=0.41999") and t.endswith("absent") for t in lines)
    assert "My Own Finding  p=0.050  (no threshold)" in lines
    highlighted = [text for text, hi in panel_lines(result()) if hi]
    assert highlighted == [result().headline(), "Cardiomegaly  p=0.812  threshold 0.500  present"]


def test_flagged_image_panel_names_no_findings():
    lines = [text for text, _ in panel_lines(result(not_chest=True))]
    assert lines == ["Not a chest X-ray: no findings reported", RESEARCH_NOTICE]


def test_panel_widens_a_narrow_overlay():
    pixels, top = render_panel(overlay(16, 16), result())
    assert top == 16 and pixels.shape[1] > 16
    np.testing.assert_array_equal(pixels[:16, :16], overlay(16, 16))
    assert (pixels[:16, 16:] == 0).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)],
)
def test_bad_overlay_is_refused(bad):
    with pytest.raises(DicomOutError, match=r"uint8 \(H, W, 3\)"):
        build_sc(source_dx(), bad, result())


def test_uids_are_stable_and_differ_by_model_and_from_the_sr():
    a1 = build_sc(source_dx(), overlay(), result())
    a2 = build_sc(source_dx(), overlay(), result())
    assert (a1.SOPInstanceUID, a1.SeriesInstanceUID) == (a2.SOPInstanceUID, a2.SeriesInstanceUID)
    b = build_sc(source_dx(), overlay(), result(sha=SHA_B))
    assert b.SOPInstanceUID != a1.SOPInstanceUID and b.SeriesInstanceUID != a1.SeriesInstanceUID
    sr = build_sr(source_dx(), result())
    assert sr.SOPInstanceUID != a1.SOPInstanceUID and sr.SeriesInstanceUID != a1.SeriesInstanceUID


def test_source_without_orientation_gives_an_empty_one():
    src = source_dx()
    del src.PatientOrientation
    sc = build_sc(src, overlay(), result())
    assert "PatientOrientation" in sc and not sc.PatientOrientation


@pytest.mark.parametrize("gated", [False, True])
def test_sc_passes_dciodvfy(tmp_path: Path, gated: bool):
    path = write_sc(tmp_path / "sc.dcm", source_dx(), overlay(), result(not_chest=gated))
    lines = dciodvfy(path)
    assert not [ln for ln in lines if ln.startswith("Error")], lines


def test_sc_of_a_source_without_orientation_passes_dciodvfy(tmp_path: Path):
    src = source_dx()
    del src.PatientOrientation, src.BodyPartExamined
    lines = dciodvfy(write_sc(tmp_path / "bare.dcm", src, overlay(), result()))
    assert not [ln for ln in lines if ln.startswith("Error")], lines
