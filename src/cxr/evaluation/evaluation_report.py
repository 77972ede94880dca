"""The result of an evaluation: :class:`EvaluationReport`, per-label results and the summary,
as JSON (``to_dict``), text (``to_text``) and Markdown (``to_markdown``).

Computed by :func:`cxr.evaluation.scoring.evaluate`; drawn by :mod:`cxr.evaluation.report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cxr import RESEARCH_NOTICE, __version__
from cxr.evaluation.label_results import (
    NO_THRESHOLDS,
    OP_KEYS,
    LabelCurves,
    LabelResult,
    fmt,
    json_safe,
)
from cxr.evaluation.metrics import ReliabilityBins

__all__ = ["EvaluationReport"]


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


def _json_tree(value):
    """Nested dicts/lists with NaN as None (for the report's JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    return json_safe(value)
