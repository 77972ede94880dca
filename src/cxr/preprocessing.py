"""How an image file becomes model input: one record, stored in every model file.

:class:`Preprocessing` is the whole contract between a file on disk and the network:

1. decode to one gray channel in [0, 1] (:func:`cxr.images.read_gray`: 8-bit / 255, 16-bit
   / 65535, DICOM LUTs and windowing, colour by luminance);
2. fit into a ``size`` x ``size`` square keeping the aspect ratio (``fit``: ``pad`` scales
   the longer side and pads with black, ``crop`` scales the shorter side and keeps the
   centre) and quantise to uint8 — exactly what the decode-once cache stores;
3. intensity: float input = uint8 pixels / 255 (``intensity = "uint8/255"``), shape
   (B, 1, S, S);
4. normalisation, inside the model: the gray channel is repeated to RGB, then
   ``(x - mean) / std`` per channel.

Training, prediction, explanation, localisation and export all read this record (from
``ModelSpec.preprocessing``) and turn pixels into input with :func:`to_model_input`; there
is no second copy. This module imports neither torch nor PIL at import time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cxr.choices import FIT_MODES

if TYPE_CHECKING:
    import torch

__all__ = ["INTENSITY", "MAX_SIZE", "MIN_SIZE", "Preprocessing", "to_model_input"]

#: The only intensity mapping: float input = uint8 pixels / 255.
INTENSITY = "uint8/255"
#: Input sides cxr accepts, in pixels: every backbone downsamples by 32, and beyond 2048
#: a single image's activations no longer fit comfortably in memory.
MIN_SIZE, MAX_SIZE = 32, 2048

_Array = TypeVar("_Array", np.ndarray, "torch.Tensor")


def _triple(value: Any, name: str, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {value!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class Preprocessing:
    """From a file to the model's input (see the module docstring for the steps).

    Attributes:
        size: side in pixels of the square input, from 32 to 2048.
        fit: ``"pad"`` or ``"crop"``.
        mean, std: RGB normalisation applied inside the model after the gray image is
            repeated to 3 channels; None = the backbone's (resolved by
            :class:`~cxr.models.ModelSpec`).
        intensity: ``"uint8/255"``, the only mapping of cached pixels to float input.
    """

    size: int = 224
    fit: str = "pad"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    intensity: str = INTENSITY

    def __post_init__(self) -> None:
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, (int, np.integer))
            or not MIN_SIZE <= self.size <= MAX_SIZE
        ):
            raise ValueError(
                f"input_size (preprocessing.size) must be an integer from {MIN_SIZE} "
                f"to {MAX_SIZE} pixels, got {self.size!r}"
            )
        if self.fit not in FIT_MODES:
            raise ValueError(
                f"preprocessing.fit must be one of {list(FIT_MODES)}, got {self.fit!r}"
            )
        if self.intensity != INTENSITY:
            raise ValueError(
                f"preprocessing.intensity must be {INTENSITY!r}, got {self.intensity!r}"
            )
        object.__setattr__(self, "size", int(self.size))
        if self.mean is not None:
            object.__setattr__(self, "mean", _triple(self.mean, "mean", positive=False))
        if self.std is not None:
            object.__setattr__(self, "std", _triple(self.std, "std", positive=True))

    def with_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """This record with ``mean``/``std`` filled in where they are None."""
        return replace(
            self,
            mean=self.mean if self.mean is not None else _triple(mean, "mean", False),
            std=self.std if self.std is not None else _triple(std, "std", True),
        )

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode ``path`` as training saw it: uint8 (size, size). Raises
        :class:`cxr.images.ImageReadError` naming the file and the reason."""
        from cxr.images import load_for_cache

        return load_for_cache(path, self.size, self.fit)

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` as uint8 (B, S, S) (a 2-D image gets a batch axis), or a ValueError
        that says what was expected."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (self.size,) * 2:
            raise ValueError(
                f"images must be uint8 (B, {self.size}, {self.size}) preprocessed pixels "
                f"(Preprocessing.load(path) or a prepared cache of --size {self.size} --fit "
                f"{self.fit}), got {pixels.dtype} {pixels.shape}"
            )
        return pixels

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "fit": self.fit,
            "intensity": self.intensity,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or bad fields are a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"preprocessing must be a mapping (size, fit, intensity, mean, std), "
                f"got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(
                f"unknown field(s) {extra} in preprocessing; known fields: {sorted(known)}"
            )
        return cls(**dict(data))


def to_model_input(pixels: _Array, device: Any = None, channels_last: bool = False) -> _Array:
    """uint8 pixels (B, S, S) -> the model's input, float32 (B, 1, S, S) = pixels / 255.

    A torch tensor gives a torch tensor on ``device`` (copied without waiting when pinned),
    in channels-last memory format when asked; a numpy array gives a numpy array (the ONNX
    path, no torch needed).
    """
    if isinstance(pixels, np.ndarray):
        return pixels.astype(np.float32)[:, None] / np.float32(255.0)
    x = pixels.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    if channels_last:
        import torch

        return x.contiguous(memory_format=torch.channels_last)
    return x
