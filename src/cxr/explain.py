"""Grad-CAM and Grad-CAM++ heatmaps on the last convolutional block of any cxr backbone.

A heatmap says which parts of the image raised one label's *logit* (the score before the
sigmoid). The feature map ``A`` (B, C, h, w) is the output of ``model.target_layer`` (the
backbone's final, post-activation feature map); ``g = d logit / d A``.

- Grad-CAM (Selvaraju et al. 2017): channel weights ``w_c = mean_{ij} g_cij``.
- Grad-CAM++ (Chattopadhay et al. 2018), the closed form for an exponential score used by
  most implementations: ``alpha_cij = g^2 / (2 g^2 + sum_{ab} A_cab * g^3)`` (0 where
  ``g = 0``) and ``w_c = sum_{ij} alpha_cij * relu(g_cij)``.

The map ``relu(sum_c w_c A_c)`` (B, h, w) is upsampled bilinearly (``align_corners=False``)
to the input resolution (H, W) and min-max normalised per image to [0, 1]. A map that is
constant (e.g. all zero after the ReLU: nothing in the image raised the logit) becomes all
zeros and is flagged in :attr:`CamMaps.constant`; :func:`explain` puts a note on it.

The upsampling puts feature cell i at input coordinate ``(i + 0.5) * stride``. That is exact
for ``cxr-small-cnn`` (stride 4, non-overlapping 2x2 downsampling); for the DenseNets and
EfficientNet-Lite0 (stride 32, padded 3x3/7x7 strided convolutions) the cells' true centres
are up to about 1.5 input pixels off, well under one cell.

Heatmaps are on the model's input grid: for an image fitted with ``pad`` (the default),
the heatmap covers the padded square; :mod:`cxr.evaluation.localization` maps it back to the
original.
Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.choices import CAM_METHODS
from cxr.preprocessing import to_model_input

if TYPE_CHECKING:  # torch is imported where it is used: the records and figures need none
    import torch

    from cxr.models.classifier import ChestClassifier

__all__ = [
    "CAM_METHODS",
    "CamMaps",
    "Explanation",
    "explain",
    "explanation_figure",
    "grad_cam",
    "grad_cam_maps",
    "overlay",
    "save_explanation_png",
]

_CONSTANT_EPS = 1e-12
CONSTANT_NOTE = (
    "the heatmap is constant (nothing in the image raised this label's score at the "
    "last convolutional block); shown as zeros"
)


class CamMaps(NamedTuple):
    """What :func:`grad_cam_maps` returns.

    Attributes:
        heatmaps: float32 (B, H, W) in [0, 1], at the input resolution.
        probabilities: float32 (B,), sigmoid of the explained label's logit per image.
        constant: bool (B,), True where the map was constant and set to zeros.
    """

    heatmaps: np.ndarray
    probabilities: np.ndarray
    constant: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """One label's heatmap for one image.

    Attributes:
        label: the label name.
        probability: the model's probability for it on this image, in [0, 1].
        heatmap: float32 (H, W) in [0, 1] at the model's input resolution.
        method: ``"gradcam"`` or ``"gradcam++"``.
        note: empty, or why the heatmap is not informative (e.g. constant).
    """

    label: str
    probability: float
    heatmap: np.ndarray
    method: str = "gradcam"
    note: str = ""


def check_method(method: str) -> str:
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {list(CAM_METHODS)}, got {method!r}")
    return method


def _check_model(model: object) -> ChestClassifier:
    from cxr.models.classifier import ChestClassifier

    if not isinstance(model, ChestClassifier):
        raise TypeError(
            f"model must be a cxr ChestClassifier (e.g. load_model(path).model), "
            f"got {type(model).__name__}"
        )
    return model


def _label_indices(label_index: int | Sequence[int], batch: int, n_labels: int) -> torch.Tensor:
    import torch

    if isinstance(label_index, bool):
        raise ValueError("label_index must be a label index or one index per image, got a bool")
    if isinstance(label_index, (int, np.integer)):
        idx = [int(label_index)] * batch
    else:
        idx = [int(i) for i in label_index]
        if len(idx) != batch:
            raise ValueError(
                f"label_index: one index per image needed, got {len(idx)} for {batch} images"
            )
    bad = [i for i in idx if not 0 <= i < n_labels]
    if bad:
        raise ValueError(
            f"label_index {bad[0]} is out of range; the model has {n_labels} labels "
            f"(indices 0 to {n_labels - 1})"
        )
    return torch.tensor(idx, dtype=torch.long)


def _weights(acts: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """Channel weights (B, C) from activations and gradients (B, C, h, w)."""
    import torch

    if method == "gradcam":
        return grads.mean(dim=(2, 3))
    g2 = grads.pow(2)
    denom = 2.0 * g2 + acts.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    alpha = torch.where(
        grads != 0,
        g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
        torch.zeros_like(g2),
    )
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


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
    """
    import torch
    import torch.nn.functional as F

    model = _check_model(model)
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
    idx = _label_indices(label_index, x.shape[0], model.spec.num_labels).to(device)
    layer = model.get_submodule(model.target_layer)
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            acts = captured["a"]
            score = logits.gather(1, idx[:, None]).sum()
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        handle.remove()
        model.train(was_training)
    acts, grads = acts.detach().float(), grads.detach().float()
    weights = _weights(acts, grads, method)
    cam = torch.relu((weights[:, :, None, None] * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    constant = span[:, 0, 0] <= _CONSTANT_EPS * torch.clamp(cam.abs().amax(dim=(1, 2)), min=1.0)
    cam = torch.where(
        constant[:, None, None],
        torch.zeros_like(cam),
        (cam - lo) / torch.where(span > 0, span, torch.ones_like(span)),
    )
    probs = torch.sigmoid(logits.detach().gather(1, idx[:, None])[:, 0])
    return CamMaps(
        cam.clamp(0, 1).cpu().numpy().astype(np.float32),
        probs.cpu().numpy().astype(np.float32),
        constant.cpu().numpy(),
    )


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
    return to_model_input(torch.from_numpy(np.ascontiguousarray(image))[None], "cpu")


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

    model = _check_model(model)
    method = check_method(method)
    x = _as_input(image)
    names = list(model.spec.labels)
    if labels is None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(names):
            raise ValueError(
                f"top_k must be an integer from 1 to {len(names)} (the model's "
                f"labels), got {top_k!r}"
            )
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                probs = torch.sigmoid(model(x.to(device)))[0].cpu().numpy()
        finally:
            model.train(was_training)
        chosen = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k]]
    else:
        if isinstance(labels, str):
            labels = [labels]
        unknown = [n for n in labels if n not in names]
        if unknown:
            raise ValueError(f"labels {unknown} are not labels of the model; it has {names}")
        chosen = [names.index(n) for n in labels]
    if not chosen:
        return []
    batch = x.expand(len(chosen), -1, -1, -1)
    maps = grad_cam_maps(model, batch, chosen, method)
    return [
        Explanation(
            names[i],
            float(maps.probabilities[k]),
            maps.heatmaps[k],
            method,
            CONSTANT_NOTE if maps.constant[k] else "",
        )
        for k, i in enumerate(chosen)
    ]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the gray image with the heatmap blended in the ``jet`` colour map.

    Args:
        image: uint8 (H, W) pixels.
        heatmap: float (h, w) in [0, 1]; resized bilinearly to (H, W) if its size differs.
        alpha: heatmap weight, scaled by the heatmap value so cold areas stay gray.
    """
    from matplotlib import colormaps

    image = np.asarray(image)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 2 or heatmap.ndim != 2:
        raise ValueError(f"image and heatmap must be 2-D, got {image.shape} and {heatmap.shape}")
    if heatmap.shape != image.shape:
        from cxr.explain_cam import resize_bilinear

        heatmap = resize_bilinear(heatmap[None], image.shape)[0]
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    gray = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    colour = colormaps["jet"](heat)[..., :3].astype(np.float32)
    w = (alpha * heat)[..., None]
    return np.clip(np.rint(((1.0 - w) * gray + w * colour) * 255.0), 0, 255).astype(np.uint8)


def explanation_figure(
    image: np.ndarray,
    explanation: Explanation,
    dpi: int = 100,
    *,
    source: str | os.PathLike[str] = "",
    threshold: float | None = None,
):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot): the image (left, titled with its file
    name) beside the heatmap overlay (right) with a colour bar of the heatmap's scale; the
    title gives the label, the probability and, when known, the decision threshold and
    whether it is reached; the research-use notice at the bottom.

    Args:
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
        ScalarMappable(Normalize(0.0, 1.0), colormaps["jet"]), ax=right, fraction=0.046, pad=0.03
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
        explanation: from :func:`explain`.
        source, threshold: the image's file and the label's threshold, shown in the figure.
    """
    fig = explanation_figure(image, explanation, dpi, source=source, threshold=threshold)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
