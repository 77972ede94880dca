"""``cxr predict --dicom-out`` and cxr.dicomout.from_prediction: the SR and the SC of a
prediction run carry the numbers of ``cxr predict --format json`` on the same files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from cxr import __version__
from cxr.cli import main as cxr_main
from cxr.dicomout import codes
from cxr.dicomout.from_prediction import overlay_tiles, write_dicom_results
from cxr.inference import Predictor
from cxr.modelfile import save_model
from cxr.models import ModelSpec, Preprocessing, build_model
from dicomout_files import dciodvfy, source_dx

LABELS = ("Cardiomegaly", "Effusion", "Mass", "My Own Finding")


def _items(seq, code: str):
    return [it for it in seq if it.ConceptNameCodeSequence[0].CodeValue == code]


def _sr_numbers(path: Path) -> dict[str, tuple[float, float | None, str | None]]:
    """label -> (probability, threshold, evaluation code) read from an SR."""
    ds = pydicom.dcmread(path)
    (measurements,) = _items(ds.ContentSequence, "126010")
    out = {}
    for group in _items(measurements.ContentSequence, "125007"):
        (tracking,) = _items(group.ContentSequence, "112039")
        label = tracking.TextValue
        if label == "not-a-chest-X-ray gate":
            continue
        (prob,) = _items(group.ContentSequence, codes.PROBABILITY.value)
        thr = _items(group.ContentSequence, codes.THRESHOLD.value)
        ev = _items(group.ContentSequence, codes.finding_code(label).value)
        out[label] = (
            float(prob.MeasuredValueSequence[0].FloatingPointValue),
            float(thr[0].MeasuredValueSequence[0].FloatingPointValue) if thr else None,
            ev[0].ConceptCodeSequence[0].CodeValue if ev else None,
        )
    return out


def _texts(seq):
    """Every TextValue under a content sequence."""
    for it in seq:
        if "TextValue" in it:
            yield it.TextValue
        yield from _texts(getattr(it, "ContentSequence", []))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random small CNN (input 64) with thresholds for three of its four labels, set
    around its probabilities on the test image so both decisions occur."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=64))
    ).eval()
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(path, model, thresholds={"Cardiomegaly": 0.0, "Effusion": 1.0, "Mass": 0.5})
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    dx = root / "chest.dcm"
    source_dx(size=80).save_as(dx, enforce_file_format=True)
    png = root / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8)).save(png)
    return {"dx": dx, "png": png}


def test_library_writes_sr_and_sc_with_the_tables_numbers(model_file, inputs, tmp_path):
    predictor = Predictor(model_file)
    result = predictor.predict_images([inputs["dx"], inputs["png"]])
    assert len(result.predicted) == 2
    notes: list[str] = []
    written = write_dicom_results(predictor, result, tmp_path / "out", top_k=2, skipped=notes)
    assert [p.name for p in written] == ["chest_sr.dcm", "chest_sc.dcm"]
    assert len(notes) == 1 and "photo.png" in notes[0] and "not a DICOM" in notes[0]
    numbers = _sr_numbers(written[0])
    (item,) = [it for it in result.predicted if it.path.endswith("chest.dcm")]
    for i, label in enumerate(LABELS):
        p, t, ev = numbers[label]
        assert p == float(item.values()[i])
        assert t == result.thresholds.get(label)
        if t is None:
            assert ev is None
        else:
            assert ev == (codes.PRESENT if p >= t else codes.ABSENT).value
    sr = pydicom.dcmread(written[0])
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    text = " ".join(str(v) for v in _texts(sr.ContentSequence))
    assert f"model-sha256={sha}" in text and __version__ in text and "cxr-small-cnn" in text
    sc = pydicom.dcmread(written[1])
    pixels = sc.pixel_array
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    # two overlay tiles of the 80 x 80 source side by side, then the text panel below
    assert pixels.shape[0] > 80 and pixels.shape[1] >= 160
    tiles = pixels[:80, :160].astype(int)
    assert (np.abs(tiles[..., 0] - tiles[..., 2]) > 10).any(), "no heatmap colour"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source_dx().SOPInstanceUID


def test_overlay_tiles_without_heatmaps_is_the_gray_image():
    image = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    rgb = overlay_tiles(image, [], [])
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    big = overlay_tiles(np.zeros((3000, 1500), np.float32), [np.ones((8, 8))], ["x"])
    assert big.shape == (1024, 512, 3)


def test_cli_dicom_out_matches_predict_json(model_file, inputs, tmp_path, capsys):
    out = tmp_path / "dcm"
    code = cxr_main(
        [
            "predict",
            str(model_file),
            str(inputs["dx"]),
            str(inputs["png"]),
            "--format",
            "json",
            "--dicom-out",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "photo.png" in captured.err and "not a DICOM" in captured.err
    data = json.loads(captured.out)
    (image,) = [im for im in data["images"] if im["path"].endswith("chest.dcm")]
    numbers = _sr_numbers(out / "chest_sr.dcm")
    assert set(numbers) == set(data["labels"])
    for label, p_json in image["probabilities"].items():
        p, t, ev = numbers[label]
        assert p == p_json
        assert t == data["thresholds"].get(label)
        present = label in image["above_threshold"]
        if t is not None:
            assert ev == (codes.PRESENT if present else codes.ABSENT).value
    assert sorted(p.name for p in out.iterdir()) == ["chest_sc.dcm", "chest_sr.dcm"]
    for path in out.iterdir():
        lines = dciodvfy(path)
        assert not [ln for ln in lines if ln.startswith("Error")], lines


def test_cli_refuses_raw_with_dicom_out(model_file, inputs, tmp_path, capsys):
    code = cxr_main(
        ["predict", str(model_file), str(inputs["dx"]), "--raw", "--dicom-out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--raw" in err and len(err.strip().splitlines()) == 1


def test_without_heatmaps_the_sc_shows_the_image(model_file, inputs, tmp_path, monkeypatch):
    import cxr.dicomout.from_prediction as fp

    monkeypatch.setattr(fp, "explainer_for", lambda predictor: None)
    predictor = Predictor(model_file)
    result = predictor.predict_images([inputs["dx"]])
    notes: list[str] = []
    written = write_dicom_results(predictor, result, tmp_path, skipped=notes)
    assert len(written) == 2 and "makes no heatmaps" in notes[0]
    pixels = pydicom.dcmread(written[1]).pixel_array[:80, :80].astype(int)
    assert (pixels[..., 0] == pixels[..., 2]).all()  # gray: no overlay
    with pytest.raises(fp.DicomOutError, match="top_k"):
        write_dicom_results(predictor, result, tmp_path, top_k=0)
