"""Writing a result object to disk: atomically, with its DICOM file meta header."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["save_dataset"]


def save_dataset(dataset: Any, path: str | os.PathLike[str]) -> Path:
    """Write a pydicom Dataset as a DICOM file (with its file meta header) atomically: a
    temporary file in the same folder, then a rename, so a crash never leaves half a file.
    Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            dataset.save_as(fh, enforce_file_format=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
