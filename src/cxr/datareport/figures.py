"""Figures of a dataset report as PNG bytes (matplotlib's object API on the Agg canvas, no
pyplot): label counts, co-occurrence, labels per image, images per patient, views, age
and sex, prevalence per split, label coverage per source, image sizes, sample grid."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr import RESEARCH_NOTICE
from cxr.datareport.samples import SampleGrid

__all__ = [
    "bars_png",
    "coverage_png",
    "cooccurrence_png",
    "demographics_png",
    "grid_png",
    "label_counts_png",
    "sizes_png",
    "split_prevalence_png",
]

DPI = 100


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Figure, notice: bool = True) -> bytes:
    if notice:
        fig.text(0.5, 0.005, RESEARCH_NOTICE, ha="center", va="bottom", fontsize=6, color="0.45")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def label_counts_png(stats: pd.DataFrame) -> bytes:
    """Stacked horizontal bars per label: positive, negative, unknown images."""
    fig, ax = _figure(8.0, 0.9 + 0.32 * max(len(stats), 1))
    y = np.arange(len(stats))[::-1]
    left = np.zeros(len(stats))
    for column, colour in (
        ("positive", "#c0392b"),
        ("negative", "#95a5a6"),
        ("unknown", "#f1c40f"),
    ):
        values = stats[column].to_numpy(dtype=float)
        ax.barh(y, values, left=left, color=colour, label=column, height=0.7)
        left += values
    for yi, (pos, prev) in zip(
        y, zip(stats["positive"], stats["prevalence"], strict=True), strict=True
    ):
        text = f"{int(pos)}" + ("" if np.isnan(prev) else f" ({100 * prev:.1f}%)")
        ax.text(0, yi, " " + text, va="center", ha="left", fontsize=7, color="white")
    ax.set_yticks(y, [str(n) for n in stats.index], fontsize=8)
    ax.set(xlabel="images", title="Images per label: positive (prevalence), negative, unknown")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def cooccurrence_png(freq: pd.DataFrame) -> bytes:
    """Heatmap of P(column label | row label present)."""
    n = len(freq)
    fig, ax = _figure(1.6 + 0.45 * max(n, 2), 1.2 + 0.42 * max(n, 2))
    values = freq.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), list(freq.columns), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), list(freq.index), fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                if np.isfinite(v):
                    colour = "black" if v > 0.6 else "white"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5, color=colour)
    ax.set(xlabel="label B", ylabel="given label A present", title="P(B present | A present)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    return _png(fig)


def bars_png(counts: Mapping[Any, int], title: str, xlabel: str, ylabel: str) -> bytes:
    """A bar chart of ``counts`` (key -> count) in key order (keys as given)."""
    keys = [str(k) if str(k) != "" else "(unknown)" for k in counts]
    fig, ax = _figure(7.0, 3.6)
    ax.bar(range(len(keys)), list(counts.values()), color="#2c7fb8")
    ax.set_xticks(range(len(keys)), keys, rotation=45 if len(keys) > 8 else 0, fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(fig)


def demographics_png(ages: np.ndarray, sex: Mapping[str, int]) -> bytes:
    """Age histogram (years) beside sex counts."""
    fig = Figure(figsize=(9.0, 3.6), dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    known = ages[np.isfinite(ages)]
    if len(known):
        left.hist(known, bins=np.arange(0, max(100, known.max()) + 5, 5), color="#2c7fb8")
    left.set(
        title=f"Patient age ({len(known)} images with an age)", xlabel="years", ylabel="images"
    )
    right.bar(list(sex), list(sex.values()), color=["#3182bd", "#e6550d", "#bdbdbd"][: len(sex)])
    right.set(title="Sex", ylabel="images")
    return _png(fig)


def split_prevalence_png(prev: pd.DataFrame) -> bytes:
    """Grouped bars: prevalence per label, one bar per split."""
    n, k = len(prev), max(len(prev.columns), 1)
    fig, ax = _figure(max(7.0, 0.55 * n * k / 2 + 2), 4.2)
    width = 0.8 / k
    for s, split in enumerate(prev.columns):
        x = np.arange(n) + (s - (k - 1) / 2) * width
        ax.bar(x, prev[split].to_numpy(dtype=float), width=width, label=str(split))
    ax.set_xticks(range(n), list(prev.index), rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="prevalence (positives / known)", title="Prevalence per split")
    ax.legend(fontsize=7)
    return _png(fig)


def coverage_png(coverage: pd.DataFrame) -> bytes:
    """Heatmap: fraction of each source's images with the label known."""
    n, k = coverage.shape
    fig, ax = _figure(2.5 + 1.1 * k, 1.2 + 0.35 * max(n, 2))
    known = coverage.to_numpy(dtype=float)
    image = ax.imshow(known, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(k), [str(c) for c in coverage.columns], rotation=20, ha="right", fontsize=7)
    ax.set_yticks(range(n), list(coverage.index), fontsize=7)
    for i in range(n):
        for j in range(k):
            ax.text(j, i, f"{known[i, j]:.0%}", ha="center", va="center", fontsize=6.5)
    ax.set(title="Labels known per source (0% = the source lacks the label: unknown)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    return _png(fig)


def sizes_png(sizes: list[tuple[int, int]], depth: Mapping[str, int]) -> bytes:
    """Scatter of image width x height (pixels) beside bit-depth counts."""
    fig = Figure(figsize=(9.0, 3.8), dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    if sizes:
        w, h = np.array(sizes, dtype=float).T
        left.scatter(w, h, s=8, alpha=0.4, color="#2c7fb8")
    left.set(title=f"Image size ({len(sizes)} files)", xlabel="width (px)", ylabel="height (px)")
    right.barh(list(depth), list(depth.values()), color="#636363")
    right.set(title="Bit depth", xlabel="files")
    return _png(fig)


def grid_png(grid: SampleGrid) -> bytes:
    """Sample images: one row per label (and "no finding"), each with its file name and
    positive labels."""
    rows = [(name, items) for name, items in grid.rows.items() if items]
    cols = max((len(items) for _, items in rows), default=1)
    fig = Figure(figsize=(1.2 + 2.0 * cols, 0.6 + 2.3 * max(len(rows), 1)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(max(len(rows), 1), cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (name, items) in enumerate(rows):
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=9, fontweight="bold")  # fmt: skip
        for c, (path, pixels, positive) in enumerate(items):
            ax = axes[r, c]
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
            file = path.replace("\\", "/").rsplit("/", 1)[-1]
            file = file if len(file) <= 26 else file[:11] + "..." + file[-12:]
            labels = ", ".join(positive) or "no finding"
            labels = labels if len(labels) <= 32 else labels[:29] + "..."
            ax.set_title(f"{file}\n{labels}", fontsize=6.5)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.95, bottom=0.03, wspace=0.05, hspace=0.35)
    return _png(fig, notice=False)
