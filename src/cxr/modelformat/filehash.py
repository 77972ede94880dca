"""The SHA-256 of a whole model file's bytes: what the service reports and the DICOM
results name as the model's identity (distinct from the header's own ``sha256``, the
digest of the metadata and tensors that :mod:`cxr.modelformat.safetensors_file` checks)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(SHA-256 as 64 lower-case hex digits, size in bytes) of a file, read in 1 MiB blocks."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n
