"""Binary classification metrics for one label, in plain numpy.

Conventions shared by every function here:

- ``y``: (N,) ground truth, 0/1 (bool or numbers); unknown labels must be removed first.
- ``p``: (N,) scores, finite floats; probabilities in [0, 1] where calibration is concerned.
- An image is called positive at a threshold ``t`` when ``p >= t`` (as scikit-learn's
  ``roc_curve`` counts it).
- ``groups``: (N,) patient ids (any hashable values); bootstrap resampling draws
  *patients* with replacement and takes all images of each drawn patient.

AUC is the Mann-Whitney statistic with ties counted one half (equal to scikit-learn's
``roc_auc_score``); average precision is scikit-learn's step-wise
``sum_n (R_n - R_{n-1}) P_n``. Rates whose denominator is 0 are NaN, never 0 or 1.
No scikit-learn or scipy at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_CHUNK = 128  # bootstrap resamples handled per block (bounds memory to ~chunk x N floats)


# validation ------------------------------------------------------------------------------
def check_binary(y: np.ndarray, p: np.ndarray, need_both: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as bool (N,) and ``p`` as float64 (N,), after checking shapes and values.

    Raises:
        ValueError: not 1-D, lengths differ, ``y`` holds values other than 0/1 (NaN =
            unknown labels must be dropped first), ``p`` is not finite, or
            ``need_both`` and one class is absent.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y and p must be 1-D, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"y has {len(y)} values but p has {len(p)}; pass one score per label")
    if y.dtype != bool:
        yf = y.astype(np.float64)
        if np.isnan(yf).any():
            raise ValueError("y holds NaN (unknown labels); drop those images before scoring")
        if not np.isin(yf, (0.0, 1.0)).all():
            raise ValueError(f"y must hold only 0 and 1, found {np.unique(yf)[:5].tolist()}")
        y = yf == 1.0
    if not np.isfinite(p).all():
        raise ValueError(f"p holds {int((~np.isfinite(p)).sum())} NaN/inf scores; every image needs a score")
    if need_both and (y.all() or not y.any()):
        kind = "positive" if not y.any() else "negative"
        raise ValueError(f"no {kind} images among {len(y)}: AUC and ROC curves need both classes")
    return y, p


# ranks and AUC ------------------------------------------------------------------------
def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,), tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.ravel()]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Raises ValueError when one class is absent (the AUC is undefined).
    """
    y, p = check_binary(y, p, need_both=True)
    n1 = int(y.sum())
    n0 = len(y) - n1
    rank_sum = float(midranks(p)[y].sum())
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _clf_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at each distinct score, scores descending."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[last].astype(np.float64)
    fps = (last + 1) - tps
    return fps, tps, ps[last]


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score.

    Returns:
        fpr, tpr, thresholds: (K+1,) each; ``thresholds`` descend from ``+inf`` (no image
        positive: fpr = tpr = 0) through the K distinct scores; point k counts ``p >=
        thresholds[k]`` as positive. Equals scikit-learn's ``roc_curve(...,
        drop_intermediate=False)``.
    """
    y, p = check_binary(y, p, need_both=True)
    fps, tps, thr = _clf_curve(y, p)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thr]


def precision_recall_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve (scikit-learn's layout).

    Returns:
        precision, recall: (K+1,), recall decreasing, ending with the point (recall 0,
        precision 1); thresholds: (K,) the distinct scores, increasing. Needs at least one
        positive (ValueError otherwise).
    """
    y, p = check_binary(y, p)
    if not y.any():
        raise ValueError("no positive images: precision-recall needs at least one positive")
    fps, tps, thr = _clf_curve(y, p)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct scores (no
    interpolation), as scikit-learn's ``average_precision_score``."""
    precision, recall, _ = precision_recall_curve(y, p)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


# operating points -----------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold (positive when ``p >= threshold``).

    Rates with a zero denominator are NaN: sensitivity without positives, specificity
    without negatives, PPV when nothing is called positive, NPV when nothing is called
    negative, F1 when there are no positives and none is called positive.
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def confusion_at(y: np.ndarray, p: np.ndarray, threshold: float) -> OperatingPoint:
    """Confusion counts and rates when images with ``p >= threshold`` are called positive."""
    y, p = check_binary(y, p)
    if not isinstance(threshold, (int, float, np.floating)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    called = p >= threshold
    tp = int((called & y).sum())
    fp = int((called & ~y).sum())
    fn = int((~called & y).sum())
    tn = int((~called & ~y).sum())
    return OperatingPoint(
        float(threshold), tp, fp, tn, fn,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
    )


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    Candidates are the distinct scores (positive when ``p >= t``); among equal J the
    highest threshold wins. Needs both classes.
    """
    fpr, tpr, thr = roc_curve(y, p)
    j = (tpr - fpr)[1:]  # skip +inf (nothing positive)
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # equal J up to rounding: highest threshold
    return float(thr[1:][best])


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float = 0.9) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (the most specific
    such operating point). Needs at least one positive; ``0 < target <= 1``."""
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    y, p = check_binary(y, p)
    if not y.any():
        raise ValueError("no positive images: a sensitivity target needs positives")
    _, tps, thr = _clf_curve(y, p)
    k = int(np.searchsorted(tps / tps[-1], float(target) - 1e-12, side="left"))
    return float(thr[k])


# calibration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width probability bins on [0, 1] (bin k is ``(edges[k], edges[k+1]]``,
    0 falls in the first). Arrays are (n_bins,); empty bins hold NaN means."""

    edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {k: [None if isinstance(v, float) and math.isnan(v) else v for v in getattr(self, k).tolist()]
                for k in ("edges", "count", "mean_predicted", "fraction_positive")}


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> ReliabilityBins:
    """Per-bin count, mean probability and observed fraction of positives (the binning
    of scikit-learn's ``calibration_curve(strategy="uniform")``). ``p`` must lie in [0, 1]."""
    y, p = check_binary(y, p)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if len(p) and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"calibration needs probabilities in [0, 1]; scores span [{p.min():g}, {p.max():g}]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=p, minlength=n_bins) / count
        frac = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins) / count
    return ReliabilityBins(edges, count, mean_p, frac)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over bins of (bin count / N) * |fraction positive - mean probability|."""
    bins = reliability_bins(y, p, n_bins)
    full = bins.count > 0
    if not full.any():
        return math.nan
    gap = np.abs(bins.fraction_positive[full] - bins.mean_predicted[full])
    return float(np.sum(bins.count[full] * gap) / bins.count.sum())


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
    return _AucPlan(group_index[~y][order], group_index[y], breaks,
                    np.searchsorted(breaks, lo), np.searchsorted(breaks, hi))


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


def _check_bootstrap(n: int, alpha: float) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of bootstrap resamples must be a positive integer, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")


def bootstrap_auc_ci(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> BootstrapCI:
    """(1 - alpha) percentile CI of the AUC, resampling patients (``groups``) with
    replacement, ``n`` times. Draws come from :func:`patient_draws` (``seed``)."""
    return bootstrap_auc_ci_many(np.asarray(y)[:, None], np.asarray(p)[:, None], groups, n, seed, alpha)[0]


def bootstrap_auc_ci_many(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> list[BootstrapCI]:
    """:func:`bootstrap_auc_ci` for L labels at once, every label scored on the *same*
    patient resamples. ``labels`` (N, L) 0/1/NaN (NaN rows are skipped per label),
    ``probs`` (N, L) finite. Returns L intervals (NaN bounds for a one-class label)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape:
        raise ValueError(f"labels and probs must both be (N, L); got {labels.shape} and {probs.shape}")
    _check_bootstrap(n, alpha)
    index, n_groups = _group_index(groups, len(labels))
    plans = []
    for j in range(labels.shape[1]):
        k = np.flatnonzero(~np.isnan(labels[:, j]))
        y, p = check_binary(labels[k, j], probs[k, j])
        plans.append(_auc_plan(y, p, index[k]))
    out: list[list[np.ndarray]] = [[] for _ in plans]
    for draws in patient_draws(n_groups, n, seed):
        counts = _draw_counts(draws, n_groups)
        for j, plan in enumerate(plans):
            out[j].append(_plan_auc(plan, counts))
    return [_percentile_ci(np.concatenate(s), n, alpha) for s in out]


def bootstrap_auc_diff_ci(
    y: np.ndarray, p1: np.ndarray, p2: np.ndarray, groups: np.ndarray,
    n: int = 1000, seed: int = 0, alpha: float = 0.05,
) -> BootstrapCI:
    """Paired patient-bootstrap CI of AUC(p1) - AUC(p2): both scored on each resample."""
    y, p1 = check_binary(y, p1)
    _, p2 = check_binary(y, p2)
    _check_bootstrap(n, alpha)
    index, n_groups = _group_index(groups, len(y))
    plan1, plan2 = _auc_plan(y, p1, index), _auc_plan(y, p2, index)
    diffs = []
    for draws in patient_draws(n_groups, n, seed):
        counts = _draw_counts(draws, n_groups)
        diffs.append(_plan_auc(plan1, counts) - _plan_auc(plan2, counts))
    return _percentile_ci(np.concatenate(diffs), n, alpha)


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
        z, pval, se = (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0, 0.0)
    else:
        se = math.sqrt(var)
        z = diff / se
        pval = math.erfc(abs(z) / math.sqrt(2.0))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, pval)
