"""Heatmaps on the model's square input grid mapped back to the original image's frame.

The inverse of :func:`cxr.images.fit_square`'s geometry, shared by the localisation
measures (:mod:`cxr.evaluation.heatmap_measures`) and the DICOM Secondary Capture
(:mod:`cxr.dicomout.from_prediction`). torch (for its antialiased bilinear resize) is
imported when a heatmap is mapped, so importing :mod:`cxr.explain` stays torch-free.
"""

from __future__ import annotations

import numpy as np

from cxr.choices import FIT_MODES

__all__ = ["heatmap_to_image"]


def heatmap_to_image(
    heatmap: np.ndarray, image_shape: tuple[int, int], fit: str = "pad"
) -> np.ndarray:
    """Map a heatmap on the model's square input grid (S, S) to the original image's frame.

    Args:
        heatmap: float (S, S), as :func:`cxr.explain.grad_cam` gives it.
        image_shape: (H, W) of the original image, in pixels.
        fit: how the image was fitted into the square (:func:`cxr.images.fit_square`):
            ``pad`` (the image's area is cut out of the padded square) or ``crop`` (the
            central square of side min(H, W) is covered; the cropped sides get 0).

    Returns float32 (H, W), resized bilinearly (antialiased when shrinking).
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1]:
        raise ValueError(f"heatmap must be square (S, S), got {heatmap.shape}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    h, w = (int(v) for v in image_shape)
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be positive (H, W), got {image_shape!r}")
    s = heatmap.shape[0]
    if fit == "pad":  # same geometry as cxr.images.fit_square
        scale = s / max(w, h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0 = (s - new_w) // 2, (s - new_h) // 2
        return _resize(heatmap[y0 : y0 + new_h, x0 : x0 + new_w], (h, w))
    side = min(h, w)
    out = np.zeros((h, w), dtype=np.float32)
    top, left = (h - side) // 2, (w - side) // 2
    out[top : top + side, left : left + side] = _resize(heatmap, (side, side))
    return out


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if a.shape == tuple(shape):
        return a.astype(np.float32, copy=True)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    shrink = shape[0] < a.shape[0] or shape[1] < a.shape[1]
    return F.interpolate(
        t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink
    )[0, 0].numpy()
