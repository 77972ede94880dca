"""cxr.evaluation.evaluation_report: the report's JSON, text and Markdown forms."""

from __future__ import annotations

import json
import math

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.evaluation import EvaluationReport, evaluate
from cxr.evaluation.evaluation_report import EvaluationReport as here


def _report(thresholds=None) -> EvaluationReport:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (60, 2)).astype(float)
    labels[:, 1] = 0.0  # one class only: left out of the macro AUC
    probs = np.clip(labels * 0.4 + rng.random((60, 2)) * 0.6, 0, 1)
    return evaluate(labels, probs, ["Mass", "Nodule"], n_bootstrap=20, thresholds=thresholds)


def test_the_class_is_the_one_scoring_returns():
    assert here is EvaluationReport and isinstance(_report(), here)


def test_json_is_strict_and_names_what_was_left_out():
    d = _report().to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN became null
    assert d["research_notice"] == RESEARCH_NOTICE and "cxr_version" in d
    assert "Nodule" in json.loads(text)["excluded_from_macro"]
    assert d["macro_auc_labels"] == ["Mass"] and d["summary"]["n_images"] == 60


def test_text_and_markdown_show_thresholds_only_when_given():
    plain = _report()
    assert "operating thresholds:" in plain.to_text()
    assert plain.to_markdown().startswith("# cxr evaluation report")
    assert "| threshold |" not in plain.to_markdown()
    with_t = _report({"Mass": 0.5, "Nodule": 0.5})
    assert with_t.thresholds and math.isfinite(with_t.macro_auc)
    assert "| threshold |" in with_t.to_markdown()
    assert "operating thresholds: given by the caller" in with_t.to_markdown()
