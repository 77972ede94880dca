"""The code table of cxr's DICOM results, the result record's checks, the package's imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pydicom.sr.codedict import codes as dcm_codes

from cxr import CHEXPERT14_LABELS, NIH14_LABELS
from cxr.dicomout import codes
from cxr.dicomout.record import DicomOutError, ImageResult, MissingExtraError, format_pair
from cxr.errors import CxrError
from dicomout_files import LABELS, SHA_A, THRESHOLDS, result, source_dx


def test_every_nih_and_chexpert_label_has_one_row():
    labels = [row.label for row in codes.FINDING_CODES]
    assert sorted(labels) == sorted(set(NIH14_LABELS) | set(CHEXPERT14_LABELS))
    keys = [(row.concept.scheme, row.concept.value) for row in codes.FINDING_CODES]
    assert len(set(keys)) == len(keys), "two labels share a code"


def _all_concepts() -> list[codes.Concept]:
    return [row.concept for row in codes.FINDING_CODES] + [c for _, c in codes.OTHER_CODES]


def test_standard_codes_are_in_pydicoms_dictionary_with_that_meaning():
    checked = 0
    for concept in _all_concepts():
        if not concept.source.startswith("pydicom codedict"):
            continue
        scheme = getattr(dcm_codes, concept.scheme)
        words = concept.source.split(": ", 1)
        if len(words) == 2:  # "pydicom codedict: SCT PleuralEffusion (CID ...)"
            keyword = words[1].split()[1]
            code = getattr(scheme, keyword)
            assert (code.value, code.meaning) == (concept.value, concept.meaning), concept
        else:  # look the code up by value
            assert any(
                getattr(scheme, k).value == concept.value
                and getattr(scheme, k).meaning == concept.meaning
                for k in scheme.dir(concept.meaning.split()[0])
            ), concept
        checked += 1
    assert checked >= 15
    # every SNOMED CT finding code is one of the checked ones: no unverified SCT code
    for row in codes.FINDING_CODES:
        if row.concept.scheme == "SCT":
            assert row.concept.source.startswith("pydicom codedict"), row


def test_private_codes_fit_dicom_limits():
    for concept in _all_concepts():
        assert 1 <= len(concept.value) <= 16 and 1 <= len(concept.meaning) <= 64, concept
        if concept.scheme == codes.CXR_SCHEME.designator:
            assert concept.source == "cxr"
    assert codes.CXR_SCHEME.designator.startswith("99")


def test_finding_code_canonicalises_and_derives_codes_for_unknown_labels():
    assert codes.finding_code("pleural effusion") == codes.finding_code("Effusion")
    assert codes.finding_code("Effusion").value == "60046008"
    assert codes.finding_code("Pneumothorax").scheme == "SCT"
    own = codes.finding_code("My Own Finding")
    assert own.scheme == "99CXR" and own.value.startswith("U") and len(own.value) == 13
    assert own.meaning == "My Own Finding"
    assert codes.finding_code("My Own Finding") == own
    assert codes.finding_code("Another") != own


def test_codes_markdown_lists_every_row():
    text = codes.codes_markdown()
    print(text)
    for row in codes.FINDING_CODES:
        assert f"| {row.label} | {row.concept.value} | {row.concept.scheme} |" in text
    for _, concept in codes.OTHER_CODES:
        assert f"| {concept.value} | {concept.scheme} |" in text
    assert "99CXR" in text


def test_result_record_computes_decisions_and_headline():
    r = result()
    assert r.labels == LABELS
    assert r.thresholds[-1] is None and r.decisions[-1] is None
    assert r.decisions[:4] == (False, True, False, False)  # float32 0.42 < 0.42
    assert r.present == ("Cardiomegaly",)
    assert r.headline() == "At or above threshold: Cardiomegaly 0.812"
    assert result(not_chest=True).present == ()
    assert "Not a chest X-ray" in result(not_chest=True).headline()
    below = result(probs=np.zeros(len(LABELS), np.float32))
    assert below.headline().startswith("No finding at or above its threshold (highest: ")


def test_format_pair_never_shows_different_numbers_alike():
    p = float(np.float32(0.42))
    ps, ts = format_pair(p, 0.42)
    assert ps != ts and float(ps) < float(ts)
    assert format_pair(0.5, 0.25) == ("0.500", "0.250")
    assert format_pair(0.5, 0.5) == ("0.500", "0.500")
    assert format_pair(0.5, None) == ("0.500", "")


def _kwargs(**over):
    kw = dict(
        labels=("A", "B"),
        probabilities=(0.2, 0.9),
        thresholds=(0.5, None),
        decisions=(False, None),
        not_chest=None,
        model_name="m",
        model_version="1",
        model_sha256=SHA_A,
    )
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"labels": ()}, "labels"),
        ({"probabilities": (0.2,)}, "probabilities"),
        ({"labels": ("A", "A")}, "labels"),
        ({"labels": ("A", "")}, "labels"),
        ({"probabilities": (0.2, 1.5)}, "probabilities"),
        ({"probabilities": (float("nan"), 0.9)}, "probabilities"),
        ({"thresholds": (-0.1, None)}, "thresholds"),
        ({"decisions": (True, None)}, "decisions"),
        ({"decisions": (False, True)}, "decisions"),
        ({"not_chest": "no"}, "not_chest"),
        ({"model_name": ""}, "model_name"),
        ({"model_version": "x" * 65}, "model_version"),
        ({"model_sha256": "ABC"}, "model_sha256"),
        ({"model_sha256": "A" * 64}, "model_sha256"),
    ],
)
def test_result_record_refuses_bad_fields(over, field):
    with pytest.raises(DicomOutError, match=rf"ImageResult\.{field}") as info:
        ImageResult(**_kwargs(**over))
    assert isinstance(info.value, CxrError) and isinstance(info.value, ValueError)


def test_from_prediction_refuses_non_numbers():
    with pytest.raises(DicomOutError, match="probabilities"):
        ImageResult.from_prediction(
            ["A"],
            ["x"],
            THRESHOLDS,
            not_chest=None,
            model_name="m",
            model_version="1",
            model_sha256=SHA_A,
        )


def test_without_highdicom_the_builders_say_how_to_install_it(monkeypatch):
    from cxr.dicomout import build_sc, build_sr

    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(MissingExtraError, match=r"cxr\[dicom-node\]") as info:
        build_sr(source_dx(), result())
    assert isinstance(info.value, CxrError)
    with pytest.raises(MissingExtraError):
        build_sc(source_dx(), np.zeros((4, 4, 3), np.uint8), result())


def test_package_imports_only_lower_layers_and_no_heavy_modules():
    code = (
        "import sys, cxr.dicomout\n"
        "bad = ('cxr.cli', 'cxr.serving', 'cxr.tuning', 'cxr.training', 'cxr.evaluation',"
        " 'cxr.inference', 'cxr.modelfile', 'torch', 'highdicom')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_missing_dciodvfy_fails_unless_skipped(monkeypatch, tmp_path):
    import dicomout_files

    monkeypatch.setattr(dicomout_files.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXR_SKIP_DCIODVFY", raising=False)
    with pytest.raises(pytest.fail.Exception, match="make dicom3tools"):
        dicomout_files.dciodvfy(tmp_path / "x.dcm")
    monkeypatch.setenv("CXR_SKIP_DCIODVFY", "1")
    with pytest.raises(pytest.skip.Exception):
        dicomout_files.dciodvfy(tmp_path / "x.dcm")
