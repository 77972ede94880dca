"""A folder of DICOM files as a dataset: patients, views and more from the tags.

Every DICOM file below the folder (``.dcm`` / ``.dicom``, or any file with ``DICM`` at
byte 128; hidden files and folders skipped) is one image. Its tags give the patient
(``PatientID``), the view (``ViewPosition``), and the study, modality and body part
(``StudyInstanceUID``, ``Modality``, ``BodyPartExamined``: in :func:`dicom_tag_table`,
and counted in the table's ``source``). DICOM objects without an image (DICOMDIR,
structured reports, RT plans, waveforms) are left out, with a warning.

Labels come from a CSV (``labels_csv=``, or the one CSV in the folder) joined to the
files by one key column, found by name unless ``join=`` says which:

- ``sop``: a ``SOPInstanceUID`` column, one row per image;
- ``accession``: an ``AccessionNumber`` (or ``Accession``) column, one row per study,
  whose labels apply to every image of that accession;
- ``file``: an image column (``image``, ``path``, ``file``, ``filename``, ...) holding the
  file's path relative to the folder, or its bare name when that is unique.

Every other column of the CSV is a label (0, 1 or blank), unless ``labels=`` names them.
Images without a row get unknown labels (NaN), rows without an image are reported; both
with a warning. Without a CSV the table has no labels (for ``inspect``, ``prepare`` and
prediction).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
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
from cxr.table import LabelTable

__all__ = [
    "JOIN_KEYS",
    "DicomFolderWarning",
    "dicom_tag_table",
    "find_dicom_files",
    "has_dicom_files",
    "read_dicom_folder",
]

#: How labels are joined to the files: CSV column names (compared ignoring case, spaces
#: and punctuation) per join key.
JOIN_KEYS: dict[str, frozenset[str]] = {
    "sop": frozenset({"sopinstanceuid", "sopinstance"}),
    "accession": frozenset({"accessionnumber", "accession"}),
    "file": IMAGE_KEYS,
}
_TAG_COLUMNS = ("study", "modality", "bodypart", "bodypartexamined", "studyinstanceuid")
_DICOM_SUFFIXES = (".dcm", ".dicom")


class DicomFolderWarning(UserWarning):
    """Something left out or unmatched while reading a DICOM folder."""


def _has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _is_dicom_name_or_magic(name: str, path: str) -> bool:
    lower = name.lower()
    if lower.endswith(_DICOM_SUFFIXES):
        return True
    if is_csv_name(name) or lower.endswith((".png", ".jpg", ".jpeg", ".txt", ".json", ".md")):
        return False
    return _has_dicom_magic(path)


def find_dicom_files(folder: str | os.PathLike[str]) -> list[str]:
    """Absolute paths of the DICOM files below ``folder``, sorted; hidden entries skipped."""
    root = as_path_str(folder)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if (
                not name.startswith(".")
                and os.path.isfile(path)
                and _is_dicom_name_or_magic(name, path)
            ):
                out.append(path)
    return sorted(out)


def has_dicom_files(folder: str, probe: int = 50) -> bool:
    """Whether ``folder`` holds DICOM files at its top level (by suffix, or by ``DICM`` in
    the first ``probe`` other files)."""
    try:
        entries = [e for e in list_dir(folder) if e.is_file()]
    except (PermissionError, NotADirectoryError, FileNotFoundError):
        return False
    if any(e.name.lower().endswith(_DICOM_SUFFIXES) for e in entries):
        return True
    return any(_is_dicom_name_or_magic(e.name, e.path) for e in entries[:probe])


def dicom_tag_table(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per DICOM file below ``folder``: ``path`` (absolute), ``relpath`` (to the
    folder, with ``/``) and the tags of :func:`cxr.dicom.read_tags` (``patient_id``,
    ``study``, ``series``, ``sop_instance_uid``, ``accession``, ``view``, ``modality``,
    ``body_part``, ``rows``, ``columns``, ``frames``), plus ``error``: why the tags could
    not be read ("" when they could). Reads no pixel data."""
    from cxr.dicom import read_tags
    from cxr.images import ImageReadError

    root = as_path_str(folder)
    rows = []
    for path in find_dicom_files(root):
        try:
            tags = read_tags(path)
            error = ""
        except ImageReadError as err:
            tags, error = {}, f"{err.reason}: {err.detail}"
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        rows.append({"path": path, "relpath": rel, **tags, "error": error})
    columns = [
        "path",
        "relpath",
        "patient_id",
        "study",
        "series",
        "sop_instance_uid",
        "accession",
        "view",
        "modality",
        "body_part",
        "rows",
        "columns",
        "frames",
        "error",
    ]
    return pd.DataFrame(rows, columns=columns).fillna("").astype(str)


def _counts(values: pd.Series) -> str:
    counted = Counter(v or "(none)" for v in values)
    return ", ".join(f"{k} {n}" for k, n in counted.most_common())


def _find_labels_csv(folder: str, labels_csv: str | os.PathLike[str] | None) -> str | None:
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


def _join_labels(
    tags: pd.DataFrame,
    folder: str,
    csv: str,
    join: str | None,
    labels: Sequence[str] | None,
) -> tuple[np.ndarray, tuple[str, ...]]:
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


def read_dicom_folder(
    path: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str] | None = None,
    join: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelTable:
    """Read a folder of DICOM files (searched recursively) as a label table.

    Args:
        path: the folder.
        labels_csv: the labels CSV; None: the one CSV in the folder, if any (no labels
            when there is none).
        join: ``"sop"``, ``"accession"`` or ``"file"``: the CSV column the files are joined
            by (see the module); None: the first of these the CSV has.
        labels: the label columns of the CSV; None: every column that is no key, patient,
            view, split or tag column.

    Returns:
        A :class:`LabelTable`: absolute paths, ``patient_id`` = PatientID (a file without
        one: its path relative to the folder, so it is its own patient), ``view`` =
        ViewPosition, ``split`` = ``""``; its ``source`` names the folder and counts the
        modalities, body parts and studies.

    Raises:
        DatasetError: no such folder, no DICOM files in it, or a bad labels CSV.
    """
    folder = as_path_str(path)
    if not os.path.isdir(folder):
        raise DatasetError(f"DICOM folder {folder} does not exist (or is not a folder)")
    tags = dicom_tag_table(folder)
    if tags.empty:
        raise DatasetError(
            f"{folder} holds no DICOM files (.dcm, .dicom, or files with DICM at byte 128)"
        )
    no_image = (tags["error"] == "") & ((tags["rows"] == "") | (tags["columns"] == ""))
    if no_image.any():
        left = tags.loc[no_image, "relpath"].tolist()
        kinds = _counts(tags.loc[no_image, "modality"])
        warnings.warn(
            f"{folder}: {len(left)} DICOM file(s) hold no image and were left out "
            f"(modality {kinds}; e.g. {', '.join(left[:3])})",
            DicomFolderWarning,
            stacklevel=2,
        )
        tags = tags.loc[~no_image].reset_index(drop=True)
        if tags.empty:
            raise DatasetError(f"{folder} holds DICOM files but none with an image")
    unread = int((tags["error"] != "").sum())
    if unread:
        first = tags.loc[tags["error"] != ""].iloc[0]
        warnings.warn(
            f"{folder}: the tags of {unread} DICOM file(s) could not be read; they are kept "
            f"(decoding them will say why) with the file as the patient (e.g. "
            f"{first['relpath']}: {first['error']})",
            DicomFolderWarning,
            stacklevel=2,
        )
    no_patient = tags["patient_id"] == ""
    if (no_patient & (tags["error"] == "")).any():
        warnings.warn(
            f"{folder}: {int((no_patient & (tags['error'] == '')).sum())} DICOM file(s) have "
            "no PatientID; each is taken as its own patient",
            DicomFolderWarning,
            stacklevel=2,
        )
    patients = tags["patient_id"].where(~no_patient, tags["relpath"])

    csv = _find_labels_csv(folder, labels_csv)
    if csv is not None:
        values, names = _join_labels(tags, folder, csv, join, labels)
    else:
        if join is not None or labels is not None:
            raise DatasetError(
                f"join= and labels= need a labels CSV; {folder} holds none (labels_csv=)"
            )
        values, names = np.zeros((len(tags), 0), dtype=np.float32), ()
    studies = tags.loc[tags["study"] != "", "study"].nunique()
    source = (
        f"{folder} (DICOM: {len(tags)} images, {studies} studies; modality "
        f"{_counts(tags['modality'])}; body part {_counts(tags['body_part'])}"
        + (f"; labels from {os.path.basename(csv)}" if csv else "")
        + ")"
    )
    meta = pd.DataFrame(
        {
            "path": tags["path"],
            "patient_id": patients,
            "view": tags["view"].str.upper(),
            "split": "",
        }
    )
    return LabelTable(meta, values, names, source=source)
