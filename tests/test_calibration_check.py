"""Calibrated probabilities end to end: training stores a calibration, cxr calibrate fits
one, predict shows calibrated probabilities with the same decisions, evaluate reports ECE
and Brier before and after, and never on the data the calibration saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr.cli import main
from cxr.evaluation import evaluate_model
from cxr.inference import Predictor
from cxr.modelfile import load_model, read_model_info, save_model, with_calibration


@pytest.fixture(scope="module")
def overconfident(trained_phantom_model, tmp_path_factory):
    """The phantom model with its logits stretched x1.5 and pushed up by 2 (as a large
    positive weight does), without a calibration."""
    loaded = load_model(trained_phantom_model.best_model)
    with torch.no_grad():
        loaded.model.head.out.weight.mul_(1.5)
        loaded.model.head.out.bias.mul_(1.5).add_(2.0)
    path = tmp_path_factory.mktemp("overconfident") / "m.safetensors"
    return save_model(path, loaded.model, training={"note": "stretched for the test"})


def test_training_stores_a_calibration_fitted_on_validation(
    trained_phantom_model, phantom_caches_64
):
    info = read_model_info(trained_phantom_model.best_model)
    assert info.calibration is not None and info.calibration.method == "platt"
    assert info.calibration.source == str(phantom_caches_64["val"].resolve())
    assert set(info.calibration.maps) == set(info.spec.labels)
    assert info.thresholds  # thresholds still there, on the raw scale


def test_training_stores_the_prior_shift_and_calibrate_keeps_it(
    trained_phantom_model, phantom_caches_64, tmp_path, capsys
):
    from cxr.cache import PreparedCache
    from cxr.losses import prior_shift

    best, c = trained_phantom_model.best_model, phantom_caches_64
    info = read_model_info(best)
    assert info.training["config"]["loss"] == "weighted-bce" and info.calibration is not None
    table = PreparedCache(c["train"]).table
    have = table.pathologies
    train_labels = table.labels[:, [have.index(n) for n in info.spec.labels]]
    expected = prior_shift("weighted-bce", train_labels)
    stored = info.calibration.shift
    assert stored and set(stored) <= set(info.spec.labels)
    for name, s in zip(info.spec.labels, expected, strict=True):
        assert stored.get(name, 0.0) == pytest.approx(s), name
    assert any("undone before the maps" in n for n in info.calibration.notes)

    out = tmp_path / "refit.safetensors"
    argv = ["calibrate", str(best), str(c["val"]), "--out", str(out), "--method", "isotonic"]
    assert main([*argv, "--no-progress"]) == 0
    assert "prior shift of the training loss was kept" in capsys.readouterr().out
    refit = read_model_info(out).calibration
    assert refit is not None and refit.method == "isotonic" and refit.shift == stored


def test_calibrate_lowers_ece_on_the_test_cache_and_keeps_auc(
    overconfident, phantom_caches_64, tmp_path, capsys
):
    c = phantom_caches_64
    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", str(overconfident), str(c["val"]), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "calibration (platt" in printed and "a fit, not a test" in printed
    assert read_model_info(overconfident).calibration is None  # --out leaves it as it was

    before = evaluate_model(overconfident, c["test"], n_bootstrap=0).report
    after = evaluate_model(out, c["test"], n_bootstrap=0).report
    table = after.calibration
    assert table is not None and table["source"] == str(c["val"].resolve())
    assert table["overall"]["ece"] < 0.75 * table["overall"]["ece_raw"], table["overall"]
    assert table["overall"]["brier"] < table["overall"]["brier_raw"]
    assert after.ece < before.ece and table["overall"]["ece_raw"] == pytest.approx(before.ece)
    for a, b in zip(before.labels, after.labels, strict=True):
        assert a.auc == pytest.approx(b.auc, abs=1e-9), a.name  # a monotone map
    text = after.to_text()
    assert "raw ->" in text and "Brier" in text


def test_calibrated_predictions_keep_the_threshold_decisions(
    overconfident, phantom_caches_64, tmp_path
):
    c = phantom_caches_64
    loaded = load_model(overconfident)
    thresholds = {n: 0.5 for n in loaded.labels}
    from cxr.modelfile import with_thresholds

    model = with_thresholds(overconfident, thresholds, tmp_path / "t.safetensors")
    from cxr.evaluation.calibration_check import calibrate_model

    calibrate_model(model, c["val"])
    calibrated, raw = Predictor(model), Predictor(model, calibrated=False)
    p_cal, p_raw = calibrated.predict_cache(c["test"]), raw.predict_cache(c["test"])
    assert not np.allclose(p_cal, p_raw)
    for j, name in enumerate(calibrated.labels):
        same = (p_raw[:, j] >= raw.thresholds[name]) == (p_cal[:, j] >= calibrated.thresholds[name])
        assert same.all(), name
    assert calibrated.thresholds != raw.thresholds == thresholds
    assert calibrated.describe()["calibration"] == "platt"


def test_evaluating_on_the_calibration_data_is_refused(
    trained_phantom_model, phantom_caches_64, capsys
):
    model, val = trained_phantom_model.best_model, phantom_caches_64["val"]
    code = main(["evaluate", "--model", str(model), str(val), "--bootstrap", "0", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "calibration of" in err and "was fitted on" in err and "--raw" in err
    assert main(["evaluate", "--model", str(model), str(val), "--raw", "--bootstrap", "0",
                 "--no-progress", "--out", str(val.parent / "eval-raw")]) == 0  # fmt: skip


def test_a_model_file_without_calibration_still_loads_and_predicts_raw(
    trained_phantom_model, tmp_path
):
    bare = with_calibration(trained_phantom_model.best_model, None, tmp_path / "bare.safetensors")
    assert read_model_info(bare).calibration is None
    predictor = Predictor(bare)
    assert predictor.calibration is None and predictor.thresholds == predictor.raw_thresholds
    result = predictor.predict_arrays(np.zeros((1, 64, 64), np.uint8))
    assert result.shape == (1, len(predictor.labels))


def test_the_report_files_carry_the_calibration(trained_phantom_model, phantom_caches_64, tmp_path):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(trained_phantom_model.best_model),
                 str(phantom_caches_64["test"]), "--bootstrap", "0", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["method"] == "platt"
    assert {"ece_raw", "ece", "brier_raw", "brier"} <= set(report["calibration"]["overall"])
    assert all("brier" in row for row in report["labels"])
    assert (out / "reliability_labels.png").is_file()
    assert "<h2>Calibration</h2>" in (out / "report.html").read_text()


def test_exported_onnx_files_carry_the_calibration(
    trained_phantom_model, phantom_caches_64, tmp_path
):
    from cxr.export import export_onnx, read_onnx_info

    out = tmp_path / "m.onnx"
    export_onnx(trained_phantom_model.best_model, out)
    info = read_onnx_info(out)
    assert info.calibration is not None and info.calibration.method == "platt"
    torch_p = Predictor(trained_phantom_model.best_model).predict_cache(phantom_caches_64["test"])
    onnx = Predictor(out)
    assert onnx.calibration is not None
    raw_onnx = Predictor(out, calibrated=False).predict_cache(phantom_caches_64["test"])
    raw_torch = Predictor(trained_phantom_model.best_model, calibrated=False)
    np.testing.assert_allclose(
        raw_onnx, raw_torch.predict_cache(phantom_caches_64["test"]), atol=1e-4
    )
    # the map can stretch the 1e-4 of the export parity near 0 and 1
    np.testing.assert_allclose(onnx.predict_cache(phantom_caches_64["test"]), torch_p, atol=1e-3)
    assert onnx.thresholds == pytest.approx(Predictor(trained_phantom_model.best_model).thresholds)
