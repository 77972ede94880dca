"""What the heatmap functions return: :class:`CamMaps` (a batch of maps) and
:class:`Explanation` (one label's heatmap of one image), and the step from the one to the other.

Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["CONSTANT_NOTE", "CamMaps", "Explanation", "explanations_of"]

#: The note of a heatmap that was constant and is shown as zeros.
CONSTANT_NOTE = (
    "the heatmap is constant (nothing in the image raised this label's score at the "
    "last convolutional block); shown as zeros"
)


class CamMaps(NamedTuple):
    """A batch of heatmaps, one label per image (:func:`~cxr.explain.grad_cam_maps`,
    :func:`~cxr.explain.cam_maps`).

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


def explanations_of(
    names: Sequence[str], chosen: Sequence[int], maps: CamMaps, method: str
) -> list[Explanation]:
    """One :class:`Explanation` per chosen label: ``maps`` holds image k's map of label
    ``names[chosen[k]]`` (a constant map gets :data:`CONSTANT_NOTE`)."""
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
