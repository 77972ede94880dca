"""cxr.evaluation.scoring: every reported metric against scikit-learn or a hand computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxr import RESEARCH_NOTICE
from cxr.evaluation import compare, evaluate, evaluate_with_validation
from cxr.evaluation.significance import delong_test
from cxr.evaluation.thresholds import Thresholds, choose_thresholds

NAMES = ["A", "B", "C", "D"]


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.2]).astype(float)
    probs = np.clip(0.3 * labels + 0.7 * rng.random((n, 4)), 0, 1)
    patients = (np.arange(n) // 2).astype(str)
    return labels, probs, patients


def test_per_label_and_summary_metrics_equal_sklearn():
    labels, probs, patients = _data()
    r = evaluate(labels, probs, NAMES, patients, n_bootstrap=200, seed=1)
    for j, name in enumerate(NAMES):
        row = r.label(name)
        assert row.auc == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]), abs=1e-12)
        assert row.average_precision == pytest.approx(
            average_precision_score(labels[:, j], probs[:, j]), abs=1e-12
        )
        assert row.n_positive == labels[:, j].sum() and row.prevalence == pytest.approx(
            labels[:, j].mean()
        )
        assert row.auc_ci_low < row.auc < row.auc_ci_high and row.ci_resamples == 200
        assert row.operating is None
    assert r.macro_auc == pytest.approx(roc_auc_score(labels, probs, average="macro"), abs=1e-12)
    assert r.micro_auc == pytest.approx(roc_auc_score(labels, probs, average="micro"), abs=1e-12)
    assert r.macro_average_precision == pytest.approx(
        average_precision_score(labels, probs, average="macro")
    )
    assert r.n_images == 400 and r.n_patients == 200


def test_pooled_ece_by_hand():
    labels, probs, patients = _data(200, seed=2)
    r = evaluate(labels, probs, NAMES, patients, n_bootstrap=0)
    y, p = labels.ravel(), probs.ravel()
    ece = 0.0
    for k in range(10):
        inside = (p > k / 10) & (p <= (k + 1) / 10) if k else (p <= 0.1)
        if inside.any():
            ece += inside.sum() / len(p) * abs(y[inside].mean() - p[inside].mean())
    assert r.ece == pytest.approx(ece)
    assert r.reliability.count.sum() == y.size


def test_one_class_labels_are_left_out_with_a_reason_and_unknowns_counted():
    labels, probs, patients = _data(100, seed=3)
    labels[:, 1] = 0.0  # B: no positives
    labels[:30, 2] = np.nan  # C: 30 unknown
    probs[30:35, 3] = np.nan  # D: 5 missing predictions
    r = evaluate(labels, probs, NAMES, patients, n_bootstrap=50)
    assert (
        r.macro_auc_labels == ["A", "C", "D"]
        and "no positive images (0 positive of 100)" in r.excluded["B"]
    )
    assert math.isnan(r.label("B").auc) and "no positive" in r.label("B").note
    c = r.label("C")
    assert (c.n, c.n_unknown) == (70, 30)
    assert c.auc == pytest.approx(roc_auc_score(labels[30:, 2], probs[30:, 2]))
    d = r.label("D")
    keep = ~np.isnan(probs[:, 3])
    assert (d.n, d.n_no_prediction) == (95, 5)
    assert d.auc == pytest.approx(roc_auc_score(labels[keep, 3], probs[keep, 3]))
    expected = np.mean([roc_auc_score(labels[30:, 2], probs[30:, 2]), d.auc, r.label("A").auc])
    assert r.macro_auc == pytest.approx(expected)
    assert "B" not in r.curves and set(r.curves) == {"A", "C", "D"}


def test_without_thresholds_no_operating_point_is_computed():
    labels, probs, patients = _data(100)
    r = evaluate(labels, probs, NAMES, patients, n_bootstrap=0)
    assert all(row.operating is None for row in r.labels) and r.thresholds is None
    d = r.to_dict()
    for row in d["labels"]:
        assert all(
            row[k] is None
            for k in ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "tp")
        )
    assert (
        "not reported" in r.to_markdown()
        and "sensitivity" not in r.to_markdown().split("## Per label")[1]
    )


def test_given_thresholds_are_the_ones_applied():
    labels, probs, patients = _data(300)
    given = {"A": 0.35, "B": 0.5, "C": 0.62}  # D has none
    r = evaluate(labels, probs, NAMES, patients, thresholds=given, n_bootstrap=0)
    for j, name in enumerate("ABC"):
        op = r.label(name).operating
        assert op.threshold == given[name]
        tn, fp, fn, tp = confusion_matrix(labels[:, j], probs[:, j] >= given[name]).ravel()
        assert (op.tp, op.fp, op.tn, op.fn) == (tp, fp, tn, fn)
        assert op.sensitivity == pytest.approx(tp / (tp + fn)) and op.npv == pytest.approx(
            tn / (tn + fn)
        )
    assert r.label("D").operating is None and "no threshold was given for D" in r.label("D").note
    assert r.thresholds == "given by the caller"


def test_thresholds_come_from_validation_and_ignore_test_labels():
    val_labels, val_probs, _ = _data(300, seed=10)
    test_labels, test_probs, test_patients = _data(300, seed=11)
    report, chosen = evaluate_with_validation(
        val_labels,
        val_probs,
        test_labels,
        test_probs,
        NAMES,
        test_patients,
        n_bootstrap=0,
        val_source="val.csv",
    )
    assert dict(chosen) == dict(choose_thresholds(val_labels, val_probs, NAMES))
    assert [r.operating.threshold for r in report.labels] == [chosen[n] for n in NAMES]
    assert report.thresholds == "youden on val.csv"
    # the test set's own Youden thresholds differ, and flipping test labels changes nothing chosen
    own = choose_thresholds(test_labels, test_probs, NAMES)
    assert any(own[n] != chosen[n] for n in NAMES)
    _, again = evaluate_with_validation(
        val_labels, val_probs, 1 - test_labels, test_probs, NAMES, n_bootstrap=0
    )
    assert dict(again) == dict(chosen)


def test_threshold_notes_explain_missing_thresholds():
    labels, probs, patients = _data(100)
    thr = Thresholds(
        {"A": 0.4},
        "youden",
        notes={"B": "no threshold: the validation data have no positive images"},
    )
    r = evaluate(labels, probs, NAMES, patients, thresholds=thr, n_bootstrap=0)
    assert (
        "validation data have no positive" in r.label("B").note and r.label("B").operating is None
    )


def test_json_keys_are_stable_and_valid():
    labels, probs, patients = _data(80)
    labels[:, 3] = 0
    d = evaluate(labels, probs, NAMES, patients, n_bootstrap=20).to_dict()
    text = json.dumps(d, allow_nan=False)
    assert set(d) == {
        "research_notice",
        "cxr_version",
        "sources",
        "summary",
        "macro_auc_labels",
        "excluded_from_macro",
        "thresholds",
        "labels",
        "reliability",
        "settings",
        "notes",
        "calibration",
    }
    assert d["calibration"] is None  # probabilities without a model calibration
    assert d["research_notice"] == RESEARCH_NOTICE and "NaN" not in text
    keys = {tuple(row) for row in d["labels"]}
    assert len(keys) == 1  # every label row has the same keys, absent values null
    assert d["labels"][3]["auc"] is None


def test_input_validation():
    labels, probs, _ = _data(20)
    with pytest.raises(ValueError, match="must both be"):
        evaluate(labels, probs[:, :3], NAMES)
    with pytest.raises(ValueError, match="sigmoid"):
        evaluate(labels, probs * 3, NAMES)
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        evaluate(labels * 2, probs, NAMES)
    r = evaluate(labels, probs, NAMES, n_bootstrap=0)
    assert any("each were its own patient" in n for n in r.notes)


def test_compare_delong_and_bootstrap():
    labels, probs_a, patients = _data(400, seed=4)
    rng = np.random.default_rng(5)
    probs_b = np.clip(probs_a + rng.normal(0, 0.3, probs_a.shape), 0, 1)
    labels[:, 3] = 1.0
    c = compare(
        labels, probs_a, probs_b, NAMES, patients, n_bootstrap=200, model_names=("new", "old")
    )
    for j, _name in enumerate(NAMES[:3]):
        row = c.rows[j]
        assert row.auc_a == pytest.approx(roc_auc_score(labels[:, j], probs_a[:, j]))
        assert row.auc_b == pytest.approx(roc_auc_score(labels[:, j], probs_b[:, j]))
        assert row.p_value == pytest.approx(
            delong_test(labels[:, j], probs_a[:, j], probs_b[:, j]).p_value
        )
        assert row.diff_ci_low < row.diff < row.diff_ci_high
    assert "not compared" in c.rows[3].note and math.isnan(c.rows[3].diff)
    assert len(c.compared) == 3
    json.dumps(c.to_dict(), allow_nan=False)
    md = c.to_markdown()
    assert RESEARCH_NOTICE in md and "new vs old" in md
    # the macro difference: a paired bootstrap over the compared labels on the same resamples
    ma, mb = c.macro()
    low, high = c.macro_ci
    assert low < ma - mb < high and 0.0 < c.macro_p <= 1.0
    assert c.to_dict()["summary"]["macro_diff_ci"] == [low, high]
    assert "paired patient bootstrap p" in md


def test_macro_bootstrap_tells_a_real_gain_from_none():
    from cxr.evaluation.significance import bootstrap_macro_auc_diff

    labels, probs_a, patients = _data(400, seed=7)
    rng = np.random.default_rng(8)
    noisy = np.clip(probs_a + rng.normal(0, 0.4, probs_a.shape), 0, 1)
    ci, p = bootstrap_macro_auc_diff(labels, probs_a, noisy, patients, n=300, seed=0)
    assert ci.low > 0 and p < 0.01  # A ranks far better than its noisy copy
    ci, p = bootstrap_macro_auc_diff(labels, probs_a, probs_a, patients, n=300, seed=0)
    assert ci.low == ci.high == 0.0 and p == 1.0  # the same predictor: no difference
    with pytest.raises(ValueError, match="must all be"):
        bootstrap_macro_auc_diff(labels, probs_a, probs_a[:10], patients)


def test_peer_predictions_reproduce_the_readme(shared_datasets):
    """nih14-sample: per-label AUCs equal sklearn's and the macro AUC rounds to 0.773."""
    from cxr.datasets import load_dataset
    from cxr.evaluation.alignment import align
    from cxr.evaluation.predictions import read_predictions

    folder = shared_datasets / "nih14-sample"
    y, p, patients, rep = align(
        load_dataset(folder), read_predictions(folder / "peer_predictions.csv")
    )
    r = evaluate(y, p, rep.pathologies, patients, n_bootstrap=100)
    assert len(r.labels) == 14 and r.n_images == 423
    for j, row in enumerate(r.labels):
        assert row.auc == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-9)
    assert round(r.macro_auc, 3) == 0.773
    positives = {row.name: row.n_positive for row in r.labels}
    assert (
        positives["Infiltration"] == 91 and positives["Hernia"] == 13
    )  # counts stated in the README
