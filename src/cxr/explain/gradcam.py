"""Grad-CAM and Grad-CAM++ heatmaps on the last convolutional block of any cxr backbone, by
autograd (torch).

A heatmap says which parts of the image raised one label's *logit* (the score before the
sigmoid). The feature map ``A`` (B, C, h, w) is the output of ``model.target_layer`` (the
backbone's final, post-activation feature map); ``g = d logit / d A`` comes from autograd,
and the maps from ``A`` and ``g`` by the formula of :mod:`cxr.explain.maps` (upsampled to the
input resolution, min-max normalised per image; a constant map becomes zeros and is flagged
in :attr:`CamMaps.constant`; :func:`explain` puts a note on it). For an ensemble head
(``HeadConfig.members`` > 1) the logit is that of the members' mean probability, so ``g`` is
the gradient of the averaged output w.r.t. the shared feature map: the heatmap is the map of
the averaged output (not a mean of the members' maps).

The upsampling puts feature cell i at input coordinate ``(i + 0.5) * stride``. That is exact
for ``cxr-small-cnn`` (stride 4, non-overlapping 2x2 downsampling); for the DenseNets and
EfficientNet-Lite0 (stride 32, padded 3x3/7x7 strided convolutions) the cells' true centres
are up to about 1.5 input pixels off, well under one cell.

Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cxr.explain.checks import check_method, choose_labels, label_indices
from cxr.explain.maps import heatmaps_from_gradients
from cxr.explain.records import CamMaps, Explanation, explanations_of
from cxr.preprocessing import to_model_input

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX path needs none
    import torch

    from cxr.models.classifier import ChestClassifier

__all__ = ["explain", "grad_cam", "grad_cam_maps"]


def check_model(model: object) -> ChestClassifier:
    """``model`` when it is a cxr :class:`~cxr.models.ChestClassifier`, else TypeError."""
    from cxr.models.classifier import ChestClassifier

    if not isinstance(model, ChestClassifier):
        raise TypeError(
            f"model must be a cxr ChestClassifier (e.g. load_model(path).model), "
            f"got {type(model).__name__}"
        )
    return model


def grad_cam_maps(
    model: ChestClassifier,
    x: torch.Tensor | np.ndarray,
    label_index: int | Sequence[int],
    method: str = "gradcam",
) -> CamMaps:
    """Grad-CAM / Grad-CAM++ of one label per image, with probabilities and constant flags.

    Args:
        model: a :class:`~cxr.models.ChestClassifier`; it is run in eval mode (its mode is
            restored afterwards) and its weights are not changed.
        x: float (B, 1, H, W) or (1, H, W) / (H, W) in [0, 1] (uint8 pixels / 255), on any
            device (moved to the model's).
        label_index: the label explained: one index for all images or one per image.
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        heatmaps float32 (B, H, W) in [0, 1], the label's probability per image, and the
        constant-map flags.
    """
    import torch

    model = check_model(model)
    method = check_method(method)
    x = torch.as_tensor(x)
    while x.ndim < 4:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be float (B, 1, H, W) in [0, 1], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be float in [0, 1] (uint8 / 255), got dtype {x.dtype}")
    device = next(model.parameters()).device
    x = x.detach().to(device=device, dtype=torch.float32).contiguous().requires_grad_(True)
    idx = label_indices(label_index, x.shape[0], model.spec.num_labels)
    index = torch.tensor(idx, dtype=torch.long, device=device)[:, None]
    layer = model.get_submodule(model.target_layer)
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            acts = captured["a"]
            (grads,) = torch.autograd.grad(logits.gather(1, index).sum(), acts)
    finally:
        handle.remove()
        model.train(was_training)
    heatmaps, constant = heatmaps_from_gradients(
        acts.detach().float().cpu().numpy(),
        grads.detach().float().cpu().numpy(),
        method,
        tuple(x.shape[-2:]),
    )
    probs = torch.sigmoid(logits.detach().gather(1, index)[:, 0].float())
    return CamMaps(heatmaps, probs.cpu().numpy().astype(np.float32), constant)


def grad_cam(
    model: ChestClassifier,
    x: torch.Tensor | np.ndarray,
    label_index: int | Sequence[int],
    method: str = "gradcam",
) -> np.ndarray:
    """Heatmaps float32 (B, H, W) in [0, 1] at the input resolution (see :func:`grad_cam_maps`;
    constant maps are zeros)."""
    return grad_cam_maps(model, x, label_index, method).heatmaps


def _as_input(image: np.ndarray) -> torch.Tensor:
    """uint8 (S, S) -> float (1, 1, S, S) by the one pixels-to-input path."""
    import torch

    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (S, S) pixels as the model sees them (e.g. "
            f"load_for_cache(path, size)), got {image.dtype} shape {image.shape}"
        )
    x: torch.Tensor = to_model_input(torch.from_numpy(np.ascontiguousarray(image))[None], "cpu")
    return x


def explain(
    model: ChestClassifier,
    image: np.ndarray,
    labels: Sequence[str] | None = None,
    top_k: int = 3,
    method: str = "gradcam",
) -> list[Explanation]:
    """Heatmaps of one image for named labels or the ``top_k`` most probable ones.

    Args:
        model: the classifier (e.g. ``load_model(path).model``).
        image: uint8 (S, S) preprocessed pixels, as training sees them
            (``load_for_cache(path, spec.input_size, fit)``).
        labels: label names to explain, in this order; None = the ``top_k`` labels with the
            highest probability, most probable first.
        top_k: how many labels when ``labels`` is None (1 to L).
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        One :class:`Explanation` per label, heatmaps float32 (S, S) in [0, 1].
    """
    import torch

    model = check_model(model)
    method = check_method(method)
    x = _as_input(image)
    names = list(model.spec.labels)

    def probabilities() -> np.ndarray:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out: np.ndarray = torch.sigmoid(model(x.to(device)))[0].cpu().numpy()
        finally:
            model.train(was_training)
        return out

    chosen = choose_labels(names, labels, top_k, probabilities)
    if not chosen:
        return []
    maps = grad_cam_maps(model, x.expand(len(chosen), -1, -1, -1), chosen, method)
    return explanations_of(names, chosen, maps, method)
