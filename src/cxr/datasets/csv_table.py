"""Plain label CSVs: one image column, one 0/1 column per label, optional patient column.

Two layouts are the common case:

- course-material tables like ``Image, Atelectasis, Cardiomegaly, ..., PatientId``;
- cxr's own saved tables (``path, patient_id, view, split, <labels>`` from
  :meth:`cxr.table.LabelTable.save_csv`), which read back to an equal table.

Columns are found ignoring case, spaces and underscores: the image column among
``image, image index, path, file, filename, image_path, img``; the patient column among
``patientid, patient id, patient_id, patient``; the view column among ``view, view
position, viewposition``; the split column ``split``. Every other column is a label
unless ``labels=`` names the label columns.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Container, Sequence

import numpy as np
import pandas as pd

from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    column_key,
    drop_empty_unnamed,
    find_column,
    join_paths,
    line_of,
    read_csv_strings,
    refuse_climbing,
    refuse_duplicate_images,
    require_column,
    resolve_relative,
)
from cxr.labels import canonical_label, canonical_labels
from cxr.table import LabelTable

IMAGE_KEYS: frozenset[str] = frozenset(
    {"image", "imageindex", "path", "file", "filename", "imagepath", "img"}
)
PATIENT_KEYS: frozenset[str] = frozenset({"patientid", "patient"})
VIEW_KEYS: frozenset[str] = frozenset({"view", "viewposition"})
SPLIT_KEYS: frozenset[str] = frozenset({"split"})

# Accepted label cells (lower-cased, stripped) -> value.
_VALUES: dict[str, float] = {
    "": np.nan,
    "0": 0.0,
    "1": 1.0,
    "0.0": 0.0,
    "1.0": 1.0,
    "-0.0": 0.0,
    "false": 0.0,
    "true": 1.0,
    "nan": np.nan,
}


class NoPatientColumnWarning(UserWarning):
    """A CSV without a patient column: each image counts as its own patient."""


def _mangled(column: str, columns: Container[str]) -> bool:
    """True for pandas' renamed repeat of a column (``Mass.1`` beside ``Mass``)."""
    head, _, tail = column.rpartition(".")
    return bool(head) and tail.isdigit() and head in columns


def _label_values(frame: pd.DataFrame, column: str, path: str) -> np.ndarray:
    codes, uniques = pd.factorize(frame[column].str.strip().str.lower())
    mapped = np.empty(len(uniques), dtype=np.float32)
    for u, text in enumerate(uniques):
        if text not in _VALUES:
            row = int(np.flatnonzero(codes == u)[0])
            raw = frame[column].iloc[row]
            raise DatasetError(
                f"{path}, line {line_of(row)}: column {column!r} holds {raw!r}, but label "
                "columns must hold 0, 1 or blank (also 0.0/1.0, True/False). If "
                f"{column!r} is not a label, pass labels=[...] naming the label columns"
            )
        mapped[u] = _VALUES[text]
    return mapped[codes] if len(codes) else mapped[:0]


def _pick_column(
    frame: pd.DataFrame, given: str | None, keys: frozenset[str], path: str, role: str, option: str
) -> str | None:
    if given is not None:
        return require_column(frame, given, path, option)
    return find_column(frame, keys, path, role, option)


def _label_columns(
    frame: pd.DataFrame, labels: Sequence[str] | None, used: set[str], path: str
) -> list[str]:
    if labels is None:
        return [c for c in frame.columns if c not in used]
    if isinstance(labels, str):
        raise TypeError(f"labels= takes a list of column names, got the string {labels!r}")
    out = []
    for name in labels:
        if name in frame.columns:
            out.append(name)
            continue
        hits = [
            c
            for c in frame.columns
            if column_key(c) == column_key(name) or canonical_label(c) == canonical_label(name)
        ]
        if len(hits) != 1:
            raise DatasetError(
                f"{path}: label column {name!r} not found; the columns are {list(frame.columns)}"
            )
        out.append(hits[0])
    clash = [c for c in out if c in used]
    if clash:
        raise DatasetError(
            f"{path}: {clash} cannot be both a label and the image/patient/view/split column"
        )
    return out


def read_csv_table(
    path: str | os.PathLike[str],
    image_column: str | None = None,
    patient_column: str | None = None,
    labels: Sequence[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    view_column: str | None = None,
    allow_outside: bool = False,
) -> LabelTable:
    """Read a plain label CSV.

    Args:
        path: the CSV (``.csv`` or ``.csv.gz``).
        image_column: the image column; found by name when None.
        patient_column: the patient column; found by name when None. With none, each
            image is its own patient and a :class:`NoPatientColumnWarning` is issued
            (patient-level splits and leakage checks then work per image).
        labels: the label columns (names as in the CSV or canonical). None: every column
            that is not image, patient, view or split.
        image_root: folder relative image paths are taken from. None: the CSV's folder,
            or ``<csv folder>/images`` when the first rows are found only there.
            Absolute paths stay as they are.
        view_column: the view column; found by name when None (absent: views ``""``).
        allow_outside: accept relative image paths that climb out of the CSV's folder
            (``../other/x.png``); refused by default, naming the line.

    Label cells must be 0, 1 or blank (blank = NaN, unknown); ``0.0``/``1.0`` and
    ``True``/``False`` are accepted. Label names are canonicalised
    (:func:`cxr.labels.canonical_labels`); two columns meaning the same label is an error.
    """
    csv_path = as_path_str(path)
    if os.path.isdir(csv_path):
        raise DatasetError(f"{csv_path} is a folder; read_csv_table needs the CSV file itself")
    frame = drop_empty_unnamed(read_csv_strings(csv_path, "label CSV"))
    dupes = [c for c in frame.columns if _mangled(c, frame.columns)]
    if dupes:
        raise DatasetError(
            f"{csv_path}: column {dupes[0].rsplit('.', 1)[0]!r} appears more than once; "
            "rename or remove the repeat"
        )

    image = _pick_column(frame, image_column, IMAGE_KEYS, csv_path, "image", "image_column")
    if image is None:
        raise DatasetError(
            f"{csv_path}: no image column; looked for one named image, image index, path, "
            f"file, filename, image_path or img among {list(frame.columns)}. "
            "Pass image_column='...'"
        )
    patient = _pick_column(
        frame, patient_column, PATIENT_KEYS, csv_path, "patient", "patient_column"
    )
    view = _pick_column(frame, view_column, VIEW_KEYS, csv_path, "view", "view_column")
    split = find_column(frame, SPLIT_KEYS, csv_path, "split", None)
    used = {c for c in (image, patient, view, split) if c is not None}
    label_cols = _label_columns(frame, labels, used, csv_path)
    try:
        names = canonical_labels(label_cols)
    except ValueError as err:
        raise DatasetError(f"{csv_path}: {err}") from err

    raw = frame[image].str.strip()
    empty = (raw == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DatasetError(f"{csv_path}, line {line_of(row)}: image column {image!r} is empty")
    raw_list = raw.tolist()
    csv_dir = os.path.dirname(csv_path)
    refuse_climbing(raw_list, csv_path, csv_dir, allow_outside)
    if image_root is not None:
        base = as_path_str(image_root)
    else:
        base = resolve_relative(raw_list, csv_dir)
    paths = join_paths(raw_list, base)
    refuse_duplicate_images(paths, csv_path)

    n = len(frame)
    labels_arr = np.empty((n, len(label_cols)), dtype=np.float32)
    for j, column in enumerate(label_cols):
        labels_arr[:, j] = _label_values(frame, column, csv_path)
    if patient is not None:
        patients = frame[patient].str.strip()
        blank = (patients == "").to_numpy()
        if blank.any():
            row = int(np.flatnonzero(blank)[0])
            raise DatasetError(
                f"{csv_path}, line {line_of(row)}: patient column {patient!r} is empty; "
                "fill it in (or pass patient_column= naming another column)"
            )
        patient_ids = patients.tolist()
    else:
        warnings.warn(
            f"{csv_path} has no patient column (looked for patientid, patient id, "
            "patient_id, patient): each image is taken as its own patient, so patient-level "
            "splits and leakage checks work per image. Pass patient_column='...' if the "
            "patient is in another column",
            NoPatientColumnWarning,
            stacklevel=2,
        )
        patient_ids = raw_list

    meta = pd.DataFrame(
        {
            "path": paths,
            "patient_id": patient_ids,
            "view": frame[view].str.strip().tolist() if view else [""] * n,
            "split": frame[split].str.strip().tolist() if split else [""] * n,
        }
    )
    return LabelTable(meta, labels_arr, names, source=csv_path)
