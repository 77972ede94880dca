"""Writing a result object to disk: atomically, with its DICOM file meta header."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from cxr.modelformat.atomic import write_atomic

__all__ = ["save_dataset"]


def save_dataset(dataset: Any, path: str | os.PathLike[str]) -> Path:
    """Write a pydicom Dataset as a DICOM file (with its file meta header) atomically
    (:func:`cxr.modelformat.atomic.write_atomic`: a temporary file in the same folder,
    flushed, then a rename), so a crash never leaves half a file. Returns the path."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    target = Path(path)
    write_atomic(target, buffer.getvalue())
    return target
