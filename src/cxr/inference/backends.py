"""Inference backends: what runs the network on preprocessed pixels.

A :class:`Backend` takes uint8 pixels (B, S, S), preprocessed by the model's
:class:`~cxr.preprocessing.Preprocessing`, and returns probabilities (B, L). Everything
around it — finding and decoding files, batching, TTA, thresholds, result records — lives
in :class:`~cxr.inference.Predictor` and is the same for every backend. Two backends:
``torch`` (:class:`TorchBackend`, a ``.safetensors`` model file) and ``onnx``
(:class:`~cxr.inference.onnx_backend.OnnxBackend`, a ``.onnx`` file from ``cxr export``, run
on ONNX Runtime without torch); :func:`open_backend` picks by the file name. Another runtime
is added by subclassing :class:`~cxr.inference.backend.Backend` (re-exported here) and naming
it in :func:`open_backend`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.inference.backend import Backend

if TYPE_CHECKING:
    import torch

    from cxr.modelfile import LoadedModel
    from cxr.models import ChestClassifier

__all__ = ["BACKENDS", "Backend", "TorchBackend", "open_backend"]

_PathLike = str | os.PathLike[str]

#: Backend names :func:`open_backend` knows (``"auto"`` picks one by the file name).
BACKENDS: tuple[str, ...] = ("torch", "onnx")


def _as_tensor(pixels: Any) -> torch.Tensor:
    """uint8 pixels (B, S, S) as a tensor: a tensor as it is, a numpy array shared."""
    import torch

    if isinstance(pixels, torch.Tensor):
        return pixels
    return torch.from_numpy(np.ascontiguousarray(pixels))


class TorchBackend(Backend):
    """The cxr model in PyTorch.

    Args:
        loaded: a loaded model file (:func:`cxr.modelfile.load_model`).
        device: torch device (``"auto"`` = the GPU when there is one).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass;
            ``"auto"`` = bf16 on a GPU, fp32 on the CPU. Probabilities are float32 either way.
        channels_last: run in channels-last memory format (faster on GPUs and, measured,
            on the CPU too; the same numbers up to rounding).
    """

    name = "torch"

    def __init__(
        self,
        loaded: LoadedModel,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        channels_last: bool = True,
    ) -> None:
        import torch

        from cxr.devices import autocast_dtype, resolve_device, resolve_precision

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.amp_dtype = autocast_dtype(self.precision)
        self.channels_last = bool(channels_last)
        self.loaded = loaded
        model = loaded.model.to(self.device).eval()
        if self.channels_last:
            # Module.to takes memory_format (torch's stubs for Module.to omit it)
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: ChestClassifier = model
        self.spec, self.thresholds = loaded.spec, dict(loaded.thresholds)
        self.training, self.path = dict(loaded.training), Path(loaded.path)
        self.calibration = loaded.calibration
        self.ood = loaded.ood
        self.tta = loaded.tta

    def place(self, pixels: Any) -> torch.Tensor:
        return _as_tensor(pixels).to(self.device, non_blocking=True)

    def probabilities(self, pixels: Any) -> torch.Tensor:
        """float32 (B, L) on the model's device, of uint8 pixels (B, S, S) (numpy or a
        tensor on any device; copied without waiting when pinned)."""
        import torch

        from cxr.preprocessing import to_model_input

        x = to_model_input(_as_tensor(pixels), self.device, self.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ),
        ):
            return torch.sigmoid(self.model(x).float()).float()

    def features(self, pixels: Any) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from cxr.preprocessing import to_model_input

        x = to_model_input(_as_tensor(pixels), self.device, self.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ),
        ):
            pooled = self.model.head.pool(self.model.features(x))
            logits = self.model.head.logits_from_pooled(pooled)
            probs = torch.sigmoid(logits.float())
        return (
            probs.float().cpu().numpy().astype(np.float32),
            pooled.float().cpu().numpy().astype(np.float32),
        )

    def to_numpy(self, outputs: Sequence[Any]) -> np.ndarray:
        import torch

        if not outputs:
            return np.zeros((0, self.spec.num_labels), np.float32)
        return torch.cat(list(outputs)).cpu().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "precision": self.precision}


def open_backend(
    model: LoadedModel | _PathLike | Backend,
    backend: str = "auto",
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    channels_last: bool = True,
) -> Backend:
    """A ready backend for a model file path, a :class:`~cxr.modelfile.LoadedModel` or a
    backend (returned as it is).

    ``backend="auto"`` runs a path ending in ``.onnx`` on ONNX Runtime (``"onnx"``, no
    torch imported) and anything else with torch (``"torch"``).
    """
    from cxr.modelformat.onnx_metadata import is_onnx_path

    if isinstance(model, Backend):
        return model
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {backend!r}")
    if backend == "auto":
        backend = "onnx" if is_onnx_path(model) else "torch"
    if backend == "onnx":
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                "backend 'onnx' needs the path of a .onnx file (export a model with "
                f"`cxr export MODEL --format onnx`), got {type(model).__name__}"
            )
        from cxr.inference.onnx_backend import OnnxBackend

        return OnnxBackend(model, str(device), precision)
    if is_onnx_path(model):
        raise ValueError(
            f"{model} is an ONNX file; run it with backend 'onnx' (or 'auto'), not 'torch'"
        )
    from cxr.modelfile import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, (str, os.PathLike)):
        loaded = load_model(model, device="cpu")
    else:
        raise TypeError(
            f"model must be a model file path or a LoadedModel, got {type(model).__name__}"
        )
    return TorchBackend(loaded, device, precision, channels_last)
