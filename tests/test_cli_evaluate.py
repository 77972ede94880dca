"""``cxr evaluate`` / ``cxr compare``, driven through a parser built with add_parsers."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr import RESEARCH_NOTICE
from cxr.cli._common import CLIError
from cxr.cli.evaluate import add_parsers
from cxr.evaluation.pipeline import EvaluationError, default_source
from cxr.evaluation.predictions import read_predictions, write_predictions
from cxr.table import LabelTable

EvaluateCLIError = (CLIError, EvaluationError)  # what cxr evaluate reports in one line

NAMES = ("Atelectasis", "Effusion", "Mass")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cxr")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _dataset(folder, n, seed, offset=0):
    """A plain-CSV dataset (cxr table layout) and predictions for it; returns paths and arrays."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < [0.2, 0.3, 0.4]).astype(np.float32)
    probs = np.clip(0.35 * labels + 0.65 * rng.random((n, 3)), 0, 1)
    names = [f"img{offset + i:04d}.png" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    table = LabelTable.from_columns(
        [str(folder / "images" / m) for m in names],
        [str((offset + i) // 2) for i in range(n)],
        labels,
        NAMES,
    )
    labels_csv = table.save_csv(folder / "labels.csv")
    preds_csv = write_predictions(folder / "preds.csv", names, probs, NAMES)
    return labels_csv, preds_csv, labels, probs


def test_peer_predictions_reproduce_the_readme(shared_datasets, tmp_path, capsys):
    folder = shared_datasets / "nih14-sample"
    code = run(
        [
            "evaluate",
            "--predictions",
            str(folder / "peer_predictions.csv"),
            "--out",
            str(tmp_path),
            "--bootstrap",
            "200",
        ]
    )
    out = capsys.readouterr().out
    assert (
        code == 0 and RESEARCH_NOTICE in out and str(folder) in out
    )  # SOURCE defaulted to the folder
    macro = float(re.search(r"macro AUC (\d\.\d{4}) over 14 labels", out).group(1))
    assert round(macro, 3) == 0.773
    data = json.loads((tmp_path / "report.json").read_text())
    assert round(data["summary"]["macro_auc"], 3) == 0.773
    import pandas as pd

    from cxr.datasets import load_dataset

    table = load_dataset(folder)
    peer = pd.read_csv(folder / "peer_predictions.csv").set_index("Image Index")
    peer = peer.loc[[p.rsplit("/", 1)[-1] for p in table.paths]]
    for j, row in enumerate(data["labels"]):
        expected = roc_auc_score(table.labels[:, j], peer[f"prob_{row['label']}"])
        assert row["auc"] == pytest.approx(expected, abs=1e-9)
        assert re.search(
            rf"^{row['label']}\s+423\s+{row['n_positive']}\s+{expected:.4f}", out, re.MULTILINE
        )
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 18 and "0.773" in html


def test_evaluate_with_validation_thresholds(tmp_path, capsys):
    val_csv, val_preds, val_labels, val_probs = _dataset(tmp_path / "val", 200, seed=1, offset=0)
    test_csv, test_preds, test_labels, _test_probs = _dataset(
        tmp_path / "test", 300, seed=2, offset=1000
    )
    out_dir = tmp_path / "eval"
    code = run(
        [
            "evaluate",
            str(test_csv),
            "--predictions",
            str(test_preds),
            "--thresholds-from",
            str(val_preds),
            "--val-source",
            str(val_csv),
            "--out",
            str(out_dir),
            "--bootstrap",
            "50",
        ]
    )
    assert code == 0
    from cxr.evaluation.thresholds import Thresholds, choose_thresholds

    saved = Thresholds.load(out_dir / "thresholds.json")
    assert dict(saved) == pytest.approx(
        dict(choose_thresholds(val_labels, val_probs, NAMES)), abs=1e-8
    )
    report = json.loads((out_dir / "report.json").read_text())
    written = read_predictions(test_preds).probs  # the probabilities as the CSV holds them
    for j, row in enumerate(report["labels"]):
        assert row["threshold"] == saved[row["label"]]
        called = written[:, j] >= row["threshold"]
        assert row["tp"] == int((called & (test_labels[:, j] == 1)).sum())
        assert row["fp"] == int((called & (test_labels[:, j] == 0)).sum())
    assert "sens" in capsys.readouterr().out
    # a JSON file of thresholds works too, and is applied as given
    (tmp_path / "thr.json").write_text(json.dumps({"Mass": 0.5}))
    run(
        [
            "evaluate",
            str(test_csv),
            "--predictions",
            str(test_preds),
            "--thresholds-from",
            str(tmp_path / "thr.json"),
            "--out",
            str(out_dir),
            "--bootstrap",
            "0",
        ]
    )
    rows = {r["label"]: r for r in json.loads((out_dir / "report.json").read_text())["labels"]}
    assert rows["Mass"]["threshold"] == 0.5 and rows["Effusion"]["threshold"] is None


def test_thresholds_never_from_the_test_set(tmp_path):
    test_csv, test_preds, _, _ = _dataset(tmp_path / "test", 50, seed=3)
    with pytest.raises(EvaluateCLIError, match="is the test predictions file"):
        run(
            [
                "evaluate",
                str(test_csv),
                "--predictions",
                str(test_preds),
                "--thresholds-from",
                str(test_preds),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    # validation images overlapping the test images are refused
    _other_csv, other_preds, _, _ = _dataset(tmp_path / "val", 50, seed=3)
    with pytest.raises(EvaluateCLIError, match="50 image\\(s\\) are in both"):
        run(
            [
                "evaluate",
                str(test_csv),
                "--predictions",
                str(test_preds),
                "--thresholds-from",
                str(other_preds),
                "--val-source",
                str(test_csv),
                "--out",
                str(tmp_path / "o"),
            ]
        )


def test_mismatch_refused_unless_allowed(tmp_path, capsys):
    labels_csv, _, labels, probs = _dataset(tmp_path / "d", 40, seed=4)
    short = write_predictions(
        tmp_path / "short.csv", [f"img{i:04d}.png" for i in range(35)], probs[:35], NAMES
    )
    with pytest.raises(
        ValueError, match="5 of 40 labelled image\\(s\\) have no prediction.*--allow-missing"
    ):
        run(
            ["evaluate", str(labels_csv), "--predictions", str(short), "--out", str(tmp_path / "o")]
        )
    assert (
        run(
            [
                "evaluate",
                str(labels_csv),
                "--predictions",
                str(short),
                "--out",
                str(tmp_path / "o"),
                "--allow-missing",
                "--bootstrap",
                "0",
                "--labels",
                "Mass",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "note: 5 of 40 labelled image(s) have no prediction" in out
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["label"] for r in data["labels"]] == ["Mass"] and data["summary"]["n_images"] == 35
    assert data["labels"][0]["auc"] == pytest.approx(roc_auc_score(labels[:35, 2], probs[:35, 2]))


def test_default_source_needs_a_dataset_folder(tmp_path):
    preds = write_predictions(tmp_path / "alone" / "p.csv", ["a.png"], np.array([[0.5]]), ["Mass"])
    with pytest.raises(EvaluateCLIError, match="pass the dataset with the true labels as SOURCE"):
        default_source(tmp_path / "alone" / "p.csv")
    with pytest.raises(EvaluateCLIError, match="SOURCE"):
        run(["evaluate", "--predictions", preds, "--out", str(tmp_path / "o")])


def test_compare_command(tmp_path, capsys):
    labels_csv, preds_a, labels, probs = _dataset(tmp_path / "d", 120, seed=5)
    probs_b = np.clip(probs + np.random.default_rng(6).normal(0, 0.3, probs.shape), 0, 1)
    preds_b = write_predictions(
        tmp_path / "b.csv", [f"img{i:04d}.png" for i in range(120)], probs_b, NAMES
    )
    assert (
        run(
            [
                "compare",
                str(preds_a),
                preds_b,
                str(labels_csv),
                "--out",
                str(tmp_path / "c"),
                "--bootstrap",
                "50",
                "--names",
                "new,old",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert RESEARCH_NOTICE in out and "A = new, B = old" in out
    data = json.loads((tmp_path / "c" / "compare.json").read_text())
    for j, row in enumerate(data["labels"]):
        assert row["auc_a"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]))
        assert row["auc_b"] == pytest.approx(roc_auc_score(labels[:, j], probs_b[:, j]))
    assert (tmp_path / "c" / "compare.html").is_file()


def test_prepared_cache_as_source(tmp_path, capsys):
    from PIL import Image

    from cxr.cache import prepare

    labels_csv, preds_csv, labels, probs = _dataset(tmp_path / "d", 12, seed=7)
    (tmp_path / "d" / "images").mkdir()
    for i in range(12):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(
            tmp_path / "d" / "images" / f"img{i:04d}.png"
        )
    table = LabelTable.read_csv(labels_csv)
    prepare(table, tmp_path / "cache", 16, workers=1, progress=False)
    assert (
        run(
            [
                "evaluate",
                str(tmp_path / "cache"),
                "--predictions",
                str(preds_csv),
                "--out",
                str(tmp_path / "o"),
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["summary"]["n_images"] == 12 and data["sources"]["labels"] == str(
        tmp_path / "cache"
    )
    for j, row in enumerate(data["labels"]):
        if 0 < labels[:, j].sum() < 12:
            assert row["auc"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]), abs=1e-8)


def test_model_file_on_a_cache_and_on_its_images(
    trained_phantom_model, phantom_caches_64, tmp_path, capsys
):
    """``--model``: run a model file on a prepared cache, or on a dataset's images decoded as
    in training; both give the same probabilities, and the model's stored thresholds (chosen on
    validation) give the operating points."""
    from cxr.evaluation.predictions import read_predictions
    from cxr.modelfile import load_model

    model = trained_phantom_model.best_model
    cache = phantom_caches_64["test"]
    assert (
        run(
            [
                "evaluate",
                str(cache),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "c"),
                "--bootstrap",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        RESEARCH_NOTICE in out and "operating thresholds: youden on the validation data of" in out
    )
    data = json.loads((tmp_path / "c" / "report.json").read_text())
    loaded = load_model(model)
    table = LabelTable.read_csv(cache / "labels.csv")
    preds = read_predictions(tmp_path / "c" / "predictions.csv")
    assert len(preds) == len(table) == data["summary"]["n_images"]
    for j, row in enumerate(data["labels"]):
        assert row["auc"] == pytest.approx(
            roc_auc_score(table.labels[:, j], preds.probs[:, j]), abs=1e-9
        )
        # the stored threshold, on the calibrated scale the report's probabilities are on
        assert loaded.calibration is not None
        stored = loaded.thresholds[row["label"]]
        assert row["threshold"] == pytest.approx(loaded.calibration.map(row["label"], stored))
    assert data["summary"]["macro_auc"] >= 0.9
    # the same images through the dataset path (decoded again): the same probabilities
    assert (
        run(
            [
                "evaluate",
                str(cache / "labels.csv"),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "d"),
                "--bootstrap",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    again = read_predictions(tmp_path / "d" / "predictions.csv")
    np.testing.assert_allclose(again.probs, preds.probs, atol=1e-6)
    # an unreadable image is named, and refused unless --allow-missing
    broken = LabelTable.from_columns(
        [table.paths[0], str(tmp_path / "gone.png")],
        ["a", "b"],
        table.labels[:2],
        table.pathologies,
    )
    csv = broken.save_csv(tmp_path / "broken.csv")
    with pytest.raises(EvaluateCLIError, match=r"gone\.png.*--allow-missing"):
        run(
            [
                "evaluate",
                str(csv),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "e"),
                "--no-progress",
            ]
        )
    with pytest.raises(EvaluateCLIError, match="not both"):
        run(["evaluate", str(cache), "--model", str(model), "--predictions", str(csv)])
    with pytest.raises(EvaluateCLIError, match="needs SOURCE"):
        run(["evaluate", "--model", str(model)])
