"""The one check of what a heatmap is asked for, used by torch Grad-CAM
(:mod:`cxr.explain.gradcam`) and the numpy CAM of ONNX models (:mod:`cxr.explain.cam`):
the method, the label index per image, and which labels of one image to explain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxr.choices import CAM_METHODS

__all__ = ["check_method", "choose_labels", "label_indices"]


def check_method(method: str) -> str:
    """``method`` when it is one of :data:`cxr.choices.CAM_METHODS`, else ValueError."""
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {list(CAM_METHODS)}, got {method!r}")
    return method


def label_indices(label_index: int | Sequence[int], batch: int, n_labels: int) -> list[int]:
    """One label index per image: ``label_index`` is one index for all ``batch`` images or
    one per image; each must lie in [0, ``n_labels``)."""
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
    return idx


def choose_labels(
    names: Sequence[str],
    labels: Sequence[str] | str | None,
    top_k: int,
    probabilities: Callable[[], np.ndarray],
) -> list[int]:
    """Indices of the labels to explain for one image.

    Args:
        names: the model's labels (L).
        labels: label names, in this order (one name may be given as a string); None = the
            ``top_k`` labels of highest probability, most probable first.
        top_k: how many labels when ``labels`` is None (1 to L).
        probabilities: returns the image's float (L,) probabilities; only called when
            ``labels`` is None.
    """
    names = list(names)
    if labels is None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(names):
            raise ValueError(
                f"top_k must be an integer from 1 to {len(names)} (the model's labels), "
                f"got {top_k!r}"
            )
        probs = np.asarray(probabilities()).reshape(-1)
        return [int(i) for i in np.argsort(-probs, kind="stable")[:top_k]]
    if isinstance(labels, str):
        labels = [labels]
    unknown = [n for n in labels if n not in names]
    if unknown:
        raise ValueError(f"labels {unknown} are not labels of the model; it has {names}")
    return [names.index(n) for n in labels]
