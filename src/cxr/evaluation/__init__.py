"""Evaluation: metrics, thresholds chosen on validation, reports, comparisons, localisation.

- :func:`evaluate_model` / :func:`evaluate_predictions` — the whole pipeline on a labelled
  source, returning an :class:`Evaluation` (``to_text()``, ``save(out)``);
- :func:`evaluate` — scores of probability and label arrays (:class:`EvaluationReport`);
- :func:`compare` — two predictors on the same images (DeLong, paired bootstrap);
- :mod:`~cxr.evaluation.metrics`, :mod:`~cxr.evaluation.significance` — AUC, curves,
  calibration, bootstrap CIs and DeLong;
- :mod:`~cxr.evaluation.thresholds` — operating thresholds chosen on validation data;
- :mod:`~cxr.evaluation.predictions` — prediction CSVs and their pairing with labels;
- :mod:`~cxr.evaluation.report` and :mod:`~cxr.evaluation.plots` — Markdown, JSON, HTML, PNG;
- :mod:`~cxr.evaluation.localization` — does the heatmap point at the finding?

Research use only: the figures describe a model, they are not a diagnosis.
"""

from cxr.evaluation.comparison import ComparisonReport, compare
from cxr.evaluation.label_results import fmt
from cxr.evaluation.pipeline import (
    Evaluation,
    EvaluationError,
    ValidationPredictions,
    evaluate_model,
    evaluate_predictions,
    load_labels,
)
from cxr.evaluation.predictions import Predictions, read_predictions, write_predictions
from cxr.evaluation.scoring import EvaluationReport, evaluate, evaluate_with_validation
from cxr.evaluation.thresholds import Thresholds, choose_thresholds

__all__ = [
    "ComparisonReport",
    "Evaluation",
    "EvaluationError",
    "EvaluationReport",
    "Predictions",
    "Thresholds",
    "ValidationPredictions",
    "choose_thresholds",
    "compare",
    "evaluate",
    "evaluate_model",
    "evaluate_predictions",
    "evaluate_with_validation",
    "fmt",
    "load_labels",
    "read_predictions",
    "write_predictions",
]
