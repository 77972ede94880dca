"""What the service answers about predictions and the model, as JSON-ready dicts: the
prediction record of ``/v1/predict`` (the record ``cxr predict --format json`` prints, with a
few keys more) and the model card of ``/v1/model``.

Research use only: nothing the service answers is a diagnosis.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.choices import CAM_METHODS
from cxr.inference import ImagePrediction, PredictionResult, Predictor
from cxr.modelformat.filehash import file_sha256
from cxr.serving.settings import ServeSettings

__all__ = ["json_safe", "model_info", "ood_report", "prediction_body"]


def ood_report(item: ImagePrediction) -> dict[str, Any]:
    """The not-a-chest-X-ray check of one prediction: ``{"available", "flag", "score"}``.

    Read from the prediction record (``ood_flag`` / ``ood_score`` once the model file
    carries the check); ``available`` is False, with flag and score None, for models
    without it.
    """
    flag = getattr(item, "ood_flag", None)
    score = getattr(item, "ood_score", None)
    if flag is None and score is None:
        return {"available": False, "flag": None, "score": None}
    return {
        "available": True,
        "flag": None if flag is None else bool(flag),
        "score": None if score is None or not math.isfinite(float(score)) else float(score),
    }


def prediction_body(
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    items: list[ImagePrediction],
    model: Mapping[str, Any],
) -> dict[str, Any]:
    """``PredictionResult.to_dict()`` (what ``cxr predict --format json`` prints), each
    image with ``ranked`` (every label by probability, with its threshold and whether it is
    reached), ``headline``, ``ood``, ``notice``, ``sr`` and ``sr_note`` (None and "" here:
    the service names the DICOM SR's URL or why there is none, :mod:`cxr.serving.dicomsr`)
    added."""
    result = PredictionResult(tuple(labels), dict(thresholds), items, model=dict(model))
    body = result.to_dict()
    for item, image in zip(result.predicted, body["images"], strict=True):
        p = item.values()
        flags = result.above(p)
        ranked = [
            {
                "rank": rank,
                "label": labels[i],
                "probability": float(p[i]),
                "threshold": thresholds.get(labels[i]),
                "above_threshold": flags[i],
            }
            for rank, i in enumerate(np.argsort(-p, kind="stable"), start=1)
        ]
        extra = {
            "ranked": ranked,
            "headline": result.headline(p),
            "ood": ood_report(item),
            "notice": RESEARCH_NOTICE,
            "sr": None,  # the service sets the URL of a DICOM upload's SR
            "sr_note": "",  # or why there is none
        }
        for key, value in extra.items():
            image.setdefault(key, value)
    return body


def json_safe(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (a model's training summary may hold
    NaN, which JSON cannot), numpy numbers Python ones, tuples lists, keys strings."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_info(
    predictor: Predictor, settings: ServeSettings, no_explanations: str | None
) -> dict[str, Any]:
    """The body of ``/v1/model``: labels, backbone, input size, preprocessing, head,
    thresholds, training summary, the file (name, bytes, SHA-256), backend, versions, whether
    explanations (``no_explanations``: None when there are, else why not) and the
    not-a-chest-X-ray check are available, the limits, and the research-use notice."""
    p, backend = predictor, predictor.backend
    sha, n_bytes = file_sha256(p.path)
    loaded = getattr(backend, "loaded", None)
    describe = {k: v for k, v in backend.describe().items() if k != "path"}
    head = getattr(p.spec, "head", None)
    versions = {
        "cxr": __version__,
        "model_file_cxr": getattr(loaded, "cxr_version", None) or None,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "pydicom": _version("pydicom"),
    }
    if backend.name != "torch":
        versions["onnxruntime"] = _version("onnxruntime")
    info: dict[str, Any] = json_safe(
        {
            "notice": RESEARCH_NOTICE,
            "labels": list(p.labels),
            "backbone": p.spec.backbone,
            "input_size": p.size,
            "fit": p.fit,
            "preprocessing": p.preprocessing.to_dict(),
            "head": head.to_dict() if head is not None else None,
            "thresholds": dict(p.thresholds),
            "training": dict(backend.training),
            "file": {"name": p.path.name, "bytes": n_bytes, "sha256": sha},
            "backend": describe,
            "versions": versions,
            "explanations": {
                "available": no_explanations is None,
                "methods": list(CAM_METHODS) if no_explanations is None else [],
                "detail": no_explanations or "",
            },
            "ood": {
                "available": p.ood is not None,
                "threshold": None if p.ood is None else float(p.ood.threshold),
            },
            "limits": {
                "max_request_bytes": settings.max_request_bytes,
                "max_files": settings.max_files,
                "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue": settings.max_queue,
                "results_kept": settings.results_kept,
                "results_max_bytes": settings.results_max_bytes,
                "results_ttl_s": settings.results_ttl_s,
            },
        }
    )
    return info
