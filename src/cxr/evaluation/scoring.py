"""Evaluate probabilities against labels: per-label and summary metrics, and comparisons.

:func:`evaluate` takes ``labels`` (N, L) 1/0/NaN and ``probs`` (N, L) in [0, 1] (NaN = no
prediction, skipped for that label) and returns an :class:`EvaluationReport`:

- per label: images scored, positives, prevalence, AUC with a patient-bootstrap CI,
  average precision, ECE, and, **only when thresholds chosen elsewhere are given**, the
  operating point (sensitivity, specificity, PPV, NPV, F1, TP/FP/TN/FN). A test set never
  picks its own thresholds: use :func:`evaluate_with_validation` to choose them on
  validation data and apply them to test.
- summary: macro AUC over labels with both classes (the others listed with the reason),
  micro AUC (all known label cells pooled), macro average precision (same labels as the
  macro AUC), pooled ECE and reliability bins.

The report's own form (JSON, text, Markdown) is in :mod:`cxr.evaluation.evaluation_report`;
comparisons of two predictors are in :mod:`cxr.evaluation.comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cxr.evaluation.evaluation_report import EvaluationReport
from cxr.evaluation.label_results import LabelCurves, LabelResult
from cxr.evaluation.metrics import (
    average_precision,
    confusion_at,
    expected_calibration_error,
    precision_recall_curve,
    reliability_bins,
    roc_auc,
    roc_curve,
)
from cxr.evaluation.significance import bootstrap_auc_ci_many
from cxr.evaluation.thresholds import Thresholds, choose_thresholds

__all__ = ["EvaluationReport", "check_inputs", "evaluate", "evaluate_with_validation"]


def check_inputs(
    labels, probs, names, patient_ids
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    names = [str(n) for n in names]
    if labels.ndim != 2 or probs.shape != labels.shape or labels.shape[1] != len(names):
        raise ValueError(
            f"labels {labels.shape} and probs {probs.shape} must both be (N, L) with L = "
            f"{len(names)} names"
        )
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 1, 0 or NaN (unknown)")
    finite = probs[~np.isnan(probs)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(
            f"probabilities must lie in [0, 1]; found [{finite.min():g}, {finite.max():g}] "
            "(apply a sigmoid to logits)"
        )
    notes = []
    if patient_ids is None:
        patient_ids = np.arange(len(labels)).astype(str)
        notes.append(
            "no patient ids given: the bootstrap resamples images as if each were its own patient"
        )
    patient_ids = np.asarray(patient_ids).astype(str)
    if patient_ids.shape != (len(labels),):
        raise ValueError(f"patient_ids must have shape ({len(labels)},), got {patient_ids.shape}")
    return labels, probs, patient_ids, notes


def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    patient_ids: np.ndarray | None = None,
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    notes: Sequence[str] = (),
    sources: Mapping[str, str] | None = None,
) -> EvaluationReport:
    """Evaluate ``probs`` (N, L) against ``labels`` (N, L) for the L ``names``.

    ``patient_ids`` (N,) drive the bootstrap (None: each image its own patient);
    ``thresholds`` (label -> probability, chosen on *other* data) enable the operating-point
    metrics; ``n_bootstrap=0`` skips the CIs. ``notes`` and ``sources`` are carried into
    the report (e.g. the alignment notes and file names).
    """
    labels, probs, patient_ids, extra = check_inputs(labels, probs, names, patient_ids)
    names = [str(n) for n in names]
    usable = ~np.isnan(labels) & ~np.isnan(probs)
    masked = np.where(usable, labels, np.nan)
    rows: list[LabelResult] = []
    curves: dict[str, LabelCurves] = {}
    excluded: dict[str, str] = {}
    both = []
    for j, name in enumerate(names):
        y, p = labels[usable[:, j], j], probs[usable[:, j], j]
        row = LabelResult(
            name,
            len(y),
            int(y.sum()),
            int(np.isnan(labels[:, j]).sum()),
            int((np.isnan(probs[:, j]) & ~np.isnan(labels[:, j])).sum()),
        )
        notes_j = []
        if len(y):
            row.ece = expected_calibration_error(y, p, n_bins)
            row.brier = float(np.mean((p - y) ** 2))
            row.reliability = reliability_bins(y, p, n_bins)
        if row.n_positive == 0 or row.n_negative == 0:
            why = (
                "no labelled images"
                if row.n == 0
                else (
                    f"no {'positive' if row.n_positive == 0 else 'negative'} images "
                    f"({row.n_positive} positive of {row.n}): AUC undefined"
                )
            )
            excluded[name] = why
            notes_j.append(why)
        else:
            both.append(j)
            row.auc, row.average_precision = roc_auc(y, p), average_precision(y, p)
        if thresholds is not None:
            if name in thresholds:
                row.operating = confusion_at(y, p, float(thresholds[name]))
            else:
                why = getattr(thresholds, "notes", {}).get(
                    name, f"no threshold was given for {name}"
                )
                notes_j.append(why)
        row.note = "; ".join(notes_j)
        if j in both:
            fpr, tpr, _ = roc_curve(y, p)
            prec, rec, _ = precision_recall_curve(y, p)
            curves[name] = LabelCurves(
                fpr, tpr, prec, rec, row.auc, row.average_precision, row.prevalence, row.operating
            )
        rows.append(row)
    if n_bootstrap and both:
        cis = bootstrap_auc_ci_many(
            masked[:, both], np.nan_to_num(probs[:, both]), patient_ids, n_bootstrap, seed, alpha
        )
        for j, ci in zip(both, cis, strict=True):
            rows[j].auc_ci_low, rows[j].auc_ci_high, rows[j].ci_resamples = (
                ci.low,
                ci.high,
                ci.n_valid,
            )
            if ci.n_valid < ci.n_requested:
                extra.append(
                    f"{names[j]}: {ci.n_requested - ci.n_valid} of {ci.n_requested} bootstrap "
                    "resamples drew one class only and were left out of its CI"
                )
    pooled_y, pooled_p = masked[usable], probs[usable]
    has_both = pooled_y.size and 0 < pooled_y.sum() < pooled_y.size
    described: str | None
    if isinstance(thresholds, Thresholds):
        described = thresholds.describe()
    else:
        described = None if thresholds is None else "given by the caller"
    return EvaluationReport(
        rows,
        macro_auc=float(np.mean([rows[j].auc for j in both])) if both else math.nan,
        macro_auc_labels=[names[j] for j in both],
        excluded=excluded,
        micro_auc=roc_auc(pooled_y, pooled_p) if has_both else math.nan,
        macro_average_precision=float(np.mean([rows[j].average_precision for j in both]))
        if both
        else math.nan,
        ece=expected_calibration_error(pooled_y, pooled_p, n_bins) if pooled_y.size else math.nan,
        reliability=reliability_bins(pooled_y, pooled_p, n_bins),
        brier=float(np.mean((pooled_p - pooled_y) ** 2)) if pooled_y.size else math.nan,
        n_images=len(labels),
        n_patients=len(np.unique(patient_ids)),
        thresholds=described,
        settings={
            "n_bootstrap": int(n_bootstrap),
            "seed": int(seed),
            "alpha": float(alpha),
            "n_bins": int(n_bins),
        },
        notes=extra + list(notes),
        curves=curves,
        sources=dict(sources or {}),
    )


def evaluate_with_validation(
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    names: Sequence[str],
    test_patient_ids: np.ndarray | None = None,
    method: str = "youden",
    target: float = 0.9,
    val_source: str = "validation data",
    **options,
) -> tuple[EvaluationReport, Thresholds]:
    """Choose thresholds on validation (``val_*`` (Nv, L)) and evaluate test (``test_*``
    (Nt, L)) at them; the test labels play no part in the choice. ``options`` go to
    :func:`evaluate`. Returns the report and the thresholds applied."""
    chosen = choose_thresholds(val_labels, val_probs, names, method, target, source=val_source)
    return evaluate(
        test_labels, test_probs, names, test_patient_ids, thresholds=chosen, **options
    ), chosen
