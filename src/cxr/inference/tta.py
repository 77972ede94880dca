"""Test-time augmentation: the six views whose probabilities are averaged.

The views of an image batch (..., S, S) — uint8 pixels or float input, numpy or torch —
are: the original; its left-right mirror; and the original shifted by
``d = max(1, round(0.03 * S))`` pixels right, left, down and up, the uncovered border
filled with black (0, as the cache's padding and training's augmentation do). The mirror
is a view the model was not trained on (training does not flip by default: the heart is
on the left), so TTA is an option, off by default. Shifting and mirroring commute with
the division by 255, so views of uint8 pixels and of float input are the same images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["TTA_SHIFT", "tta_shift", "tta_views"]

#: TTA shift as a fraction of the image side.
TTA_SHIFT = 0.03

#: an image batch: a numpy array or a torch tensor (torch is imported only by its callers)
_A = TypeVar("_A", npt.NDArray[Any], "torch.Tensor")


def tta_shift(side: int) -> int:
    """The TTA shift in pixels for an image side: ``max(1, round(TTA_SHIFT * side))``."""
    return max(1, round(TTA_SHIFT * side))


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


def tta_views(x: _A) -> list[_A]:
    """The six TTA views of (..., S, S): original, mirror, shifted right/left/down/up by
    :func:`tta_shift` pixels (black fill); same type, dtype and device as ``x``."""
    d = tta_shift(x.shape[-1])
    return [x, _mirror(x), _shift(x, d, 0), _shift(x, -d, 0), _shift(x, 0, d), _shift(x, 0, -d)]
