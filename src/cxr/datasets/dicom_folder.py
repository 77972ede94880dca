"""A folder of DICOM files as a dataset: patients, views and more from the tags.

Every DICOM file below the folder (``.dcm`` / ``.dicom``, or any file with ``DICM`` at
byte 128; hidden files and folders skipped) is one image. Its tags give the patient
(``PatientID``), the view (``ViewPosition``), and the study, modality and body part
(``StudyInstanceUID``, ``Modality``, ``BodyPartExamined``: in :func:`dicom_tag_table`,
and counted in the table's ``source``). DICOM objects without an image (DICOMDIR,
structured reports, RT plans, waveforms) are left out, with a warning.

Labels come from a CSV (``labels_csv=``, or the one CSV in the folder) joined to the
files by one key column (:mod:`cxr.datasets.dicom_labels`), found by name unless ``join=``
says which:

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

from cxr.datasets.common import DatasetError, as_path_str, is_csv_name, list_dir
from cxr.datasets.dicom_labels import JOIN_KEYS, DicomFolderWarning, find_labels_csv, join_labels
from cxr.dicom import read_tags
from cxr.imagefile import ImageReadError
from cxr.table import LabelTable

__all__ = [
    "JOIN_KEYS",
    "DicomFolderWarning",
    "dicom_tag_table",
    "find_dicom_files",
    "has_dicom_files",
    "read_dicom_folder",
]

_DICOM_SUFFIXES = (".dcm", ".dicom")


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

    csv = find_labels_csv(folder, labels_csv)
    if csv is not None:
        values, names = join_labels(tags, folder, csv, join, labels)
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
