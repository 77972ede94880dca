"""Uncertainty of AUCs: patient-bootstrap confidence intervals and the DeLong test.

Conventions are those of :mod:`cxr.evaluation.metrics`: ``y`` (N,) 0/1, ``p`` (N,) finite
scores, ``groups`` (N,) patient ids. Bootstrap resampling draws *patients* with replacement
and takes all images of each drawn patient. No scikit-learn or scipy at run time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cxr.evaluation.metrics import check_binary, midranks

_CHUNK = 128  # bootstrap resamples handled per block (bounds memory to ~chunk x N floats)


# patient bootstrap ----------------------------------------------------------------------
def _group_index(groups: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups (patient ids) must have shape ({n},), got {groups.shape}")
    _, index = np.unique(groups.astype(str), return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if n else 0


def patient_draws(n_groups: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap draws: int arrays (b, n_groups) of patient numbers drawn with
    replacement, b <= 128, n rows in all. Patient numbers index the sorted unique ids."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        b = min(_CHUNK, n - done)
        yield rng.integers(0, n_groups, size=(b, n_groups))
        done += b


def _draw_counts(draws: np.ndarray, n_groups: int) -> np.ndarray:
    """How often each group was drawn: int32 (n_groups, b), one column per resample."""
    b = draws.shape[0]
    flat = (np.arange(b)[:, None] * n_groups + draws).ravel()
    counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)
    return np.ascontiguousarray(counts.T, dtype=np.int32)


@dataclass(frozen=True)
class _AucPlan:
    """One label prepared for weighted AUCs.

    ``neg_groups``: the group (patient) of each negative, negatives sorted by score;
    ``pos_groups``: the group of each positive; ``breaks``: increasing start rows of the
    runs of sorted negatives between positives' scores; ``lo``/``hi``: for each positive,
    the index into the running sum over runs (0 = nothing, k = runs before ``breaks[k]``)
    of the negatives scoring below / at most its score.
    """

    neg_groups: np.ndarray
    pos_groups: np.ndarray
    breaks: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _auc_plan(y: np.ndarray, p: np.ndarray, group_index: np.ndarray) -> _AucPlan:
    order = np.argsort(p[~y], kind="mergesort")
    neg_scores = p[~y][order]
    lo = np.searchsorted(neg_scores, p[y], side="left")  # negatives strictly below
    hi = np.searchsorted(neg_scores, p[y], side="right")  # negatives below or tied
    n_neg = len(neg_scores)
    breaks = np.unique(np.r_[0, lo, hi])
    breaks = breaks[breaks < n_neg]
    # running sum index: position k holds the negatives in rows [0, breaks[k]); len = all
    return _AucPlan(
        group_index[~y][order],
        group_index[y],
        breaks,
        np.searchsorted(breaks, lo),
        np.searchsorted(breaks, hi),
    )


def _plan_auc(plan: _AucPlan, counts: np.ndarray) -> np.ndarray:
    """AUC (B,) when group g counts ``counts[g, b]`` times (counts (G, B)); NaN without
    both classes.

    A positive outranks the negatives below it and ties half of those at its score:
    numerator = sum_pos w * (W_neg(< s) + W_neg(<= s)) / 2, with the negative weights
    summed run by run (``np.add.reduceat``) rather than image by image.
    """
    n_b = counts.shape[1]
    if len(plan.neg_groups) == 0 or len(plan.pos_groups) == 0:
        return np.full(n_b, np.nan)
    runs = np.add.reduceat(counts[plan.neg_groups], plan.breaks, axis=0).astype(np.float64)
    cum = np.zeros((len(runs) + 1, n_b))
    np.cumsum(runs, axis=0, out=cum[1:])
    pos_w = counts[plan.pos_groups].astype(np.float64)
    num = 0.5 * np.einsum("ib,ib->b", pos_w, cum[plan.lo] + cum[plan.hi])
    den = pos_w.sum(axis=0) * cum[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of ``weights`` (B, N): image i counts ``weights[b, i]`` times.
    Returns (B,); NaN where a class has zero total weight."""
    y, p = check_binary(y, p)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[1] != len(y):
        raise ValueError(f"weights must be (B, {len(y)}), got {weights.shape}")
    return _plan_auc(_auc_plan(y, p, np.arange(len(y))), np.ascontiguousarray(weights.T))


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile interval from patient-level bootstrap resamples.

    ``samples`` (n_valid,) are the statistic of the resamples in which both classes were
    drawn; the ``n_requested - n_valid`` others are left out (said, never hidden)."""

    low: float
    high: float
    n_valid: int
    n_requested: int
    samples: np.ndarray


def _percentile_ci(samples: np.ndarray, n: int, alpha: float) -> BootstrapCI:
    ok = samples[~np.isnan(samples)]
    if len(ok) == 0:
        return BootstrapCI(math.nan, math.nan, 0, n, ok)
    low, high = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(float(low), float(high), len(ok), n, ok)


def _patient_resamples(
    groups: np.ndarray, n_rows: int, n: int, seed: int, alpha: float
) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Checks ``n`` and ``alpha``; returns each row's patient index (``n_rows``,) and the
    ``n`` patient resamples of :func:`patient_draws` (``seed``) as chunks of draw counts:
    (n_patients, C) arrays, how often each patient is drawn in each of C resamples."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of bootstrap resamples must be a positive integer, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")
    index, n_groups = _group_index(groups, n_rows)
    return index, (_draw_counts(draws, n_groups) for draws in patient_draws(n_groups, n, seed))


def bootstrap_auc_ci(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """(1 - alpha) percentile CI of the AUC, resampling patients (``groups``) with
    replacement, ``n`` times. Draws come from :func:`patient_draws` (``seed``)."""
    return bootstrap_auc_ci_many(
        np.asarray(y)[:, None], np.asarray(p)[:, None], groups, n, seed, alpha
    )[0]


def bootstrap_auc_ci_many(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[BootstrapCI]:
    """:func:`bootstrap_auc_ci` for L labels at once, every label scored on the *same*
    patient resamples. ``labels`` (N, L) 0/1/NaN (NaN rows are skipped per label),
    ``probs`` (N, L) finite. Returns L intervals (NaN bounds for a one-class label)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape:
        raise ValueError(
            f"labels and probs must both be (N, L); got {labels.shape} and {probs.shape}"
        )
    index, resamples = _patient_resamples(groups, len(labels), n, seed, alpha)
    plans = []
    for j in range(labels.shape[1]):
        k = np.flatnonzero(~np.isnan(labels[:, j]))
        y, p = check_binary(labels[k, j], probs[k, j])
        plans.append(_auc_plan(y, p, index[k]))
    out: list[list[np.ndarray]] = [[] for _ in plans]
    for counts in resamples:
        for j, plan in enumerate(plans):
            out[j].append(_plan_auc(plan, counts))
    return [_percentile_ci(np.concatenate(s), n, alpha) for s in out]


def bootstrap_auc_diff_ci(
    y: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Paired patient-bootstrap CI of AUC(p1) - AUC(p2): both scored on each resample."""
    y, p1 = check_binary(y, p1)
    _, p2 = check_binary(y, p2)
    index, resamples = _patient_resamples(groups, len(y), n, seed, alpha)
    plan1, plan2 = _auc_plan(y, p1, index), _auc_plan(y, p2, index)
    diffs = [_plan_auc(plan1, counts) - _plan_auc(plan2, counts) for counts in resamples]
    return _percentile_ci(np.concatenate(diffs), n, alpha)


def bootstrap_macro_auc_diff(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[BootstrapCI, float]:
    """Paired patient bootstrap of macro AUC(A) - macro AUC(B) over L labels: every label of
    both predictors scored on the *same* patient resamples, the macro difference averaged
    over the labels with both classes in that resample. ``labels`` (N, L) 0/1/NaN (NaN
    rows skipped per label), ``probs_a``/``probs_b`` (N, L) finite where the label is known.

    Returns the (1 - alpha) percentile CI of the difference and the two-sided bootstrap
    p-value ``min(1, 2 * min(P(d <= 0), P(d >= 0)))`` over the valid resamples (1/n at the
    least: it can say "below 1/n", never 0)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs_a = np.asarray(probs_a, dtype=np.float64)
    probs_b = np.asarray(probs_b, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs_a.shape or labels.shape != probs_b.shape:
        raise ValueError(
            "labels, probs_a and probs_b must all be (N, L); got "
            f"{labels.shape}, {probs_a.shape} and {probs_b.shape}"
        )
    index, resamples = _patient_resamples(groups, len(labels), n, seed, alpha)
    plans = []
    for j in range(labels.shape[1]):
        k = np.flatnonzero(~np.isnan(labels[:, j]))
        if len(k) == 0:
            continue
        y, pa = check_binary(labels[k, j], probs_a[k, j])
        _, pb = check_binary(labels[k, j], probs_b[k, j])
        if y.all() or not y.any():
            continue
        plans.append((_auc_plan(y, pa, index[k]), _auc_plan(y, pb, index[k])))
    if not plans:
        raise ValueError("no label has both positive and negative images: no macro AUC")
    chunks = []
    for counts in resamples:
        diffs = np.stack([_plan_auc(a, counts) - _plan_auc(b, counts) for a, b in plans])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no valid label
            chunks.append(np.nanmean(diffs, axis=0))
    samples = np.concatenate(chunks)
    ci = _percentile_ci(samples, n, alpha)
    ok = ci.samples
    if len(ok) == 0:
        return ci, math.nan
    tail = min(float(np.mean(ok <= 0)), float(np.mean(ok >= 0)))
    return ci, float(min(1.0, max(2.0 * tail, 1.0 / len(ok))))


# DeLong ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of AUC(p1) = AUC(p2) on the same images. ``p_value`` is
    two-sided (normal approximation); when both predictors rank identically the
    variance is 0 and ``z`` = 0, ``p_value`` = 1."""

    auc1: float
    auc2: float
    diff: float
    se: float
    z: float
    p_value: float


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (K,) and their DeLong covariance (K, K) for K score rows ``scores`` (K, N),
    by the fast midrank algorithm of Sun & Xu (2014)."""
    y = np.asarray(y, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.stack([midranks(r) for r in pos])
    ty = np.stack([midranks(r) for r in neg])
    tz = np.stack([midranks(r) for r in np.concatenate([pos, neg], axis=1)])
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives above it
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def delong_test(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> DeLongResult:
    """DeLong et al. (1988) paired test of two correlated AUCs (see :class:`DeLongResult`)."""
    y, p1 = check_binary(y, p1, need_both=True)
    _, p2 = check_binary(y, p2)
    aucs, cov = delong_covariance(y, np.stack([p1, p2]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        z, pval, se = (
            (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0, 0.0)
        )
    else:
        se = math.sqrt(var)
        z = diff / se
        pval = math.erfc(abs(z) / math.sqrt(2.0))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, pval)
