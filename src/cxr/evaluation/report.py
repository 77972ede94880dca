"""Write an evaluation (or comparison) to a folder: Markdown, JSON, one self-contained HTML
file and PNG figures.

:func:`write_report` writes into ``out_dir``:

- ``report.md``: :meth:`EvaluationReport.to_markdown` plus links to the figures;
- ``report.json``: :meth:`EvaluationReport.to_dict` (stable keys, null for absent values);
- ``report.html``: one file, figures embedded as ``data:image/png;base64`` URIs, the
  research-use notice at the top; opens in any browser without the other files;
- ``roc_all.png``, ``roc_<label>.png`` (one per label with both classes), ``pr_all.png``,
  ``reliability.png``.

Label names become file names with characters other than letters, digits, ``_`` and ``-``
replaced by ``_``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import Path

from cxr.evaluation.comparison import ComparisonReport
from cxr.evaluation.label_results import NO_THRESHOLDS, LabelCurves, fmt
from cxr.evaluation.plots import (
    auc_diff_png,
    pr_all_png,
    reliability_labels_png,
    reliability_png,
    roc_all_png,
    roc_png,
)
from cxr.evaluation.scoring import EvaluationReport
from cxr.htmlpage import figure as _img
from cxr.htmlpage import notes as _notes_html
from cxr.htmlpage import page as _page
from cxr.htmlpage import table as _table


def safe_name(label: str) -> str:
    """A label as a file-name part: ``Pleural Other`` -> ``Pleural_Other``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", label)


def render_html(report: EvaluationReport, figures: Mapping[str, bytes]) -> str:
    """The report as one HTML page; ``figures`` maps figure keys (``roc_all``,
    ``pr_all``, ``reliability``, ``roc_<label>``) to PNG bytes, embedded inline."""
    d = report.to_dict()
    s = d["summary"]
    pct = round(100 * (1 - report.settings.get("alpha", 0.05)))
    sources = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in report.sources.items()
    )
    summary = _table(
        ("metric", "value"),
        [
            ("images (patients)", f"{s['n_images']} ({s['n_patients']})"),
            (f"macro AUC ({s['macro_auc_n_labels']} labels)", fmt(report.macro_auc)),
            ("micro AUC", fmt(report.micro_auc)),
            ("macro average precision", fmt(report.macro_average_precision)),
            (
                f"expected calibration error (pooled, {report.settings.get('n_bins')} bins)",
                fmt(report.ece),
            ),
            ("Brier score (pooled)", fmt(report.brier)),
        ],
    )
    excluded = "".join(
        f"<li>left out of the macro AUC: <b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in report.excluded.items()
    )
    thresholds = html.escape(report.thresholds or "absent: " + NO_THRESHOLDS)
    show_op = any(r.operating for r in report.labels)
    headers = ["label", "n", "positives", "prevalence", "AUC", f"{pct}% CI", "AP", "ECE", "Brier"]
    op_keys = (
        "threshold",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "tp",
        "fp",
        "tn",
        "fn",
    )
    if show_op:
        headers += [
            "threshold",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "F1",
            "TP",
            "FP",
            "TN",
            "FN",
        ]
    rows = []
    for r in d["labels"]:
        row = [
            r["label"],
            r["n"],
            r["n_positive"],
            fmt(r["prevalence"]),
            fmt(r["auc"]),
            f"{fmt(r['auc_ci_low'])} to {fmt(r['auc_ci_high'])}",
            fmt(r["average_precision"]),
            fmt(r["ece"]),
            fmt(r["brier"]),
        ]
        rows.append(row + ([fmt(r[k]) for k in op_keys] if show_op else []))
    main = [
        _img(figures[k], cap)
        for k, cap in (
            ("roc_all", "ROC curves, all labels"),
            ("pr_all", "Precision-recall curves"),
            ("reliability", "Reliability diagram"),
            ("reliability_labels", "Reliability per label"),
        )
        if k in figures
    ]
    per_label = [
        _img(figures[f"roc_{safe_name(n)}"], f"ROC: {n}")
        for n in report.curves
        if f"roc_{safe_name(n)}" in figures
    ]
    notes = [f"{r.name}: {r.note}" for r in report.labels if r.note] + list(report.notes)
    body = (
        f"<ul>{sources}</ul><h2>Summary</h2>{summary}<ul>{excluded}"
        f"<li>operating thresholds: {thresholds}</li></ul>"
        f"<h2>Per label</h2>{_table(headers, rows)}{_calibration_html(report)}"
        f"<h2>Figures</h2>{''.join(main)}"
        f'<h2>ROC per label</h2><div class="grid">{"".join(per_label)}</div>{_notes_html(notes)}'
        f"<p>AUC CIs: {report.settings.get('n_bootstrap')} bootstrap resamples of patients "
        f"(seed {report.settings.get('seed')}), percentile intervals.</p>"
    )
    return _page("cxr evaluation report", body)


def _calibration_html(report: EvaluationReport) -> str:
    """The before/after calibration table, when the model has a calibration."""
    c = report.calibration
    if not c:
        return ""
    o = c["overall"]
    rows = [
        ("all (pooled)", fmt(o["ece_raw"]), fmt(o["ece"]), fmt(o["brier_raw"]), fmt(o["brier"]), "")
    ]
    rows += [
        (name, fmt(r["ece_raw"]), fmt(r["ece"]), fmt(r["brier_raw"]), fmt(r["brier"]), r["map"])
        for name, r in c["per_label"].items()
    ]
    head = ("label", "ECE raw", "ECE calibrated", "Brier raw", "Brier calibrated", "map")
    text = (
        f"Probabilities calibrated with {c['method']}, fitted on "
        f"{c['source'] or 'validation data'} (never on these images); thresholds are on the "
        "calibrated scale and make the same decisions as on the raw scores."
    )
    return f"<h2>Calibration</h2><p>{html.escape(text)}</p>{_table(head, rows)}" + "".join(
        f"<p>{html.escape(n)}</p>" for n in c.get("notes", [])
    )


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def write_report(
    report: EvaluationReport,
    out_dir: str | Path,
    curves_data: Mapping[str, LabelCurves] | None = None,
) -> dict[str, Path]:
    """Write the report files and figures into ``out_dir`` (created if needed).

    ``curves_data`` defaults to ``report.curves``. Returns figure/report key -> path
    (keys ``markdown``, ``json``, ``html``, ``roc_all``, ``pr_all``, ``reliability``,
    ``roc_<label>``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = dict(report.curves if curves_data is None else curves_data)
    figures: dict[str, bytes] = {}
    if curves:
        figures["roc_all"] = roc_all_png(curves)
        figures["pr_all"] = pr_all_png(curves)
    if report.reliability.count.sum():
        figures["reliability"] = reliability_png(report.reliability, report.ece)
    per_label = {r.name: r.reliability for r in report.labels if r.reliability is not None}
    if per_label:
        figures["reliability_labels"] = reliability_labels_png(
            per_label, {r.name: r.ece for r in report.labels}
        )
    for name, c in curves.items():
        figures[f"roc_{safe_name(name)}"] = roc_png(name, c)
    written = {key: _write(out / f"{key}.png", png) for key, png in figures.items()}
    links = "\n".join(f"![{k}]({p.name})" for k, p in written.items())
    written["markdown"] = _write(
        out / "report.md", report.to_markdown() + "\n## Figures\n\n" + links + "\n"
    )
    written["json"] = _write(
        out / "report.json", json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    )
    written["html"] = _write(out / "report.html", render_html(report, figures))
    return written


def write_comparison_report(comparison: ComparisonReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json``, ``compare.html`` (self-contained) and
    ``auc_diff.png`` into ``out_dir``; returns key -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b = comparison.model_names
    written: dict[str, Path] = {}
    png = auc_diff_png(comparison.rows, comparison.model_names) if comparison.compared else None
    if png:
        written["auc_diff"] = _write(out / "auc_diff.png", png)
    md = comparison.to_markdown() + ("\n![AUC difference](auc_diff.png)\n" if png else "")
    written["markdown"] = _write(out / "compare.md", md)
    written["json"] = _write(
        out / "compare.json", json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n"
    )
    pct = round(100 * (1 - comparison.settings.get("alpha", 0.05)))
    rows = [
        (
            r.name,
            r.n,
            r.n_positive,
            fmt(r.auc_a),
            fmt(r.auc_b),
            fmt(r.diff),
            f"{fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)}",
            fmt(r.z, 2),
            fmt(r.p_value, 4),
        )
        for r in comparison.rows
    ]
    ma, mb = comparison.macro()
    sources = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in comparison.sources.items()
    )
    notes = [f"{r.name}: {r.note}" for r in comparison.rows if r.note] + list(comparison.notes)
    body = (
        f"<ul>{sources}<li>images: {comparison.n_images}; macro AUC {html.escape(a)} {fmt(ma)}, "
        f"{html.escape(b)} {fmt(mb)}</li></ul>"
        + _table(
            (
                "label",
                "n",
                "positives",
                f"AUC {a}",
                f"AUC {b}",
                "difference",
                f"{pct}% CI (bootstrap)",
                "DeLong z",
                "p-value",
            ),
            rows,
        )
        + "<p>p-values are per label, two-sided, not adjusted for the number of labels "
        "compared.</p>"
        + (_img(png, "AUC difference per label") if png else "")
        + _notes_html(notes)
    )
    written["html"] = _write(out / "compare.html", _page(f"cxr comparison: {a} vs {b}", body))
    return written
