"""cxr.evaluation.report and cxr.evaluation.plots: the files written and the self-contained HTML."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from cxr import RESEARCH_NOTICE
from cxr.evaluation import compare, evaluate
from cxr.evaluation.report import safe_name, write_comparison_report, write_report

NAMES = ["Atelectasis", "Pleural Other", "No Finding", "Hernia"]


def _report(thresholds=None):
    rng = np.random.default_rng(0)
    labels = (rng.random((150, 4)) < [0.2, 0.3, 0.5, 0.0]).astype(float)  # Hernia: no positives
    probs = np.clip(0.3 * labels + 0.7 * rng.random((150, 4)), 0, 1)
    return (
        evaluate(
            labels,
            probs,
            NAMES,
            (np.arange(150) // 3).astype(str),
            thresholds=thresholds,
            n_bootstrap=50,
            sources={"labels": "labels.csv", "predictions": "<preds>.csv"},
        ),
        labels,
        probs,
    )


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


class _Balance(HTMLParser):
    """Checks that every opened element is closed in order (void elements aside)."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_files_written_and_pngs_decode(tmp_path):
    report, _, _ = _report()
    written = write_report(report, tmp_path / "out")
    expected = {
        "markdown",
        "json",
        "html",
        "roc_all",
        "pr_all",
        "reliability",
        "reliability_labels",
        "roc_Atelectasis",
        "roc_Pleural_Other",
        "roc_No_Finding",
    }
    assert set(written) == expected  # Hernia (one class) has no ROC figure
    for path in written.values():
        assert path.is_file() and path.parent == tmp_path / "out"
        if path.suffix == ".png":
            w, h = _png_size(path.read_bytes())
            assert w > 300 and h > 300
    assert safe_name("Pleural Other") == "Pleural_Other"


def test_html_is_self_contained_with_figures_notice_and_aucs(tmp_path):
    report, _, _ = _report()
    html = write_report(report, tmp_path)["html"].read_text()
    assert html.index(RESEARCH_NOTICE) < html.index("<h1>")  # notice at the top
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # roc_all, pr_all, reliability, reliability per label + one ROC per two-class label
    assert len(uris) == 4 + 3
    for uri in uris:
        _png_size(base64.b64decode(uri))
    for row in report.labels:
        if row.name != "Hernia":
            assert f"<td>{row.auc:.3f}</td>" in html
    assert "no positive images" in html  # Hernia's reason
    assert "&lt;preds&gt;.csv" in html  # text is escaped
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from elsewhere
    parser = _Balance()
    parser.feed(html)
    assert parser.errors == [] and parser.stack == []  # well-formed: every element closed


def test_json_and_markdown(tmp_path):
    report, _, _ = _report()
    written = write_report(report, tmp_path)
    data = json.loads(written["json"].read_text())
    assert data == json.loads(json.dumps(report.to_dict()))
    assert abs(data["summary"]["macro_auc"] - report.macro_auc) < 1e-12
    md = written["markdown"].read_text()
    assert RESEARCH_NOTICE in md and "![roc_all](roc_all.png)" in md
    assert f"{report.label('Atelectasis').auc:.3f}" in md


def test_operating_point_shown_when_thresholds_given(tmp_path):
    report, labels, probs = _report(thresholds={"Atelectasis": 0.5})
    html = write_report(report, tmp_path)["html"].read_text()
    op = report.label("Atelectasis").operating
    assert op.tp == int(((probs[:, 0] >= 0.5) & (labels[:, 0] == 1)).sum())
    assert "<th>sensitivity</th>" in html and f"<td>{op.sensitivity:.3f}</td>" in html


def test_comparison_report(tmp_path):
    _, labels, probs = _report()
    other = np.clip(probs + np.random.default_rng(1).normal(0, 0.2, probs.shape), 0, 1)
    c = compare(labels, probs, other, NAMES, n_bootstrap=50, model_names=("A", "B"))
    written = write_comparison_report(c, tmp_path)
    assert set(written) == {"auc_diff", "markdown", "json", "html"}
    html = written["html"].read_text()
    assert RESEARCH_NOTICE in html and html.count("data:image/png;base64,") == 1
    _png_size(written["auc_diff"].read_bytes())
    assert json.loads(written["json"].read_text())["summary"]["n_labels"] == 3


def test_the_all_labels_roc_stays_readable_when_curves_coincide():
    """Three labels with the same perfect curve and one near it: one line and one legend
    entry for the identical ones, distinct styles for the rest, edges inside the axes."""
    from cxr.evaluation.label_results import LabelCurves
    from cxr.evaluation.plots import roc_all_figure, roc_all_png

    def curves(fpr, tpr, auc):
        empty = np.zeros(0)
        return LabelCurves(np.array(fpr), np.array(tpr), empty, empty, auc, 1.0, 0.5)

    perfect = ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0], 1.0)
    near = ([0.0, 0.02, 1.0], [0.0, 1.0, 1.0], 0.99)
    data = {
        "Effusion": curves(*perfect),
        "Mass": curves(*perfect),
        "Nodule": curves(*perfect),
        "Edema": curves(*near),
    }
    fig = roc_all_figure(data)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["Effusion = Mass = Nodule (1.000)", "Edema (0.990)"]
    drawn = [line for line in ax.get_lines() if line.get_label() in legend]
    assert len(drawn) == 2
    assert drawn[0].get_linestyle() != drawn[1].get_linestyle()
    assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1  # curves on the edges show
    assert roc_all_png(data)[:8] == b"\x89PNG\r\n\x1a\n"
