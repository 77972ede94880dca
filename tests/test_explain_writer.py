"""The explanation writer (cxr.explain.writer): the files `cxr predict --explain` writes, the
probabilities on the predictor's scale, and the service's heatmaps made by the same code."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.calibration import fit_calibration
from cxr.cli import main as cxr_main
from cxr.explain import (
    CamUnavailable,
    Explanation,
    explain,
    explainer_for,
    heatmap_rgba,
    write_explanations,
)
from cxr.explain.writer import explanation_file, ranked_labels
from cxr.inference import Predictor
from cxr.modelfile import save_model
from cxr.models import ModelSpec, Preprocessing, build_model

LABELS = ("Cardiomegaly", "Effusion", "Mass")


def image(size: int = 80, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.4 + 0.3 * np.sin(7 * xx + seed) * np.cos(5 * yy) + 0.1 * rng.random((size, size))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=64))
    ).eval()
    with torch.no_grad():
        model.head.out.weight.mul_(40.0)
    rng = np.random.default_rng(0)
    probs = rng.random((300, 3))
    truth = (rng.random((300, 3)) < probs**2).astype(np.float32)
    calibration = fit_calibration(truth, probs, LABELS, "platt")
    folder = tmp_path_factory.mktemp("writer")
    return save_model(
        folder / "m.safetensors",
        model,
        thresholds={"Cardiomegaly": 0.4, "Mass": 0.6},
        calibration=calibration,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "other").mkdir()
    paths = [folder / "a b.png", folder / "x.png", folder / "other" / "x.png"]
    for seed, path in enumerate(paths, start=1):
        Image.fromarray(image(seed=seed)).save(path)
    return paths


def test_file_names_are_safe():
    assert explanation_file("out", "a b", "Pleural Effusion").name == "a_b_Pleural_Effusion.png"
    assert explanation_file("out", "///", "Mass").name == "image_Mass.png"


def test_the_writer_writes_the_files_cxr_predict_writes(model_file, images, tmp_path, capsys):
    predictor = Predictor(model_file)
    result = predictor.predict_images(images, progress=False)
    written = write_explanations(predictor, result, tmp_path / "lib", top_k=2)
    names = [p.name for p in written]
    heatmaps = explainer_for(predictor)
    assert heatmaps is not None
    # the two most probable labels of each image as the (calibrated) table ranks them
    assert names == [
        f"{stem}_{label}.png"
        for stem, item in zip(("a_b", "x", "x-2"), result.predicted, strict=True)  # x.png twice
        for label in ranked_labels(result, item, 2)
    ]
    assert all(p.parent == tmp_path / "lib" and p.is_file() for p in written)
    argv = ["predict", str(model_file), *map(str, images), "--no-progress"]
    assert cxr_main([*argv, "--explain", str(tmp_path / "cli"), "--top-k", "2"]) == 0
    assert "wrote 6 explanation PNG(s) (gradcam)" in capsys.readouterr().err
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(names)
    for name in names:  # the same figure, pixel for pixel
        with Image.open(tmp_path / "lib" / name) as a, Image.open(tmp_path / "cli" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    named = write_explanations(predictor, result, tmp_path / "named", labels=["Mass"])
    assert [p.name for p in named] == ["a_b_Mass.png", "x_Mass.png", "x-2_Mass.png"]


def test_probabilities_are_on_the_predictor_scale(model_file):
    pixels = image(64, seed=3)
    calibrated, raw = Predictor(model_file), Predictor(model_file, calibrated=False)
    assert calibrated.calibration is not None
    by_torch = explain(calibrated.model, pixels, top_k=3)
    scaled = explainer_for(calibrated)(pixels, top_k=3)
    plain = explainer_for(raw)(pixels, top_k=3)
    assert [e.label for e in scaled] == [e.label for e in by_torch] == [e.label for e in plain]
    for t, s, p in zip(by_torch, scaled, plain, strict=True):
        assert np.array_equal(t.heatmap, s.heatmap) and np.array_equal(t.heatmap, p.heatmap)
        assert p.probability == pytest.approx(t.probability, abs=1e-6)
        assert s.probability == pytest.approx(calibrated.output_scale(t.label, t.probability))
    probs = calibrated.predict_arrays(pixels[None])[0]
    for s in scaled:  # the scale of the prediction table and its thresholds
        assert s.probability == pytest.approx(float(probs[LABELS.index(s.label)]), abs=1e-4)


class _NoHeatmaps:
    name = "no-heatmaps"


class _Holder:
    def __init__(self, backend) -> None:
        self.backend = backend


def test_a_backend_without_heatmaps(model_file, images, tmp_path):
    assert explainer_for(_Holder(_NoHeatmaps())) is None  # type: ignore[arg-type]
    predictor = Predictor(model_file)
    result = predictor.predict_images(images[:1], progress=False)
    predictor.backend = _NoHeatmaps()  # type: ignore[assignment]
    with pytest.raises(CamUnavailable, match="no-heatmaps backend makes no heatmaps"):
        write_explanations(predictor, result, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_the_service_heatmap_is_the_library_heatmap(model_file, images):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    with warnings.catch_warnings():  # Starlette's note that it prefers httpx2 to httpx
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    from cxr.serving import create_app

    predictor = Predictor(model_file)
    data = images[0].read_bytes()
    with TestClient(create_app(predictor)) as client:
        r = client.post(
            "/v1/explain", files={"file": ("a.png", data, "image/png")}, data={"top_k": "2"}
        )
    assert r.status_code == 200
    body = r.json()
    found: list[Explanation] = explainer_for(predictor)(predictor.preprocess(images[0]), top_k=2)
    assert [e["label"] for e in body["explanations"]] == [e.label for e in found]
    for sent, ref in zip(body["explanations"], found, strict=True):
        png = base64.b64decode(sent["heatmap_png"])
        with Image.open(io.BytesIO(png)) as im:
            assert np.array_equal(np.asarray(im), heatmap_rgba(ref.heatmap))
        assert sent["probability"] == pytest.approx(ref.probability, abs=1e-6)
        threshold = predictor.thresholds.get(ref.label)
        assert sent["threshold"] == threshold
        if threshold is not None:
            assert sent["above_threshold"] == (ref.probability >= threshold)


def test_the_explained_labels_are_the_tables_top_labels_even_when_calibration_reorders(
    tmp_path,
):
    """A calibration that turns the model's order around: the explanations follow the table
    (calibrated) ranking, not the raw one."""
    from cxr.calibration import Calibration, LabelMap

    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=64))
    ).eval()
    with torch.no_grad():  # raw order: Cardiomegaly > Effusion > Mass on every image
        model.head.out.weight.zero_()
        model.head.out.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    # calibrated order: Mass > Effusion > Cardiomegaly (shifts of the logit per label)
    shifts = zip(LABELS, (-6.0, 0.0, 6.0), strict=True)
    maps = {n: LabelMap("platt", {"a": 1.0, "b": b}) for n, b in shifts}
    path = save_model(tmp_path / "m.safetensors", model, calibration=Calibration("platt", maps))
    Image.fromarray(image()).save(tmp_path / "x.png")
    predictor = Predictor(path)
    result = predictor.predict_images([tmp_path / "x.png"])
    item = result.predicted[0]
    assert ranked_labels(result, item, 2) == ["Mass", "Effusion"]
    raw = Predictor(path, calibrated=False).predict_images([tmp_path / "x.png"]).predicted[0]
    assert int(np.argmax(raw.values())) == 0  # raw: Cardiomegaly first
    written = write_explanations(predictor, result, tmp_path / "out", top_k=2)
    assert [p.name for p in written] == ["x_Mass.png", "x_Effusion.png"]
    with pytest.raises(ValueError, match="from 1 to 3"):
        ranked_labels(result, item, 4)
