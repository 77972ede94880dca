"""Dataset readers: every supported layout read into one :class:`~cxr.table.LabelTable`.

Formats (:data:`FORMATS`):

- ``nih``: NIH ChestX-ray14 ``Data_Entry_2017.csv`` (:func:`read_nih`);
- ``chexpert``: CheXpert ``train.csv`` / ``valid.csv`` (:func:`read_chexpert`);
- ``csv``: a plain CSV with an image column and 0/1 label columns (:func:`read_csv_table`),
  including tables saved by :meth:`LabelTable.save_csv`;
- ``folders``: one folder per class (:func:`read_class_folders`);
- ``list``: a ``.txt`` of image names, without labels (:func:`read_image_list`);
- ``dicom``: a folder of DICOM files, patients and views from the tags, labels from an
  optional CSV (:func:`read_dicom_folder`).

:func:`load_dataset` detects the format from the files present (see
:func:`detect_format`) unless ``format=`` says it. Every reader returns absolute image
paths, str patient ids, canonical label names, and NaN for labels a source does not give.
Only the folder reader needs the images to exist; the others read metadata alone.
Bad input raises :class:`DatasetError` (a ``ValueError``) naming the file, the field and
the fix.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cxr.choices import DATASET_FORMATS
from cxr.datasets.chexpert import has_chexpert_csv, looks_like_chexpert, read_chexpert
from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    csv_header,
    is_csv_name,
    is_image_file,
    list_dir,
)
from cxr.datasets.csv_table import NoPatientColumnWarning, read_csv_table
from cxr.datasets.dicom_folder import find_dicom_files, has_dicom_files, read_dicom_folder
from cxr.datasets.folders import SPLIT_FOLDER_NAMES, patient_from_name, read_class_folders
from cxr.datasets.image_list import read_image_list
from cxr.datasets.nih import find_nih_csv, has_nih_header, is_data_entry_name, read_nih
from cxr.datasets.summary import DatasetSummary, describe
from cxr.table import LabelTable, merge_tables

#: The format names :func:`load_dataset` accepts.
FORMATS: tuple[str, ...] = DATASET_FORMATS

READERS: dict[str, Callable[..., LabelTable]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
    "csv": read_csv_table,
    "folders": read_class_folders,
    "list": read_image_list,
    "dicom": read_dicom_folder,
}

_LOOKED_FOR = (
    "looked for: a Data_Entry*.csv[.gz] or a CSV with 'Image Index' and 'Finding Labels' "
    "columns (nih); train.csv/valid.csv with a 'Path' column and CheXpert columns "
    "(chexpert); a .txt list of image names (list); a folder with exactly one CSV, or any "
    "other CSV file (csv); subfolders holding images (folders); DICOM files (dicom). Pass "
    f"format= one of {list(FORMATS)} to choose"
)


def _csv_format(path: str) -> str:
    if is_data_entry_name(path) or has_nih_header(path):
        return "nih"
    if looks_like_chexpert(csv_header(path)):
        return "chexpert"
    return "csv"


def _has_images_below(folder: str, depth: int) -> bool:
    """True when an image file lies in ``folder`` or up to ``depth`` levels below it;
    stops at the first one found."""
    try:
        entries = list_dir(folder)
    except (PermissionError, NotADirectoryError, FileNotFoundError):
        return False
    if any(e.is_file() and is_image_file(e.name) for e in entries):
        return True
    return depth > 0 and any(e.is_dir() and _has_images_below(e.path, depth - 1) for e in entries)


def detect_format(source: str | os.PathLike[str]) -> str:
    """The format of ``source`` (one of :data:`FORMATS`), from the files present.

    A file: ``Data_Entry*.csv[.gz]`` or a CSV headed ``Image Index`` + ``Finding Labels``
    -> ``nih``; a CSV with ``Path`` plus CheXpert observation or ``Frontal/Lateral``
    columns -> ``chexpert``; a ``.txt`` -> ``list``; any other CSV -> ``csv``.
    A folder, in this order: holding an NIH metadata CSV -> ``nih``; holding a CheXpert
    ``train.csv``/``valid.csv`` -> ``chexpert``; DICOM files at its top level and at most
    one CSV (the labels) -> ``dicom``; holding exactly one CSV -> that CSV's format;
    subfolders holding images -> ``folders``; DICOM files further down -> ``dicom``.

    Raises:
        DatasetError: the source is missing or matches none of these (the message lists
            what was looked for).
    """
    path = as_path_str(source)
    if os.path.isfile(path):
        name = os.path.basename(path)
        if name.lower().endswith(".txt"):
            return "list"
        if is_csv_name(name):
            return _csv_format(path)
        raise DatasetError(f"cannot tell the format of the file {path}; {_LOOKED_FOR}")
    if not os.path.isdir(path):
        raise DatasetError(f"dataset source {path} does not exist")
    if find_nih_csv(path) is not None:
        return "nih"
    if has_chexpert_csv(path):
        return "chexpert"
    entries = list_dir(path)
    csvs = [e.path for e in entries if e.is_file() and is_csv_name(e.name)]
    if len(csvs) <= 1 and has_dicom_files(path):
        return "dicom"
    if len(csvs) == 1:
        return _csv_format(csvs[0])
    image_dirs = [e.name for e in entries if e.is_dir() and _has_images_below(e.path, depth=2)]
    # A lone images/ folder beside several CSVs is not a class layout: ask which CSV.
    if image_dirs and not (csvs and image_dirs == ["images"]):
        return "folders"
    if not csvs and find_dicom_files(path):
        return "dicom"
    found = f" (found CSVs {[os.path.basename(c) for c in csvs]})" if csvs else ""
    raise DatasetError(f"cannot tell the format of the folder {path}{found}; {_LOOKED_FOR}")


def _reader_source(fmt: str, path: str) -> str:
    """The path the reader wants: the one CSV of a folder for ``csv``."""
    if fmt == "csv" and os.path.isdir(path):
        csvs = [e.path for e in list_dir(path) if e.is_file() and is_csv_name(e.name)]
        if len(csvs) != 1:
            raise DatasetError(
                f"format='csv' needs a CSV file or a folder with exactly one CSV; {path} holds "
                f"{len(csvs)}: {[os.path.basename(c) for c in csvs]}. Pass the CSV itself"
            )
        return csvs[0]
    return path


def reader_options(fmt: str) -> tuple[str, ...]:
    """The keyword options the reader of ``fmt`` takes (all but the source)."""
    params = list(inspect.signature(READERS[fmt]).parameters)
    return tuple(params[1:])


def load_dataset(
    source: str | os.PathLike[str], format: str | None = None, **options: Any
) -> LabelTable:
    """Read a dataset in any supported layout.

    Args:
        source: a file or folder (see :func:`detect_format`).
        format: one of :data:`FORMATS`; None detects it from the files present.
        **options: passed to the reader (e.g. ``uncertain="zeros"`` for CheXpert,
            ``official_split=False`` for NIH, ``labels=[...]`` for CSV).

    Raises:
        ValueError: an unknown format.
        TypeError: an option the reader does not take (the message lists those it does).
        DatasetError: the source cannot be read (see the readers).
    """
    path = as_path_str(source)
    if format is None:
        fmt = detect_format(path)
    else:
        fmt = str(format).strip().lower()
        if fmt not in READERS:
            raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
        if not os.path.exists(path):
            raise DatasetError(f"dataset source {path} does not exist")
    accepted = reader_options(fmt)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(
            f"option(s) {unknown} are not taken by the {fmt!r} reader "
            f"({READERS[fmt].__name__}) of {path}; it takes {list(accepted)}"
        )
    return READERS[fmt](_reader_source(fmt, path), **options)


def load_datasets(
    sources: Iterable[str | os.PathLike[str] | tuple[str | os.PathLike[str], Mapping[str, Any]]],
    format: str | None = None,
    **options: Any,
) -> LabelTable:
    """Load several datasets and merge them over the union of their labels
    (:func:`cxr.table.merge_tables`: a label a dataset lacks is NaN for its images).

    Each source is a path, or a ``(path, {"format": ..., option: value})`` pair whose
    settings override ``format`` / ``options`` for that source.
    """
    tables = []
    for item in sources:
        if isinstance(item, tuple):
            src, own = item
            own = dict(own)
            fmt = own.pop("format", format)
            tables.append(load_dataset(src, fmt, **{**options, **own}))
        else:
            tables.append(load_dataset(item, format, **options))
    if not tables:
        raise ValueError("load_datasets needs at least one source")
    return tables[0] if len(tables) == 1 else merge_tables(tables)


__all__ = [
    "FORMATS",
    "DatasetError",
    "DatasetSummary",
    "NoPatientColumnWarning",
    "SPLIT_FOLDER_NAMES",
    "describe",
    "detect_format",
    "load_dataset",
    "load_datasets",
    "patient_from_name",
    "read_chexpert",
    "read_class_folders",
    "read_csv_table",
    "read_dicom_folder",
    "read_image_list",
    "read_nih",
    "reader_options",
]
