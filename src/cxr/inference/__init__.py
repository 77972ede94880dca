"""Inference: one path from image files (or a prepared cache) to ranked probabilities.

>>> from cxr.inference import Predictor
>>> predictor = Predictor("runs/d121/best.safetensors")
>>> print(predictor.predict_images(["scan.png"]).to_text())   # doctest: +SKIP

- :class:`Predictor` — preprocessing (the model file's record), batching, TTA, thresholds;
- :mod:`~cxr.inference.backends` — what runs the network: :class:`TorchBackend`, or
  :class:`~cxr.inference.onnx_backend.OnnxBackend` for a ``.onnx`` file from ``cxr export``
  (ONNX Runtime, no torch imported);
- :class:`PredictionResult` / :class:`ImagePrediction` — the records, as text, JSON or CSV;
- :func:`list_images` — files and folders to image files; :func:`tta_views` — TTA.

Research use only: the outputs are not a diagnosis.
"""

from cxr.inference.backends import BACKENDS, Backend, TorchBackend, open_backend
from cxr.inference.files import list_images
from cxr.inference.onnx_backend import OnnxBackend
from cxr.inference.predictor import Predictor, predict_images
from cxr.inference.results import ImagePrediction, PredictionResult
from cxr.inference.tta import TTA_SHIFT, tta_shift, tta_views

__all__ = [
    "BACKENDS",
    "TTA_SHIFT",
    "Backend",
    "ImagePrediction",
    "OnnxBackend",
    "PredictionResult",
    "Predictor",
    "TorchBackend",
    "list_images",
    "open_backend",
    "predict_images",
    "tta_shift",
    "tta_views",
]
