"""The not-a-chest-X-ray gate's stored form: a description of the training images' features.

The gate (fitted by :func:`cxr.ood.fit_ood_gate`) describes a model's pooled penultimate
features (the head's pooling of the backbone's last feature map, (N, C)) of its training
images compactly and scores new images by their distance to that description:

- the mean ``mean`` (C,) and the top ``k`` principal axes ``components`` (k, C) with their
  variances ``variances`` (k,); the rest of the space is one isotropic variance
  ``residual_variance`` (the mean of the discarded eigenvalues): a shrunk covariance
  (probabilistic PCA) whose Mahalanobis distance is
  ``d² = Σ_i (z_i² / λ_i) + ||r||² / σ²`` with ``z = components @ (x - mean)`` and ``r``
  the part of ``x - mean`` outside the k axes;
- the score is ``sqrt(d² / C)`` (about 1 for a typical training image, larger = less
  alike), and ``threshold`` is the ``percentile`` (99 by default) of the scores of the
  validation images: about 1 % of in-distribution images are flagged by design.

Stored in a model file's JSON metadata (``"ood"``: arrays as base64 float32,
little-endian; a DenseNet-121 with k = 128 takes about 700 KB, a model with C <= 128 keeps
its whole covariance). A record at the bottom of the layers: numpy only, so that the model
file formats (:mod:`cxr.modelformat`) read it without the fitting code or a model.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OOD_METHOD", "OOD_PERCENTILE", "OodGate"]

#: The stored form's method name (the only one this cxr reads).
OOD_METHOD = "pca-mahalanobis"
#: The percentile of the validation scores that becomes the threshold.
OOD_PERCENTILE = 99.0


def _encode(array: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(a.shape), "float32_base64": base64.b64encode(a.tobytes()).decode()}


def _decode(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, Mapping):
        raise ValueError(f"ood.{name} must be an object with shape and float32_base64")
    shape = value.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise ValueError(f"ood.{name}.shape must be a list of positive integers, got {shape!r}")
    text = value.get("float32_base64")
    if not isinstance(text, str):
        raise ValueError(f"ood.{name}.float32_base64 must be a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"ood.{name}.float32_base64 is not valid base64") from None
    if len(raw) != 4 * math.prod(shape):
        raise ValueError(
            f"ood.{name} holds {len(raw)} bytes, not the {4 * math.prod(shape)} of shape {shape}"
        )
    array = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"ood.{name} holds NaN or infinite values")
    return array


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"ood.{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"ood.{name} must be finite and > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class OodGate:
    """A description of the training images' pooled features and the flagging threshold.

    Attributes:
        mean: float64 (C,), the training features' mean.
        components: float64 (k, C), orthonormal principal axes (rows).
        variances: float64 (k,), the training variance along each axis (> 0).
        residual_variance: the variance per dimension outside the k axes (> 0).
        threshold: scores above it are flagged.
        percentile: the percentile of the validation scores ``threshold`` is.
        n_train, n_val: images the description and the threshold came from.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float
    percentile: float = OOD_PERCENTILE
    n_train: int = 0
    n_val: int = 0

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        comps = np.asarray(self.components, dtype=np.float64)
        var = np.asarray(self.variances, dtype=np.float64)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"ood mean must be (C,), got shape {mean.shape}")
        c = mean.shape[0]
        if comps.ndim != 2 or comps.shape[1] != c or not 1 <= comps.shape[0] <= c:
            raise ValueError(
                f"ood components must be (k, {c}) with 1 <= k <= {c}, got {comps.shape}"
            )
        if var.shape != (comps.shape[0],):
            raise ValueError(f"ood variances must be ({comps.shape[0]},), got {var.shape}")
        for name, a in (("mean", mean), ("components", comps), ("variances", var)):
            if not np.isfinite(a).all():
                raise ValueError(f"ood {name} hold NaN or infinite values")
        if (var <= 0).any():
            raise ValueError("ood variances must be > 0")
        _positive(self.residual_variance, "residual_variance")
        _positive(self.threshold, "threshold")
        if not 0 < float(self.percentile) <= 100:
            raise ValueError(f"ood percentile must be in (0, 100], got {self.percentile!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "variances", var)
        object.__setattr__(self, "residual_variance", float(self.residual_variance))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "percentile", float(self.percentile))

    @property
    def channels(self) -> int:
        """C, the number of pooled features the gate scores."""
        return int(self.mean.shape[0])

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """float64 (N,) scores of pooled features (N, C): ``sqrt(d² / C)`` of the shrunk
        Mahalanobis distance (about 1 in distribution; larger = less alike). Non-finite
        features score ``inf``."""
        x = np.asarray(pooled, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"the gate scores (N, {self.channels}) pooled features, got shape {x.shape}; "
                "it was fitted for another model"
            )
        bad = np.asarray(~np.isfinite(x).all(axis=1), dtype=bool)
        d = np.where(bad[:, None], 0.0, x) - self.mean
        z = d @ self.components.T
        inside = (z**2 / self.variances).sum(axis=1)
        residual = np.maximum((d**2).sum(axis=1) - (z**2).sum(axis=1), 0.0)
        scores = np.sqrt((inside + residual / self.residual_variance) / self.channels)
        scores[bad] = np.inf
        return np.asarray(scores, dtype=np.float64)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """bool (N,): scores above the threshold (out of distribution)."""
        s = np.asarray(scores, dtype=np.float64)
        return np.asarray(~(s <= self.threshold), dtype=bool)  # NaN counts as flagged

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON-safe; arrays as base64 float32)."""
        return {
            "method": OOD_METHOD,
            "channels": self.channels,
            "mean": _encode(self.mean),
            "components": _encode(self.components),
            "variances": _encode(self.variances),
            "residual_variance": self.residual_variance,
            "threshold": self.threshold,
            "percentile": self.percentile,
            "n_train": int(self.n_train),
            "n_val": int(self.n_val),
        }

    @classmethod
    def from_dict(cls, data: Any) -> OodGate:
        """The gate of :meth:`to_dict`'s form; a ValueError saying what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ood must be a JSON object, got {type(data).__name__}")
        if data.get("method") != OOD_METHOD:
            raise ValueError(f"ood method must be {OOD_METHOD!r}, got {data.get('method')!r}")
        counts = [data.get("n_train", 0), data.get("n_val", 0)]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError(f"ood n_train and n_val must be counts, got {counts}")
        percentile = data.get("percentile", OOD_PERCENTILE)
        gate = cls(
            _decode(data.get("mean"), "mean"),
            _decode(data.get("components"), "components"),
            _decode(data.get("variances"), "variances"),
            _positive(data.get("residual_variance"), "residual_variance"),
            _positive(data.get("threshold"), "threshold"),
            _positive(percentile, "percentile"),
            counts[0],
            counts[1],
        )
        if data.get("channels", gate.channels) != gate.channels:
            raise ValueError(f"ood channels {data.get('channels')!r} != its mean's {gate.channels}")
        return gate

    def describe(self) -> str:
        return (
            f"{self.components.shape[0]} of {self.channels} feature axes from "
            f"{self.n_train} training images; threshold {self.threshold:.3f} = the "
            f"{self.percentile:g}th percentile of {self.n_val} validation images"
        )
