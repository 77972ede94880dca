"""Predicting labels for image files (PNG, JPEG, DICOM) with a saved model.

Every image is preprocessed exactly as the training cache was, by the model's
:class:`~cxr.preprocessing.Preprocessing` record (size and fit from the model file):
``Preprocessing.load(path)`` gives uint8 (S, S); a :class:`~cxr.inference.backends.Backend`
turns uint8 (B, S, S) into probabilities (B, L). Test-time augmentation averages the
probabilities of the views of :mod:`cxr.inference.tta`: ``tta="flip"`` (original and
mirror), ``"all"`` (six views) or ``"none"``; left unset, the model file's recommended mode
(``tta`` in its header; ``"none"`` when it has none).

Unreadable files are not fatal: each is reported by name with its reason and skipped;
:attr:`PredictionResult.all_succeeded` says whether every image was predicted.
Research use only: the outputs are not a diagnosis.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.images import ImageReadError
from cxr.inference.backends import Backend, open_backend
from cxr.inference.files import list_images
from cxr.inference.results import ImagePrediction, PredictionResult
from cxr.inference.tta import describe_views, tta_mode, tta_views
from cxr.thresholds import Thresholds

if TYPE_CHECKING:
    import torch

    from cxr.modelfile import LoadedModel

__all__ = ["Predictor", "predict_images"]

_PathLike = str | os.PathLike[str]


# the predictor -----------------------------------------------------------------------------
class Predictor:
    """A model ready to predict files, folders, prepared caches or preprocessed arrays.

    Args:
        model: a model file path (loaded and verified), a :class:`LoadedModel`, or a
            :class:`~cxr.inference.backends.Backend`.
        device: torch device for the model (``"auto"`` = the GPU when there is one).
        tta: test-time augmentation (:mod:`cxr.inference.tta`): ``"none"``, ``"flip"``
            (original + mirror), ``"all"`` (six views); True = ``"all"``, False =
            ``"none"``; None (default) = the model file's recommended mode (``"none"``
            when it has none). An explicit choice always wins.
        batch_size: images per forward pass (each TTA view is one pass).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass;
            ``"auto"`` = bf16 on a GPU, fp32 on the CPU. Probabilities are float32 either way.
        channels_last: run the model in channels-last memory format (faster on GPUs and,
            measured, on the CPU too; the same numbers up to rounding).
        backend: which runtime runs the network (:data:`~cxr.inference.backends.BACKENDS`);
            ``"auto"`` = ONNX Runtime for a ``.onnx`` file, torch otherwise.
    """

    def __init__(
        self,
        model: LoadedModel | _PathLike | Backend,
        device: str | torch.device = "cpu",
        tta: bool | str | None = None,
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = True,
        backend: str = "auto",
        calibrated: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        chosen = None if tta is None else tta_mode(tta)  # a bad value fails before loading
        self.backend = open_backend(
            model, backend, device=device, precision=precision, channels_last=channels_last
        )
        self.spec = self.backend.spec
        self.preprocessing = self.spec.preprocessing
        self.labels = self.spec.labels
        #: the file's probability calibration, applied to every output (None: raw scores)
        self.calibration = self.backend.calibration if calibrated else None
        #: thresholds as stored (on the model's raw probability)
        self.raw_thresholds = dict(self.backend.thresholds)
        #: thresholds on the scale of the outputs (calibrated when calibration is on):
        #: the same decisions as the raw thresholds on raw probabilities
        self.thresholds = {k: self.output_scale(k, t) for k, t in self.raw_thresholds.items()}
        self.fit = self.preprocessing.fit
        self.size = self.preprocessing.size
        recommended = tta_mode(self.backend.tta)
        #: the TTA mode in use: ``"none"``, ``"flip"`` or ``"all"``
        self.tta: str = chosen if chosen is not None else recommended
        #: where it came from: ``"caller"`` (chosen), ``"model file"`` (the file's
        #: recommendation) or ``"default"`` (neither: none)
        self.tta_source = (
            "caller" if chosen is not None else "model file" if recommended != "none" else "default"
        )
        self.batch_size = batch_size
        #: the file's not-a-chest-X-ray gate (:class:`cxr.gate.OodGate`), or None
        self.ood = self.backend.ood

    @property
    def path(self) -> Path:
        """The model file."""
        return self.backend.path

    @property
    def precision(self) -> str:
        """The forward pass's precision (``fp32``, ``bf16``, ``fp16``)."""
        return str(getattr(self.backend, "precision", "fp32"))

    @property
    def channels_last(self) -> bool:
        return bool(getattr(self.backend, "channels_last", False))

    @property
    def model(self) -> Any:
        """The torch model (:class:`~cxr.models.ChestClassifier`), for Grad-CAM; only the
        torch backend has one."""
        model = getattr(self.backend, "model", None)
        if model is None:
            raise ValueError(
                f"the {self.backend.name} backend has no torch model (Grad-CAM needs the "
                ".safetensors model file); heatmaps of an ONNX model: "
                "cxr.explain.explain_onnx(predictor.backend, image)"
            )
        return model

    def describe(self) -> dict[str, Any]:
        """The model and how it runs, for reports: path, backbone, input size, fit, ``tta``
        (True when any TTA is on), calibration, the backend's fields, ``tta_mode`` (none |
        flip | all), ``tta_source`` (caller | model file | default) and ``tta_views`` (the
        views averaged, in words)."""
        return {
            "path": str(self.path),
            "backbone": self.spec.backbone,
            "input_size": self.size,
            "fit": self.fit,
            "tta": self.tta != "none",
            "calibration": self.calibration.method if self.calibration is not None else "none",
            **self.backend.describe(),
            "tta_mode": self.tta,
            "tta_source": self.tta_source,
            "tta_views": describe_views(self.tta, self.size)
            + (" (recommended by the model file)" if self.tta_source == "model file" else ""),
        }

    def output_scale(self, label: str, probability: float) -> float:
        """A raw probability of ``label`` (e.g. a Grad-CAM explanation's, or a stored
        threshold) on the scale of this predictor's outputs: mapped by the file's
        calibration (:meth:`cxr.calibration.Calibration.map`) when calibration is on."""
        if self.calibration is None:
            return float(probability)
        return self.calibration.map(label, probability)

    def preprocess(self, path: _PathLike) -> np.ndarray:
        """uint8 (S, S): the file as training saw it (raises ImageReadError)."""
        return self.preprocessing.load(path)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities float32 (B, L) of preprocessed images uint8 (B, S, S), S = the
        model's input size (as :meth:`preprocess` or a prepared cache gives them)."""
        images = self.preprocessing.check_pixels(images)
        out = [
            self.probabilities(np.ascontiguousarray(images[start : start + self.batch_size]))
            for start in range(0, len(images), self.batch_size)
        ]
        return self._finite(self.backend.to_numpy(out))

    def predict_arrays_ood(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities float32 (B, L) (as :meth:`predict_arrays`) and the not-a-chest-X-ray
        scores float64 (B,) of the model's gate (:class:`cxr.gate.OodGate`; ``gate.flags(scores)``
        marks the out-of-distribution images), or None when the model file has no gate.
        One forward pass per batch; with TTA the features are the original view's."""
        images = self.preprocessing.check_pixels(images)
        if self.ood is None:
            return self.predict_arrays(images), None
        probs: list[np.ndarray] = [np.zeros((0, len(self.labels)), np.float32)]
        scores: list[np.ndarray] = [np.zeros(0)]
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size])
            raw, pooled = self.backend.features(batch)
            tta = self.tta != "none"
            probs.append(self.backend.to_numpy([self.probabilities(batch)]) if tta else raw)
            scores.append(self.ood.score(pooled))
        return self._finite(np.concatenate(probs)), np.concatenate(scores)

    def _finite(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` calibrated (when calibration is on) if all are finite; else a
        ValueError naming the model (a damaged or forged file computes NaN, which must never
        be shown as a table)."""
        if probs.size and not np.isfinite(probs).all():
            raise ValueError(
                f"the model {self.path} computed NaN or infinite probabilities; the file is "
                "damaged or was edited; use an intact model"
            )
        if self.calibration is not None:
            probs = self.calibration.apply(probs, self.labels)
        return probs

    def probabilities(self, pixels: Any) -> Any:
        """float32 (B, L) probabilities of uint8 pixels (B, S, S), averaged over the views of
        the TTA mode (2 for ``"flip"``, 6 for ``"all"``), in the backend's array type (a
        torch tensor on the model's device for the torch backend)."""
        if self.tta == "none":
            return self.backend.probabilities(pixels)
        # one copy to the device, views there
        views = tta_views(self.backend.place(pixels), self.tta)
        return self.backend.mean([self.backend.probabilities(v) for v in views])

    def predict_cache(self, cache: Any, progress: bool = False) -> np.ndarray:
        """Probabilities float32 (N, L) of every image of a prepared cache (a
        :class:`~cxr.cache.PreparedCache` or its folder), in cache order; the cache's side
        and fit must be the model's."""
        from tqdm.auto import tqdm

        from cxr.cache import PreparedCache

        cache = cache if isinstance(cache, PreparedCache) else PreparedCache(cache)
        if cache.size != self.size:
            raise ValueError(
                f"the cache {cache.path} holds {cache.size}px images but the model "
                f"{self.path} takes {self.size}px; prepare the data with "
                f"--size {self.size}"
            )
        if cache.fit != self.fit:
            raise ValueError(
                f"the cache {cache.path} was prepared with --fit {cache.fit} but the "
                f"model was trained on --fit {self.fit}; prepare it again with "
                f"--fit {self.fit}"
            )
        from cxr.cache.batches import CacheBatches

        # read ahead in a thread into pinned memory; the probabilities stay on the device
        # until the end, so nothing waits for the GPU between batches
        device = getattr(self.backend, "device", None)
        batches = CacheBatches(
            cache,
            self.batch_size,
            shuffle=False,
            pin_memory=device is not None and device.type == "cuda",
            prefetch=2,
        )
        out = []
        with tqdm(
            total=len(cache), unit="img", desc="predict", disable=not progress, dynamic_ncols=True
        ) as bar:
            for pixels, _ in batches:
                out.append(self.probabilities(pixels))
                bar.update(len(pixels))
        return self._finite(self.backend.to_numpy(out))

    def predict_paths(
        self, paths: Sequence[_PathLike], progress: bool = False
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """Probabilities float32 (N, L) of the N files in order (e.g. a dataset's image
        paths), in batches; a file that cannot be read gets a row of NaN and an entry
        row -> (reason, detail)."""
        probs, _, failed = self._predict_paths(paths, progress)
        return probs, failed

    def _predict_paths(
        self, paths: Sequence[_PathLike], progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, dict[int, tuple[str, str]]]:
        """:meth:`predict_paths` with the gate's scores (N,) (NaN for unread files; None
        when the model has no gate)."""
        from tqdm.auto import tqdm

        probs = np.full((len(paths), len(self.labels)), np.nan, dtype=np.float32)
        scores = None if self.ood is None else np.full(len(paths), np.nan)
        failed: dict[int, tuple[str, str]] = {}
        with tqdm(
            total=len(paths), unit="img", desc="predict", disable=not progress, dynamic_ncols=True
        ) as bar:
            for start in range(0, len(paths), self.batch_size):
                rows, arrays = [], []
                for i in range(start, min(start + self.batch_size, len(paths))):
                    try:
                        arrays.append(self.preprocess(paths[i]))
                        rows.append(i)
                    except ImageReadError as err:
                        failed[i] = (err.reason, err.detail)
                    except (OSError, ValueError, RuntimeError) as err:
                        failed[i] = ("unreadable", f"{type(err).__name__}: {err}")
                if arrays:
                    probs[rows], batch_scores = self.predict_arrays_ood(np.stack(arrays))
                    if scores is not None and batch_scores is not None:
                        scores[rows] = batch_scores
                bar.update(min(self.batch_size, len(paths) - start))
        return probs, scores, failed

    def predict_images(
        self, paths: Iterable[_PathLike] | _PathLike, progress: bool = False
    ) -> PredictionResult:
        """Predict files and folders (expanded by :func:`list_images`), in batches.

        Files that cannot be decoded are skipped with their reason; the result lists them.
        """
        ignored: list[Path] = []
        files = list_images(paths, ignored)
        result = PredictionResult(self.labels, self.thresholds, model=self.describe())
        if self.ood is not None:
            result.ood_threshold = float(self.ood.threshold)
        if ignored:
            result.notes.append(
                f"{len(ignored)} non-image file(s) in the folders were ignored (e.g. {ignored[0]})"
            )
        probs, scores, failed = self._predict_paths(files, progress)
        flags = None if scores is None or self.ood is None else self.ood.flags(scores)
        result.items = [
            ImagePrediction(str(f), None, *failed[i])
            if i in failed
            else ImagePrediction(
                str(f),
                probs[i],
                ood_score=None if scores is None else float(scores[i]),
                ood_flag=None if flags is None else bool(flags[i]),
            )
            for i, f in enumerate(files)
        ]
        return result

    def stored_thresholds(self) -> Thresholds | None:
        """The model file's thresholds as a :class:`~cxr.thresholds.Thresholds` record
        (chosen on validation data by ``cxr train``, Youden's J), or None if it has none."""
        if not self.thresholds:
            return None
        scale = " on the calibrated scale" if self.calibration is not None else ""
        return Thresholds(
            self.thresholds,
            method="youden",
            source=f"the validation data of {self.path} (stored in the model file){scale}",
        )


def predict_images(
    model: LoadedModel | _PathLike,
    paths: Sequence[_PathLike],
    *,
    device: str = "cpu",
    tta: bool | str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> PredictionResult:
    """Shortcut: ``Predictor(model, device, tta, batch_size).predict_images(paths, progress)``."""
    return Predictor(model, device, tta, batch_size).predict_images(paths, progress)
