"""The labels of a DICOM folder: a CSV joined to the files by ``SOPInstanceUID``,
``AccessionNumber`` (every image of the study) or the file's path or name.

Used by :func:`cxr.datasets.dicom_folder.read_dicom_folder` (the rules: see
:mod:`cxr.datasets.dicom_folder`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    column_key,
    drop_empty_unnamed,
    is_csv_name,
    line_of,
    list_dir,
    read_csv_strings,
)
from cxr.datasets.csv_table import (
    IMAGE_KEYS,
    PATIENT_KEYS,
    SPLIT_KEYS,
    VIEW_KEYS,
    _label_columns,
    _label_values,
    _mangled,
)
from cxr.labels import canonical_labels

__all__ = ["JOIN_KEYS", "DicomFolderWarning", "find_labels_csv", "join_labels"]

#: How labels are joined to the files: CSV column names (compared ignoring case, spaces
#: and punctuation) per join key.
JOIN_KEYS: dict[str, frozenset[str]] = {
    "sop": frozenset({"sopinstanceuid", "sopinstance"}),
    "accession": frozenset({"accessionnumber", "accession"}),
    "file": IMAGE_KEYS,
}
_TAG_COLUMNS = ("study", "modality", "bodypart", "bodypartexamined", "studyinstanceuid")


class DicomFolderWarning(UserWarning):
    """Something left out or unmatched while reading a DICOM folder."""


def find_labels_csv(folder: str, labels_csv: str | os.PathLike[str] | None) -> str | None:
    """The labels CSV: ``labels_csv`` (which must exist), else the one CSV at the top of
    ``folder`` (None when there is none; DatasetError when there are several)."""
    if labels_csv is not None:
        path = as_path_str(labels_csv)
        if not os.path.isfile(path):
            raise DatasetError(f"labels CSV {path} does not exist (labels_csv=, --dicom-labels)")
        return path
    csvs = [e.path for e in list_dir(folder) if e.is_file() and is_csv_name(e.name)]
    if len(csvs) > 1:
        raise DatasetError(
            f"the DICOM folder {folder} holds {len(csvs)} CSVs "
            f"{[os.path.basename(c) for c in csvs]}; say which holds the labels "
            "(labels_csv=, --dicom-labels CSV)"
        )
    return csvs[0] if csvs else None


def _join_column(frame: pd.DataFrame, csv: str, join: str | None) -> tuple[str, str]:
    """(join kind, column) of the labels CSV."""
    if join is not None and join not in JOIN_KEYS:
        raise ValueError(f"join must be one of {list(JOIN_KEYS)} or None, got {join!r}")
    kinds = [join] if join is not None else list(JOIN_KEYS)
    for kind in kinds:
        hits = [c for c in frame.columns if column_key(c) in JOIN_KEYS[kind]]
        if len(hits) > 1:
            raise DatasetError(f"{csv}: columns {hits} could each be the {kind} key; keep one")
        if hits:
            return kind, hits[0]
    wanted = "a SOPInstanceUID, AccessionNumber or image/path/file column"
    if join is not None:
        wanted = {"sop": "a SOPInstanceUID column", "accession": "an AccessionNumber column"}.get(
            join, "an image, path or file column"
        )
    raise DatasetError(
        f"{csv}: no column to join the labels to the DICOM files; looked for {wanted} "
        f"among {list(frame.columns)}"
    )


def _file_index(tags: pd.DataFrame, folder: str) -> dict[str, list[int]]:
    """Relative path (``/``) and bare file name -> rows of ``tags``."""
    index: dict[str, list[int]] = {}
    for i, rel in enumerate(tags["relpath"]):
        index.setdefault(rel, []).append(i)
        base = rel.rsplit("/", 1)[-1]
        if base != rel:
            index.setdefault(base, []).append(i)
    return index


def join_labels(
    tags: pd.DataFrame,
    folder: str,
    csv: str,
    join: str | None,
    labels: Sequence[str] | None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels of the files of ``tags`` (one row per file: :func:`dicom_tag_table`) from the
    CSV ``csv``, joined by ``join`` (None: the first key column the CSV has): float32
    (N, L), NaN where a file has no row, and the canonical label names. Unmatched rows and
    files without a row are warned about (:class:`DicomFolderWarning`)."""
    frame = drop_empty_unnamed(read_csv_strings(csv, "labels CSV"))
    dupes = [c for c in frame.columns if _mangled(c, frame.columns)]
    if dupes:
        raise DatasetError(f"{csv}: column {dupes[0].rsplit('.', 1)[0]!r} appears more than once")
    kind, key_col = _join_column(frame, csv, join)
    skip = PATIENT_KEYS | VIEW_KEYS | SPLIT_KEYS | set(_TAG_COLUMNS)
    if kind != "file":  # an image column beside a UID key is not a label either
        skip = skip | IMAGE_KEYS
    for other in JOIN_KEYS.values():
        skip = skip | other
    used = {c for c in frame.columns if column_key(c) in skip} | {key_col}
    label_cols = _label_columns(frame, labels, used, csv)
    try:
        names = canonical_labels(label_cols)
    except ValueError as err:
        raise DatasetError(f"{csv}: {err}") from err
    values = np.empty((len(frame), len(label_cols)), dtype=np.float32)
    for j, column in enumerate(label_cols):
        values[:, j] = _label_values(frame, column, csv)

    keys = frame[key_col].str.strip()
    seen: dict[str, int] = {}
    for row, key in enumerate(keys):
        if not key:
            raise DatasetError(f"{csv}, line {line_of(row)}: the {kind} key {key_col!r} is empty")
        if key in seen:
            raise DatasetError(
                f"{csv}, lines {line_of(seen[key])} and {line_of(row)}: {key_col} {key!r} "
                "appears more than once; keep one row per key"
            )
        seen[key] = row

    out = np.full((len(tags), len(label_cols)), np.nan, dtype=np.float32)
    unmatched: list[int] = []
    if kind == "file":
        index = _file_index(tags, folder)
        for row, key in enumerate(keys):
            if os.path.isabs(key):
                rel = os.path.relpath(key, folder).replace(os.sep, "/")
            else:
                rel = key.replace("\\", "/")
                while rel.startswith("./"):
                    rel = rel[2:]
            hits = index.get(rel, [])
            if len(hits) > 1:
                names_ = [str(tags.at[i, "relpath"]) for i in hits[:2]]
                raise DatasetError(
                    f"{csv}, line {line_of(row)}: {key!r} names more than one file "
                    f"({', '.join(names_)}); give the path relative to {folder}"
                )
            if hits:
                out[hits[0]] = values[row]
            else:
                unmatched.append(row)
    else:
        column = "sop_instance_uid" if kind == "sop" else "accession"
        by_key: dict[str, list[int]] = {}
        for i, value in enumerate(tags[column]):
            if value:
                by_key.setdefault(value, []).append(i)
        for row, key in enumerate(keys):
            hits = by_key.get(key, [])
            if kind == "sop" and len(hits) > 1:
                names_ = [str(tags.at[i, "relpath"]) for i in hits[:2]]
                raise DatasetError(
                    f"{folder}: SOPInstanceUID {key} is carried by more than one file "
                    f"({', '.join(names_)}); one image, one file"
                )
            for i in hits:
                out[i] = values[row]
            if not hits:
                unmatched.append(row)
    no_row = int(np.isnan(out).all(axis=1).sum()) if label_cols else 0
    if unmatched:
        first = line_of(unmatched[0])
        warnings.warn(
            f"{csv}: {len(unmatched)} row(s) match no DICOM file in {folder} by {key_col} "
            f"(first: line {first}, {keys.iloc[unmatched[0]]!r})",
            DicomFolderWarning,
            stacklevel=3,
        )
    if no_row:
        warnings.warn(
            f"{folder}: {no_row} DICOM file(s) have no row in {csv} (joined by {key_col}); "
            "their labels are unknown",
            DicomFolderWarning,
            stacklevel=3,
        )
    return out, names
