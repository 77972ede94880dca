"""Per-label result records of an evaluation, and the number formatting its reports share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cxr.evaluation.metrics import OperatingPoint, ReliabilityBins

__all__ = ["NO_THRESHOLDS", "OP_KEYS", "LabelCurves", "LabelResult", "fmt", "json_safe"]

NO_THRESHOLDS = (
    "no thresholds chosen on validation data were given, so sensitivity, specificity, "
    "PPV, NPV and F1 are not reported (a test set never picks its own thresholds)"
)
OP_KEYS = ("threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv", "f1")


def json_safe(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def fmt(value, digits: int = 3) -> str:
    """A number for tables; ``-`` for None/NaN."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)


@dataclass(frozen=True)
class LabelCurves:
    """Plot data of one label: ROC ``fpr``/``tpr`` and PR ``precision``/``recall`` arrays."""

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    auc: float
    average_precision: float
    prevalence: float
    operating: OperatingPoint | None = None


@dataclass
class LabelResult:
    """Metrics of one label. ``n`` images were scored (label known, prediction present);
    ``n_unknown`` had an unknown label, ``n_no_prediction`` a NaN probability. AUC, CI, AP
    are NaN without both classes (``note`` says why); ``operating`` is None without a
    threshold."""

    name: str
    n: int
    n_positive: int
    n_unknown: int
    n_no_prediction: int
    auc: float = math.nan
    auc_ci_low: float = math.nan
    auc_ci_high: float = math.nan
    ci_resamples: int = 0
    average_precision: float = math.nan
    ece: float = math.nan
    operating: OperatingPoint | None = None
    note: str = ""
    brier: float = math.nan
    #: per-bin calibration of this label (the per-label reliability diagram)
    reliability: ReliabilityBins | None = field(default=None, repr=False)

    @property
    def n_negative(self) -> int:
        return self.n - self.n_positive

    @property
    def prevalence(self) -> float:
        return self.n_positive / self.n if self.n else math.nan

    def to_dict(self) -> dict:
        out = {
            "label": self.name,
            "n": self.n,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "n_unknown": self.n_unknown,
            "n_no_prediction": self.n_no_prediction,
            "prevalence": self.prevalence,
            "auc": self.auc,
            "auc_ci_low": self.auc_ci_low,
            "auc_ci_high": self.auc_ci_high,
            "ci_resamples": self.ci_resamples,
            "average_precision": self.average_precision,
            "ece": self.ece,
            "brier": self.brier,
        }
        op = self.operating.to_dict() if self.operating else {}
        out.update({k: op.get(k) for k in OP_KEYS})
        out["note"] = self.note
        return {k: json_safe(v) for k, v in out.items()}
