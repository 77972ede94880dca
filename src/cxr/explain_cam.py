"""Grad-CAM without autograd: heatmaps in numpy from the feature map and the head's weights.

For a head of global pooling + one linear layer, ``logit_l = b_l + sum_c W_lc pool(A_c)``,
so the gradient of a logit with respect to the last feature map ``A`` (B, C, h, w) has a
closed form, and Grad-CAM (:mod:`cxr.explain`) can be computed from ``A`` — an output of
an exported ONNX graph — and the weights stored in the file:

- ``avg`` pooling: ``d logit_l / d A_cij = W_lc / (h w)``, the same for every cell, so
  Grad-CAM's channel weights are ``W_lc / (h w)`` and, after the min-max normalisation,
  Grad-CAM equals class activation mapping (CAM, Zhou et al. 2016): ``relu(sum_c W_lc A_c)``;
- ``gem`` pooling (``P_c = mean(max(A_c, eps)^p)^(1/p)``): ``d logit_l / d A_cij = W_lc
  P_c^(1-p) max(A_cij, eps)^(p-1) / (h w)`` where ``A_cij >= eps``, else 0 — exact too.

Grad-CAM++ uses the same gradients in its closed form. Heads with hidden dense layers have
no such identity (the gradient depends on which hidden units are active) and are refused
with :class:`CamUnavailable`. Maps are upsampled bilinearly (``align_corners=False``, as
``torch.nn.functional.interpolate``) to the input size and min-max normalised per image, as
in :func:`cxr.explain.grad_cam_maps`. This module imports no torch.

Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.explain import CONSTANT_NOTE, CamMaps, Explanation, check_method

if TYPE_CHECKING:
    from cxr.export.metadata import HeadWeights
    from cxr.models.spec import HeadConfig

__all__ = [
    "CamUnavailable",
    "cam_maps",
    "check_cam_head",
    "explain_onnx",
    "resize_bilinear",
]

_CONSTANT_EPS = 1e-12


class CamUnavailable(ValueError):
    """A model whose head has no closed-form gradient: heatmaps need autograd (torch)."""


def check_cam_head(head: HeadConfig, weights: HeadWeights | None, path: object = "") -> HeadWeights:
    """The head's weights when heatmaps can be computed without autograd; else
    :class:`CamUnavailable` saying why and what to do."""
    where = f"model file {path}: " if path else ""
    if head.hidden:
        raise CamUnavailable(
            f"{where}heatmaps of an ONNX model need a head of pooling + one linear layer "
            f"(Grad-CAM = CAM); this head has hidden layers {list(head.hidden)}, so its "
            "gradient depends on which hidden units are active: explain with the "
            ".safetensors model (torch Grad-CAM) instead"
        )
    if weights is None:
        raise CamUnavailable(
            f"{where}the file holds no classifier weights for heatmaps (cxr.head); export "
            "it again with this cxr, or explain with the .safetensors model"
        )
    return weights


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
    maps = np.asarray(maps, dtype=np.float64)
    rows = _resize_matrix(maps.shape[-2], int(size[0]))
    cols = _resize_matrix(maps.shape[-1], int(size[1]))
    return np.einsum("Hh,bhw,Ww->bHW", rows, maps, cols).astype(np.float32)


def _gradients(features: np.ndarray, head: HeadWeights, labels: np.ndarray) -> np.ndarray:
    """d logit / d A (B, C, h, w) for label ``labels[b]`` of image b."""
    b, _, h, w = features.shape
    weight = head.weight.astype(np.float64)[labels][:, :, None, None]  # (B, C, 1, 1)
    if head.pool == "avg":
        return np.broadcast_to(weight / (h * w), features.shape).copy()
    clamped = np.maximum(features, head.eps)
    pooled = np.mean(clamped**head.p, axis=(2, 3), keepdims=True) ** (1.0 / head.p)
    grad = weight * pooled ** (1.0 - head.p) * clamped ** (head.p - 1.0) / (h * w)
    return np.where(features >= head.eps, grad, 0.0)


def _channel_weights(acts: np.ndarray, grads: np.ndarray, method: str) -> np.ndarray:
    """(B, C), as :func:`cxr.explain._weights`."""
    if method == "gradcam":
        return grads.mean(axis=(2, 3))
    g2 = grads**2
    denom = 2.0 * g2 + acts.sum(axis=(2, 3), keepdims=True) * grads**3
    safe = np.where(denom != 0, denom, 1.0)
    alpha = np.where(grads != 0, g2 / safe, 0.0)
    return (alpha * np.maximum(grads, 0.0)).sum(axis=(2, 3))


def cam_maps(
    features: np.ndarray,
    head: HeadWeights,
    label_index: int | Sequence[int],
    size: Sequence[int],
    method: str = "gradcam",
    probabilities: np.ndarray | None = None,
) -> CamMaps:
    """Grad-CAM / Grad-CAM++ of one label per image from the last feature map.

    Args:
        features: float (B, C, h, w), the feature map (the graph's ``features`` output).
        head: the head's pooling and output layer (:class:`~cxr.export.metadata.HeadWeights`).
        label_index: one label index for all images or one per image.
        size: (H, W), the input resolution of the heatmaps.
        method: ``"gradcam"`` or ``"gradcam++"``.
        probabilities: float (B, L) probabilities for :attr:`CamMaps.probabilities`; None
            computes them from the pooled features and the head.

    Returns:
        :class:`~cxr.explain.CamMaps`: heatmaps float32 (B, H, W) in [0, 1], the explained
        label's probability per image, and the constant-map flags.
    """
    method = check_method(method)
    acts = np.asarray(features, dtype=np.float64)
    if acts.ndim != 4 or acts.shape[1] != head.weight.shape[1]:
        raise ValueError(
            f"features must be (B, {head.weight.shape[1]}, h, w), got shape {acts.shape}"
        )
    batch, n_labels = acts.shape[0], head.weight.shape[0]
    if isinstance(label_index, (int, np.integer)):
        idx = [int(label_index)] * batch
    else:
        idx = [int(i) for i in label_index]
    if len(idx) != batch or not all(0 <= i < n_labels for i in idx):
        raise ValueError(
            f"label_index must be one index in [0, {n_labels}) or one per image ({batch}), "
            f"got {label_index!r}"
        )
    labels = np.asarray(idx, dtype=np.int64)
    grads = _gradients(acts, head, labels)
    weights = _channel_weights(acts, grads, method)
    cam = np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0.0)
    cam = resize_bilinear(cam, size).astype(np.float64)
    lo = cam.min(axis=(1, 2), keepdims=True)
    span = cam.max(axis=(1, 2), keepdims=True) - lo
    constant = span[:, 0, 0] <= _CONSTANT_EPS * np.maximum(np.abs(cam).max(axis=(1, 2)), 1.0)
    cam = np.where(constant[:, None, None], 0.0, (cam - lo) / np.where(span > 0, span, 1.0))
    if probabilities is None:
        if head.pool == "avg":
            pooled = acts.mean(axis=(2, 3))
        else:
            pooled = np.mean(np.maximum(acts, head.eps) ** head.p, axis=(2, 3)) ** (1 / head.p)
        logits = pooled @ head.weight.T.astype(np.float64) + head.bias
        probs = 1.0 / (1.0 + np.exp(-logits[np.arange(batch), labels]))
    else:
        probs = np.asarray(probabilities, dtype=np.float64)[np.arange(batch), labels]
    return CamMaps(np.clip(cam, 0.0, 1.0).astype(np.float32), probs.astype(np.float32), constant)


def explain_onnx(
    backend: Any,
    image: np.ndarray,
    labels: Sequence[str] | None = None,
    top_k: int = 3,
    method: str = "gradcam",
) -> list[Explanation]:
    """Heatmaps of one image from an :class:`~cxr.inference.onnx_backend.OnnxBackend`
    (one forward pass, no autograd), as :func:`cxr.explain.explain` gives them.

    Args:
        backend: the ONNX backend (its ``run``, ``spec`` and ``head``).
        image: uint8 (S, S) preprocessed pixels (``Preprocessing.load(path)``).
        labels: label names to explain, in this order; None = the ``top_k`` most probable.
        top_k: how many labels when ``labels`` is None (1 to L).
        method: ``"gradcam"`` or ``"gradcam++"``.

    Raises:
        CamUnavailable: the model's head has hidden layers (or the file has no weights).
    """
    method = check_method(method)
    head = check_cam_head(backend.spec.head, backend.head, backend.path)
    pixels = backend.spec.preprocessing.check_pixels(image)
    if pixels.shape[0] != 1:
        raise ValueError(f"image must be one uint8 (S, S) image, got shape {np.shape(image)}")
    names = list(backend.spec.labels)
    probs, features = backend.run(pixels, ("probabilities", "features"))
    if labels is None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(names):
            raise ValueError(
                f"top_k must be an integer from 1 to {len(names)} (the model's labels), "
                f"got {top_k!r}"
            )
        chosen = [int(i) for i in np.argsort(-probs[0], kind="stable")[:top_k]]
    else:
        if isinstance(labels, str):
            labels = [labels]
        unknown = [n for n in labels if n not in names]
        if unknown:
            raise ValueError(f"labels {unknown} are not labels of the model; it has {names}")
        chosen = [names.index(n) for n in labels]
    if not chosen:
        return []
    k = len(chosen)
    maps = cam_maps(
        np.repeat(features, k, axis=0),
        head,
        chosen,
        pixels.shape[1:],
        method,
        np.repeat(probs, k, axis=0),
    )
    return [
        Explanation(
            names[i],
            float(maps.probabilities[j]),
            maps.heatmaps[j],
            method,
            CONSTANT_NOTE if maps.constant[j] else "",
        )
        for j, i in enumerate(chosen)
    ]
