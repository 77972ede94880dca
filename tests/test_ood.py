"""The not-a-chest-X-ray gate (cxr.ood): its math, its stored form, model files with and
without it, and how predictions report it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from cxr.inference import ImagePrediction, PredictionResult, Predictor
from cxr.modelfile import ModelFileError, load_model, read_model_info, save_model, with_ood
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.ood import OOD_METHOD, OodGate, fit_ood_gate

LABELS = ("Effusion", "Mass")


def headlines(text: str) -> int:
    """How many image headlines (cxr.thresholds.headline) a text report holds."""
    starts = r"^  (At or above threshold: |No finding at or above|No thresholds)"
    return len(re.findall(starts, text, re.M))


def features(n: int, seed: int = 0, c: int = 48, rank: int = 8) -> np.ndarray:
    """(n, c) features on a ``rank``-dimensional subspace plus a little noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(rank, c))
    return 5 + rng.normal(size=(n, rank)) @ basis + 0.05 * rng.normal(size=(n, c))


@pytest.fixture(scope="module")
def gate() -> OodGate:
    return fit_ood_gate(features(400), features(200, seed=1), components=16)


# the math ---------------------------------------------------------------------------------
def test_fit_keeps_k_axes_and_sets_the_percentile_threshold(gate):
    assert gate.components.shape == (16, 48) and gate.channels == 48
    np.testing.assert_allclose(gate.components @ gate.components.T, np.eye(16), atol=1e-8)
    assert (np.diff(gate.variances) <= 1e-9).all()  # largest first
    val = gate.score(features(200, seed=1))
    assert gate.threshold == pytest.approx(np.percentile(val, 99))
    assert gate.flags(val).mean() == pytest.approx(0.01, abs=0.006)
    assert (gate.n_train, gate.n_val, gate.percentile) == (400, 200, 99.0)


def test_score_is_the_mahalanobis_distance_of_the_shrunk_covariance(gate):
    x = features(5, seed=7) + np.random.default_rng(3).normal(size=(5, 48))
    cov = gate.components.T @ np.diag(gate.variances) @ gate.components
    cov += gate.residual_variance * (np.eye(48) - gate.components.T @ gate.components)
    d = x - gate.mean
    expected = np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) / 48)
    np.testing.assert_allclose(gate.score(x), expected, rtol=1e-6)
    np.testing.assert_allclose(gate.score(x[0]), expected[:1], rtol=1e-6)  # one vector


def test_held_out_pass_and_foreign_features_are_flagged(gate):
    held_out = gate.score(features(500, seed=2))
    assert gate.flags(held_out).mean() <= 0.05
    rng = np.random.default_rng(5)
    foreign = np.concatenate(
        [
            rng.normal(5, 3, size=(50, 48)),  # off the subspace
            features(50, seed=4) * 4,  # far along it
            np.zeros((5, 48)),
        ]
    )
    assert gate.flags(gate.score(foreign)).all()
    bad = np.array([[np.nan] * 48])
    assert gate.score(bad)[0] == np.inf and gate.flags(gate.score(bad))[0]
    assert gate.flags(np.array([np.nan]))[0]  # NaN never passes


def test_score_refuses_features_of_another_model(gate):
    with pytest.raises(ValueError, match=r"\(N, 48\).*another model"):
        gate.score(np.zeros((2, 32)))


def test_fit_refuses_bad_inputs():
    good = features(20)
    with pytest.raises(ValueError, match="training features"):
        fit_ood_gate(good[:1], good)
    with pytest.raises(ValueError, match="validation features"):
        fit_ood_gate(good, good[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        fit_ood_gate(np.where(good > 6, np.nan, good), good)
    with pytest.raises(ValueError, match="percentile"):
        fit_ood_gate(good, good, percentile=0)


def test_few_images_or_features_still_fit():
    few = fit_ood_gate(features(5), features(5, seed=1))  # k <= N - 1
    assert few.components.shape == (4, 48)
    small = fit_ood_gate(features(50, c=3, rank=3), features(10, seed=1, c=3, rank=3))
    assert small.components.shape == (3, 3) and np.isfinite(small.score(np.zeros((1, 3)))).all()
    flat = fit_ood_gate(np.ones((10, 4)), np.ones((3, 4)))  # no variance at all
    assert np.isfinite(flat.variances).all() and flat.threshold > 0


# the stored form --------------------------------------------------------------------------
def test_round_trip_is_compact_json(gate):
    data = gate.to_dict()
    assert data["method"] == OOD_METHOD and data["channels"] == 48
    back = OodGate.from_dict(json.loads(json.dumps(data)))
    x = features(20, seed=9)
    np.testing.assert_allclose(back.score(x), gate.score(x), rtol=1e-4)
    assert back.threshold == gate.threshold and back.n_train == 400
    # a DenseNet-121-sized gate (C = 1024, k = 128) stays under a megabyte
    big = fit_ood_gate(
        np.random.default_rng(0).normal(size=(200, 1024)),
        np.random.default_rng(1).normal(size=(20, 1024)),
    )
    assert big.components.shape == (128, 1024) and len(json.dumps(big.to_dict())) < 800_000


def _edited(gate: OodGate, **changes) -> dict:
    data = gate.to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "knn"}, "method"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"residual_variance": 0}, "residual_variance"),
        ({"percentile": 150.0}, "percentile"),
        ({"n_train": -3}, "n_train"),
        ({"channels": 7}, "channels"),
        ({"mean": {"shape": [48], "float32_base64": "%%%"}}, "base64"),
        ({"mean": {"shape": [47], "float32_base64": ""}}, "bytes"),
        ({"mean": [1.0, 2.0]}, "mean must be an object"),
        ({"variances": {"shape": [0], "float32_base64": ""}}, "positive integers"),
    ],
)
def test_from_dict_refuses_bad_stored_values(gate, changes, message):
    with pytest.raises(ValueError, match=message):
        OodGate.from_dict(_edited(gate, **changes))


def test_from_dict_refuses_non_finite_and_inconsistent_arrays(gate):
    data = gate.to_dict()
    nan = np.full(48, np.nan, "<f4")
    import base64

    data["mean"] = {"shape": [48], "float32_base64": base64.b64encode(nan.tobytes()).decode()}
    with pytest.raises(ValueError, match="NaN"):
        OodGate.from_dict(data)
    with pytest.raises(ValueError, match="variances"):
        OodGate(gate.mean, gate.components, gate.variances[:3], 1.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        OodGate(gate.mean, gate.components, -gate.variances, 1.0, 1.0)
    with pytest.raises(ValueError, match="components"):
        OodGate(gate.mean, gate.components[:, :5], gate.variances, 1.0, 1.0)
    with pytest.raises(ValueError, match="not an object|JSON object"):
        OodGate.from_dict([1, 2])


# model files ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(labels=LABELS, backbone="cxr-small-cnn", preprocessing=Preprocessing(size=32))
    ).eval()
    path = tmp_path_factory.mktemp("ood_model") / "m.safetensors"
    return save_model(path, model, {"Effusion": 0.4}, {"epochs": 1})


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_model_without_gate_predicts_with_the_check_unavailable(plain_model, tmp_path):
    assert read_model_info(plain_model).ood is None and load_model(plain_model).ood is None
    predictor = Predictor(plain_model)
    assert predictor.ood is None and predictor.backend.ood is None
    probs, scores = predictor.predict_arrays_ood(_pixels(3))
    assert probs.shape == (3, 2) and scores is None
    from PIL import Image

    Image.fromarray(_pixels(1)[0]).save(tmp_path / "a.png")
    result = predictor.predict_images([tmp_path / "a.png"])
    item = result.items[0]
    assert item.ood_flag is None and item.ood_score is None and result.ood_threshold is None
    text = result.to_text()
    assert text.count("not-a-chest-X-ray check: unavailable") == 1 and headlines(text) == 1
    image = json.loads(result.to_json())["images"][0]
    assert image["out_of_distribution"] is None and image["ood_score"] is None
    assert result.to_csv().splitlines()[1].split(",")[-3:-1] == ["", ""]


def test_with_ood_writes_the_gate_and_keeps_everything_else(plain_model, tmp_path):
    predictor = Predictor(plain_model)
    pooled = [predictor.backend.features(_pixels(40, seed=s))[1] for s in (1, 2)]
    gate = fit_ood_gate(pooled[0], pooled[1])
    out = with_ood(plain_model, gate, tmp_path / "gated.safetensors")
    loaded = load_model(out)  # verified: hash and weights
    assert loaded.ood is not None and loaded.thresholds == {"Effusion": 0.4}
    assert loaded.training == {"epochs": 1}
    np.testing.assert_allclose(loaded.ood.mean, gate.mean, rtol=1e-6)
    gated = Predictor(out)
    probs, scores = gated.predict_arrays_ood(_pixels(4, seed=3))
    np.testing.assert_allclose(probs, predictor.predict_arrays(_pixels(4, seed=3)), atol=1e-6)
    assert scores is not None and scores.shape == (4,)
    # TTA: probabilities averaged over the views, scores of the original view
    tta = Predictor(out, tta=True)
    tta_probs, tta_scores = tta.predict_arrays_ood(_pixels(4, seed=3))
    np.testing.assert_allclose(tta_probs, tta.predict_arrays(_pixels(4, seed=3)), atol=1e-6)
    np.testing.assert_allclose(tta_scores, scores, rtol=1e-5)
    # removing it again
    assert load_model(with_ood(out, None, tmp_path / "plain.safetensors")).ood is None


def test_a_damaged_stored_gate_is_refused_by_name(plain_model, tmp_path):
    from cxr import modelfile

    info, tensors = modelfile._read_verified(plain_model)
    bad = {"method": OOD_METHOD, "mean": "nonsense"}
    path = modelfile._rewrite(plain_model, tmp_path / "bad.safetensors", info, tensors, ood=bad)
    with pytest.raises(ModelFileError, match=r"not-a-chest-X-ray gate \(ood\) is invalid"):
        load_model(path)


# rendering --------------------------------------------------------------------------------
def _result() -> PredictionResult:
    items = [
        ImagePrediction(
            "xray.png", np.array([0.2, 0.7], np.float32), ood_score=0.9, ood_flag=False
        ),
        ImagePrediction("cat.png", np.array([0.6, 0.1], np.float32), ood_score=7.5, ood_flag=True),
    ]
    return PredictionResult(LABELS, {"Effusion": 0.5}, items, ood_threshold=1.25)


def test_text_shows_the_warning_first_and_hides_the_table_unless_forced():
    text = _result().to_text()
    block = text.split("cat.png\n", 1)[1]
    first = block.splitlines()[0]
    assert first.strip() == (
        "NOT A CHEST X-RAY? (out-of-distribution score 7.500 > threshold 1.250)"
    )
    assert headlines(block.split("\n\n")[0]) == 0 and "--force" in block
    assert headlines(text) == 1 and "unavailable" not in text
    forced = _result().render("text", force=True)
    assert headlines(forced) == 2 and forced.count("NOT A CHEST X-RAY?") == 1


def test_json_and_csv_keep_probabilities_and_add_score_and_flag():
    data = json.loads(_result().to_json())
    cat = data["images"][1]
    assert cat["out_of_distribution"] is True and cat["ood_score"] == pytest.approx(7.5)
    assert cat["probabilities"]["Effusion"] == pytest.approx(0.6)
    assert data["images"][0]["out_of_distribution"] is False and data["ood_threshold"] == 1.25
    rows = _result().to_csv().splitlines()
    assert rows[0].endswith(",ood_score,out_of_distribution,notice")
    assert rows[2].split(",")[-3:-1] == ["7.5", "1"] and rows[1].split(",")[-3:-1] == ["0.9", "0"]


def test_onnx_export_carries_the_gate(plain_model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cxr.export import export_onnx
    from cxr.modelformat.onnx_metadata import read_onnx_info

    torch_predictor = Predictor(plain_model)
    pooled = [torch_predictor.backend.features(_pixels(40, seed=s))[1] for s in (1, 2)]
    gated = with_ood(plain_model, fit_ood_gate(*pooled), tmp_path / "gated.safetensors")
    export_onnx(gated, tmp_path / "m.onnx")
    info = read_onnx_info(tmp_path / "m.onnx")
    assert info.ood is not None and info.header["ood"]["method"] == OOD_METHOD
    onnx = Predictor(tmp_path / "m.onnx")
    assert onnx.backend.name == "onnx" and onnx.ood is not None
    _, onnx_scores = onnx.predict_arrays_ood(_pixels(6, seed=4))
    _, torch_scores = Predictor(gated).predict_arrays_ood(_pixels(6, seed=4))
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-3)
