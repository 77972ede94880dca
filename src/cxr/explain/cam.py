"""Grad-CAM without autograd: heatmaps in numpy from the feature map and the head's weights.

For a head of global pooling + one linear layer, ``logit_l = b_l + sum_c W_lc pool(A_c)``,
so the gradient of a logit with respect to the last feature map ``A`` (B, C, h, w) has a
closed form, and Grad-CAM can be computed from ``A`` — an output of an exported ONNX graph —
and the weights stored in the file:

- ``avg`` pooling: ``d logit_l / d A_cij = W_lc / (h w)``, the same for every cell, so
  Grad-CAM's channel weights are ``W_lc / (h w)`` and, after the min-max normalisation,
  Grad-CAM equals class activation mapping (CAM, Zhou et al. 2016): ``relu(sum_c W_lc A_c)``;
- ``gem`` pooling (``P_c = mean(max(A_c, eps)^p)^(1/p)``): ``d logit_l / d A_cij = W_lc
  P_c^(1-p) max(A_cij, eps)^(p-1) / (h w)`` where ``A_cij >= eps``, else 0 — exact too.

Grad-CAM++ uses the same gradients in its closed form; from the gradients on, the maps are
made by the formula torch Grad-CAM uses (:mod:`cxr.explain.maps`). Heads with hidden dense
layers have no such identity (the gradient depends on which hidden units are active) and are
refused with :class:`CamUnavailable`. This module imports no torch.

Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.errors import CxrError
from cxr.explain.checks import check_method, choose_labels, label_indices
from cxr.explain.maps import heatmaps_from_gradients
from cxr.explain.records import CamMaps, Explanation, explanations_of

if TYPE_CHECKING:
    from cxr.modelformat.onnx_metadata import HeadWeights
    from cxr.models.spec import HeadConfig

__all__ = ["CamUnavailable", "cam_maps", "check_cam_head", "explain_onnx"]


class CamUnavailable(CxrError, ValueError):
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
    if head.members != 1:
        raise CamUnavailable(
            f"{where}heatmaps of an ONNX model need a head of pooling + one linear layer; "
            f"this head averages the probabilities of {head.members} members, so its "
            "gradient depends on the image: explain with the .safetensors model (torch "
            "Grad-CAM of the averaged output) instead"
        )
    if weights is None:
        raise CamUnavailable(
            f"{where}the file holds no classifier weights for heatmaps (cxr.head); export "
            "it again with this cxr, or explain with the .safetensors model"
        )
    return weights


def _pooled(acts: np.ndarray, head: HeadWeights) -> np.ndarray:
    """(B, C, h, w) -> (B, C): the head's pooling (mean, or GeM)."""
    if head.pool == "avg":
        return np.asarray(acts.mean(axis=(2, 3)))
    return np.asarray(np.mean(np.maximum(acts, head.eps) ** head.p, axis=(2, 3)) ** (1 / head.p))


def _gradients(features: np.ndarray, head: HeadWeights, labels: np.ndarray) -> np.ndarray:
    """d logit / d A (B, C, h, w) for label ``labels[b]`` of image b."""
    _, _, h, w = features.shape
    weight = np.asarray(head.weight, dtype=np.float64)[labels][:, :, None, None]  # (B, C, 1, 1)
    if head.pool == "avg":
        return np.broadcast_to(weight / (h * w), features.shape).copy()
    clamped = np.maximum(features, head.eps)
    pooled = np.mean(clamped**head.p, axis=(2, 3), keepdims=True) ** (1.0 / head.p)
    grad = weight * pooled ** (1.0 - head.p) * clamped ** (head.p - 1.0) / (h * w)
    return np.where(features >= head.eps, grad, 0.0)


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
        head: the head's pooling and output layer
            (:class:`~cxr.modelformat.onnx_metadata.HeadWeights`, as an exported file
            stores it).
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
    batch = acts.shape[0]
    labels = np.asarray(label_indices(label_index, batch, head.weight.shape[0]), dtype=np.int64)
    heatmaps, constant = heatmaps_from_gradients(acts, _gradients(acts, head, labels), method, size)
    if probabilities is None:
        logits = _pooled(acts, head) @ np.asarray(head.weight, np.float64).T + head.bias
        probs = 1.0 / (1.0 + np.exp(-logits[np.arange(batch), labels]))
    else:
        probs = np.asarray(probabilities, dtype=np.float64)[np.arange(batch), labels]
    return CamMaps(heatmaps, probs.astype(np.float32), constant)


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
        backend: the ONNX backend (its ``run``, ``spec``, ``head`` and ``path``).
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
    chosen = choose_labels(names, labels, top_k, lambda: np.asarray(probs[0]))
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
    return explanations_of(names, chosen, maps, method)
