"""What a model is: labels, backbone, head, input size and normalisation.

:class:`ModelSpec` is everything needed to rebuild a :class:`~cxr.models.ChestClassifier`
with random weights; it is stored (as :meth:`ModelSpec.to_dict`) inside every model file.
Both dataclasses validate themselves on construction and raise ``ValueError`` naming the
offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cxr.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    get_backbone,
    list_backbones,
)

__all__ = ["POOLS", "HeadConfig", "ModelSpec"]

#: Pooling layers a head can use.
POOLS: tuple[str, ...] = ("avg", "gem")

_MIN_INPUT = 32  # every backbone downsamples by 32


def _unknown_keys(data: Mapping[str, Any], cls: type, what: str) -> None:
    known = {f.name for f in fields(cls)}
    extra = sorted(set(data) - known)
    if extra:
        raise ValueError(f"unknown field(s) {extra} in {what}; known fields: {sorted(known)}")


@dataclass(frozen=True)
class HeadConfig:
    """The classification head on top of the backbone's feature map.

    Attributes:
        pool: ``"avg"`` (global average) or ``"gem"`` (generalised mean with a learnable
            exponent p, initialised to 3).
        dropout: dropout probability in [0, 1) before every dense layer after the pooling
            (before the output layer, and after each hidden layer's ReLU).
        hidden: widths of optional hidden dense layers (Linear + ReLU + Dropout) between
            the pooling and the output layer; ``()`` = a single linear output layer.
    """

    pool: str = "avg"
    dropout: float = 0.0
    hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"head.pool must be one of {list(POOLS)}, got {self.pool!r}")
        try:
            dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise ValueError(
                f"head.dropout must be a number in [0, 1), got {self.dropout!r}"
            ) from None
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence):
            raise ValueError(f"head.hidden must be a list of layer widths, got {self.hidden!r}")
        for w in self.hidden:
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ValueError(
                    f"head.hidden widths must be positive integers, got {list(self.hidden)}"
                )
        object.__setattr__(self, "dropout", dropout)
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "dropout": self.dropout, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"head must be a mapping with pool/dropout/hidden, got {type(data).__name__}"
            )
        _unknown_keys(data, cls, "head")
        return cls(**dict(data))


def _triple(value: Any, name: str, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {value!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSpec:
    """Labels, backbone and head of a classifier; JSON round trip via to_dict/from_dict.

    Attributes:
        labels: L output label names, unique, in output order.
        backbone: a registered backbone name (see :func:`cxr.models.list_backbones`).
        input_size: side in pixels of the square gray images the model is trained on
            (the model itself accepts any size >= 32).
        head: the classification head.
        mean, std: RGB normalisation applied after the gray image (values in [0, 1]) is
            repeated to 3 channels. None (the default) = what the backbone's pretrained
            weights expect: ImageNet ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``
            for DenseNets, ``127/255`` / ``128/255`` for EfficientNet-Lite0.
    """

    labels: tuple[str, ...]
    backbone: str = "densenet121"
    input_size: int = 224
    head: HeadConfig = field(default_factory=HeadConfig)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.labels, (str, bytes)) or not isinstance(self.labels, Sequence):
            raise ValueError(f"labels must be a list of label names, got {self.labels!r}")
        labels = tuple(self.labels)
        if not labels:
            raise ValueError("labels is empty; a model needs at least one label name")
        for name in labels:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(
                    f"labels must be non-empty strings, got {name!r} in {list(labels)}"
                )
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"labels repeat: {dupes}; each label name must appear once")
        entry = get_backbone(self.backbone) if isinstance(self.backbone, str) else None
        if entry is None:
            raise ValueError(
                f"backbone must be a name, one of {list_backbones()}; got {self.backbone!r}"
            )
        if (
            isinstance(self.input_size, bool)
            or not isinstance(self.input_size, int)
            or self.input_size < _MIN_INPUT
        ):
            raise ValueError(
                f"input_size must be an integer >= {_MIN_INPUT} (pixels), got {self.input_size!r}"
            )
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head must be a HeadConfig, got {type(self.head).__name__}")
        default_mean = entry.weights.mean if entry.weights else IMAGENET_MEAN
        default_std = entry.weights.std if entry.weights else IMAGENET_STD
        mean = _triple(default_mean if self.mean is None else self.mean, "mean", positive=False)
        std = _triple(default_std if self.std is None else self.std, "std", positive=True)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, str, int, float) that :meth:`from_dict` reads back."""
        return {
            "labels": list(self.labels),
            "backbone": self.backbone,
            "input_size": self.input_size,
            "head": self.head.to_dict(),
            "mean": list(self.mean or ()),
            "std": list(self.std or ()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; ``ValueError`` names a missing, unknown or bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model spec must be a mapping, got {type(data).__name__}")
        _unknown_keys(data, cls, "model spec")
        if "labels" not in data:
            raise ValueError("model spec field 'labels' is missing")
        kwargs = dict(data)
        if "head" in kwargs and not isinstance(kwargs["head"], HeadConfig):
            kwargs["head"] = HeadConfig.from_dict(kwargs["head"])
        return cls(**kwargs)
