"""What a model is: labels, backbone, head and preprocessing (input size, fit, normalisation).

:class:`ModelSpec` is everything needed to rebuild a :class:`~cxr.models.ChestClassifier`
with random weights; it is stored (as :meth:`ModelSpec.to_dict`) inside every model file.
Both dataclasses validate themselves on construction and raise ``ValueError`` naming the
offending field.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cxr.choices import POOLS
from cxr.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    get_backbone,
    list_backbones,
)
from cxr.preprocessing import Preprocessing

__all__ = ["POOLS", "HeadConfig", "ModelSpec", "Preprocessing"]


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
        members: K, the number of ensemble members sharing the pooling and hidden layers
            (a whole number >= 1). With K > 1 the output layer gives K logits per label
            and the model's logit is that of the members' mean probability
            (:class:`~cxr.models.classifier.ClassifierHead`); 1 = a plain head. Stored
            only when > 1, so files without it read as 1.
    """

    pool: str = "avg"
    dropout: float = 0.0
    hidden: tuple[int, ...] = ()
    members: int = 1

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
        if (
            isinstance(self.members, bool)
            or not isinstance(self.members, numbers.Integral)
            or self.members < 1
        ):
            raise ValueError(
                "head.members (the number of ensemble members) must be a whole number >= 1, "
                f"got {self.members!r}; use 1 for a single head"
            )
        object.__setattr__(self, "dropout", dropout)
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        object.__setattr__(self, "members", int(self.members))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``members`` only when > 1 (a plain head's record is unchanged)."""
        out: dict[str, Any] = {
            "pool": self.pool,
            "dropout": self.dropout,
            "hidden": list(self.hidden),
        }
        if self.members != 1:
            out["members"] = self.members
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        if not isinstance(data, Mapping):
            raise ValueError(
                "head must be a mapping with pool/dropout/hidden/members, got "
                f"{type(data).__name__}"
            )
        _unknown_keys(data, cls, "head")
        return cls(**dict(data))


@dataclass(frozen=True)
class ModelSpec:
    """Labels, backbone, head and preprocessing of a classifier; JSON round trip via
    to_dict/from_dict.

    Attributes:
        labels: L output label names, unique, in output order.
        backbone: a registered backbone name (see :func:`cxr.models.list_backbones`).
        head: the classification head.
        preprocessing: how files become input (:class:`~cxr.preprocessing.Preprocessing`:
            size, fit, intensity, mean/std). Its mean/std left None become what the
            backbone's pretrained weights expect: ImageNet ``(0.485, 0.456, 0.406)`` /
            ``(0.229, 0.224, 0.225)`` for DenseNets, ``127/255`` / ``128/255`` for
            EfficientNet-Lite0 to Lite2. ``input_size``, ``fit``, ``mean`` and ``std`` read it.
    """

    labels: tuple[str, ...]
    backbone: str = "densenet121"
    head: HeadConfig = field(default_factory=HeadConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

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
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head must be a HeadConfig, got {type(self.head).__name__}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(
                f"preprocessing must be a Preprocessing, got {type(self.preprocessing).__name__}"
            )
        weights = entry.weights
        preprocessing = self.preprocessing.with_normalisation(
            weights.mean if weights else IMAGENET_MEAN, weights.std if weights else IMAGENET_STD
        )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "preprocessing", preprocessing)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> int:
        """Side in pixels of the square gray input (the model accepts any size >= 32)."""
        return self.preprocessing.size

    @property
    def fit(self) -> str:
        """How images were fitted into the square: ``pad`` or ``crop``."""
        return self.preprocessing.fit

    @property
    def mean(self) -> tuple[float, float, float]:
        assert self.preprocessing.mean is not None  # resolved in __post_init__
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        assert self.preprocessing.std is not None  # resolved in __post_init__
        return self.preprocessing.std

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, str, int, float) that :meth:`from_dict` reads back."""
        return {
            "labels": list(self.labels),
            "backbone": self.backbone,
            "head": self.head.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
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
        if "preprocessing" in kwargs and not isinstance(kwargs["preprocessing"], Preprocessing):
            kwargs["preprocessing"] = Preprocessing.from_dict(kwargs["preprocessing"])
        return cls(**kwargs)

    @staticmethod
    def upgrade_v1(data: Mapping[str, Any], fit: str = "pad") -> dict[str, Any]:
        """A format-1 spec dict (``input_size``, ``mean``, ``std`` at the top; the fit kept in
        the training summary, ``pad`` when absent) in the current layout."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model spec must be a mapping, got {type(data).__name__}")
        old = dict(data)
        pre = {"size": old.pop("input_size", 224), "fit": fit}
        for key in ("mean", "std"):
            if key in old:
                pre[key] = old.pop(key)
        old["preprocessing"] = pre
        return old
