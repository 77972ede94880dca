"""What the image decoders share: the error of an image that cannot be used, the
luminance weights, and the lazy pydicom import.

:mod:`cxr.images` (PNG, JPEG; the public entry points) sits above :mod:`cxr.dicom` (the
DICOM branch); both raise :class:`ImageReadError` and turn colour into grey with
:data:`LUMA`, so these live here, below both (numpy only). ``ImageReadError`` is also
importable from :mod:`cxr.images`, where users meet it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from cxr.errors import CxrError

__all__ = ["LUMA", "REASONS", "ImageReadError", "pydicom_modules"]

#: The reasons an image is refused (:attr:`ImageReadError.reason`).
REASONS = (
    "missing",
    "empty",
    "truncated",
    "too-large",
    "too-small",
    "unsupported",
    "unreadable",
    "wrong-modality",
)
#: ITU-R BT.601 luminance weights of R, G, B: float32 (3,), summing to 1.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(CxrError):
    """An image that cannot be used.

    Attributes: ``path`` (str), ``reason`` (one of ``missing``, ``empty``, ``truncated``,
    ``too-large``, ``too-small``, ``unsupported``, ``unreadable``, ``wrong-modality``) and
    ``detail`` (free text).
    ``str(err)`` is ``"{path}: {reason}: {detail}"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        super().__init__(str(path), reason, detail)
        self.path, self.reason, self.detail = str(path), reason, detail

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}: {self.detail}"


@functools.cache
def pydicom_modules() -> tuple[Any, ...]:
    """pydicom's reader and LUT functions, imported on the first DICOM file (importing
    pydicom takes about 0.6 s, a third of a whole `cxr predict` of one PNG with an ONNX
    model): ``(pydicom, InvalidDicomError, apply_color_lut, apply_modality_lut,
    apply_voi_lut, get_decoder, pixel_array)``, the last two None on pydicom 2.4."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    get_decoder: Any
    pixel_array: Any
    try:  # pydicom >= 3
        from pydicom.pixels import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
            get_decoder,
            pixel_array,
        )
    except ImportError:  # pragma: no cover - pydicom 2.4
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]  # 2.4 names
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
        )

        get_decoder = pixel_array = None
    return (
        pydicom,
        InvalidDicomError,
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        get_decoder,
        pixel_array,
    )
