"""From a feature map and its gradients to normalised heatmaps: the one formula of Grad-CAM
and Grad-CAM++ that torch Grad-CAM (:mod:`cxr.explain.gradcam`) and the closed-form CAM of
ONNX models (:mod:`cxr.explain.cam`) share. numpy only, float64 inside.

For activations ``A`` and gradients ``g = d logit / d A``, both (B, C, h, w):

- Grad-CAM (Selvaraju et al. 2017): channel weights ``w_c = mean_{ij} g_cij``.
- Grad-CAM++ (Chattopadhay et al. 2018), the closed form for an exponential score used by
  most implementations: ``alpha_cij = g^2 / (2 g^2 + sum_{ab} A_cab * g^3)`` (0 where
  ``g = 0``) and ``w_c = sum_{ij} alpha_cij * relu(g_cij)``.

The map ``relu(sum_c w_c A_c)`` (B, h, w) is upsampled bilinearly (``align_corners=False``,
the arithmetic of ``torch.nn.functional.interpolate``) to the input resolution (H, W) and
min-max normalised per image to [0, 1]; a constant map becomes all zeros and is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr.explain.checks import check_method

__all__ = ["channel_weights", "heatmaps_from_gradients", "resize_bilinear"]

_CONSTANT_EPS = 1e-12


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=False``."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    out = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(out, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(out, (np.arange(n_out), hi), frac)
    return out


def resize_bilinear(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(B, h, w) -> float32 (B, H, W), bilinear with ``align_corners=False`` and no
    antialiasing (the arithmetic of ``torch.nn.functional.interpolate(mode="bilinear")``)."""
    return _resize(np.asarray(maps, dtype=np.float64), size).astype(np.float32)


def _resize(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    rows = _resize_matrix(maps.shape[-2], int(size[0]))  # (H, h)
    cols = _resize_matrix(maps.shape[-1], int(size[1]))  # (W, w)
    out: np.ndarray = np.matmul(np.matmul(rows, maps), cols.T)
    return out


def channel_weights(acts: np.ndarray, grads: np.ndarray, method: str) -> np.ndarray:
    """Channel weights (B, C) of ``method`` from activations and gradients (B, C, h, w)."""
    if check_method(method) == "gradcam":
        return np.asarray(grads.mean(axis=(2, 3)))
    g2 = grads**2
    denom = 2.0 * g2 + acts.sum(axis=(2, 3), keepdims=True) * grads**3
    safe = np.where(denom != 0, denom, 1.0)
    alpha = np.where(grads != 0, g2 / safe, 0.0)
    return np.asarray((alpha * np.maximum(grads, 0.0)).sum(axis=(2, 3)))


def heatmaps_from_gradients(
    acts: np.ndarray, grads: np.ndarray, method: str, size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps float32 (B, H, W) in [0, 1] at ``size`` = (H, W) and the constant flags
    bool (B,) (a constant map is all zeros), from activations and gradients (B, C, h, w)."""
    # the callers' precision: float32 from torch (as Grad-CAM always ran), float64 from ONNX
    dtype = np.result_type(np.asarray(acts).dtype, np.asarray(grads).dtype, np.float32)
    acts = np.asarray(acts, dtype=dtype)
    grads = np.asarray(grads, dtype=dtype)
    weights = channel_weights(acts, grads, method)
    cam = _resize(np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0.0), size)
    lo = cam.min(axis=(1, 2), keepdims=True)
    span = cam.max(axis=(1, 2), keepdims=True) - lo
    constant = span[:, 0, 0] <= _CONSTANT_EPS * np.maximum(np.abs(cam).max(axis=(1, 2)), 1.0)
    cam = np.where(constant[:, None, None], 0.0, (cam - lo) / np.where(span > 0, span, 1.0))
    return np.clip(cam, 0.0, 1.0).astype(np.float32), constant
