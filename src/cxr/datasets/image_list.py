"""Image lists: a ``.txt`` with one image name per line (NIH's official
``train_val_list.txt`` / ``test_list.txt``), read as a label-free table for leakage and
overlap checks.

Bare file names are looked up like the NIH reader does (``images/`` beside the list,
``images_001/images`` ..., beside the list) and default to ``<folder>/images/<name>``
when found nowhere, so the paths equal those of :func:`cxr.datasets.read_nih` on the
same folder. Lines holding a relative path (``sub/x.png``) are taken from the list's
folder, or from ``<folder>/images`` when the first lines are found only there. Blank
lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    climbs_out,
    join_paths,
    nih_image_folders,
    nih_patient,
    resolve_relative,
    scan_images,
    stem,
)
from cxr.table import LabelTable


def read_image_list(path: str | os.PathLike[str], allow_outside: bool = False) -> LabelTable:
    """Read a list of image names as a table with no labels (L = 0).

    Args:
        allow_outside: accept relative names that climb out of the list's folder
            (``../x.png``); refused by default, naming the line.

    Returns:
        A :class:`LabelTable` with absolute paths, ``patient_id`` from NIH names
        (``00000001_000.png`` -> ``"1"``) or else the file stem, views ``""`` and
        ``split`` = the list's stem (``train_val_list``).

    Raises:
        DatasetError: the file is missing, unreadable as text, empty, or names an image
            twice.
    """
    txt = as_path_str(path)
    if not os.path.isfile(txt):
        raise DatasetError(f"image list {txt} does not exist (or is not a file)")
    try:
        with open(txt, encoding="utf-8-sig") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, start=1)]
    except UnicodeDecodeError as err:
        raise DatasetError(f"image list {txt} is not UTF-8 text: {err}") from err
    entries = [(n, s) for n, s in lines if s and not s.startswith("#")]
    if not entries:
        raise DatasetError(f"image list {txt} names no images (one name per line expected)")
    seen: dict[str, int] = {}
    for n, s in entries:
        if s in seen:
            raise DatasetError(f"{txt}, line {n}: {s!r} repeats line {seen[s]}; remove one")
        seen[s] = n
    names = [s for _, s in entries]
    for n, s in entries:
        if not allow_outside and climbs_out(s):
            raise DatasetError(
                f"{txt}, line {n}: image path {s!r} climbs out of the list's folder "
                f"{os.path.dirname(txt)}; cxr reads only images inside it unless paths "
                "outside are allowed (allow_outside=True, --allow-outside-paths)"
            )

    folder = os.path.dirname(txt)
    bare = {s for s in names if "/" not in s and "\\" not in s and not os.path.isabs(s)}
    nested = [s for s in names if s not in bare]
    index = scan_images(nih_image_folders(folder)) if bare else {}
    default_dir = os.path.join(folder, "images")
    nested_paths = dict(
        zip(nested, join_paths(nested, resolve_relative(nested, folder)), strict=True)
    )
    paths = [
        (index.get(s) or os.path.join(default_dir, s)) if s in bare else nested_paths[s]
        for s in names
    ]
    patients = [nih_patient(s) or stem(s) for s in names]
    meta = pd.DataFrame({"path": paths, "patient_id": patients, "view": "", "split": stem(txt)})
    return LabelTable(meta, np.zeros((len(names), 0), dtype=np.float32), (), source=txt)
