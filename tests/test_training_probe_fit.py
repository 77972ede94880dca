"""Fitting the probe (cxr.training.probe_fit): C chosen by cross-validation per label, a
shared C for rare labels, honest out-of-fold probabilities, the standardisation folded into
raw-feature weights, and K cross-fitted members."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.evaluation.metrics import roc_auc
from cxr.training.probe_fit import fit_probe, log_loss


def _signal(n=200, d=30, seed=0, labels=2):
    """Raw features (offset and scaled, so the folded standardisation matters) whose first
    features carry the labels linearly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    x = 3.0 + z * np.linspace(0.5, 4.0, d)
    y = np.stack(
        [(z[:, j] + 0.5 * rng.normal(size=n) > 0.3).astype(float) for j in range(labels)], 1
    )
    return x, y, z


def test_it_recovers_a_linear_signal_on_new_images():
    x, y, _ = _signal(seed=1)
    fit = fit_probe(x, y, np.arange(len(x)) % 5)
    x_new, y_new, _ = _signal(seed=2)
    p = fit.predict(x_new)
    assert p.shape == (200, 2)
    assert min(roc_auc(y_new[:, j], p[:, j]) for j in range(2)) > 0.85
    assert (fit.cv_auc > 0.85).all() and fit.cv_macro_auc > 0.85
    assert fit.coef.shape == (2, 30) and fit.intercept.shape == (2,)


def test_out_of_fold_probabilities_ignore_the_rows_own_label():
    x, y, _ = _signal(n=120, d=10, seed=3, labels=1)
    folds = np.arange(len(x)) % 4
    one_c = {"Cs": [0.1]}  # one C: flipping a label cannot change the choice
    base = fit_probe(x, y, folds, **one_c)
    flipped = y.copy()
    flipped[7, 0] = 1.0 - flipped[7, 0]
    other = fit_probe(x, flipped, folds, **one_c)
    assert other.oof[7, 0] == pytest.approx(base.oof[7, 0], abs=1e-12)
    # ... while the row's own label does move the model fitted on all rows, and the
    # out-of-fold probabilities of rows in other folds (whose models saw row 7)
    assert abs(other.predict(x[7:8])[0, 0] - base.predict(x[7:8])[0, 0]) > 1e-4
    moved = np.abs(other.oof[:, 0] - base.oof[:, 0]) > 1e-9
    assert moved[folds != folds[7]].any() and not moved[folds == folds[7]].any()


def test_each_common_label_takes_its_best_C_and_rare_labels_share_one():
    x, y, _ = _signal(n=240, d=20, seed=4, labels=3)
    for j in (1, 2):  # three positives each
        y[:, j] = 0.0
        y[[j, 10 + j, 20 + j], j] = 1.0
    Cs = np.logspace(-3, 1, 5)
    fit = fit_probe(x, y, np.arange(len(x)) % 4, Cs=Cs, min_positives=10)
    assert fit.shared.tolist() == [False, True, True]
    assert fit.C[0] == Cs[np.argmin(fit.cv_loss[:, 0])]
    pooled = (fit.cv_loss[:, 1:] * len(x)).sum(axis=1)  # every row known: mean x N
    assert fit.shared_C == Cs[np.argmin(pooled)]
    assert fit.C[1] == fit.C[2] == fit.shared_C
    assert fit.positives.tolist()[1:] == [3, 3]
    assert "shared C" in fit.describe_C(["a", "b", "c"])
    # the out-of-fold probabilities are those of the chosen C
    mean_loss = log_loss(y[:, 0], fit.oof[:, 0]).mean()
    assert mean_loss == pytest.approx(fit.cv_loss[:, 0].min())


def test_the_single_model_is_the_regression_on_standardised_features():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, _ = _signal(n=150, d=12, seed=5, labels=1)
    y[::9, 0] = np.nan  # unknown rows are skipped
    fit = fit_probe(x, y, np.arange(len(x)) % 3, Cs=[0.05, 0.5])
    mu, sd = x.mean(axis=0), x.std(axis=0)
    known = ~np.isnan(y[:, 0])
    ref = sklearn.LogisticRegression(C=float(fit.C[0]), tol=1e-12, max_iter=100_000)
    ref.fit(((x - mu) / sd)[known], y[known, 0])
    expected = ref.predict_proba((x - mu) / sd)[:, 1]
    assert np.abs(fit.predict(x)[:, 0] - expected).max() < 1e-6


def test_k_members_are_the_fold_models_and_their_mean():
    x, y, _ = _signal(n=150, d=12, seed=6)
    folds = np.arange(len(x)) % 3
    fit = fit_probe(x, y, folds, members=3)
    assert fit.members == 3 and fit.coef.shape == (6, 12) and fit.intercept.shape == (6,)
    each = fit.member_probabilities(x)  # (3, N, 2)
    logits = x @ fit.coef.T + fit.intercept
    assert np.allclose(each[1], 1 / (1 + np.exp(-logits[:, 2:4])))  # rows 2..3: member 1
    assert np.allclose(fit.predict(x), each.mean(axis=0))
    for k in range(3):  # member k is the model that scored fold k out of fold
        rows = folds == k
        assert np.allclose(each[k][rows], fit.oof[rows], atol=1e-9)


def test_bad_inputs_are_refused():
    x, y, _ = _signal(n=40, d=5)
    folds = np.arange(40) % 4
    with pytest.raises(ValueError, match="members must be 1"):
        fit_probe(x, y, folds, members=3)
    with pytest.raises(ValueError, match="at least 2 folds"):
        fit_probe(x, y, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        fit_probe(x, y * 2, folds)
    with pytest.raises(ValueError, match="same N"):
        fit_probe(x, y[:30], folds)
    with pytest.raises(ValueError, match="oof_features"):
        fit_probe(x, y, folds, oof_features=x[:, :3])
