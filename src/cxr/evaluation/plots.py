"""Figures of an evaluation as PNG bytes: ROC and precision-recall curves, reliability
diagram, AUC differences.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, safe in threads and on machines without a display). Each function
returns the PNG file content; :mod:`cxr.evaluation.report` writes and embeds them. Every figure
carries the research-use notice in its footer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr import RESEARCH_NOTICE
from cxr.evaluation.comparison import ComparisonRow
from cxr.evaluation.label_results import LabelCurves
from cxr.evaluation.metrics import ReliabilityBins

DPI = 110


def _figure(width: float = 6.4, height: float = 5.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def _png(fig: Figure) -> bytes:
    fig.text(0.5, 0.005, RESEARCH_NOTICE, ha="center", va="bottom", fontsize=6.5, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:  # ten distinct hues; tab20 pairs each hue with its light shade
        return [colormaps["tab10"](i) for i in range(n)]
    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


#: Line styles cycled with the colours, so that curves lying on top of each other stay
#: distinguishable (a dash shows the curve underneath).
_STYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)))


def _same_curve_groups(curves: Mapping[str, LabelCurves]) -> list[list[str]]:
    """Labels grouped by identical ROC curves (same points), in the order given."""
    groups: dict[bytes, list[str]] = {}
    for name, c in curves.items():
        key = np.round(np.asarray(c.fpr, np.float64), 9).tobytes() + b"|"
        key += np.round(np.asarray(c.tpr, np.float64), 9).tobytes()
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def roc_all_figure(curves: Mapping[str, LabelCurves], title: str = "ROC curves") -> Figure:
    """All labels' ROC curves on one figure, readable when curves coincide: labels whose
    curves are identical share one line and one legend entry (``A = B (AUC)``); the others
    cycle through colours and line styles, drawn from the highest AUC down with thinning
    lines so that one lying on another still shows; the axes leave a margin so that curves
    along the edges (AUC near 1) stay visible. Legend in order of AUC."""
    fig, ax = _figure(7.5, 6.0)
    groups = sorted(
        _same_curve_groups(curves), key=lambda g: -np.nan_to_num(curves[g[0]].auc, nan=-1.0)
    )
    colours = _colors(len(groups))
    for i, (group, colour) in enumerate(zip(groups, colours, strict=True)):
        c = curves[group[0]]
        names = " = ".join(group)
        ax.plot(
            c.fpr,
            c.tpr,
            color=colour,
            ls=_STYLES[i % len(_STYLES)],
            lw=max(2.6 - 0.12 * i, 1.0),
            label=f"{names} ({c.auc:.3f})",
            zorder=3 + i,
        )
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8, zorder=1)
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.03),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
    )
    ax.grid(color="0.92", lw=0.6, zorder=0)
    ax.legend(loc="lower right", fontsize=7, title="label (AUC)", title_fontsize=7)
    return fig


def roc_all_png(curves: Mapping[str, LabelCurves], title: str = "ROC curves") -> bytes:
    """:func:`roc_all_figure` as PNG bytes."""
    return _png(roc_all_figure(curves, title))


def roc_png(name: str, curve: LabelCurves) -> bytes:
    """One label's ROC curve, with its operating point when a threshold was applied."""
    fig, ax = _figure(5.2, 5.0)
    ax.plot(curve.fpr, curve.tpr, color="C0", lw=1.8, label=f"AUC {curve.auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
    op = curve.operating
    if op is not None and np.isfinite(op.sensitivity) and np.isfinite(op.specificity):
        ax.plot(
            [1 - op.specificity],
            [op.sensitivity],
            "o",
            color="C3",
            label=(
                f"threshold {op.threshold:.3g}: sens {op.sensitivity:.2f}, "
                f"spec {op.specificity:.2f}"
            ),
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=f"ROC: {name} (prevalence {curve.prevalence:.3f})",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def pr_all_png(curves: Mapping[str, LabelCurves], title: str = "Precision-recall curves") -> bytes:
    """All labels' precision-recall curves (step-wise, as average precision counts them)."""
    fig, ax = _figure(7.5, 6.0)
    for (name, c), color in zip(curves.items(), _colors(len(curves)), strict=True):
        ax.step(
            c.recall,
            c.precision,
            where="post",
            color=color,
            lw=1.2,
            label=f"{name} (AP {c.average_precision:.3f}, prev. {c.prevalence:.2f})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=6.5)
    return _png(fig)


def reliability_png(
    bins: ReliabilityBins, ece: float, title: str = "Reliability (all labels pooled)"
) -> bytes:
    """Observed fraction of positives against mean predicted probability per bin, with
    the bin counts below."""
    fig = Figure(figsize=(5.6, 6.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    full = bins.count > 0
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8, label="perfect calibration")
    ax.plot(
        bins.mean_predicted[full],
        bins.fraction_positive[full],
        "o-",
        color="C0",
        label=f"model (ECE {ece:.3f})",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive", title=title)
    ax.legend(loc="upper left", fontsize=8)
    width = np.diff(bins.edges)
    ax_n.bar(
        bins.edges[:-1],
        bins.count,
        width=width,
        align="edge",
        color="C0",
        alpha=0.6,
        edgecolor="white",
    )
    ax_n.set(xlabel="predicted probability", ylabel="count")
    ax_n.set_yscale("symlog")
    return _png(fig)


def reliability_labels_png(
    labels: Mapping[str, ReliabilityBins], ece: Mapping[str, float], cols: int = 4
) -> bytes:
    """One small reliability diagram per label (observed fraction positive against mean
    predicted probability per bin, marker area by bin count), with the label's ECE."""
    names = [n for n, b in labels.items() if b.count.sum()]
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(2.6 * cols, 2.5 * rows + 0.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    for ax, name in zip(axes, names, strict=False):
        b = labels[name]
        full = b.count > 0
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.7)
        sizes = 8 + 60 * b.count[full] / max(b.count.max(), 1)
        ax.plot(b.mean_predicted[full], b.fraction_positive[full], "-", color="C0", lw=1)
        ax.scatter(b.mean_predicted[full], b.fraction_positive[full], s=sizes, color="C0")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{name} (ECE {ece.get(name, float('nan')):.3f})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel("predicted probability", fontsize=8, y=0.03)  # above the notice
    fig.supylabel("observed fraction positive", fontsize=8)
    return _png(fig)


def auc_diff_png(rows: Sequence[ComparisonRow], names: tuple[str, str]) -> bytes:
    """AUC difference (A - B) per label with its bootstrap CI (forest plot)."""
    rows = [r for r in rows if np.isfinite(r.diff)]
    fig, ax = _figure(6.4, 1.2 + 0.35 * max(len(rows), 1))
    ypos = np.arange(len(rows))[::-1]
    diffs = np.array([r.diff for r in rows])
    low = np.array([r.diff_ci_low for r in rows])
    high = np.array([r.diff_ci_high for r in rows])
    has_ci = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(
        diffs[has_ci],
        ypos[has_ci],
        xerr=[diffs[has_ci] - low[has_ci], high[has_ci] - diffs[has_ci]],
        fmt="o",
        color="C0",
        capsize=3,
    )
    ax.plot(diffs[~has_ci], ypos[~has_ci], "o", color="C0")
    ax.axvline(0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(ypos, [f"{r.name} (p={r.p_value:.3g})" for r in rows], fontsize=8)
    ax.set(xlabel=f"AUC {names[0]} - AUC {names[1]}", title="AUC difference per label")
    return _png(fig)
