"""DICOM as hospitals send it: `cxr predict` and `cxr prepare` over every file of pydicom's
own test-file folder (CT, MR, RT, secondary captures; JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000, RLE, deflate, big-endian, no meta header, truncated, malformed).

The set of files that decode is written out below, with the reason for each file that does
not; every refusal must name the file and a reason, and none may be a missing plugin.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from cxr.cli import main as cxr_main
from cxr.dicom import DicomWarning, dicom_policy, read_tags
from cxr.images import ImageReadError, read_gray
from cxr.inference.files import list_images
from cxr.modelfile import save_model
from cxr.models import ModelSpec, Preprocessing, build_model

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SIZE = 32  # the model's input: images with a shorter side below 32 px are "too-small"

# Files that hold no pixel data (reports, plans, structure sets, waveforms, directories,
# data sets without an image): refused as "unreadable: DICOM has no pixel data", or as
# "unsupported" when they are no DICOM file at all.
NO_PIXEL_DATA = {
    "ExplVR_BigEndNoMeta.dcm": "RT plan without a file meta header",
    "ExplVR_LitEndNoMeta.dcm": "RT plan without a file meta header",
    "UN_sequence.dcm": "a sequence of unknown VR, no image",
    "empty_charset_LEI.dcm": "character set test, no image",
    "no_meta_group_length.dcm": "meta header test, no image",
    "priv_SQ.dcm": "private sequence test, no image",
    "reportsi.dcm": "structured report",
    "reportsi_with_empty_number_tags.dcm": "structured report",
    "rtplan.dcm": "RT plan",
    "rtplan_truncated.dcm": "RT plan, cut short",
    "rtstruct.dcm": "RT structure set without a file meta header",
    "test-SR.dcm": "structured report",
    "waveform_ecg.dcm": "ECG waveform",
}
# Files with pixel data that do not decode, each for its own reason (never a missing plugin).
DAMAGED = {
    "JPEG-lossy.dcm": ("unreadable", "cannot be decoded"),  # bad SOS in the JPEG stream
    # (pydicom's README: JPGExtended.dcm is its fixed version, and decodes)
    "JPEG2000-embedded-sequence-delimiter.dcm": ("unreadable", "cannot be decoded"),
    # 4 codestream bytes overwritten on purpose (pydicom issue 1140)
    "MR_truncated.dcm": ("truncated", "less than expected"),
    "badVR.dcm": ("unreadable", "NumberOfFrames is '1A'"),  # malformed IS value
    "meta_missing_tsyntax.dcm": ("unreadable", "Bits Allocated"),  # no image pixel module
    "nested_priv_SQ.dcm": ("unreadable", "Bits Allocated"),  # no image pixel module
    "no_meta.dcm": ("unsupported", "not a DICOM file"),  # no preamble, meta or data set
}
# dicomdirtests/: DICOMDIR files and TINY_ALPHA's images hold no pixel data.
MULTI_FRAME = {
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "examples_ybr_color.dcm",
    "rtdose.dcm",
    "rtdose_expb.dcm",
    "rtdose_rle.dcm",
}
# With the default modality check, only these are decoded and predicted: files without a
# Modality tag (all of them secondary captures) whose shorter side is >= 32 px. The CR
# files of dicomdirtests are cervical spines (BodyPartExamined CSPINE), refused too.
PREDICTED_BY_DEFAULT = {
    "GDCMJ2K_TextGBR.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
}
_SKIPPED = re.compile(r"^cxr predict: skipped (.+?): ([a-z-]+): (.+)$")


def _rel(path: str | Path) -> str:
    return Path(path).resolve().relative_to(TEST_FILES.resolve()).as_posix()


def _without_pixels(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (
        name in NO_PIXEL_DATA
        or name.startswith("DICOMDIR")
        or rel.startswith("dicomdirtests/TINY_ALPHA/")
    )


@pytest.fixture(scope="module")
def files() -> list[str]:
    if not TEST_FILES.is_dir():  # pragma: no cover - pydicom always ships them
        pytest.skip("pydicom's test files are not installed")
    return [_rel(p) for p in list_images([TEST_FILES])]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(
            labels=("Effusion", "Mass"),
            backbone="cxr-small-cnn",
            preprocessing=Preprocessing(SIZE),
        )
    )
    return save_model(tmp_path_factory.mktemp("model") / "m.safetensors", model)


def _decodes(rel: str) -> bool:
    return not _without_pixels(rel) and rel.rsplit("/", 1)[-1] not in DAMAGED


def test_every_file_with_supported_pixel_data_decodes(files):
    assert len(files) > 150 and len([f for f in files if "/" not in f]) >= 70
    decoded, refused = set(), {}
    with dicom_policy(any_modality=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rel in files:
            try:
                image = read_gray(TEST_FILES / rel)
            except ImageReadError as err:
                refused[rel] = err
                continue
            assert image.dtype == np.float32 and image.ndim == 2
            assert image.min() >= 0 and image.max() <= 1
            decoded.add(rel)
    assert decoded == {f for f in files if _decodes(f)}
    for rel, err in refused.items():
        assert "plugin" not in err.detail, err
        name = rel.rsplit("/", 1)[-1]
        if name in DAMAGED:
            reason, words = DAMAGED[name]
            assert err.reason == reason and words in err.detail, err
        else:
            assert err.reason == "unreadable" and "no pixel data" in err.detail, err
    # pydicom's warnings and the multi-frame note: one line each, naming the file
    texts = [str(w.message) for w in caught if issubclass(w.category, DicomWarning)]
    assert all("\n" not in t and t.startswith(str(TEST_FILES)) for t in texts)
    noted = {
        _rel(t.split(": multi-frame")[0]).rsplit("/", 1)[-1] for t in texts if "multi-frame" in t
    }
    assert noted == MULTI_FRAME
    assert not [w for w in caught if not issubclass(w.category, DicomWarning)]


def test_multiframe_refused_when_asked():
    refuse = dicom_policy(any_modality=True, multiframe="refuse")
    with refuse, pytest.raises(ImageReadError, match="multi-frame") as info:
        read_gray(TEST_FILES / "rtdose.dcm")
    assert info.value.reason == "unsupported"


def _skipped(stderr: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in stderr.splitlines():
        m = _SKIPPED.match(line)
        if m:
            out[_rel(m.group(1))] = (m.group(2), m.group(3))
    return out


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = cxr_main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _predicted(csv_text: str) -> set[str]:
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    return {_rel(r["Image Index"]) for r in rows}


def test_predict_over_every_test_file(files, model_file, capsys):
    code, out, err = _run(
        ["predict", str(model_file), str(TEST_FILES), "--format", "csv", "--no-progress"], capsys
    )
    assert code == 1  # some files were skipped
    skipped = _skipped(err)
    predicted = _predicted(out)
    assert predicted == {f for f in files if f in PREDICTED_BY_DEFAULT}
    assert set(skipped) | predicted == set(files) and not set(skipped) & predicted
    for rel, (reason, detail) in skipped.items():
        assert "plugin" not in detail, (rel, detail)
        tags = {} if rel.endswith("no_meta.dcm") else read_tags(TEST_FILES / rel)
        modality = tags.get("modality", "")
        if modality in {"CT", "MR"} or modality.startswith("RT"):
            assert reason == "wrong-modality" and f"Modality is {modality}" in detail
        if modality == "CR":  # cervical spines
            assert reason == "wrong-modality" and "BodyPartExamined is CSPINE" in detail
    # every other line of stderr is a one-line warning naming a file (or the notice)
    for line in err.splitlines():
        if line.startswith("cxr predict: warning: "):
            assert line.removeprefix("cxr predict: warning: ").startswith(str(TEST_FILES))


def test_predict_any_modality_decodes_every_supported_file(files, model_file, capsys):
    args = ["predict", str(model_file), str(TEST_FILES), "--format", "csv", "--no-progress"]
    code, out, err = _run([*args, "--allow-any-modality"], capsys)
    assert code == 1
    skipped, predicted = _skipped(err), _predicted(out)
    assert set(skipped) | predicted == set(files)
    too_small = {rel for rel, (reason, _) in skipped.items() if reason == "too-small"}
    # the too-small ones decode (see above) but are below the model's 32 px: the images of
    # dicomdirtests (reduced to 16 px or so) and these
    assert {r for r in too_small if r.startswith("dicomdirtests/")} == {
        f for f in files if f.startswith("dicomdirtests/") and _decodes(f)
    }
    assert {r for r in too_small if "/" not in r} == {
        "JPEGLSNearLossless_08.dcm",  # 45 x 10
        "JPEGLSNearLossless_16.dcm",  # 50 x 10
        "SC_rgb_small_odd.dcm",  # 3 x 3
        "SC_rgb_small_odd_big_endian.dcm",
        "SC_rgb_small_odd_jpeg.dcm",
        "rtdose.dcm",  # 10 x 10
        "rtdose_1frame.dcm",
        "rtdose_expb.dcm",
        "rtdose_expb_1frame.dcm",
        "rtdose_rle.dcm",
        "rtdose_rle_1frame.dcm",
    }
    assert predicted == {f for f in files if _decodes(f)} - too_small
    assert all(reason != "wrong-modality" for reason, _ in skipped.values())
    assert err.count("multi-frame DICOM") == len(MULTI_FRAME)
    code, _, err = _run([*args, "--allow-any-modality", "--multiframe", "refuse"], capsys)
    refused = {r.rsplit("/", 1)[-1] for r, (_, d) in _skipped(err).items() if "multi-frame" in d}
    assert refused == MULTI_FRAME  # refused before any size check


def _rejects(cache: Path) -> list[dict[str, str]]:
    with open(cache / "rejects.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_prepare_over_every_test_file(tmp_path, capsys):
    out = tmp_path / "cache"
    base = ["prepare", str(TEST_FILES), "--format", "dicom", "--size", str(SIZE)]
    code, text, err = _run([*base, "--out", str(out), "--workers", "1", "--no-progress"], capsys)
    assert code == 0
    rejects = _rejects(out)
    assert rejects and all(r["path"] and r["reason"] and r["detail"] for r in rejects)
    assert not [r for r in rejects if "plugin" in r["detail"]]
    by_name = {_rel(r["path"]): r for r in rejects}
    for rel, r in by_name.items():
        modality = "" if rel.endswith("no_meta.dcm") else read_tags(TEST_FILES / rel)["modality"]
        if modality in {"CT", "MR"} or modality.startswith("RT"):
            assert r["reason"] == "wrong-modality", (rel, r)
    assert "hold no image and were left out" in err  # DICOMDIR, reports, plans: not images
    # --allow-any-modality: the DICOM files are decoded again, in 2 worker processes whose
    # warnings come back as one line each
    code, text, err = _run(
        [*base, "--out", str(out), "--workers", "2", "--no-progress", "--allow-any-modality"],
        capsys,
    )
    assert code == 0 and "other DICOM settings" in text
    rejects = _rejects(out)
    reasons = {r["reason"] for r in rejects}
    assert "wrong-modality" not in reasons and reasons <= {
        "too-small",
        "unreadable",
        "truncated",
        "unsupported",
    }
    names = {Path(r["path"]).name for r in rejects if r["reason"] != "too-small"}
    # the two without an image pixel module (no Rows/Columns) were left out by the reader
    assert names == set(DAMAGED) - {"meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"}
    assert "cxr prepare: warning: " in err and "multi-frame DICOM" in err
