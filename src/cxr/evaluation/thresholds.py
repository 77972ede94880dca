"""Operating thresholds per label, chosen on validation data and applied unchanged to test.

A threshold ``t`` calls an image positive when its probability is ``>= t``. Two rules:

- ``"youden"`` (default): maximise sensitivity + specificity - 1
  (:func:`cxr.evaluation.metrics.youden_threshold`);
- ``"sensitivity"``: the highest threshold reaching a target sensitivity, e.g. 0.9
  (:func:`cxr.evaluation.metrics.threshold_for_sensitivity`).

A label whose validation data lack a class gets **no** threshold, and a note saying why;
its operating-point metrics are then reported as absent, never computed from the test set.
:class:`Thresholds` (the record, :mod:`cxr.thresholds`, re-exported here) saves to / loads
from JSON (``{"method", "target", "thresholds", "notes"}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr.choices import THRESHOLD_METHODS
from cxr.evaluation.metrics import threshold_for_sensitivity, youden_threshold
from cxr.thresholds import Thresholds

__all__ = ["METHODS", "Thresholds", "choose_thresholds"]

METHODS: tuple[str, ...] = THRESHOLD_METHODS


def choose_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    method: str = "youden",
    target: float = 0.9,
    source: str = "",
) -> Thresholds:
    """Choose one threshold per label on validation data.

    Args:
        labels: (N, L) 1/0/NaN; NaN (unknown) rows are skipped for that label.
        probs: (N, L) probabilities; NaN rows are skipped for that label.
        names: the L label names.
        method: ``"youden"`` or ``"sensitivity"`` (then ``target`` in (0, 1]).
        source: where the validation data came from (kept in the result).

    Returns:
        :class:`Thresholds` (a ``Mapping[str, float]``); labels lacking positives (or, for
        Youden, negatives) are absent from it and explained in ``.notes``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
        raise ValueError(
            f"labels {labels.shape} and probs {probs.shape} must both be (N, L) with L = "
            f"{len(names)} label names"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "sensitivity" and not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    for j, name in enumerate(names):
        ok = ~np.isnan(labels[:, j]) & ~np.isnan(probs[:, j])
        y, p = labels[ok, j], probs[ok, j]
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or (method == "youden" and n_neg == 0):
            missing = "positive" if n_pos == 0 else "negative"
            notes[name] = (
                f"no threshold: the validation data have no {missing} images "
                f"for {name} ({n_pos} positive, {n_neg} negative)"
            )
            continue
        if method == "youden":
            values[name] = youden_threshold(y, p)
        else:
            values[name] = threshold_for_sensitivity(y, p, target)
    return Thresholds(
        values, method, float(target) if method == "sensitivity" else None, notes, source
    )
