"""The interface every inference backend implements (:class:`Backend`).

A backend takes uint8 pixels (B, S, S), preprocessed by the model's
:class:`~cxr.preprocessing.Preprocessing`, and returns probabilities (B, L); the backends
themselves (:class:`~cxr.inference.backends.TorchBackend`,
:class:`~cxr.inference.onnx_backend.OnnxBackend`) and the choice between them
(:func:`~cxr.inference.backends.open_backend`) build on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.calibration import Calibration
from cxr.gate import OodGate
from cxr.models.spec import ModelSpec

__all__ = ["Backend"]


class Backend(ABC):
    """A model ready to run, with the metadata of its file.

    Attributes:
        name: the backend's name (``"torch"``).
        spec: labels, backbone, head and preprocessing of the model.
        thresholds: label -> decision threshold stored in the file (chosen on validation,
            on the raw probability).
        calibration: the file's probability calibration, or None.
        training: the file's training summary.
        path: the model file.
    """

    name: str = ""
    spec: ModelSpec
    thresholds: dict[str, float]
    training: dict[str, Any]
    path: Path
    #: the file's probability calibration, or None
    calibration: Calibration | None = None
    #: the file's not-a-chest-X-ray gate, or None
    ood: OodGate | None = None
    #: the file's recommended test-time augmentation (none | flip | all)
    tta: str = "none"

    @abstractmethod
    def probabilities(self, pixels: Any) -> Any:
        """float32 probabilities (B, L) of uint8 pixels (B, S, S), in the backend's own array
        type (kept where it was computed, so that batches need not wait for each other)."""

    @abstractmethod
    def to_numpy(self, outputs: Sequence[Any]) -> np.ndarray:
        """Concatenate outputs of :meth:`probabilities` into numpy float32 (N, L)."""

    def place(self, pixels: Any) -> Any:
        """uint8 pixels (B, S, S) moved to where the network runs (once, before the TTA
        views are cut from them); the identity for backends that run on the host."""
        return pixels

    def mean(self, outputs: Sequence[Any]) -> Any:
        """The element-wise mean of several outputs of :meth:`probabilities` (TTA views)."""
        total = outputs[0]
        for extra in outputs[1:]:
            total = total + extra
        return total / len(outputs)

    def features(self, pixels: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities float32 (B, L) and the pooled feature map float32 (B, C) (the
        head's pooling of the backbone's last feature map: the input of its dense layers)
        of uint8 pixels (B, S, S), as numpy arrays: one forward pass, e.g. for a check of
        whether an image looks like the training data."""
        raise NotImplementedError(f"the {self.name} backend does not give features")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}
