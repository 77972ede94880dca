"""NIH ChestX-ray14 (Wang et al., CVPR 2017): ``Data_Entry_2017.csv`` and its images.

Both published layouts of the metadata table are read, plain or gzipped:

- the 2017 original, whose header ends in a comma (an extra unnamed, empty column) and
  some of whose copies write ages as ``058Y``;
- the v2020 revision (``Data_Entry_2017_v2020.csv``), without the trailing column.

Only ``Image Index``, ``Finding Labels``, ``Patient ID`` and ``View Position`` are used
(matched ignoring case and spaces); other columns are ignored. The 14 labels are
:data:`cxr.labels.NIH14_LABELS`; ``Finding Labels`` is split on ``|`` and ``No Finding``
means all 14 are absent (0).

Images are looked up, once, in ``images/`` beside the CSV, in the official download's
``images_001/images`` ... ``images_012/images`` folders, and beside the CSV. An image
found nowhere gets the path ``<root>/images/<name>`` (metadata-only folders load; the
cache's prepare step reports such files as missing).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    column_key,
    csv_header,
    drop_empty_unnamed,
    is_csv_name,
    line_of,
    list_dir,
    nih_image_folders,
    read_csv_strings,
    scan_images,
)
from cxr.labels import NIH14_LABELS, canonical_label
from cxr.table import LabelTable

#: Columns the reader needs, by their official names.
NIH_REQUIRED_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "View Position",
)
#: The official split lists and the split name each one gives.
NIH_SPLIT_LISTS: dict[str, str] = {"train_val_list.txt": "train_val", "test_list.txt": "test"}

_DATA_ENTRY = re.compile(r"^data_entry.*\.csv(\.gz)?$", re.IGNORECASE)
_NO_FINDING = "No Finding"


def is_data_entry_name(name: str) -> bool:
    """True for ``Data_Entry*.csv`` / ``Data_Entry*.csv.gz`` (any case)."""
    return bool(_DATA_ENTRY.match(os.path.basename(name)))


def has_nih_header(path: str) -> bool:
    """True when the CSV's header has ``Image Index`` and ``Finding Labels``."""
    keys = {column_key(c) for c in csv_header(path)}
    return {"imageindex", "findinglabels"} <= keys


def find_nih_csv(folder: str) -> str | None:
    """The NIH metadata CSV in ``folder``: a ``Data_Entry*.csv[.gz]`` (the v2020 revision
    preferred when both are there), else the one CSV with an NIH header; None if none."""
    entries = [e for e in list_dir(folder) if e.is_file()]
    named = [e.path for e in entries if is_data_entry_name(e.name)]
    if named:
        revised = [p for p in named if "v2020" in os.path.basename(p).lower()]
        return sorted(revised or named)[-1]
    headed = [e.path for e in entries if is_csv_name(e.name) and has_nih_header(e.path)]
    if len(headed) > 1:
        raise DatasetError(
            f"{folder} holds several NIH-style CSVs {[os.path.basename(p) for p in headed]}; "
            "pass the one to read as the source"
        )
    return headed[0] if headed else None


def _locate_csv(source: str) -> str:
    if os.path.isdir(source):
        found = find_nih_csv(source)
        if found is None:
            raise DatasetError(
                f"{source} holds no NIH metadata: expected Data_Entry_2017.csv (or "
                "Data_Entry_2017_v2020.csv[.gz], or a CSV with 'Image Index' and "
                "'Finding Labels' columns)"
            )
        return found
    if not os.path.isfile(source):
        raise DatasetError(f"NIH source {source} does not exist")
    return source


def _columns(frame: pd.DataFrame, path: str) -> dict[str, str]:
    by_key = {column_key(c): c for c in frame.columns}
    missing = [c for c in NIH_REQUIRED_COLUMNS if column_key(c) not in by_key]
    if missing:
        raise DatasetError(
            f"{path}: required NIH column(s) {missing} not found; the columns are "
            f"{list(frame.columns)}. An NIH metadata table needs {list(NIH_REQUIRED_COLUMNS)}"
        )
    return {c: by_key[column_key(c)] for c in NIH_REQUIRED_COLUMNS}


def _finding_vectors(findings: pd.Series, path: str) -> np.ndarray:
    """Labels (N, 14) from the ``Finding Labels`` strings, parsing each distinct string once."""
    codes, uniques = pd.factorize(findings, sort=False)
    index = {name: j for j, name in enumerate(NIH14_LABELS)}
    table = np.zeros((len(uniques), len(NIH14_LABELS)), dtype=np.float32)
    for u, text in enumerate(uniques):
        names = [n.strip() for n in str(text).split("|")]
        problem = None
        if names == [""]:
            problem = "is empty; write 'No Finding' for an image without findings"
        elif names == [_NO_FINDING]:
            continue
        else:
            for name in names:
                canon = canonical_label(name) if name else ""
                if name == _NO_FINDING:
                    problem = f"mixes 'No Finding' with findings ({text!r})"
                elif canon not in index:
                    problem = (
                        f"names {name!r}, which is not one of the 14 NIH findings "
                        f"{list(NIH14_LABELS)} (or 'No Finding')"
                    )
                else:
                    table[u, index[canon]] = 1.0
                    continue
                break
        if problem:
            row = int(np.flatnonzero(codes == u)[0])
            raise DatasetError(f"{path}, line {line_of(row)}: 'Finding Labels' {problem}")
    return table[codes]


def _official_splits(folder: str, names: pd.Series) -> np.ndarray | None:
    """``train_val`` / ``test`` / ``""`` per image from the official lists in ``folder``."""
    present = {f: os.path.join(folder, f) for f in NIH_SPLIT_LISTS}
    present = {f: p for f, p in present.items() if os.path.isfile(p)}
    if not present:
        return None
    split = np.full(len(names), "", dtype=object)
    for fname, path in present.items():
        with open(path, encoding="utf-8") as f:
            listed = {line.strip() for line in f if line.strip()}
        hit = names.isin(listed).to_numpy()
        clash = hit & (split != "")
        if clash.any():
            name = names.iloc[int(np.flatnonzero(clash)[0])]
            raise DatasetError(
                f"image {name} is listed in both {sorted(present)} in {folder}; "
                "the official lists must not overlap (or pass official_split=False)"
            )
        split[hit] = NIH_SPLIT_LISTS[fname]
    return split


def read_nih(source: str | os.PathLike[str], official_split: bool = True) -> LabelTable:
    """Read NIH ChestX-ray14 metadata (and locate its images).

    Args:
        source: the dataset folder (holding ``Data_Entry_2017.csv`` or
            ``Data_Entry_2017_v2020.csv[.gz]``) or the CSV file itself.
        official_split: when ``train_val_list.txt`` / ``test_list.txt`` lie beside the
            CSV, set ``split`` to ``"train_val"`` / ``"test"`` (``""`` for images in
            neither). False leaves ``split`` empty.

    Returns:
        A :class:`LabelTable` over :data:`~cxr.labels.NIH14_LABELS` (0/1, never NaN);
        ``patient_id`` is ``Patient ID`` without leading zeros (``"75"``), ``view`` is
        ``View Position`` (``PA``/``AP``).

    Raises:
        DatasetError: no metadata CSV, a required column missing, an empty image name or
            patient, a repeated image, or a finding that is not one of the 14.
    """
    path = _locate_csv(as_path_str(source))
    root = os.path.dirname(path)
    frame = drop_empty_unnamed(read_csv_strings(path, "NIH metadata CSV", allow_extra_fields=True))
    cols = _columns(frame, path)

    names = frame[cols["Image Index"]].str.strip()
    empty = (names == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DatasetError(f"{path}, line {line_of(row)}: 'Image Index' is empty")
    dup = names.duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DatasetError(
            f"{path}, line {line_of(row)}: image {names.iloc[row]} appears more than once; "
            "remove the repeated row"
        )

    patients = frame[cols["Patient ID"]].str.strip()
    blank = (patients == "").to_numpy()
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        raise DatasetError(f"{path}, line {line_of(row)}: 'Patient ID' is empty")
    digits = patients.str.fullmatch(r"\d+").to_numpy(dtype=bool)
    patients = patients.where(~digits, patients.str.lstrip("0").replace("", "0"))

    labels = _finding_vectors(frame[cols["Finding Labels"]].str.strip(), path)
    views = frame[cols["View Position"]].str.strip().str.upper()

    index = scan_images(nih_image_folders(root))
    default_dir = os.path.join(root, "images")
    paths = [index.get(n) or os.path.join(default_dir, n) for n in names.tolist()]

    splits = _official_splits(root, names) if official_split else None
    meta = pd.DataFrame(
        {
            "path": paths,
            "patient_id": patients.to_numpy(dtype=object),
            "view": views.to_numpy(dtype=object),
            "split": splits if splits is not None else np.full(len(names), "", dtype=object),
        }
    )
    return LabelTable(meta, labels, NIH14_LABELS, source=path)
