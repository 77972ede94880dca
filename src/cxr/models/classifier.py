"""The chest X-ray classifier: gray image -> normalised RGB -> backbone -> head -> logits.

Input convention everywhere in cxr: float32 gray images (B, 1, H, W) in [0, 1] (uint8
pixels / 255). The model repeats the channel to RGB, normalises with the spec's mean/std
(buffers ``mean``, ``std``, shape (1, 3, 1, 1)), runs the backbone to a feature map
(B, C, h, w) and the head to logits (B, L); ``sigmoid(logits)`` are per-label probabilities.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr.models.registry import get_backbone
from cxr.models.spec import HeadConfig, ModelSpec

__all__ = [
    "ChestClassifier",
    "ClassifierHead",
    "GeM",
    "build_model",
    "ensemble_logits",
    "freeze_backbone",
    "parameter_groups",
    "unfreeze_backbone",
]


class GeM(nn.Module):
    """Generalised-mean pooling: (B, C, h, w) -> (B, C), ``mean(clamp(x, eps)^p)^(1/p)``.

    ``p`` is a learnable scalar (init 3); p = 1 is average pooling, p -> inf max pooling.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class AvgPool(nn.Module):
    """Global average pooling: (B, C, h, w) -> (B, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


def ensemble_logits(member_logits: Tensor, members: int) -> Tensor:
    """The logit of the members' mean probability.

    Args:
        member_logits: (B, K * L), member-major: columns ``m*L .. (m+1)*L - 1`` are member
            m's L logits.
        members: K >= 1; K = 1 returns ``member_logits`` itself.

    Returns:
        (B, L): ``logit(mean_m sigmoid(z_m)) = log(mean_m p_m) - log(mean_m (1 - p_m))``,
        computed as ``logsumexp_m(log sigmoid(z_m)) - logsumexp_m(log sigmoid(-z_m))`` (the
        ``log K`` of both means cancels); finite for any finite logits. ``log sigmoid(z)``
        is written ``-softplus(-z)`` (``F.logsigmoid``'s value): the ONNX exporter turns
        ``logsigmoid`` into ``Log(Sigmoid(z))``, which is -inf below z of about -100.
    """
    if members == 1:
        return member_logits
    batch, width = member_logits.shape
    z = member_logits.reshape(batch, members, width // members)
    log_p = torch.logsumexp(-F.softplus(-z), dim=1)
    log_q = torch.logsumexp(-F.softplus(z), dim=1)
    return log_p - log_q


class ClassifierHead(nn.Module):
    """Pooling, optional hidden layers (Linear + ReLU + Dropout), dropout, output Linear.

    forward: feature map (B, in_features, h, w) float32 -> logits (B, num_labels) float32.

    Ensemble (``config.members`` = K > 1): K output layers share the pooling and hidden
    layers, stored as ONE ``out = nn.Linear(width, K * num_labels)`` whose rows are
    member-major: rows (and bias entries) ``m*L .. (m+1)*L - 1`` are member m's L logits
    (e.g. the coefficients of K fold models stacked in fold order). The head's logit is
    that of the members' mean probability (:func:`ensemble_logits`), so everything
    downstream sees (B, L) as from a plain head: sigmoid, thresholds, calibration, the
    model file and the ONNX graph; Grad-CAM differentiates this averaged logit w.r.t. the
    shared feature map, so its heatmap is the map of the averaged output. K = 1 is exactly
    the plain head's computation.

    Attributes:
        members: K.
        num_labels: L.
    """

    def __init__(self, in_features: int, num_labels: int, config: HeadConfig) -> None:
        super().__init__()
        self.members = config.members
        self.num_labels = num_labels
        self.pool: nn.Module = GeM() if config.pool == "gem" else AvgPool()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        if not config.hidden:
            layers.append(nn.Dropout(config.dropout))
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, num_labels * self.members)

    def logits_from_pooled(self, pooled: Tensor) -> Tensor:
        """Pooled features (B, in_features) -> logits (B, num_labels) (the members'
        averaged output for an ensemble)."""
        return ensemble_logits(self.out(self.mlp(pooled)), self.members)

    def forward(self, features: Tensor) -> Tensor:
        return self.logits_from_pooled(self.pool(features))


class ChestClassifier(nn.Module):
    """Multi-label classifier built from a :class:`ModelSpec` (random weights).

    Attributes:
        spec: the spec it was built from.
        backbone: feature extractor, (B, 3, H, W) -> (B, C, h, w).
        head: :class:`ClassifierHead`, (B, C, h, w) -> (B, L).
        num_features: C.
        target_layer: dotted name of the submodule whose output is the final feature map
            (B, C, h, w), for Grad-CAM: ``model.get_submodule(model.target_layer)``.
        backbone_frozen: set by :func:`freeze_backbone`; while True the backbone stays in
            eval mode (BatchNorm statistics fixed) even after ``model.train()``.
    """

    mean: Tensor  # registered buffers, (1, 3, 1, 1)
    std: Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        parts = get_backbone(spec.backbone).build()
        self.spec = spec
        self.backbone = parts.module
        self.num_features = parts.num_features
        self.head = ClassifierHead(parts.num_features, spec.num_labels, spec.head)
        self.target_layer = f"backbone.{parts.target_layer}"
        self.backbone_frozen = False
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def train(self, mode: bool = True) -> ChestClassifier:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.train(False)
        return self

    def normalise(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) gray in [0, 1] (or (B, 3, H, W) RGB) -> (B, 3, H, W) normalised."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                "model input must be a (batch, 1, height, width) gray image tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"model input must be float in [0, 1] (uint8 / 255), got dtype {x.dtype}"
            )
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError(
                f"model input must be at least 32x32 pixels, got {tuple(x.shape[-2:])}"
            )
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) float in [0, 1] -> feature map (B, C, h, w), h = H/32 (rounded)."""
        return self.backbone(self.normalise(x))

    def logits_from_features(self, features: Tensor) -> Tensor:
        """Feature map (B, C, h, w) -> logits (B, L)."""
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) float in [0, 1] -> logits (B, L) float."""
        return self.head(self.features(x))


def build_model(
    spec: ModelSpec, pretrained: str | os.PathLike[str] | None = None, *, download: bool = False
) -> ChestClassifier:
    """A classifier for ``spec``; backbone weights from ``pretrained`` when given.

    Args:
        pretrained: None (random init), ``"imagenet"`` (see :mod:`cxr.models.pretrained`)
            or the path of a backbone weights file.
        download: allow downloading the ImageNet weights when not found locally.
    """
    model = ChestClassifier(spec)
    if pretrained is not None:
        from cxr.models.pretrained import load_pretrained

        load_pretrained(model.backbone, spec.backbone, pretrained, download=download)
    return model


def freeze_backbone(model: ChestClassifier) -> ChestClassifier:
    """Stop training the backbone: no gradients, and BatchNorm statistics fixed (eval mode
    kept through ``model.train()``). Returns ``model``."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone_frozen = True
    model.backbone.train(False)
    return model


def unfreeze_backbone(model: ChestClassifier) -> ChestClassifier:
    """Undo :func:`freeze_backbone`; the backbone follows the model's train/eval mode."""
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    model.backbone_frozen = False
    model.backbone.train(model.training)
    return model


def parameter_groups(
    model: ChestClassifier, lr_backbone: float, lr_head: float
) -> list[dict[str, Any]]:
    """Optimiser parameter groups ``[{"name": "backbone", ...}, {"name": "head", ...}]``.

    Frozen backbone parameters are included (they have no gradient, so optimisers skip
    them), so an optimiser made while frozen keeps working after :func:`unfreeze_backbone`.
    """
    for name, lr in (("lr_backbone", lr_backbone), ("lr_head", lr_head)):
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or lr < 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {lr!r}")
    return [
        {"name": "backbone", "params": list(model.backbone.parameters()), "lr": float(lr_backbone)},
        {"name": "head", "params": list(model.head.parameters()), "lr": float(lr_head)},
    ]
