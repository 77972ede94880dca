"""Test-time augmentation: the views whose probabilities are averaged.

Three modes (:data:`~cxr.choices.TTA_MODES`):

- ``"none"``: the original only (one view);
- ``"flip"``: the original and its left-right mirror (two views);
- ``"all"``: six views: the original; its left-right mirror; and the original shifted by
  ``d = max(1, round(0.03 * S))`` pixels right, left, down and up, the uncovered border
  filled with black (0, as the cache's padding and training's augmentation do).

The views of an image batch (..., S, S) — uint8 pixels or float input, numpy or torch —
have the type, dtype and device of the batch. The mirror is a view the model was not
trained on (training does not flip by default: the heart is on the left), so TTA is off
unless asked for, by the caller or by the model file's recommended mode (``tta`` in its
header, :mod:`cxr.modelformat.header`). Shifting and mirroring commute with the division by
255, so views of uint8 pixels and of float input are the same images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from cxr.choices import TTA_MODES

if TYPE_CHECKING:
    import torch

__all__ = [
    "TTA_MODES",
    "TTA_SHIFT",
    "describe_views",
    "tta_mode",
    "tta_shift",
    "tta_views",
]

#: TTA shift as a fraction of the image side.
TTA_SHIFT = 0.03

#: an image batch: a numpy array or a torch tensor (torch is imported only by its callers)
_A = TypeVar("_A", npt.NDArray[Any], "torch.Tensor")


def tta_mode(value: object, what: str = "tta") -> str:
    """A TTA setting as one of :data:`TTA_MODES`: ``"none"``, ``"flip"`` or ``"all"``; True
    means ``"all"`` and False ``"none"`` (the former on/off switch).

    Raises:
        ValueError: anything else, naming ``what`` and the choices.
    """
    if value is True:
        return "all"
    if value is False:
        return "none"
    if isinstance(value, str) and value in TTA_MODES:
        return value
    raise ValueError(
        f"{what} must be one of {', '.join(TTA_MODES)} (or True = all, False = none), got {value!r}"
    )


def tta_shift(side: int) -> int:
    """The TTA shift in pixels for an image side: ``max(1, round(TTA_SHIFT * side))``."""
    return max(1, round(TTA_SHIFT * side))


def describe_views(mode: str, side: int) -> str:
    """The views of ``mode`` for images of ``side`` pixels, in words."""
    mode = tta_mode(mode)
    if mode == "none":
        return "original only"
    if mode == "flip":
        return "original, mirror"
    return f"original, mirror, shifts of {tta_shift(side)} px right/left/down/up"


def _shift(x: _A, dx: int, dy: int) -> _A:
    """Shift (..., H, W) content by dx (right) and dy (down) pixels, filling with 0."""
    out = x * 0
    s_h, s_w = x.shape[-2:]
    ys, yd = (
        (slice(0, s_h - dy), slice(dy, s_h)) if dy >= 0 else (slice(-dy, s_h), slice(0, s_h + dy))
    )
    xs, xd = (
        (slice(0, s_w - dx), slice(dx, s_w)) if dx >= 0 else (slice(-dx, s_w), slice(0, s_w + dx))
    )
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _mirror(x: _A) -> _A:
    if isinstance(x, np.ndarray):
        return x[..., ::-1].copy()
    return x.flip(-1)


def tta_views(x: _A, mode: str | bool = "all") -> list[_A]:
    """The TTA views of (..., S, S) for ``mode`` (:func:`tta_mode`): ``"none"`` [original],
    ``"flip"`` [original, mirror], ``"all"`` [original, mirror, shifted right/left/down/up
    by :func:`tta_shift` pixels (black fill)]; same type, dtype and device as ``x``."""
    mode = tta_mode(mode, "TTA mode")
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, _mirror(x)]
    d = tta_shift(x.shape[-1])
    return [x, _mirror(x), _shift(x, d, 0), _shift(x, -d, 0), _shift(x, 0, d), _shift(x, 0, -d)]
