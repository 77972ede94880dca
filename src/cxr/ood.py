"""Fitting the not-a-chest-X-ray gate: is an image like the images the model was trained on?

The gate's stored form and scoring (:class:`~cxr.gate.OodGate`, re-exported here) is a
record at the bottom of the layers (:mod:`cxr.gate`); this module fits it: the description on
the pooled features of the training cache (:func:`fit_ood_gate`), the threshold on the
validation cache's scores, and the whole run on a model file (:func:`fit_model_gate`,
``cxr gate``, and at the end of ``cxr train``), which writes it with
:func:`cxr.modelfile.with_ood`. Nothing here imports torch; :func:`fit_model_gate` runs a
:class:`~cxr.inference.Predictor` (imported when called).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr.gate import OOD_METHOD, OOD_PERCENTILE, OodGate

__all__ = [
    "MAX_TRAIN_IMAGES",
    "OOD_COMPONENTS",
    "OOD_METHOD",
    "OOD_PERCENTILE",
    "OodGate",
    "cache_features",
    "fit_model_gate",
    "fit_ood_gate",
]

#: Principal axes kept at most (fewer when there are fewer features or images).
OOD_COMPONENTS = 128
#: Training images used at most for the description (a seeded subsample beyond).
MAX_TRAIN_IMAGES = 5000
#: Variances below this fraction of the mean variance are raised to it (no division by 0,
#: no huge distances along axes the training images never vary on).
_FLOOR = 1e-4


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
