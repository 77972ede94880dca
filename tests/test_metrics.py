"""cxr.evaluation.metrics against scikit-learn / scipy and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import precision_recall_curve as sk_pr_curve
from sklearn.metrics import roc_curve as sk_roc_curve

from cxr.evaluation import metrics as M
from cxr.evaluation import significance as S


def _data(n=300, seed=0, ties=True, prevalence=0.2):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1)
    return y, (np.round(p, 1) if ties else p)


# AUC and curves ----------------------------------------------------------------------
def test_auc_hand_worked():
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie counts one half: pos 0.5 vs neg 0.5
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_auc_equals_sklearn(seed, ties):
    y, p = _data(seed=seed, ties=ties)
    assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert M.roc_auc(y.astype(bool), p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_midranks_equal_scipy():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_array_equal(M.midranks(x), rankdata(x))


def test_auc_refuses_bad_input():
    with pytest.raises(ValueError, match="no positive"):
        M.roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0, np.nan, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN/inf"):
        M.roc_auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="3 values but p has 2"):
        M.roc_auc([0, 1, 1], [0.1, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("ties", [True, False])
def test_roc_curve_equals_sklearn(ties):
    y, p = _data(seed=3, ties=ties)
    fpr, tpr, thr = M.roc_curve(y, p)
    sf, st, sth = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    assert thr[0] == np.inf and sth[0] == np.inf
    np.testing.assert_allclose(thr[1:], sth[1:])


@pytest.mark.parametrize("ties", [True, False])
def test_pr_curve_and_ap_equal_sklearn(ties):
    y, p = _data(seed=4, ties=ties)
    prec, rec, thr = M.precision_recall_curve(y, p)
    sp, sr, sth = sk_pr_curve(y, p)
    np.testing.assert_allclose(prec, sp)
    np.testing.assert_allclose(rec, sr)
    np.testing.assert_allclose(thr, sth)
    assert M.average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_ap_hand_worked():
    # scores desc: 0.9 (pos) 0.8 (neg) 0.7 (pos): AP = 0.5*1 + 0.5*(2/3)
    assert M.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)


# operating points ---------------------------------------------------------------------
def test_confusion_at_equals_sklearn():
    y, p = _data(seed=5)
    for t in (0.2, 0.5, 0.7):
        op = M.confusion_at(y, p, t)
        pred = (p >= t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (op.tp, op.fp, op.tn, op.fn) == (tp, fp, tn, fn)
        assert op.sensitivity == pytest.approx(recall_score(y, pred))
        assert op.specificity == pytest.approx(recall_score(1 - y, 1 - pred))
        assert op.ppv == pytest.approx(precision_score(y, pred))
        assert op.npv == pytest.approx(precision_score(1 - y, 1 - pred))
        assert op.f1 == pytest.approx(f1_score(y, pred))


def test_confusion_at_hand_worked_and_zero_denominators():
    op = M.confusion_at([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.2, 0.1], 0.5)
    assert (op.tp, op.fp, op.tn, op.fn) == (1, 1, 2, 1)
    assert (op.sensitivity, op.specificity, op.ppv, op.npv) == (0.5, 2 / 3, 0.5, 2 / 3)
    assert op.f1 == pytest.approx(0.5)
    # threshold above every score: nothing called positive -> PPV undefined (NaN), not 0
    op = M.confusion_at([1, 0], [0.2, 0.1], 0.9)
    assert math.isnan(op.ppv) and op.sensitivity == 0.0 and op.npv == 0.5
    # no positives and none called positive: sensitivity and F1 undefined
    op = M.confusion_at([0, 0], [0.2, 0.1], 0.9)
    assert math.isnan(op.sensitivity) and math.isnan(op.f1) and op.specificity == 1.0
    # no negatives: specificity undefined
    assert math.isnan(M.confusion_at([1, 1], [0.2, 0.1], 0.15).specificity)
    with pytest.raises(ValueError, match="threshold"):
        M.confusion_at([0, 1], [0.2, 0.1], float("nan"))


def test_youden_hand_worked():
    y = [0, 0, 0, 1, 1, 1]
    p = [0.1, 0.3, 0.6, 0.4, 0.7, 0.9]
    # t=0.4: sens 1, spec 2/3 -> J 2/3 ; t=0.7: sens 2/3, spec 1 -> J 2/3; highest wins
    assert M.youden_threshold(y, p) == 0.7


def test_youden_maximises_j_by_brute_force():
    y, p = _data(seed=6)
    t = M.youden_threshold(y, p)
    j = {
        c: M.confusion_at(y, p, c).sensitivity + M.confusion_at(y, p, c).specificity - 1
        for c in np.unique(p)
    }
    assert j[t] == pytest.approx(max(j.values()))
    assert t == max(c for c, v in j.items() if v >= max(j.values()) - 1e-12)


def test_threshold_for_sensitivity():
    y = [1, 1, 1, 1, 0, 0]
    p = [0.9, 0.8, 0.5, 0.3, 0.6, 0.1]
    assert M.threshold_for_sensitivity(y, p, 0.75) == 0.5  # 3 of 4 positives at p >= 0.5
    assert M.threshold_for_sensitivity(y, p, 1.0) == 0.3
    assert M.threshold_for_sensitivity(y, p, 0.5) == 0.8
    yr, pr = _data(seed=7)
    for target in (0.5, 0.8, 0.9, 0.95):
        t = M.threshold_for_sensitivity(yr, pr, target)
        assert M.confusion_at(yr, pr, t).sensitivity >= target
        higher = pr[pr > t]
        if higher.size:  # the next higher distinct score misses the target
            assert M.confusion_at(yr, pr, higher.min()).sensitivity < target
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.threshold_for_sensitivity(y, p, 1.5)


# calibration ----------------------------------------------------------------------------
def test_reliability_bins_equal_sklearn_calibration_curve():
    rng = np.random.default_rng(8)
    p = rng.random(2000)
    y = (rng.random(2000) < p**1.5).astype(int)
    bins = M.reliability_bins(y, p, 10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = bins.count > 0
    np.testing.assert_allclose(bins.fraction_positive[full], frac)
    np.testing.assert_allclose(bins.mean_predicted[full], mean)
    assert bins.count.sum() == 2000


def test_ece_hand_worked():
    # bin (0.1,0.2]: p 0.15, 0.15, y 0, 1 -> |0.5-0.15| = 0.35, weight 2/4
    # bin (0.8,0.9]: p 0.85, 0.85, y 1, 1 -> |1-0.85| = 0.15, weight 2/4
    assert M.expected_calibration_error([0, 1, 1, 1], [0.15, 0.15, 0.85, 0.85]) == pytest.approx(
        0.25
    )
    assert M.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.expected_calibration_error([0, 1], [-0.5, 2.0])


# bootstrap -----------------------------------------------------------------------------
def _naive_bootstrap(y, p, groups, n, seed):
    """Resample patients by concatenating their rows; sklearn AUC on each resample."""
    ids = np.unique(groups.astype(str))
    rows_of = {g: np.flatnonzero(groups.astype(str) == g) for g in ids}
    out = []
    for draws in S.patient_draws(len(ids), n, seed):
        for d in draws:
            rows = np.concatenate([rows_of[ids[k]] for k in d])
            out.append(roc_auc_score(y[rows], p[rows]) if 0 < y[rows].sum() < len(rows) else np.nan)
    return np.array(out)


def test_bootstrap_resamples_patients_like_a_naive_loop():
    rng = np.random.default_rng(9)
    groups = rng.integers(0, 40, 120)  # ~3 images per patient
    y, p = _data(n=120, seed=9)
    ci = S.bootstrap_auc_ci(y, p, groups, n=200, seed=3)
    naive = _naive_bootstrap(y, p, groups, 200, 3)
    np.testing.assert_allclose(ci.samples, naive[~np.isnan(naive)], atol=1e-12)
    lo, hi = np.quantile(naive[~np.isnan(naive)], [0.025, 0.975])
    assert (ci.low, ci.high) == pytest.approx((lo, hi))
    assert ci.low < M.roc_auc(y, p) < ci.high


def test_bootstrap_counts_one_class_resamples():
    y = np.array([1, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3])
    ci = S.bootstrap_auc_ci(y, p, np.array(["a", "b", "c", "d"]), n=300, seed=0)
    naive = _naive_bootstrap(y, p, np.array(["a", "b", "c", "d"]), 300, 0)
    assert ci.n_requested == 300 and ci.n_valid == int((~np.isnan(naive)).sum()) < 300


def test_bootstrap_many_uses_the_same_resamples_and_skips_unknown():
    rng = np.random.default_rng(10)
    groups = rng.integers(0, 50, 150)
    y1, p1 = _data(n=150, seed=1)
    y2, p2 = _data(n=150, seed=2)
    labels = np.c_[y1, y2].astype(float)
    labels[:10, 1] = np.nan
    many = S.bootstrap_auc_ci_many(labels, np.c_[p1, p2], groups, n=100, seed=5)
    np.testing.assert_allclose(many[0].samples, S.bootstrap_auc_ci(y1, p1, groups, 100, 5).samples)
    # label 2 skips its unknown rows: same as the naive loop on the known rows with the same draws
    ids = np.unique(groups.astype(str))
    k = np.arange(10, 150)
    expected = []
    for draws in S.patient_draws(len(ids), 100, 5):
        for d in draws:
            rows = np.concatenate([k[groups[k].astype(str) == ids[g]] for g in d])
            expected.append(roc_auc_score(y2[rows], p2[rows]))
    np.testing.assert_allclose(many[1].samples, expected, atol=1e-12)


def test_weighted_auc_equals_sklearn_sample_weight():
    y, p = _data(n=200, seed=11)
    w = np.random.default_rng(11).integers(0, 4, (3, 200)).astype(float)
    got = S.weighted_auc(y, p, w)
    np.testing.assert_allclose(got, [roc_auc_score(y, p, sample_weight=wi) for wi in w], atol=1e-12)


def test_bootstrap_diff_ci_matches_naive_paired_loop():
    rng = np.random.default_rng(12)
    groups = rng.integers(0, 30, 90)
    y, p1 = _data(n=90, seed=12)
    p2 = np.clip(p1 + rng.normal(0, 0.2, 90), 0, 1)
    ci = S.bootstrap_auc_diff_ci(y, p1, p2, groups, n=100, seed=1)
    d = _naive_bootstrap(y, p1, groups, 100, 1) - _naive_bootstrap(y, p2, groups, 100, 1)
    np.testing.assert_allclose(ci.samples, d[~np.isnan(d)], atol=1e-12)


# DeLong -------------------------------------------------------------------------------
def _delong_explicit(y, scores):
    """DeLong (1988) structural components from the pairwise kernel, O(m n)."""
    y = np.asarray(y, bool)
    out_auc, v10, v01 = [], [], []
    for s in scores:
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        out_auc.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    return np.array(out_auc), np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n


def test_delong_hand_worked_variance():
    # positives 0.9, 0.6, 0.4; negatives 0.5, 0.3: V10 = (1, 1, 1/2), V01 = (2/3, 1)
    # var = S10/m + S01/n = (1/12)/3 + (1/18)/2 = 1/18
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.6, 0.4, 0.5, 0.3])
    aucs, cov = S.delong_covariance(y, s[None, :])
    assert aucs[0] == pytest.approx(2.5 / 3)
    assert cov[0, 0] == pytest.approx(1 / 18)


def test_delong_equals_explicit_kernel_and_scipy_normal():
    rng = np.random.default_rng(13)
    y, p1 = _data(n=200, seed=13)
    p2 = np.round(np.clip(p1 + rng.normal(0, 0.25, 200), 0, 1), 2)
    aucs, cov = S.delong_covariance(y, np.stack([p1, p2]))
    ea, ecov = _delong_explicit(y, np.stack([p1, p2]))
    np.testing.assert_allclose(aucs, ea)
    np.testing.assert_allclose(cov, ecov)
    r = S.delong_test(y, p1, p2)
    assert r.auc1 == pytest.approx(roc_auc_score(y, p1)) and r.auc2 == pytest.approx(
        roc_auc_score(y, p2)
    )
    se = math.sqrt(ecov[0, 0] + ecov[1, 1] - 2 * ecov[0, 1])
    assert r.se == pytest.approx(se) and r.z == pytest.approx((ea[0] - ea[1]) / se)
    assert r.p_value == pytest.approx(2 * norm.sf(abs(r.z)))


def test_delong_se_agrees_with_paired_bootstrap():
    rng = np.random.default_rng(14)
    n = 1500
    y = (rng.random(n) < 0.3).astype(int)
    p1 = 1 / (1 + np.exp(-(1.2 * y + rng.normal(0, 1, n))))
    p2 = 1 / (1 + np.exp(-(0.9 * y + rng.normal(0, 1, n))))
    r = S.delong_test(y, p1, p2)
    boot = S.bootstrap_auc_diff_ci(y, p1, p2, np.arange(n), n=1000, seed=0)
    assert np.std(boot.samples, ddof=1) == pytest.approx(r.se, rel=0.15)
    assert r.p_value < 0.05 and boot.low > 0  # both see the real difference


def test_delong_identical_predictors():
    y, p = _data(seed=15)
    r = S.delong_test(y, p, p)
    assert (r.diff, r.z, r.p_value) == (0.0, 0.0, 1.0)
