"""Pointing game and IoU of one heatmap against one finding's mask, in the image's frame.

See :mod:`cxr.evaluation.localization` for the measures' definitions and the report built
on them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from cxr.explain.frame import heatmap_to_image

_PathLike = str | os.PathLike[str]

__all__ = [
    "heatmap_iou",
    "heatmap_peak",
    "heatmap_to_image",
    "peak_distance",
    "pointing_game",
]


def _pair(heatmap: np.ndarray, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    if heatmap.ndim != 2 or heatmap.shape != mask.shape:
        raise ValueError(
            f"{where}: heatmap {heatmap.shape} and mask {mask.shape} must be 2-D and "
            "the same shape; map the heatmap to the mask's frame (heatmap_to_image)"
        )
    if not mask.any():
        raise ValueError(f"{where}: the mask is empty (no finding pixel); leave this pair out")
    return heatmap, mask


def pointing_game(
    heatmaps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Hit (True) where the heatmap's peak lies in the mask: bool (N,).

    Args:
        heatmaps: N float maps (N, H, W) or a list of (H_i, W_i) maps.
        masks: N bool (or 0/1, 0/255) masks of the same shapes, none empty.
        tolerance: a peak within this many pixels (Euclidean, pixel centres) of a mask
            pixel is a hit too; 0 = strictly inside.

    The peak is :func:`heatmap_peak`'s; a constant heatmap (no peak, e.g. all zeros)
    counts as a miss.
    """
    if len(heatmaps) != len(masks):
        raise ValueError(f"pointing_game: {len(heatmaps)} heatmaps but {len(masks)} masks")
    if not math.isfinite(float(tolerance)) or tolerance < 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    return np.array(
        [
            peak_distance(h, m, f"pointing_game item {i}") <= tolerance
            for i, (h, m) in enumerate(zip(heatmaps, masks, strict=True))
        ],
        dtype=bool,
    )


def peak_distance(heatmap: np.ndarray, mask: np.ndarray, where: str = "peak_distance") -> float:
    """Distance in pixels from the heatmap's peak to the nearest mask pixel: 0 inside the
    mask, ``inf`` for a constant heatmap (no peak). Same shapes, mask not empty."""
    heatmap, mask = _pair(heatmap, mask, where)
    peak = heatmap_peak(heatmap)
    if peak is None:
        return math.inf
    if mask[peak]:
        return 0.0
    pts = np.argwhere(mask)
    return float(np.sqrt(((pts - np.asarray(peak)) ** 2).sum(axis=1).min()))


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of a heatmap's peak, or None for a constant map.

    Where several pixels share the maximum (within 1e-6 of the map's range; e.g. the flat
    border an upsampled coarse map has, or two pixels equally near a grid node), the peak
    is the tied pixel nearest to their centroid (the first in row-major order among
    equally near ones), not an arbitrary corner of the plateau.
    """
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf, posinf=np.inf)
    finite = h[np.isfinite(h)]
    if finite.size == 0 or finite.max() <= finite.min():
        return None
    hi, lo = float(finite.max()), float(finite.min())
    tied = np.argwhere(h >= hi - 1e-6 * (hi - lo))
    if len(tied) == 1:
        return int(tied[0, 0]), int(tied[0, 1])
    d = ((tied - tied.mean(axis=0)) ** 2).sum(axis=1)
    r, c = tied[int(np.argmin(d))]
    return int(r), int(c)


def heatmap_iou(
    heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5, quantile: float | None = None
) -> float:
    """IoU in [0, 1] of ``heatmap >= t`` with ``mask``.

    ``t = threshold * max(heatmap)`` (``threshold`` in (0, 1]); with ``quantile`` in
    (0, 1), ``t`` is that quantile of the heatmap's values instead. A constant heatmap
    (nothing above its minimum) gives 0.
    """
    heatmap, mask = _pair(heatmap, mask, "heatmap_iou")
    heatmap = np.nan_to_num(heatmap, nan=0.0)
    lo, hi = float(heatmap.min()), float(heatmap.max())
    if hi <= lo:
        return 0.0
    if quantile is not None:
        if not 0.0 < float(quantile) < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        t = float(np.quantile(heatmap, float(quantile)))
    else:
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(
                f"threshold must be a fraction of the maximum in (0, 1], got {threshold!r}"
            )
        t = float(threshold) * hi
    region = heatmap >= t
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0
