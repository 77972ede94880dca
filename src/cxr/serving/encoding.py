"""Images and heatmaps as the service sends them: PNG bytes, and the body of ``/v1/explain``
with the image, each label's heatmap (RGBA) and overlay (RGB) as base64 PNGs, coloured by
:mod:`cxr.explain.figures` as ``cxr predict --explain`` colours them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.explain import Explanation, heatmap_rgba, overlay

__all__ = ["b64png", "explanation_body", "png"]


def png(array: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of uint8 (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA pixels; zlib level 1
    by default (radiographs barely compress more, 3x slower)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def b64png(array: np.ndarray, level: int = 1) -> str:
    """:func:`png` as base64 text (for JSON)."""
    return base64.b64encode(png(array, level)).decode("ascii")


def explanation_body(
    name: str,
    display: np.ndarray,
    found: Sequence[Explanation],
    thresholds: Mapping[str, float],
    input_size: int,
) -> dict[str, Any]:
    """The answer of ``/v1/explain``.

    Args:
        name: the upload's display name.
        display: uint8 (D, D), the image at the display size (D >= the input size).
        found: the explanations, heatmaps float (S, S) in [0, 1] at the input size S,
            probabilities on the scale of ``thresholds``.
        thresholds: the labels' decision thresholds.
        input_size: S.

    Returns:
        ``{"notice", "path", "method", "input_size", "display_size", "image_png",
        "explanations": [{"label", "probability", "threshold", "above_threshold", "note",
        "heatmap_png" (RGBA (S, S, 4), alpha = the heatmap), "overlay_png" (RGB (D, D, 3))}]}``.
    """
    out = []
    for ex in found:
        t = thresholds.get(ex.label)
        out.append(
            {
                "label": ex.label,
                "probability": float(ex.probability),
                "threshold": t,
                "above_threshold": None if t is None else bool(ex.probability >= t),
                "note": ex.note,
                "heatmap_png": b64png(heatmap_rgba(ex.heatmap), level=6),
                "overlay_png": b64png(overlay(display, ex.heatmap)),
            }
        )
    return {
        "notice": RESEARCH_NOTICE,
        "path": name,
        "method": found[0].method if found else "gradcam",
        "input_size": input_size,
        "display_size": int(display.shape[0]),
        "image_png": b64png(display),
        "explanations": out,
    }
