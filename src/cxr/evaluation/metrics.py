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
No scikit-learn or scipy at run time. Bootstrap CIs and the DeLong test are in
:mod:`cxr.evaluation.significance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# validation ------------------------------------------------------------------------------
def check_binary(
    y: np.ndarray, p: np.ndarray, need_both: bool = False
) -> tuple[np.ndarray, np.ndarray]:
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
        raise ValueError(
            f"p holds {int((~np.isfinite(p)).sum())} NaN/inf scores; every image needs a score"
        )
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


def precision_recall_curve(
    y: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        float(threshold),
        tp,
        fp,
        tn,
        fn,
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
        return {
            k: [
                None if isinstance(v, float) and math.isnan(v) else v
                for v in getattr(self, k).tolist()
            ]
            for k in ("edges", "count", "mean_predicted", "fraction_positive")
        }


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> ReliabilityBins:
    """Per-bin count, mean probability and observed fraction of positives (the binning
    of scikit-learn's ``calibration_curve(strategy="uniform")``). ``p`` must lie in [0, 1]."""
    y, p = check_binary(y, p)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if len(p) and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"calibration needs probabilities in [0, 1]; scores span [{p.min():g}, {p.max():g}]"
        )
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
