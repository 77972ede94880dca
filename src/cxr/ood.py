"""The not-a-chest-X-ray gate: is an image like the images the model was trained on?

A model scores any image it is given. The gate describes the model's pooled penultimate
features (the head's pooling of the backbone's last feature map, (N, C)) of the training
cache compactly and scores new images by their distance to that description:

- the mean ``mean`` (C,) and the top ``k`` principal axes ``components`` (k, C) with their
  variances ``variances`` (k,); the rest of the space is one isotropic variance
  ``residual_variance`` (the mean of the discarded eigenvalues): a shrunk covariance
  (probabilistic PCA) whose Mahalanobis distance is
  ``d² = Σ_i (z_i² / λ_i) + ||r||² / σ²`` with ``z = components @ (x - mean)`` and ``r``
  the part of ``x - mean`` outside the k axes;
- the score is ``sqrt(d² / C)`` (about 1 for a typical training image, larger = less
  alike), and ``threshold`` is the ``percentile`` (99 by default) of the scores of the
  validation cache: about 1 % of in-distribution images are flagged by design.

Stored in the model file's JSON metadata (``"ood"``: arrays as base64 float32,
little-endian; a DenseNet-121 with k = 128 takes about 700 KB, a model with C <= 128 keeps
its whole covariance) by
:func:`cxr.modelfile.with_ood`, fitted by :func:`fit_model_gate` (``cxr gate``, and at the
end of ``cxr train``). Nothing here imports torch; :func:`fit_model_gate` runs a
:class:`~cxr.inference.Predictor` (imported when called).
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OOD_COMPONENTS",
    "OOD_METHOD",
    "OOD_PERCENTILE",
    "OodGate",
    "cache_features",
    "fit_model_gate",
    "fit_ood_gate",
]

#: The stored form's method name (the only one this cxr reads).
OOD_METHOD = "pca-mahalanobis"
#: Principal axes kept at most (fewer when there are fewer features or images).
OOD_COMPONENTS = 128
#: The percentile of the validation scores that becomes the threshold.
OOD_PERCENTILE = 99.0
#: Training images used at most for the description (a seeded subsample beyond).
MAX_TRAIN_IMAGES = 5000
#: Variances below this fraction of the mean variance are raised to it (no division by 0,
#: no huge distances along axes the training images never vary on).
_FLOOR = 1e-4


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


def fit_ood_gate(
    train_features: np.ndarray,
    val_features: np.ndarray,
    percentile: float = OOD_PERCENTILE,
    components: int = OOD_COMPONENTS,
) -> OodGate:
    """Fit the description on training features (N, C) and the threshold on validation
    features (M, C) (``percentile`` of their scores; never the training scores, which
    are optimistic)."""
    x = np.asarray(train_features, dtype=np.float64)
    v = np.asarray(val_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"training features must be (N >= 2, C), got shape {x.shape}")
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] != x.shape[1]:
        raise ValueError(f"validation features must be (M >= 1, {x.shape[1]}), got {v.shape}")
    if not (np.isfinite(x).all() and np.isfinite(v).all()):
        raise ValueError("the features hold NaN or infinite values")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    n, c = x.shape
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eig = np.zeros(c)
    eig[: len(s)] = s**2 / (n - 1)
    floor = max(float(eig.mean()), 1e-12) * _FLOOR
    k = max(1, min(components, c, n - 1))
    # the rest of the space: one variance, the mean of the discarded eigenvalues
    residual = floor if k == c else max(float(eig[k:].mean()), floor)
    gate = OodGate(mean, vt[:k], np.maximum(eig[:k], floor), residual, 1.0, percentile, n, len(v))
    scores = gate.score(v)
    threshold = max(float(np.percentile(scores, percentile)), 1e-12)
    return OodGate(mean, vt[:k], gate.variances, residual, threshold, percentile, n, len(v))


def cache_features(
    predictor: Any,
    cache: Any,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Pooled features float32 (N, C) of a prepared cache's images with a
    :class:`~cxr.inference.Predictor` (at most ``limit``, a seeded sample, in cache order)."""
    from tqdm.auto import tqdm

    from cxr.cache import PreparedCache

    cache = cache if isinstance(cache, PreparedCache) else PreparedCache(cache)
    if cache.size != predictor.size or cache.fit != predictor.fit:
        raise ValueError(
            f"the cache {cache.path} holds {cache.size}px images fitted by {cache.fit}, the "
            f"model takes {predictor.size}px fitted by {predictor.fit}"
        )
    rows = np.arange(len(cache))
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    out = []
    step = predictor.batch_size
    with tqdm(total=len(rows), unit="img", desc="features", disable=not progress) as bar:
        for start in range(0, len(rows), step):
            _, pooled = predictor.backend.features(cache.read(rows[start : start + step]))
            out.append(np.asarray(pooled, dtype=np.float32))
            bar.update(len(out[-1]))
    if not out:
        raise ValueError(f"the cache {cache.path} has no images")
    return np.concatenate(out)


def fit_model_gate(
    model: str | os.PathLike[str],
    train_cache: Any,
    val_cache: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    percentile: float = OOD_PERCENTILE,
    components: int = OOD_COMPONENTS,
    max_train: int | None = MAX_TRAIN_IMAGES,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Path, OodGate]:
    """Fit the gate of a ``.safetensors`` model file on its training cache (at most
    ``max_train`` images, a seeded sample) and validation cache, and write it into the
    file (``out`` when given, else in place; everything else is kept). Returns the path
    written and the gate."""
    from cxr.inference import Predictor
    from cxr.modelfile import load_model, with_ood

    path = Path(model)
    predictor = Predictor(load_model(path), device=device, batch_size=batch_size, precision="fp32")
    train = cache_features(predictor, train_cache, max_train, seed, progress)
    val = cache_features(predictor, val_cache, None, seed, progress)
    gate = fit_ood_gate(train, val, percentile, components)
    return with_ood(path, gate, out), gate
