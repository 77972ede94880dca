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

Comparisons of two predictors are in :mod:`cxr.evaluation.comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.evaluation.label_results import (
    NO_THRESHOLDS,
    OP_KEYS,
    LabelCurves,
    LabelResult,
    fmt,
    json_safe,
)
from cxr.evaluation.metrics import (
    ReliabilityBins,
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


@dataclass
class EvaluationReport:
    """Per-label results and the summary. ``to_dict()`` keys are stable (absent values
    are null); ``curves`` and ``reliability`` feed the figures (:mod:`cxr.evaluation.report`)."""

    labels: list[LabelResult]
    macro_auc: float
    macro_auc_labels: list[str]
    excluded: dict[str, str]
    micro_auc: float
    macro_average_precision: float
    ece: float
    reliability: ReliabilityBins
    n_images: int
    n_patients: int
    thresholds: str | None
    settings: dict
    notes: list[str] = field(default_factory=list)
    curves: dict[str, LabelCurves] = field(default_factory=dict, repr=False)
    sources: dict[str, str] = field(default_factory=dict)
    #: pooled Brier score (mean squared error of the probabilities)
    brier: float = math.nan
    #: ECE and Brier before/after the model's calibration
    #: (:func:`cxr.evaluation.calibration_check.calibration_table`), None without one
    calibration: dict | None = None

    def label(self, name: str) -> LabelResult:
        for row in self.labels:
            if row.name == name:
                return row
        raise KeyError(f"no label {name!r} in this report; it has {[r.name for r in self.labels]}")

    def to_dict(self) -> dict:
        return {
            "research_notice": RESEARCH_NOTICE,
            "cxr_version": __version__,
            "sources": dict(self.sources),
            "summary": {
                k: json_safe(v)
                for k, v in {
                    "n_images": self.n_images,
                    "n_patients": self.n_patients,
                    "n_labels": len(self.labels),
                    "macro_auc": self.macro_auc,
                    "macro_auc_n_labels": len(self.macro_auc_labels),
                    "micro_auc": self.micro_auc,
                    "macro_average_precision": self.macro_average_precision,
                    "ece": self.ece,
                    "brier": self.brier,
                }.items()
            },
            "calibration": _json_tree(self.calibration),
            "macro_auc_labels": list(self.macro_auc_labels),
            "excluded_from_macro": dict(self.excluded),
            "thresholds": self.thresholds,
            "labels": [row.to_dict() for row in self.labels],
            "reliability": self.reliability.to_dict(),
            "settings": dict(self.settings),
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        """The per-label table and the summary, as ``cxr evaluate`` prints them."""
        pct = round(100 * (1 - self.settings.get("alpha", 0.05)))
        has_op = any(r.operating is not None for r in self.labels)
        lines = [
            RESEARCH_NOTICE,
            f"{self.n_images} images of {self.n_patients} patients; labels from "
            f"{self.sources.get('labels', '?')}",
            f"{'label':<20} {'n':>6} {'pos':>5}  {'AUC':>6}  {pct}% CI"
            + (f"          {'thresh':>6} {'sens':>5} {'spec':>5}" if has_op else ""),
        ]
        for r in self.labels:
            line = (
                f"{r.name:<20} {r.n:>6} {r.n_positive:>5}  {fmt(r.auc, 4):>6}  "
                f"{fmt(r.auc_ci_low)}-{fmt(r.auc_ci_high)}"
            )
            if r.operating is not None:
                op = r.operating
                line += (
                    f"    {op.threshold:>6.3g} {fmt(op.sensitivity, 2):>5} "
                    f"{fmt(op.specificity, 2):>5}"
                )
            lines.append(line)
        left_out = "".join(f"; left out: {k} ({v})" for k, v in self.excluded.items())
        lines += [
            f"macro AUC {fmt(self.macro_auc, 4)} over {len(self.macro_auc_labels)} labels"
            f"{left_out}",
            f"micro AUC {fmt(self.micro_auc, 4)}, macro AP "
            f"{fmt(self.macro_average_precision, 4)}, ECE {fmt(self.ece, 4)}, "
            f"Brier {fmt(self.brier, 4)}",
            f"operating thresholds: {self.thresholds or NO_THRESHOLDS}",
        ]
        if self.calibration:
            from cxr.evaluation.calibration_check import calibration_lines

            lines += calibration_lines(self.calibration)
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        pct = round(100 * (1 - self.settings.get("alpha", 0.05)))
        lines = ["# cxr evaluation report", "", f"> **{RESEARCH_NOTICE}**", ""]
        lines += [f"- {k}: {v}" for k, v in self.sources.items()]
        lines += [
            f"- images: {self.n_images} ({self.n_patients} patients), labels: {len(self.labels)}",
            "",
            "## Summary",
            "",
            "| metric | value |",
            "|---|---|",
            f"| macro AUC ({len(self.macro_auc_labels)} labels) | {fmt(self.macro_auc)} |",
            f"| micro AUC | {fmt(self.micro_auc)} |",
            f"| macro average precision | {fmt(self.macro_average_precision)} |",
            (
                f"| expected calibration error (pooled, {self.settings.get('n_bins')} bins) "
                f"| {fmt(self.ece)} |"
            ),
            f"| Brier score (pooled) | {fmt(self.brier)} |",
            "",
        ]
        if self.calibration:
            from cxr.evaluation.calibration_check import calibration_markdown

            lines += calibration_markdown(self.calibration)
        for name, why in self.excluded.items():
            lines.append(f"- left out of the macro AUC: **{name}**: {why}")
        show_op = any(r.operating for r in self.labels)
        head = f"| label | n | positives | prevalence | AUC | {pct}% CI | AP | ECE | Brier |"
        head += (
            " threshold | TP | FP | TN | FN | sensitivity | specificity | PPV | NPV | F1 |"
            if show_op
            else ""
        )
        lines += [
            f"- operating thresholds: {self.thresholds or NO_THRESHOLDS}",
            "",
            "## Per label",
            "",
            head,
            "|---" * (19 if show_op else 9) + "|",
        ]
        for r in self.labels:
            op = r.operating.to_dict() if r.operating else {}
            cells = [
                r.name,
                r.n,
                r.n_positive,
                fmt(r.prevalence),
                fmt(r.auc),
                f"{fmt(r.auc_ci_low)} to {fmt(r.auc_ci_high)}",
                fmt(r.average_precision),
                fmt(r.ece),
                fmt(r.brier),
            ]
            cells += [fmt(op.get(k)) for k in OP_KEYS] if show_op else []
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        notes = [f"{r.name}: {r.note}" for r in self.labels if r.note] + list(self.notes)
        if notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        s = self.settings
        lines += [
            "",
            (
                f"AUC CIs: {s.get('n_bootstrap')} bootstrap resamples of patients "
                f"(seed {s.get('seed')}), percentile intervals."
            ),
            "",
        ]
        return "\n".join(lines)


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


def _json_tree(value):
    """Nested dicts/lists with NaN as None (for the report's JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    return json_safe(value)
