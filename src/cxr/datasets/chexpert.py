"""CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` of ``CheXpert-v1.0``
or ``CheXpert-v1.0-small``.

Columns: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` then the 14 observations. ``Path``
is relative to the dataset's *parent* folder (``CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg``); the reader joins it to the folder that holds the CSV, so a
renamed dataset folder still works.

Observation values are ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or
blank (not mentioned). Uncertain labels follow one of the policies of the CheXpert paper:

- ``uncertain="ones"`` (U-Ones): uncertain -> 1;
- ``uncertain="zeros"`` (U-Zeros): uncertain -> 0;
- ``uncertain="ignore"`` (U-Ignore): uncertain -> NaN (unknown, masked from the loss).

Blank cells are NaN (unknown) by default, or 0 with ``blank="zero"`` (the common
practice of reading "not mentioned" as absent).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from cxr.choices import BLANK_POLICIES, UNCERTAIN_POLICIES
from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    column_key,
    csv_header,
    line_of,
    read_csv_strings,
    refuse_climbing,
    refuse_duplicate_images,
)
from cxr.labels import CHEXPERT14_COLUMNS, CHEXPERT14_LABELS
from cxr.table import LabelTable

#: The 14 observation columns as CheXpert's CSVs spell them (:data:`cxr.labels.CHEXPERT14_COLUMNS`).
CHEXPERT_COLUMNS: tuple[str, ...] = CHEXPERT14_COLUMNS
CHEXPERT_SPLITS: tuple[str, ...] = ("train", "valid")

_PATIENT = re.compile(r"^patient\d+$")
_SPLIT_DIRS = frozenset({"train", "valid", "test"})
# Cell text -> value before the uncertainty policy (None = blank, -1 = uncertain).
_CELL: dict[str, float | None] = {
    "": None,
    "1": 1.0,
    "1.0": 1.0,
    "0": 0.0,
    "0.0": 0.0,
    "-1": -1.0,
    "-1.0": -1.0,
    "-0.0": 0.0,
}


def chexpert_label_columns(header: list[str]) -> list[str]:
    """The header's columns that name CheXpert observations (ignoring case/spaces)."""
    keys = {column_key(c) for c in CHEXPERT_COLUMNS}
    return [c for c in header if column_key(c) in keys]


def looks_like_chexpert(header: list[str]) -> bool:
    """A ``Path`` column plus ``Frontal/Lateral`` or at least 5 CheXpert observations,
    and no patient column (which CheXpert lacks and cxr's own saved tables have)."""
    keys = {column_key(c) for c in header}
    if "path" not in keys or "patientid" in keys:
        return False
    return "frontallateral" in keys or len(chexpert_label_columns(header)) >= 5


def _policy(value: str, choices: tuple[str, ...], option: str) -> str:
    key = column_key(value)
    key = key[1:] if option == "uncertain" and key.startswith("u") and key[1:] in choices else key
    if key not in choices:
        names = "U-Ones, U-Zeros, ignore" if option == "uncertain" else ", ".join(choices)
        raise ValueError(f"{option}={value!r} is not one of {list(choices)} ({names})")
    return key


def _csv_files(source: str, split: str) -> list[tuple[str, str]]:
    """(split name, csv path) pairs to read."""
    if split not in ("all",) + CHEXPERT_SPLITS:
        raise ValueError(f"split={split!r} is not one of ['all', 'train', 'valid']")
    if os.path.isdir(source):
        wanted = CHEXPERT_SPLITS if split == "all" else (split,)
        found = [(s, os.path.join(source, f"{s}.csv")) for s in wanted]
        found = [(s, p) for s, p in found if os.path.isfile(p)]
        if not found:
            raise DatasetError(
                f"{source} holds no CheXpert CSV: expected "
                f"{' and/or '.join(f'{s}.csv' for s in wanted)} (the CheXpert-v1.0 or "
                "CheXpert-v1.0-small folder)"
            )
        return found
    if not os.path.isfile(source):
        raise DatasetError(f"CheXpert source {source} does not exist")
    name = os.path.basename(source).split(".", 1)[0]
    if split != "all" and split != name:
        raise DatasetError(
            f"split={split!r} asks for {split}.csv but the source is the file {source}; "
            "pass the dataset folder, or split='all'"
        )
    return [(name, source)]


def _within_dataset(path: str) -> str:
    """A relative ``Path`` as it is taken inside the dataset folder (first component
    dropped unless it is a split folder), for the climbing check; absolute paths stay."""
    if os.path.isabs(path):
        return path
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts if parts[0] in _SPLIT_DIRS else parts[1:])


def _image_paths(raw: pd.Series, dataset_dir: str) -> list[str]:
    """Absolute paths: ``Path`` joined to the dataset folder's parent, i.e. its first
    component replaced by the folder that holds the CSV."""
    out = []
    for p in raw.tolist():
        if os.path.isabs(p):
            out.append(os.path.normpath(p))
            continue
        parts = p.replace("\\", "/").split("/")
        rest = parts if parts[0] in _SPLIT_DIRS else parts[1:]
        out.append(os.path.normpath(os.path.join(dataset_dir, *rest)))
    return out


def _read_one(
    csv_path: str,
    split_name: str,
    uncertain: str,
    blank: str,
    frontal_only: bool,
    allow_outside: bool = False,
) -> LabelTable:
    frame = read_csv_strings(csv_path, "CheXpert CSV")
    by_key = {column_key(c): c for c in frame.columns}
    missing = [c for c in ("Path",) + CHEXPERT_COLUMNS if column_key(c) not in by_key]
    if missing:
        raise DatasetError(
            f"{csv_path}: CheXpert column(s) {missing} not found; the columns are "
            f"{list(frame.columns)}. (For another layout use format='csv'.)"
        )
    raw_paths = frame[by_key["path"]].str.strip()
    empty = (raw_paths == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DatasetError(f"{csv_path}, line {line_of(row)}: 'Path' is empty")

    # Frontal / lateral: the column when present, else the file name (view1_frontal.jpg).
    if "frontallateral" in by_key:
        fl = frame[by_key["frontallateral"]].str.strip().str.lower()
        bad = (~fl.isin(["frontal", "lateral"])).to_numpy()
        problem = "'Frontal/Lateral' is {!r}; expected 'Frontal' or 'Lateral'"
    else:
        fl = raw_paths.str.lower().str.extract(r"(frontal|lateral)[^/]*$", expand=False)
        fl = fl.fillna("").astype(str)
        bad = ((fl == "") & frontal_only).to_numpy()
        problem = (
            "no 'Frontal/Lateral' column and the file name {!r} says neither frontal nor "
            "lateral; add the column or pass frontal_only=False"
        )
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        shown = fl.iloc[row] if "frontallateral" in by_key else raw_paths.iloc[row]
        raise DatasetError(f"{csv_path}, line {line_of(row)}: " + problem.format(shown))
    frontal = (fl == "frontal").to_numpy()
    appa = frame[by_key["appa"]].str.strip().str.upper() if "appa" in by_key else None
    frontal_view = appa.to_numpy(dtype=object) if appa is not None else ""
    views = np.where(frontal, frontal_view, np.where(fl == "lateral", "LL", ""))

    u_value = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    b_value = np.nan if blank == "nan" else 0.0
    labels = np.empty((len(frame), len(CHEXPERT_COLUMNS)), dtype=np.float32)
    for j, name in enumerate(CHEXPERT_COLUMNS):
        column = by_key[column_key(name)]
        codes, uniques = pd.factorize(frame[column].str.strip())
        mapped = np.empty(len(uniques), dtype=np.float32)
        for u, text in enumerate(uniques):
            if text not in _CELL:
                row = int(np.flatnonzero(codes == u)[0])
                raise DatasetError(
                    f"{csv_path}, line {line_of(row)}, column {column!r}: value {text!r} is "
                    "not 1.0, 0.0, -1.0 (uncertain) or blank"
                )
            v = _CELL[text]
            mapped[u] = b_value if v is None else (u_value if v == -1.0 else v)
        labels[:, j] = mapped[codes] if len(codes) else mapped[:0]

    dataset_dir = os.path.dirname(csv_path)
    refuse_climbing(
        [_within_dataset(p) for p in raw_paths.tolist()], csv_path, dataset_dir, allow_outside
    )
    paths = _image_paths(raw_paths, dataset_dir)
    refuse_duplicate_images(paths, csv_path)
    patients = []
    for row, p in enumerate(raw_paths.tolist()):
        pid = next((c for c in p.replace("\\", "/").split("/") if _PATIENT.match(c)), None)
        if pid is None:
            raise DatasetError(
                f"{csv_path}, line {line_of(row)}: 'Path' {p!r} has no patientNNNNN folder "
                "to take the patient from"
            )
        patients.append(pid)
    meta = pd.DataFrame({"path": paths, "patient_id": patients, "view": views, "split": split_name})
    table = LabelTable(meta, labels, CHEXPERT14_LABELS, csv_path)
    return table.subset(frontal) if frontal_only else table


def read_chexpert(
    source: str | os.PathLike[str],
    split: str = "all",
    uncertain: str = "ones",
    blank: str = "nan",
    frontal_only: bool = True,
    allow_outside: bool = False,
) -> LabelTable:
    """Read CheXpert's label CSV(s).

    Args:
        source: the dataset folder (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``, holding
            ``train.csv`` and ``valid.csv``) or one of the CSV files.
        split: ``"all"`` (every CSV present, train first), ``"train"`` or ``"valid"``.
        uncertain: what ``-1.0`` becomes: ``"ones"`` (U-Ones, 1), ``"zeros"`` (U-Zeros, 0)
            or ``"ignore"`` (NaN). ``"U-Ones"`` etc. are accepted too.
        blank: what an empty cell becomes: ``"nan"`` (unknown) or ``"zero"``.
        frontal_only: keep only rows whose ``Frontal/Lateral`` is ``Frontal``.
        allow_outside: accept paths that climb out of the dataset folder
            (``CheXpert-v1.0/../../x.jpg``); refused by default, naming the line.

    Returns:
        A :class:`LabelTable` over :data:`~cxr.labels.CHEXPERT14_LABELS` (``Pleural
        Effusion`` becomes ``Effusion``); ``patient_id`` is the ``patientNNNNN`` path
        component, ``view`` the ``AP/PA`` value of a frontal image and ``"LL"`` for a
        lateral one, ``split`` ``"train"``/``"valid"`` after the CSV read.

    Raises:
        DatasetError: no CSV, a missing column, a path without a patient folder, or a
            cell that is not 1.0, 0.0, -1.0 or blank (the message names row and column).
    """
    uncertain = _policy(uncertain, UNCERTAIN_POLICIES, "uncertain")
    blank = _policy(blank, BLANK_POLICIES, "blank")
    source_path = as_path_str(source)
    files = _csv_files(source_path, split)
    tables = [_read_one(p, s, uncertain, blank, frontal_only, allow_outside) for s, p in files]
    if len(tables) == 1:
        return tables[0]
    from cxr.table import merge_tables

    return merge_tables(tables, source=source_path)


def has_chexpert_csv(folder: str) -> bool:
    """True when ``folder`` holds a ``train.csv`` or ``valid.csv`` with a CheXpert header."""
    return any(
        os.path.isfile(p) and looks_like_chexpert(csv_header(p))
        for p in (os.path.join(folder, f"{s}.csv") for s in CHEXPERT_SPLITS)
    )
