"""Prediction files: one row per image, one probability column per label.

Layout read by :func:`read_predictions` and written by :func:`write_predictions`::

    Image Index,prob_Atelectasis,prob_Cardiomegaly,...
    00000075_000.png,0.159,0.318,...

- the image column is detected (``Image Index``, ``image``, ``image_id``, ``path``,
  ``filename``..., ignoring case and punctuation) or named with ``image_column=``; it holds
  a file name or a path;
- probability columns are ``prob_<Label>`` (also ``p_``, ``pred_``, ``score_``,
  ``probability_``); when no column has such a prefix, columns named after a known label
  (``Effusion``, ``Pleural Effusion``...) are taken. Names pass through
  :func:`cxr.labels.canonical_label`. Other columns are ignored and listed in ``notes``.

:func:`align` pairs predictions with a :class:`~cxr.table.LabelTable` by image file name
(by path where names repeat) and refuses, with one message listing every problem, images
on one side only, duplicate rows, NaN or out-of-range probabilities; ``allow_missing``
evaluates on what matches instead, and the report says what was dropped and why (in
:mod:`cxr.evaluation.alignment`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.datasets.common import column_key, line_of, read_csv_strings, require_column
from cxr.errors import CxrError
from cxr.labels import CHEXPERT14_LABELS, NIH14_LABELS, canonical_label, canonical_labels

#: Image-column names tried in this order (compared by :func:`column_key`).
IMAGE_COLUMN_KEYS: tuple[str, ...] = (
    "imageindex",
    "image",
    "imageid",
    "imagepath",
    "imagename",
    "path",
    "filename",
    "file",
    "dicomid",
)
#: Prefixes marking a probability column (compared in lower case).
PROB_PREFIXES: tuple[str, ...] = ("probability_", "prob_", "pred_", "score_", "p_")


class PredictionError(CxrError, ValueError):
    """Predictions that cannot be read or paired with the labels; the message lists every
    problem and how to fix it."""


@dataclass(frozen=True)
class Predictions:
    """Probabilities for N images over L labels.

    Attributes:
        images: (N,) str, the image keys as written (file names or paths).
        probs: float64 (N, L), probabilities in [0, 1]; NaN = no prediction.
        pathologies: L canonical label names.
        source: where they came from (file path or free text).
        notes: remarks made while reading (e.g. ignored columns).
    """

    images: np.ndarray
    probs: np.ndarray
    pathologies: tuple[str, ...]
    source: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        images = np.asarray(self.images, dtype=object).astype(str)
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape != (len(images), len(self.pathologies)):
            raise PredictionError(
                f"{self.source or 'predictions'}: probs have shape {probs.shape}, expected "
                f"({len(images)} images, {len(self.pathologies)} labels)"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "pathologies", canonical_labels(self.pathologies))

    def __len__(self) -> int:
        return len(self.images)


def _image_column(frame: pd.DataFrame, path: str, image_column: str | None) -> str:
    if image_column is not None:
        return require_column(frame, image_column, path, "image_column")
    keys = {column_key(c): c for c in reversed(list(frame.columns))}
    for key in IMAGE_COLUMN_KEYS:
        if key in keys:
            return keys[key]
    raise PredictionError(
        f"{path}: no image column found among {list(frame.columns)}; name it 'Image Index' "
        "(or image/path/filename) or pass image_column= (--image-column)"
    )


def _strip_prefix(name: str) -> str | None:
    lower = name.lower()
    for prefix in PROB_PREFIXES:
        if lower.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return None


def read_predictions(
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    image_column: str | None = None,
) -> Predictions:
    """Read a predictions CSV (see the module docstring for the layout).

    Args:
        path: the CSV file.
        labels: keep (and order) these labels; each must have a column. None keeps all.
        image_column: the column with image names/paths; None detects it.

    Raises:
        PredictionError / DatasetError (both ValueError): unreadable file, no image
        column, no probability column, a requested label without a column, a cell that is
        not a number.
    """
    path = os.fspath(path)
    frame = read_csv_strings(path, "predictions CSV")
    img_col = _image_column(frame, path, image_column)
    others = [c for c in frame.columns if c != img_col]
    prefixed = {c: _strip_prefix(c) for c in others}
    notes: list[str] = []
    if any(v is not None for v in prefixed.values()):
        chosen = {c: v for c, v in prefixed.items() if v is not None}
    else:
        known = (
            set(NIH14_LABELS) | set(CHEXPERT14_LABELS) | {canonical_label(n) for n in labels or ()}
        )
        chosen = {c: c for c in others if c.strip() and canonical_label(c) in known}
    ignored = [c for c in others if c not in chosen]
    if ignored:
        notes.append(f"{path}: columns {ignored} are not probability columns and were ignored")
    if not chosen:
        raise PredictionError(
            f"{path}: no probability columns among {list(frame.columns)}; name them "
            "prob_<Label> (e.g. prob_Effusion) or after the label"
        )
    names = canonical_labels(chosen.values())
    columns = list(chosen)
    if labels is not None:
        wanted = [canonical_label(n) for n in labels]
        absent = [n for n in wanted if n not in names]
        if absent:
            raise PredictionError(
                f"{path}: no probability column for {absent}; it has {list(names)}"
            )
        columns = [columns[names.index(n)] for n in wanted]
        names = tuple(wanted)
    probs = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(
            frame[col].str.strip().replace({"": "nan", "NA": "nan"}), errors="coerce"
        )
        bad = values.isna() & ~frame[col].str.strip().str.lower().isin(["", "na", "nan"])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise PredictionError(
                f"{path}, line {line_of(row)}, column {col!r}: {frame[col].iloc[row]!r} "
                "is not a number"
            )
        probs[:, j] = values.to_numpy(dtype=np.float64)
    images = frame[img_col].str.strip()
    if (images == "").any():
        row = int(np.flatnonzero((images == "").to_numpy())[0])
        raise PredictionError(f"{path}, line {line_of(row)}: the image column {img_col!r} is empty")
    return Predictions(images.to_numpy(), probs, names, path, tuple(notes))


def write_predictions(
    path: str | os.PathLike[str], images: Sequence[str], probs: np.ndarray, names: Sequence[str]
) -> str:
    """Write ``Image Index`` plus one ``prob_<Label>`` column per label (``probs`` (N, L),
    NaN written as an empty cell). Returns the path written."""
    probs = np.asarray(probs, dtype=np.float64)
    images = [str(i) for i in images]
    names = canonical_labels(names)
    if probs.shape != (len(images), len(names)):
        raise PredictionError(
            f"probs have shape {probs.shape}, expected ({len(images)}, {len(names)})"
        )
    frame = pd.DataFrame(probs, columns=[f"prob_{n}" for n in names])
    frame.insert(0, "Image Index", images)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.9g")
    return path
