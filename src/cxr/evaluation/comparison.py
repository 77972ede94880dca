"""Do two predictors on the same images differ? Per-label AUC difference (DeLong test) with a
paired patient-bootstrap CI of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.evaluation.label_results import fmt, json_safe
from cxr.evaluation.scoring import check_inputs
from cxr.evaluation.significance import (
    bootstrap_auc_diff_ci,
    bootstrap_macro_auc_diff,
    delong_test,
)

__all__ = ["ComparisonReport", "ComparisonRow", "compare"]


@dataclass
class ComparisonRow:
    """AUC of A and B on one label's images, their difference (A - B), DeLong z and
    two-sided p-value, and the paired patient-bootstrap CI of the difference."""

    name: str
    n: int
    n_positive: int
    auc_a: float = math.nan
    auc_b: float = math.nan
    diff: float = math.nan
    se: float = math.nan
    z: float = math.nan
    p_value: float = math.nan
    diff_ci_low: float = math.nan
    diff_ci_high: float = math.nan
    note: str = ""

    def to_dict(self) -> dict:
        return {("label" if k == "name" else k): json_safe(v) for k, v in self.__dict__.items()}


@dataclass
class ComparisonReport:
    """Per-label comparison of predictors A and B on the same images."""

    rows: list[ComparisonRow]
    model_names: tuple[str, str]
    n_images: int
    settings: dict
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    #: paired patient-bootstrap CI of the macro difference and its two-sided p-value
    #: (NaN when the bootstrap was skipped)
    macro_ci: tuple[float, float] = (math.nan, math.nan)
    macro_p: float = math.nan

    @property
    def compared(self) -> list[ComparisonRow]:
        return [r for r in self.rows if not math.isnan(r.diff)]

    def macro(self) -> tuple[float, float]:
        rows = self.compared
        if not rows:
            return math.nan, math.nan
        return float(np.mean([r.auc_a for r in rows])), float(np.mean([r.auc_b for r in rows]))

    def to_dict(self) -> dict:
        a, b = self.macro()
        return {
            "research_notice": RESEARCH_NOTICE,
            "cxr_version": __version__,
            "sources": dict(self.sources),
            "models": list(self.model_names),
            "n_images": self.n_images,
            "summary": {
                "macro_auc_a": json_safe(a),
                "macro_auc_b": json_safe(b),
                "macro_diff": json_safe(a - b),
                "macro_diff_ci": [json_safe(v) for v in self.macro_ci],
                "macro_p_value": json_safe(self.macro_p),
                "n_labels": len(self.compared),
            },
            "labels": [r.to_dict() for r in self.rows],
            "settings": dict(self.settings),
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        a, b = self.model_names
        ma, mb = self.macro()
        pct = round(100 * (1 - self.settings.get("alpha", 0.05)))
        lines = [f"# cxr comparison: {a} vs {b}", "", f"> **{RESEARCH_NOTICE}**", ""]
        lines += [f"- {k}: {v}" for k, v in self.sources.items()]
        lines += [
            (
                f"- images: {self.n_images}; macro AUC {a} {fmt(ma)}, {b} {fmt(mb)}, difference "
                f"{fmt(ma - mb)} over {len(self.compared)} labels"
                + (
                    f" ({pct}% CI {fmt(self.macro_ci[0])} to {fmt(self.macro_ci[1])}, "
                    f"paired patient bootstrap p = {fmt(self.macro_p, 4)})"
                    if not math.isnan(self.macro_p)
                    else ""
                )
            ),
            "",
            (
                f"| label | n | positives | AUC {a} | AUC {b} | difference "
                f"| {pct}% CI (bootstrap) | DeLong z | p-value |"
            ),
            "|---" * 9 + "|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.n} | {r.n_positive} | {fmt(r.auc_a)} | {fmt(r.auc_b)} "
                f"| {fmt(r.diff)} | {fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)} "
                f"| {fmt(r.z, 2)} | {fmt(r.p_value, 4)} |"
            )
        notes = [f"{r.name}: {r.note}" for r in self.rows if r.note] + list(self.notes)
        lines += [
            "",
            "p-values are per label, two-sided, not adjusted for the number of labels compared.",
            "",
        ]
        return "\n".join(lines + [f"- {n}" for n in notes] + [""])


def compare(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    names: Sequence[str],
    patient_ids: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    model_names: tuple[str, str] = ("A", "B"),
    notes: Sequence[str] = (),
    sources: Mapping[str, str] | None = None,
) -> ComparisonReport:
    """Per-label AUC(A) - AUC(B) on the images where the label and both predictions are
    known: DeLong test plus a paired patient-bootstrap CI (``n_bootstrap=0`` skips it).
    Arrays are (N, L); ``patient_ids`` (N,)."""
    labels, probs_a, patient_ids, extra = check_inputs(labels, probs_a, names, patient_ids)
    _, probs_b, _, _ = check_inputs(labels, probs_b, names, patient_ids)
    rows = []
    for j, name in enumerate(names):
        ok = ~np.isnan(labels[:, j]) & ~np.isnan(probs_a[:, j]) & ~np.isnan(probs_b[:, j])
        y = labels[ok, j]
        row = ComparisonRow(str(name), int(ok.sum()), int(y.sum()))
        if row.n_positive == 0 or row.n_positive == row.n:
            row.note = f"not compared: {row.n_positive} positive of {row.n} images, AUC undefined"
        else:
            d = delong_test(y, probs_a[ok, j], probs_b[ok, j])
            row.auc_a, row.auc_b, row.diff, row.se, row.z, row.p_value = (
                d.auc1,
                d.auc2,
                d.diff,
                d.se,
                d.z,
                d.p_value,
            )
            if n_bootstrap:
                ci = bootstrap_auc_diff_ci(
                    y, probs_a[ok, j], probs_b[ok, j], patient_ids[ok], n_bootstrap, seed, alpha
                )
                row.diff_ci_low, row.diff_ci_high = ci.low, ci.high
        rows.append(row)
    macro_ci, macro_p = (math.nan, math.nan), math.nan
    compared = [j for j, r in enumerate(rows) if not math.isnan(r.diff)]
    if n_bootstrap and compared:
        known = ~np.isnan(probs_a[:, compared]) & ~np.isnan(probs_b[:, compared])
        masked = np.where(known, labels[:, compared], np.nan)
        ci, macro_p = bootstrap_macro_auc_diff(
            masked,
            np.nan_to_num(probs_a[:, compared]),
            np.nan_to_num(probs_b[:, compared]),
            patient_ids,
            n_bootstrap,
            seed,
            alpha,
        )
        macro_ci = (ci.low, ci.high)
    return ComparisonReport(
        rows,
        (str(model_names[0]), str(model_names[1])),
        len(labels),
        {"n_bootstrap": int(n_bootstrap), "seed": int(seed), "alpha": float(alpha)},
        extra + list(notes),
        dict(sources or {}),
        macro_ci,
        macro_p,
    )
