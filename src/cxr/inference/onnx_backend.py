"""The ONNX Runtime backend: runs a model exported by ``cxr export`` without torch.

The file is read and verified by :func:`cxr.modelformat.onnx_metadata.read_onnx` (cxr metadata,
SHA-256 seal, signature when a key is configured) and the verified bytes are handed to
ONNX Runtime. Pixels become input by :func:`cxr.preprocessing.to_model_input` (numpy), the
same definition the torch backend uses; the graph holds the normalisation, the backbone and
the head. Nothing here imports torch or MONAI.

Install the runtime with ``pip install 'cxr[onnx]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.inference.backend import Backend
from cxr.modelformat.onnx_metadata import (
    INPUT_NAME,
    OUTPUT_NAMES,
    HeadWeights,
    OnnxInfo,
    read_onnx,
    require,
)
from cxr.preprocessing import to_model_input

__all__ = ["OnnxBackend", "import_onnxruntime", "make_session"]


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`~cxr.modelformat.onnx_metadata.OnnxNotInstalled`
    saying how to install it."""
    return require("onnxruntime", "running .onnx models")


def _providers(device: str, available: Sequence[str]) -> list[Any]:
    """ONNX Runtime execution providers for a cxr device name (cpu, auto, cuda, cuda:N)."""
    device = str(device).strip().lower()
    if device in ("cpu", ""):
        return ["CPUExecutionProvider"]
    if device == "auto":
        cuda = "CUDAExecutionProvider" in available
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        )
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {device!r}: this ONNX Runtime has no CUDA provider (it has "
                f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"device must be cpu, auto, cuda or cuda:N for an ONNX model, got {device!r}")


def make_session(model: bytes, device: str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime inference session of serialised model bytes (all graph
    optimisations; ``threads`` intra-op threads, default: the runtime's choice)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no warnings on stderr for the user
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    providers = _providers(device, ort.get_available_providers())
    return ort.InferenceSession(model, options, providers=providers)


class OnnxBackend(Backend):
    """A model exported by ``cxr export`` run on ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` (default), ``auto`` (CUDA when this ONNX Runtime has it), ``cuda``,
            ``cuda:N``.
        precision: ``auto`` or the file's own (``fp32`` / ``int8``): an ONNX graph runs at
            the precision it was exported with; other values are refused.
        threads: intra-op threads (default: ONNX Runtime's, one per physical core).

    Attributes (besides :class:`Backend`'s): ``info`` (the verified metadata),
    ``head`` (classifier weights for CAM, or None), ``precision``, ``session``.
    """

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        precision: str = "auto",
        threads: int | None = None,
    ) -> None:
        info, raw = read_onnx(path)
        if precision not in ("auto", info.precision):
            raise ValueError(
                f"model file {info.path} is an {info.precision} ONNX graph and runs at that "
                f"precision; precision {precision!r} applies to torch models only"
            )
        self.info: OnnxInfo = info
        self.spec, self.thresholds = info.spec, dict(info.thresholds)
        self.training, self.path = dict(info.training), Path(info.path)
        self.calibration = info.calibration
        self.ood = info.ood
        self.tta = info.tta
        self.head: HeadWeights | None = info.head
        self.precision = info.precision
        self.device_name = str(device)
        self.session = make_session(raw, device, threads)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or not {"probabilities", "features"} <= outputs:
            raise ValueError(
                f"model file {info.path}: its graph has inputs {inputs} and outputs "
                f"{sorted(outputs)}; a cxr export has input {INPUT_NAME!r} and outputs "
                f"{list(OUTPUT_NAMES)}"
            )
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, pixels: Any, names: Sequence[str] = ("probabilities",)) -> list[np.ndarray]:
        """The graph's outputs ``names`` (of
        :data:`~cxr.modelformat.onnx_metadata.OUTPUT_NAMES`) for uint8 pixels (B, S, S)
        (numpy, or a CPU tensor), as float32 numpy arrays."""
        if not isinstance(pixels, np.ndarray):  # e.g. a batch of a prepared cache's loader
            pixels = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
        x = to_model_input(np.ascontiguousarray(pixels))
        return [
            np.asarray(o, dtype=np.float32) for o in self.session.run(list(names), {INPUT_NAME: x})
        ]

    def probabilities(self, pixels: Any) -> np.ndarray:
        """float32 (B, L) numpy probabilities of uint8 pixels (B, S, S)."""
        return self.run(pixels, ("probabilities",))[0]

    def features(self, pixels: Any) -> tuple[np.ndarray, np.ndarray]:
        probs, pooled = self.run(pixels, ("probabilities", "pooled"))
        return probs, pooled

    def to_numpy(self, outputs: Sequence[Any]) -> np.ndarray:
        if not outputs:
            return np.zeros((0, self.spec.num_labels), np.float32)
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in outputs])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device_name,
            "precision": self.precision,
            "providers": list(self.session.get_providers()),
        }
