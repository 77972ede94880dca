"""Finding image files: expand the files and folders a user names, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cxr.images import IMAGE_SUFFIXES, is_dicom

__all__ = ["list_images"]

_PathLike = str | os.PathLike[str]
_NOT_IMAGES = (".csv", ".json", ".txt", ".md", ".npy", ".yaml")


def _is_image_file(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return path.suffix.lower() not in _NOT_IMAGES and is_dicom(path)


def list_images(
    inputs: Iterable[_PathLike] | _PathLike, ignored: list[Path] | None = None
) -> list[Path]:
    """Expand files and folders into image files, keeping the order given.

    A file is kept whatever its name (an unreadable one is reported later, by name); a
    path that does not exist is kept too (reported as missing). A folder is searched
    recursively, in sorted path order, for files ending in ``.png .jpg .jpeg .dcm
    .dicom`` (any case) or that are DICOM (``DICM`` at byte 128); hidden files and
    folders are skipped, and other files are appended to ``ignored`` when given. Entries
    that are not regular files (dangling symbolic links, link loops, FIFOs, sockets) are
    listed too, so that prediction reports them as skipped with the reason; they are never
    opened. A file reached twice is listed once.
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
                if any(part.startswith(".") for part in rel) or child.is_dir():
                    continue
                if not child.is_file():  # dangling link, link loop, FIFO, socket, device:
                    add(child)  # listed, and reported as skipped with the reason
                elif _is_image_file(child):
                    add(child)
                elif ignored is not None:
                    ignored.append(child)
        else:
            add(p)
    return out
