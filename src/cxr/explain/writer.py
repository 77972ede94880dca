"""Explanations of a prediction run, for every front end: which heatmap function a
predictor's backend allows (:func:`explainer_for`), with probabilities on the predictor's
output scale, and the explanation PNGs ``cxr predict --explain`` writes
(:func:`write_explanations`). ``cxr serve`` makes its heatmaps with the same explainer.

Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.explain.cam import CamUnavailable, check_cam_head, explain_onnx
from cxr.explain.figures import save_explanation_png
from cxr.explain.gradcam import explain
from cxr.explain.records import Explanation

if TYPE_CHECKING:
    from cxr.inference import PredictionResult, Predictor

__all__ = ["Explainer", "explainer_for", "explanation_file", "write_explanations"]


def _backend_heatmaps(backend: Any) -> Callable[..., list[Explanation]] | None:
    """The backend's heatmap function (raw probabilities), or None when it has none."""
    model = getattr(backend, "model", None)
    if getattr(backend, "name", "") == "torch" and model is not None:
        return partial(explain, model)
    if not (hasattr(backend, "run") and hasattr(backend, "head")):
        return None
    check_cam_head(backend.spec.head, backend.head, backend.path)
    return partial(explain_onnx, backend)


@dataclass(frozen=True)
class Explainer:
    """``explainer(image, labels=None, top_k=3, method="gradcam")``: the heatmaps of one
    uint8 (S, S) preprocessed image, as :func:`cxr.explain.explain` gives them, each
    probability on the predictor's output scale (:func:`explainer_for` makes one).

    Attributes:
        heatmaps: the backend's heatmap function, ``(image, labels=, top_k=, method=)``
            -> explanations with raw probabilities.
        predictor: the predictor whose ``output_scale`` maps them.
    """

    heatmaps: Callable[..., list[Explanation]]
    predictor: Predictor

    def __call__(
        self,
        image: np.ndarray,
        labels: Sequence[str] | None = None,
        top_k: int = 3,
        method: str = "gradcam",
    ) -> list[Explanation]:
        found = self.heatmaps(image, labels=labels, top_k=top_k, method=method)
        scale = self.predictor.output_scale
        return [replace(ex, probability=scale(ex.label, ex.probability)) for ex in found]


def explainer_for(predictor: Predictor) -> Explainer | None:
    """How this predictor's heatmaps are made, or None when its backend makes none.

    The torch backend differentiates its model (:func:`cxr.explain.explain`); the ONNX
    backend computes Grad-CAM in closed form from its feature map and head weights
    (:func:`cxr.explain.explain_onnx`). Each explanation's probability is put on the
    predictor's output scale (calibrated when the predictor calibrates), the scale of its
    predictions and thresholds.

    Raises:
        CamUnavailable: an ONNX model whose head has hidden layers (or no stored weights).
    """
    heatmaps = _backend_heatmaps(predictor.backend)
    return None if heatmaps is None else Explainer(heatmaps, predictor)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def unique_stem(path: str | Path, used: set[str]) -> str:
    """The file name of ``path`` without suffix, reduced as :func:`explanation_file` does,
    with ``-2``, ``-3``... when ``used`` holds it already; the result is added to ``used``."""
    stem = _safe(Path(path).stem)
    base, k = stem, 1
    while base in used:
        k += 1
        base = f"{stem}-{k}"
    used.add(base)
    return base


def explanation_file(out_dir: Path, stem: str, label: str) -> Path:
    """``OUT_DIR/STEM_LABEL.png``, each part reduced to letters, digits, ``.``, ``_``, ``-``."""
    return Path(out_dir) / f"{_safe(stem)}_{_safe(label)}.png"


def write_explanations(
    predictor: Predictor,
    result: PredictionResult,
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
    top_k: int = 3,
    method: str = "gradcam",
) -> list[Path]:
    """One explanation PNG (:func:`~cxr.explain.save_explanation_png`: the image beside the
    overlay, the probability on the predictor's scale and the label's threshold) per
    predicted image and explained label, as ``cxr predict --explain OUT_DIR`` writes them.

    Args:
        predictor: the predictor that made ``result`` (its backend makes the heatmaps).
        result: its prediction; each image in ``result.predicted`` is read again.
        out_dir: the folder (created); files are named ``STEM_LABEL.png`` after the image's
            file name (``STEM-2_LABEL.png`` for a second image of the same name).
        labels: label names to explain, in this order; None = the ``top_k`` most probable.
        top_k: how many labels when ``labels`` is None (1 to L).
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        The files written, in order.

    Raises:
        CamUnavailable: the predictor's model cannot make heatmaps.
        ImageReadError, OSError: an image cannot be read again, or a file written.
    """
    heatmaps = explainer_for(predictor)
    if heatmaps is None:
        raise CamUnavailable(
            f"the {predictor.backend.name} backend makes no heatmaps: explain with the "
            ".safetensors model (torch Grad-CAM)"
        )
    written: list[Path] = []
    used: set[str] = set()
    for it in result.predicted:
        image = predictor.preprocess(it.path)
        base = unique_stem(it.path, used)
        # the most probable on the table's scale (calibrated), ranked as the table ranks
        chosen = list(labels) if labels is not None else ranked_labels(result, it, top_k)
        for ex in heatmaps(image, labels=chosen, top_k=len(chosen), method=method):
            path = save_explanation_png(
                explanation_file(Path(out_dir), base, ex.label),
                image,
                ex,
                source=it.path,
                threshold=predictor.thresholds.get(ex.label),
            )
            written.append(Path(path))
    return written


def ranked_labels(result: PredictionResult, item: Any, top_k: int) -> list[str]:
    """The ``top_k`` labels of ``item`` (an :class:`~cxr.inference.ImagePrediction` of
    ``result``) with the highest probabilities as the table shows them (calibrated when the
    prediction is), in the table's order: the findings the explanations and the table name
    are the same ones even where calibration reorders labels."""
    n = len(result.labels)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an integer from 1 to {n} (the labels), got {top_k!r}")
    probs = np.asarray(item.values(), dtype=np.float64)
    return [result.labels[i] for i in np.argsort(-probs, kind="stable")[:top_k]]
