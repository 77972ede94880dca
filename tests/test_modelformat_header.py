"""The model file formats (cxr.modelformat): one validation of a header for both formats, the
safetensors format's digest, and the ONNX metadata's protobuf walker and seal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cxr.calibration import Calibration, LabelMap
from cxr.gate import OodGate
from cxr.modelfile import ModelFileError, read_model_info
from cxr.modelformat.header import (
    Header,
    HeaderError,
    calibration_record,
    check_format,
    check_thresholds,
    check_tta,
    read_header,
)
from cxr.modelformat.onnx_metadata import OnnxFileError, read_onnx_info, seal
from cxr.modelformat.protobuf import GRAPH_FIELD, encode_entry, entry, fields
from cxr.modelformat.safetensors_file import digest, write_model_file
from cxr.models import ModelSpec, Preprocessing

SPEC = ModelSpec(
    labels=("Effusion", "Mass"), backbone="cxr-small-cnn", preprocessing=Preprocessing(size=32)
)


def _header(**change) -> dict:
    body = {"spec": SPEC.to_dict(), "thresholds": {"Mass": 0.4}, "training": {"epochs": 1}}
    return {**body, "cxr_version": "0.1.0", **change}


def _safetensors(path, **change):
    meta = {"format": "cxr-model", "format_version": 2, **_header(**change)}
    return write_model_file(path, {"w": torch.zeros(2)}, meta)


def _onnx(path, **change):
    """A minimal ONNX file (an empty graph) with cxr's metadata and seal; no onnx needed."""
    meta = {"format": "cxr-onnx", "format_version": 1, "precision": "fp32", **_header(**change)}
    body = bytes([GRAPH_FIELD << 3 | 2, 0]) + encode_entry("cxr", json.dumps(meta))
    path.write_bytes(seal(body))
    return path


def _gate() -> dict:
    return OodGate(np.zeros(3), np.eye(3)[:2], np.ones(2), 0.5, 2.0).to_dict()


def test_both_formats_read_a_good_header_alike(tmp_path):
    calibration = Calibration("platt", {"Mass": LabelMap("platt", {"a": 1.2, "b": -0.1})})
    extra = {"calibration": calibration.to_dict(), "ood": _gate()}
    a = read_model_info(_safetensors(tmp_path / "m.safetensors", **extra))
    b = read_onnx_info(_onnx(tmp_path / "m.onnx", **extra))
    assert isinstance(a, Header) and isinstance(b, Header)  # the same fields, declared once
    expected = Header(
        SPEC,
        {"Mass": 0.4},
        {"epochs": 1},
        "0.1.0",
        Calibration.from_dict(calibration.to_dict()),
        OodGate.from_dict(_gate()),
    )
    assert a.stored() == b.stored() == expected.stored()
    assert a.labels == b.labels == ("Effusion", "Mass")


BAD = {
    "threshold out of range": ({"thresholds": {"Mass": 1.5}}, "its thresholds are invalid"),
    "threshold of an unknown label": ({"thresholds": {"Nodule": 0.5}}, "Nodule"),
    "threshold that is text": ({"thresholds": {"Mass": "high"}}, "'Mass' must be a probability"),
    "threshold that is a bool": ({"thresholds": {"Mass": True}}, "'Mass' must be a probability"),
    "thresholds not an object": ({"thresholds": [0.5]}, "must be a mapping"),
    "spec not an object": ({"spec": [1, 2]}, "spec must be a JSON object, got list"),
    "spec of an unknown backbone": (
        {"spec": {**SPEC.to_dict(), "backbone": "resnet9000"}},
        "unknown backbone 'resnet9000'",
    ),
    "training not an object": ({"training": ["x"]}, "training summary is not a JSON object"),
    "calibration of an unknown label": (
        {"calibration": {"maps": {"Nodule": {"kind": "temperature", "t": 1.0}}}},
        "its calibration is invalid: calibration names labels the model does not have",
    ),
    "calibration that decreases": (
        {"calibration": {"maps": {"Mass": {"kind": "platt", "a": -1.0, "b": 0.0}}}},
        "platt needs finite a > 0",
    ),
    "damaged gate": (
        {"ood": {"method": "pca-mahalanobis", "mean": "x"}},
        r"not-a-chest-X-ray gate \(ood\) is invalid",
    ),
    "unknown test-time augmentation": (
        {"tta": "sideways"},
        r"test-time augmentation \(field 'tta'\) must be one of 'none', 'flip', 'all', "
        "got 'sideways'",
    ),
    "test-time augmentation as a bool": ({"tta": True}, r"field 'tta'.*got True"),
}


@pytest.mark.parametrize("change, words", BAD.values(), ids=BAD.keys())
def test_both_formats_refuse_the_same_bad_header_with_the_same_message(tmp_path, change, words):
    st = _safetensors(tmp_path / "bad.safetensors", **change)
    ox = _onnx(tmp_path / "bad.onnx", **change)
    with pytest.raises(ModelFileError, match=words) as a:
        read_model_info(st)
    with pytest.raises(OnnxFileError, match=words) as b:
        read_onnx_info(ox)
    assert a.value.problem == b.value.problem
    assert str(st) in str(a.value) and str(ox) in str(b.value)


@pytest.mark.parametrize("mode", ["none", "flip", "all"])
def test_both_formats_read_the_recommended_tta_alike(tmp_path, mode):
    a = read_model_info(_safetensors(tmp_path / "m.safetensors", tta=mode))
    b = read_onnx_info(_onnx(tmp_path / "m.onnx", tta=mode))
    assert a.tta == b.tta == mode
    assert a.stored() == b.stored() and ("tta" in a.stored()) == (mode != "none")
    assert read_model_info(_safetensors(tmp_path / "old.safetensors")).tta == "none"  # absent
    assert read_onnx_info(_onnx(tmp_path / "old.onnx")).tta == "none"
    assert read_header(Header(SPEC, tta=mode).stored()).tta == mode
    assert check_tta(None) == "none" and check_tta(mode) == mode


def test_format_and_version_checks():
    assert check_format({"format": "f", "format_version": 2}, "f", 2, "f file", "version") == 2
    for meta, words in [
        ({"format": "g", "format_version": 1}, r"not a f file \(metadata format is not 'f'\)"),
        ({"format": "f", "format_version": True}, "invalid format_version True"),
        ({"format": "f", "format_version": 3}, r"newer cxr \(version 3; this cxr reads up to 2\)"),
        ([1], "not a f file"),
    ]:
        with pytest.raises(HeaderError, match=words):
            check_format(meta, "f", 2, "f file", "version")


def test_what_a_writer_is_handed_is_checked():
    assert check_thresholds(None, SPEC) == {}
    assert list(check_thresholds({"Mass": np.float32(0.25), "Effusion": 1}, SPEC)) == [
        "Effusion",
        "Mass",
    ]  # the model's label order; numpy numbers are numbers
    with pytest.raises(ValueError, match=r"in \[0, 1\], got nan"):
        check_thresholds({"Mass": float("nan")}, SPEC)
    with pytest.raises(ValueError, match="must be a Calibration"):
        calibration_record({"maps": {}}, SPEC)  # type: ignore[arg-type]
    good = Calibration("temperature", {"Mass": LabelMap("temperature", {"t": 2.0})})
    assert calibration_record(good, SPEC) == good.to_dict()


def test_a_header_round_trips_through_its_stored_form():
    header = Header(SPEC, {"Mass": 0.4}, {"epochs": 3}, "0.1.0", None, OodGate.from_dict(_gate()))
    stored = json.loads(json.dumps(header.stored()))
    assert "calibration" not in stored and stored["ood"]["method"] == "pca-mahalanobis"
    back = read_header(stored)
    assert back.spec == SPEC and back.thresholds == {"Mass": 0.4} and back.training == {"epochs": 3}
    assert back.ood is not None and back.ood.to_dict() == header.ood.to_dict()  # type: ignore[union-attr]


def test_the_digest_covers_tensors_and_header():
    meta = {"format": "cxr-model", "spec": {"a": 1}}
    tensors = {"w": torch.zeros(2)}
    base = digest(meta, tensors)
    assert digest({**meta, "sha256": "x"}, tensors) == base  # its own field is left out
    assert digest({**meta, "spec": {"a": 2}}, tensors) != base
    assert digest(meta, {"w": torch.ones(2)}) != base
    assert digest(meta, {"w": torch.zeros(2, dtype=torch.float64)}) != base


def test_the_protobuf_walker_reads_what_it_writes():
    raw = bytes([GRAPH_FIELD << 3 | 2, 2, 8, 1]) + encode_entry("k", "välue " * 40)
    found = list(fields(raw))
    assert [(number, wire) for number, wire, *_ in found] == [(GRAPH_FIELD, 2), (14, 2)]
    _, _, _, begin, end = found[1]
    assert entry(raw[begin:end]) == ("k", "välue " * 40)
    with pytest.raises(ValueError):
        list(fields(raw[:-1]))  # truncated


def test_the_seal_is_checked_before_anything_else(tmp_path):
    path = _onnx(tmp_path / "m.onnx")
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"epochs")] ^= 1  # a byte of the header's JSON
    path.write_bytes(bytes(raw))
    with pytest.raises(OnnxFileError, match="integrity check"):
        read_onnx_info(path)
    path.write_bytes(path.read_bytes() + encode_entry("extra", "x"))  # the seal is not last
    with pytest.raises(OnnxFileError, match="integrity check"):
        read_onnx_info(path)


def test_reading_an_onnx_header_imports_neither_torch_nor_onnx(tmp_path):
    path = _onnx(tmp_path / "m.onnx")
    code = (
        "import sys; from cxr.modelformat.onnx_metadata import read_onnx_info; "
        f"read_onnx_info({str(path)!r}); "
        "print(sorted(m for m in ('torch', 'onnx', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
