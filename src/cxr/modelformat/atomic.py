"""Writing a model file atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, check: Callable[[Path], object] | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder (flushed to disk),
    renamed over ``path`` only after ``check`` (when given) accepted the temporary file,
    e.g. by reading it back; on any error the temporary file is removed and ``path`` is
    left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
