"""Predicting labels for image files (PNG, JPEG, DICOM) with a saved model.

Every image is preprocessed exactly as the training cache was: ``load_for_cache(path,
spec.input_size, fit)`` gives uint8 (S, S), which becomes float (B, 1, S, S) = pixels / 255,
the model's input. ``fit`` is read from the model file's training summary (``"fit"``,
``"pad"`` when absent), the size from its spec.

Test-time augmentation (``tta=True``) averages the *probabilities* of six views of the
preprocessed image: the original; its left-right mirror; and the original shifted by
``d = max(1, round(0.03 * S))`` pixels right, left, down and up, the uncovered border
filled with black (0, as the cache's padding and training's augmentation do). The mirror
is a view the model was not trained on (training does not flip by default: the heart
is on the left), so TTA is an option, off by default.

Unreadable files are not fatal: each is reported by name with its reason and skipped;
:attr:`PredictionResult.all_succeeded` says whether every image was predicted.
Research use only: the outputs are not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxr import RESEARCH_NOTICE
from cxr.images import (
    FIT_MODES,
    IMAGE_SUFFIXES,
    ImageReadError,
    is_dicom,
    load_for_cache,
)
from cxr.modelfile import LoadedModel, load_model
from cxr.models import to_model_input

if TYPE_CHECKING:
    from cxr.thresholds import Thresholds

__all__ = [
    "TTA_SHIFT",
    "ImagePrediction",
    "PredictionResult",
    "Predictor",
    "list_images",
    "model_fit",
    "resolve_model",
    "tta_views",
]

#: TTA shift as a fraction of the image side.
TTA_SHIFT = 0.03
_PathLike = str | os.PathLike[str]


#: Forward-pass precisions of :class:`Predictor`.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


def resolve_model(model: LoadedModel | _PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A :class:`LoadedModel` from a model file path (loaded, verified) or as given."""
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a model file path or a LoadedModel, got {type(model).__name__}")
    return load_model(model, device=device)


def model_fit(loaded: LoadedModel) -> str:
    """How images were fitted into squares for this model's training: ``pad`` or ``crop``."""
    fit = (loaded.training or {}).get("fit", "pad")
    if fit not in FIT_MODES:
        raise ValueError(f"model file {loaded.path}: its training summary has fit={fit!r}; "
                         f"expected one of {FIT_MODES}")
    return str(fit)


# finding images --------------------------------------------------------------------------
def _is_image_file(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return path.suffix.lower() not in (".csv", ".json", ".txt", ".md", ".npy", ".yaml") \
        and is_dicom(path)


def list_images(inputs: Iterable[_PathLike], ignored: list[Path] | None = None) -> list[Path]:
    """Expand files and folders into image files, keeping the order given.

    A file is kept whatever its name (an unreadable one is reported later, by name); a
    path that does not exist is kept too (reported as missing). A folder is searched
    recursively, in sorted path order, for files ending in ``.png .jpg .jpeg .dcm
    .dicom`` (any case) or that are DICOM (``DICM`` at byte 128); hidden files and
    folders are skipped, and other files are appended to ``ignored`` when given. A file
    reached twice is listed once.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                rel = child.relative_to(p).parts
                if any(part.startswith(".") for part in rel) or not child.is_file():
                    continue
                if _is_image_file(child):
                    add(child)
                elif ignored is not None:
                    ignored.append(child)
        else:
            add(p)
    return out


# TTA ---------------------------------------------------------------------------------------
def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Shift (B, 1, S, S) content by dx (right) and dy (down) pixels, filling with 0."""
    out = torch.zeros_like(x)
    s_h, s_w = x.shape[-2:]
    ys, yd = (slice(0, s_h - dy), slice(dy, s_h)) if dy >= 0 else (slice(-dy, s_h), slice(0, s_h + dy))
    xs, xd = (slice(0, s_w - dx), slice(dx, s_w)) if dx >= 0 else (slice(-dx, s_w), slice(0, s_w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The six TTA views of float (B, 1, S, S): original, mirror, shifted right/left/down/up
    by ``max(1, round(TTA_SHIFT * S))`` pixels (black fill)."""
    d = max(1, round(TTA_SHIFT * x.shape[-1]))
    return [x, torch.flip(x, dims=[-1]), _shift(x, d, 0), _shift(x, -d, 0), _shift(x, 0, d),
            _shift(x, 0, -d)]


# results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePrediction:
    """One input file: probabilities float32 (L,) in model label order, or why it failed
    (``reason``: an :class:`~cxr.images.ImageReadError` reason, ``detail``: free text)."""

    path: str
    probabilities: np.ndarray | None = None
    reason: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.probabilities is not None


@dataclass
class PredictionResult:
    """Predictions of a set of files, in input order, with the model's labels and thresholds."""

    labels: tuple[str, ...]
    thresholds: dict[str, float]
    items: list[ImagePrediction] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> list[ImagePrediction]:
        return [it for it in self.items if it.ok]

    @property
    def skipped(self) -> list[ImagePrediction]:
        return [it for it in self.items if not it.ok]

    @property
    def all_succeeded(self) -> bool:
        return bool(self.items) and not self.skipped

    @property
    def paths(self) -> list[str]:
        """Paths of the predicted images."""
        return [it.path for it in self.predicted]

    @property
    def probs(self) -> np.ndarray:
        """float32 (N, L) probabilities of the predicted images."""
        rows = [it.probabilities for it in self.predicted]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(self.labels)), np.float32)

    def above(self, probabilities: np.ndarray) -> list[bool | None]:
        """Per label: probability >= its stored threshold, None where none is stored."""
        return [None if n not in self.thresholds else bool(p >= self.thresholds[n])
                for n, p in zip(self.labels, probabilities)]

    def headline(self, probabilities: np.ndarray) -> str:
        """``"Top finding: Effusion 0.91 (above threshold 0.42)"`` (3 decimals where 2 would
        show the probability and the threshold alike)."""
        i = int(np.argmax(probabilities))
        name, p = self.labels[i], float(probabilities[i])
        if name not in self.thresholds:
            return f"Top finding: {name} {p:.2f} (no threshold stored)"
        t = self.thresholds[name]
        digits = 2 if f"{p:.2f}" != f"{t:.2f}" else 3  # never "0.97 (above threshold 0.97)"
        side = "above" if p >= t else "below"
        return f"Top finding: {name} {p:.{digits}f} ({side} threshold {t:.{digits}f})"

    def _image_dict(self, it: ImagePrediction) -> dict[str, Any]:
        p = it.probabilities
        flags = self.above(p)
        i = int(np.argmax(p))
        return {"path": it.path,
                "probabilities": {n: float(v) for n, v in zip(self.labels, p)},
                "above_threshold": [n for n, f in zip(self.labels, flags) if f],
                "top_finding": {"label": self.labels[i], "probability": float(p[i]),
                                "threshold": self.thresholds.get(self.labels[i]),
                                "above_threshold": flags[i]}}

    def to_dict(self) -> dict[str, Any]:
        return {"notice": RESEARCH_NOTICE, "model": dict(self.model), "labels": list(self.labels),
                "thresholds": dict(self.thresholds),
                "images": [self._image_dict(it) for it in self.predicted],
                "skipped": [{"path": it.path, "reason": it.reason, "detail": it.detail}
                            for it in self.skipped],
                "n_predicted": len(self.predicted), "n_skipped": len(self.skipped),
                "notes": list(self.notes)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """CSV text: ``Image Index``, ``prob_<Label>`` per label (the layout of
        :func:`cxr.predictions.write_predictions`, readable by ``cxr evaluate``), then
        ``above_<Label>`` (1/0, empty when no threshold is stored) and ``notice`` (the
        research-use notice). Skipped images have no row."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["Image Index", *(f"prob_{n}" for n in self.labels),
                    *(f"above_{n}" for n in self.labels), "notice"])
        for it in self.predicted:
            flags = ["" if f is None else int(f) for f in self.above(it.probabilities)]
            w.writerow([it.path, *(f"{float(v):.9g}" for v in it.probabilities), *flags,
                        RESEARCH_NOTICE])
        return buf.getvalue()

    def to_text(self) -> str:
        """Per image: headline, all labels ranked by probability (``*`` marks those at or
        above the stored threshold), then the skipped files and the research notice."""
        lines = [RESEARCH_NOTICE]
        m = self.model
        if m:
            lines.append(f"model: {m.get('path', '?')} ({m.get('backbone', '?')}, "
                         f"{m.get('input_size', '?')} px, fit {m.get('fit', '?')}, "
                         f"TTA {'on' if m.get('tta') else 'off'})")
        missing = [n for n in self.labels if n not in self.thresholds]
        width = max(len("label"), *(len(n) for n in self.labels))
        for it in self.predicted:
            p = it.probabilities
            flags = self.above(p)
            lines += ["", it.path, "  " + self.headline(p)]
            lines.append(f"  {'rank':>4}  {'label':<{width}}  {'prob':>6}  {'threshold':>9}  above")
            for rank, i in enumerate(np.argsort(-p, kind="stable"), start=1):
                name = self.labels[i]
                t = self.thresholds.get(name)
                mark = "-" if flags[i] is None else ("*" if flags[i] else "")
                tt = "none" if t is None else f"{t:.3f}"
                lines.append(f"  {rank:>4}  {name:<{width}}  {p[i]:>6.3f}  {tt:>9}  {mark}")
        if self.predicted:
            lines.append("")
            lines.append("* = probability at or above the model's stored threshold"
                         + (f"; - = no threshold stored ({', '.join(missing)})" if missing else ""))
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} file(s):"]
            lines += [f"  {it.path}: {it.reason}: {it.detail}" for it in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        lines += ["", f"{len(self.predicted)} image(s) predicted, {len(self.skipped)} skipped. "
                  + RESEARCH_NOTICE]
        return "\n".join(lines) + "\n"

    def render(self, format: str = "text") -> str:
        """The result as ``text``, ``json`` or ``csv``."""
        if format == "text":
            return self.to_text()
        if format == "json":
            return self.to_json() + "\n"
        if format == "csv":
            return self.to_csv()
        raise ValueError(f"format must be text, json or csv, got {format!r}")


# the predictor -----------------------------------------------------------------------------
class Predictor:
    """A loaded model ready to predict files or preprocessed arrays.

    Args:
        model: a model file path (loaded and verified) or a :class:`LoadedModel`.
        device: torch device for the model.
        tta: average over the six test-time views (see the module docstring).
        batch_size: images per forward pass (each of the six TTA views is one pass).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass;
            ``"auto"`` = bf16 on a GPU, fp32 on the CPU. Probabilities are float32 either way.
        channels_last: run the model in channels-last memory format (faster on GPUs and,
            measured, on the CPU too; the same numbers up to rounding).
    """

    def __init__(self, model: LoadedModel | _PathLike, device: str | torch.device = "cpu",
                 tta: bool = False, batch_size: int = 32, precision: str = "auto",
                 channels_last: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.loaded = resolve_model(model, device)
        self.device = torch.device(device)
        self.precision = (("bf16" if self.device.type == "cuda" else "fp32")
                          if precision == "auto" else precision)
        self.channels_last = bool(channels_last)
        self.model = self.loaded.model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = self.loaded.spec
        self.labels = self.spec.labels
        self.thresholds = dict(self.loaded.thresholds)
        self.fit = model_fit(self.loaded)
        self.size = int(self.spec.input_size)
        self.tta = bool(tta)
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.loaded.path), "backbone": self.spec.backbone,
                "input_size": self.size, "fit": self.fit, "tta": self.tta,
                "precision": self.precision,
                "tta_views": ("original, mirror, shifts of "
                              f"{max(1, round(TTA_SHIFT * self.size))} px right/left/down/up"
                              if self.tta else "original only")}

    def preprocess(self, path: _PathLike) -> np.ndarray:
        """uint8 (S, S): the file as training saw it (raises ImageReadError)."""
        return load_for_cache(path, self.size, self.fit)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities float32 (B, L) of preprocessed images uint8 (B, S, S), S = the
        model's input size (as ``load_for_cache`` or a prepared cache gives them)."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise ValueError(
                f"images must be uint8 (B, {self.size}, {self.size}) preprocessed pixels "
                f"(load_for_cache(path, {self.size}, {self.fit!r}) or a cache of that size), "
                f"got {images.dtype} {images.shape}")
        out = [self.probabilities(torch.from_numpy(np.ascontiguousarray(
            images[start : start + self.batch_size]))) for start in range(0, len(images), self.batch_size)]
        if not out:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return torch.cat(out).cpu().numpy()

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """float32 (B, L) probabilities, on the model's device, of uint8 pixels (B, S, S)
        (on any device; copied without waiting when pinned)."""
        x = to_model_input(pixels, self.device, self.channels_last)
        views = tta_views(x) if self.tta else [x]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype,
                                                    enabled=dtype is not None):
            probs = [torch.sigmoid(self.model(v).float()) for v in views]
        return (probs[0] if len(probs) == 1 else torch.stack(probs).mean(dim=0)).float()

    def predict_cache(self, cache: Any, progress: bool = False) -> np.ndarray:
        """Probabilities float32 (N, L) of every image of a prepared cache (a
        :class:`~cxr.cache.PreparedCache` or its folder), in cache order; the cache's side
        and fit must be the model's."""
        from tqdm.auto import tqdm

        from cxr.cache import PreparedCache

        cache = cache if isinstance(cache, PreparedCache) else PreparedCache(cache)
        if cache.size != self.size:
            raise ValueError(f"the cache {cache.path} holds {cache.size}px images but the model "
                             f"{self.loaded.path} takes {self.size}px; prepare the data with "
                             f"--size {self.size}")
        if cache.fit != self.fit:
            raise ValueError(f"the cache {cache.path} was prepared with --fit {cache.fit} but the "
                             f"model was trained on --fit {self.fit}; prepare it again with "
                             f"--fit {self.fit}")
        from cxr.training.loader import CacheBatches

        # read ahead in a thread into pinned memory; the probabilities stay on the device
        # until the end, so nothing waits for the GPU between batches
        batches = CacheBatches(cache, self.batch_size, shuffle=False,
                               pin_memory=self.device.type == "cuda", prefetch=2)
        out = []
        with tqdm(total=len(cache), unit="img", desc="predict", disable=not progress,
                  dynamic_ncols=True) as bar:
            for pixels, _ in batches:
                out.append(self.probabilities(pixels))
                bar.update(len(pixels))
        return torch.cat(out).cpu().numpy()

    def predict_paths(self, paths: Sequence[_PathLike], progress: bool = False
                      ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """Probabilities float32 (N, L) of the N files in order (e.g. a dataset's image
        paths), in batches; a file that cannot be read gets a row of NaN and an entry
        row -> (reason, detail)."""
        from tqdm.auto import tqdm

        probs = np.full((len(paths), len(self.labels)), np.nan, dtype=np.float32)
        failed: dict[int, tuple[str, str]] = {}
        with tqdm(total=len(paths), unit="img", desc="predict", disable=not progress,
                  dynamic_ncols=True) as bar:
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
                    probs[rows] = self.predict_arrays(np.stack(arrays))
                bar.update(min(self.batch_size, len(paths) - start))
        return probs, failed

    def predict_images(self, paths: Iterable[_PathLike] | _PathLike,
                       progress: bool = False) -> PredictionResult:
        """Predict files and folders (expanded by :func:`list_images`), in batches.

        Files that cannot be decoded are skipped with their reason; the result lists them.
        """
        ignored: list[Path] = []
        files = list_images(paths, ignored)
        result = PredictionResult(self.labels, self.thresholds, model=self.describe())
        if ignored:
            result.notes.append(f"{len(ignored)} non-image file(s) in the folders were ignored "
                                f"(e.g. {ignored[0]})")
        probs, failed = self.predict_paths(files, progress)
        result.items = [ImagePrediction(str(f), None, *failed[i]) if i in failed
                        else ImagePrediction(str(f), probs[i]) for i, f in enumerate(files)]
        return result

    def stored_thresholds(self) -> Thresholds | None:
        """The model file's thresholds as a :class:`~cxr.thresholds.Thresholds` record
        (chosen on validation data by ``cxr train``, Youden's J), or None if it has none."""
        from cxr.thresholds import Thresholds

        if not self.thresholds:
            return None
        return Thresholds(self.thresholds, method="youden",
                          source=f"the validation data of {self.loaded.path} (stored in the model file)")


def predict_images(model: LoadedModel | _PathLike, paths: Sequence[_PathLike], *,
                   device: str = "cpu", tta: bool = False, batch_size: int = 32,
                   progress: bool = False) -> PredictionResult:
    """Shortcut: ``Predictor(model, device, tta, batch_size).predict_images(paths, progress)``."""
    return Predictor(model, device, tta, batch_size).predict_images(paths, progress)
