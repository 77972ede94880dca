"""Pictures of a heatmap: the overlay on the image, the heatmap alone as RGBA, and the figure
``cxr predict --explain`` writes (image beside overlay, with the colour bar and the notice).

Matplotlib is imported where it is used (Agg canvas, no pyplot).
Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.explain.maps import resize_bilinear
from cxr.explain.records import Explanation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["explanation_figure", "heatmap_rgba", "overlay", "save_explanation_png"]

#: The colour map of every heatmap picture.
COLOUR_MAP = "jet"


def _coloured(heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heat float32 (H, W) clipped to [0, 1], its colours float (H, W, 4) in [0, 1])."""
    from matplotlib import colormaps

    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    return heat, np.asarray(colormaps[COLOUR_MAP](heat))


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4): the heatmap float (H, W) in [0, 1] in the colours :func:`overlay`
    uses, alpha = its value (x 255), so that cold areas are transparent."""
    heat, rgba = _coloured(heatmap)
    rgba[..., 3] = heat
    return np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the gray image with the heatmap blended in the ``jet`` colour map.

    Args:
        image: uint8 (H, W) pixels.
        heatmap: float (h, w) in [0, 1]; resized bilinearly to (H, W) if its size differs.
        alpha: heatmap weight, scaled by the heatmap value so cold areas stay gray.
    """
    image = np.asarray(image)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 2 or heatmap.ndim != 2:
        raise ValueError(f"image and heatmap must be 2-D, got {image.shape} and {heatmap.shape}")
    if heatmap.shape != image.shape:
        heatmap = resize_bilinear(heatmap[None], image.shape)[0]
    heat, rgba = _coloured(heatmap)
    gray = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    colour = rgba[..., :3].astype(np.float32)
    w = (alpha * heat)[..., None]
    return np.clip(np.rint(((1.0 - w) * gray + w * colour) * 255.0), 0, 255).astype(np.uint8)


def explanation_figure(
    image: np.ndarray,
    explanation: Explanation,
    dpi: int = 100,
    *,
    source: str | os.PathLike[str] = "",
    threshold: float | None = None,
) -> Figure:
    """A matplotlib ``Figure`` (Agg canvas, no pyplot): the image (left, titled with its file
    name) beside the heatmap overlay (right) with a colour bar of the heatmap's scale; the
    title gives the label, the probability and, when known, the decision threshold and
    whether it is reached; the research-use notice at the bottom.

    Args:
        image: uint8 (S, S) pixels the heatmap was computed on.
        explanation: from :func:`~cxr.explain.explain`.
        dpi: dots per inch (the figure is 8.6 x 4.8 inches).
        source: the image's file (its name is shown; empty: not shown).
        threshold: the label's decision threshold (probability), e.g. the model file's.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (S, S), got {image.dtype} shape {image.shape}")
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation must be an Explanation, got {type(explanation).__name__}")
    fig = Figure(figsize=(8.6, 4.8), dpi=dpi)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    name = os.path.basename(os.fspath(source)) if source else ""
    if len(name) > 48:
        name = name[:22] + "..." + name[-23:]
    left.set_title(name or "image", fontsize=9)
    right.imshow(overlay(image, explanation.heatmap), interpolation="bilinear")
    method = "Grad-CAM++" if explanation.method == "gradcam++" else "Grad-CAM"
    right.set_title(f"{method} overlay", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), colormaps[COLOUR_MAP]),
        ax=right,
        fraction=0.046,
        pad=0.03,
    )
    bar.set_label("relevance (0 = none, 1 = most)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    title = f"{explanation.label}: p = {explanation.probability:.2f}"
    if threshold is not None and np.isfinite(threshold):
        reached = "reached" if explanation.probability >= threshold else "not reached"
        title += f" (threshold {threshold:.2f}: {reached})"
    fig.suptitle(title, fontsize=12)
    footer = RESEARCH_NOTICE + (f"\nNote: {explanation.note}" if explanation.note else "")
    fig.text(0.5, 0.02, footer, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.subplots_adjust(left=0.02, right=0.94, top=0.86, bottom=0.12, wspace=0.06)
    return fig


def save_explanation_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    explanation: Explanation,
    dpi: int = 100,
    *,
    source: str | os.PathLike[str] = "",
    threshold: float | None = None,
) -> str:
    """Write :func:`explanation_figure` as a PNG (folders created); returns the path.

    Args:
        image: uint8 (S, S) pixels the heatmap was computed on.
        explanation: from :func:`~cxr.explain.explain`.
        source, threshold: the image's file and the label's threshold, shown in the figure.
    """
    fig = explanation_figure(image, explanation, dpi, source=source, threshold=threshold)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
