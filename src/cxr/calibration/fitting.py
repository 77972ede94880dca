"""Fitting the calibration maps on validation predictions (:func:`fit_calibration`).

Every map is fitted on the *shifted* logits ``logit(p) - shift`` (the training loss's prior
shift undone, :func:`cxr.losses.prior_shift`), so that a label the validation set says
little about stays near the prior-corrected probability. Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cxr.calibration.maps import CALIBRATION_METHODS, Calibration, LabelMap, _logit, _sigmoid

__all__ = ["FALLBACKS", "INTERCEPT_RIDGE", "fit_calibration"]

#: How labels with too few positive or negative validation images are calibrated:
#: ``intercept`` (default): one slope shared by those labels and an intercept per label,
#: pulled toward 0 (the prior-corrected score); ``temperature``: the temperature fitted on
#: all labels pooled (cxr before the prior shift; it cannot move a label's intercept).
FALLBACKS: tuple[str, ...] = ("intercept", "temperature")
#: Ridge on each fallback label's intercept (a Gaussian prior of standard deviation
#: 1/sqrt(2) log-odds around the prior-corrected score): a label with 2 validation
#: positives moves about half-way to its own maximum-likelihood intercept.
INTERCEPT_RIDGE = 2.0
_ISO_BLEND = 1e-3  # isotonic fits are blended with the identity to be strictly increasing
_MIN_SLOPE = 1e-3


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, z) - y * z))


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T minimising the log-loss of sigmoid(logit / T) (golden-section on log T)."""
    lo, hi = math.log(0.05), math.log(50.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits / math.exp(a), y), _nll(logits / math.exp(b), y)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits / math.exp(a), y)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits / math.exp(b), y)
    return math.exp((lo + hi) / 2)


def _smoothed(y: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets: (n+ + 1) / (n+ + 2) for positives, 1 / (n- + 2) else."""
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def _newton(
    z: np.ndarray,
    group: np.ndarray,
    target: np.ndarray,
    ridge: np.ndarray,
    centre: np.ndarray,
    start: np.ndarray | None = None,
    floor: float = -math.inf,
) -> np.ndarray:
    """``w = (a, b_0 .. b_{k-1})`` minimising the log-loss of ``sigmoid(a * z + b_group)``
    against ``target`` plus ``ridge / 2 * (w - centre)^2``, with ``a >= floor``: Newton's
    method with step halving, from ``start`` (default ``centre``). z, group (ints in
    [0, k)), target: (N,); ridge, centre, start: (k + 1,)."""
    k = len(ridge) - 1

    def loss(v: np.ndarray) -> float:
        eta = v[0] * z + v[1:][group]
        d = v - centre
        return float(np.sum(np.logaddexp(0, eta) - target * eta) + 0.5 * np.sum(ridge * d * d))

    w = np.array(centre if start is None else start, np.float64)
    current = loss(w)
    for _ in range(100):
        p = _sigmoid(w[0] * z + w[1:][group])
        r, h = p - target, p * (1 - p)
        grad = ridge * (w - centre)
        grad[0] += np.sum(r * z)
        grad[1:] += np.bincount(group, r, k)
        hess = np.diag(ridge)
        hess[0, 0] += np.sum(h * z * z)
        hess[0, 1:] = hess[1:, 0] = np.bincount(group, h * z, k)
        hess[1:, 1:] += np.diag(np.bincount(group, h, k))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = w - t * step
            if trial[0] >= floor:
                new = loss(trial)
                if new <= current:
                    break
            t /= 2
        else:
            break
        w, current = trial, new
        if np.abs(t * step).max() < 1e-10:
            break
    return w


def _fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit + b): Newton's method with step halving on Platt's
    smoothed targets and a small ridge, so that separable data (a model that ranks its
    validation set perfectly) still gives a finite, moderate slope."""
    ridge = np.full(2, 1e-3 * len(y))
    group = np.zeros(len(y), np.intp)
    w = _newton(logits, group, _smoothed(y), ridge, np.zeros(2), start=np.array([1.0, 0.0]))
    return float(w[0]), float(w[1])


def _fit_shared_slope(
    logits: Sequence[np.ndarray], ys: Sequence[np.ndarray]
) -> tuple[float, list[float]]:
    """One slope ``a > 0`` and an intercept ``b_l`` per label, fitted jointly, of
    ``sigmoid(a * logit + b_l)`` on the labels' logits and 0/1 labels (Platt's smoothed
    targets per label). Each ``b_l`` has the ridge :data:`INTERCEPT_RIDGE` toward 0, the
    slope a small one toward 1, so that a label without positives keeps a finite map."""
    k = len(logits)
    z = np.concatenate([np.asarray(v, np.float64) for v in logits])
    group = np.repeat(np.arange(k), [len(v) for v in logits])
    target = np.concatenate([_smoothed(y) for y in ys])
    ridge = np.concatenate([[1e-3 * max(len(z), 1)], np.full(k, INTERCEPT_RIDGE)])
    centre = np.concatenate([[1.0], np.zeros(k)])
    w = _newton(z, group, target, ridge, centre, floor=_MIN_SLOPE)
    return float(w[0]), [float(b) for b in w[1:]]


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots of an isotonic fit of y on p: the pool-adjacent-violators blocks, each at its
    mean probability, blended with the identity (weight :data:`_ISO_BLEND`) and anchored
    at (0, 0) and (1, 1), so that the linear interpolation is strictly increasing."""
    order = np.argsort(p, kind="mergesort")
    xs, ys = p[order], y[order].astype(np.float64)
    values: list[float] = []
    weights: list[float] = []
    sums: list[float] = []  # sum of p in each block
    for xv, v in zip(xs, ys, strict=True):
        values.append(float(v))
        weights.append(1.0)
        sums.append(float(xv))
        while len(values) > 1 and values[-2] >= values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            sums[-2] += sums[-1]
            weights[-2] = w
            del values[-1], weights[-1], sums[-1]
    centres = np.array(sums) / np.array(weights)
    blended = (1 - _ISO_BLEND) * np.array(values) + _ISO_BLEND * centres
    keep = (centres > 0) & (centres < 1)
    x = np.concatenate([[0.0], centres[keep], [1.0]])
    v = np.concatenate([[0.0], blended[keep], [1.0]])
    return x.tolist(), np.clip(v, 0.0, 1.0).tolist()


def _shift_vector(
    shift: np.ndarray | Sequence[float] | Mapping[str, float] | None, names: Sequence[str]
) -> np.ndarray:
    """The (L,) log-odds shift, from an array in ``names`` order or a label -> value map."""
    if shift is None:
        return np.zeros(len(names))
    if isinstance(shift, Mapping):
        out = np.array([float(shift.get(n, 0.0)) for n in names])
    else:
        out = np.asarray(shift, np.float64).reshape(-1)
    if out.shape != (len(names),) or not np.all(np.isfinite(out)):
        raise ValueError(f"shift must be {len(names)} finite log-odds, one per label")
    return out


def fit_calibration(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    method: str = "platt",
    min_positives: int = 10,
    source: str = "",
    shift: np.ndarray | Sequence[float] | Mapping[str, float] | None = None,
    fallback: str = "intercept",
) -> Calibration:
    """Fit a calibration map per label on validation data.

    Args:
        labels: (N, L) 1/0/NaN (NaN rows skipped per label).
        probs: (N, L) the model's probabilities on the same images.
        names: the L label names.
        method: ``platt``, ``temperature`` or ``isotonic``.
        min_positives: labels with fewer positive or negative images (and labels whose own
            Platt fit does not increase) get the ``fallback``.
        source: where the data came from (kept in the result).
        shift: (L,) log-odds (or label -> log-odds) subtracted from every logit before the
            maps are fitted and applied: the prior shift of the training loss
            (:func:`cxr.losses.prior_shift`); None = 0. Stored in the result.
        fallback: one of :data:`FALLBACKS`.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
    labels = np.asarray(labels, np.float64)
    probs = np.asarray(probs, np.float64)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(
            f"labels {labels.shape} and probs {probs.shape} must both be (N, L), L = {len(names)}"
        )
    known = np.isfinite(labels) & np.isfinite(probs)
    if not known.any():
        raise ValueError("no validation image has both a known label and a probability")
    s = _shift_vector(shift, names)
    logits = _logit(probs) - s[None, :]  # the prior-corrected logits
    maps: dict[str, LabelMap] = {}
    fallback_labels: list[tuple[int, str]] = []  # (column, why)
    for j, name in enumerate(names):
        ok = known[:, j]
        y, z = labels[ok, j], logits[ok, j]
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if min(n_pos, n_neg) < min_positives:
            fallback_labels.append((j, f"{n_pos} positive, {n_neg} negative"))
        elif method == "temperature":
            maps[name] = LabelMap("temperature", {"t": _fit_temperature(z, y)})
        elif method == "platt":
            a, b = _fit_platt(z, y)
            if a > 1e-3:
                maps[name] = LabelMap("platt", {"a": a, "b": b})
            else:  # a label the model does not rank: keep the ranking, use the fallback
                fallback_labels.append((j, "no increasing fit"))
        else:
            x, v = _fit_isotonic(_sigmoid(z), y)
            maps[name] = LabelMap("isotonic", {"x": x, "y": v})
    notes = []
    if fallback_labels:
        rule = (
            f"fewer than {min_positives} positive or negative validation images "
            "(or no increasing fit of their own)"
        )
        if fallback == "temperature":
            shared_t = _fit_temperature(logits[known], labels[known])
            for j, _ in fallback_labels:
                maps[names[j]] = LabelMap("temperature", {"t": shared_t})
            head = f"shared temperature {shared_t:.3f} (all labels pooled) used for labels with"
            parts = [f"{names[j]} ({why})" for j, why in fallback_labels]
        else:
            cols = [j for j, _ in fallback_labels]
            a, bs = _fit_shared_slope(
                [logits[known[:, j], j] for j in cols], [labels[known[:, j], j] for j in cols]
            )
            for j, b in zip(cols, bs, strict=True):
                maps[names[j]] = LabelMap("platt", {"a": a, "b": b})
            head = (
                f"shared slope {a:.3f} with a per-label intercept (pulled toward the "
                "prior-corrected score) used for labels with"
            )
            parts = [
                f"{names[j]} ({why}; intercept {b:+.2f})"
                for (j, why), b in zip(fallback_labels, bs, strict=True)
            ]
        notes.append(f"{head} {rule}: " + ", ".join(parts))
    stored = {str(n): float(v) for n, v in zip(names, s, strict=True) if v != 0.0}
    if stored:
        notes.append(
            "the training loss's class weights shift each label's log-odds; undone before "
            "the maps: " + ", ".join(f"{n} {v:+.2f}" for n, v in stored.items())
        )
    return Calibration(method, maps, source, int(len(labels)), notes, stored)
