"""The numbers of a dataset report, from the label table alone (no image is opened).

Every function takes a :class:`~cxr.table.LabelTable` (N images, L labels; labels 1 =
present, 0 = absent, NaN = unknown) and returns plain Python or pandas values. At NIH scale
(112,120 rows, 14 labels) all of them together take well under a second.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxr.datasets.summary import label_stats
from cxr.table import LabelTable

__all__ = [
    "cooccurrence",
    "demographics",
    "images_per_patient",
    "labels_per_image",
    "source_coverage",
    "split_prevalence",
]


def cooccurrence(table: LabelTable) -> pd.DataFrame:
    """Conditional frequencies (L, L): row A, column B holds P(B present | A present) over
    the images where A is present and B is known (NaN when there are none). The diagonal
    is 1 for every label with a positive image."""
    y = table.labels.astype(np.float64)
    pos = np.nan_to_num(y, nan=0.0) == 1
    known = ~np.isnan(y)
    both = pos.T.astype(np.int64) @ pos.astype(np.int64)  # A present and B present
    base = pos.T.astype(np.int64) @ known.astype(np.int64)  # A present and B known
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(base > 0, both / np.maximum(base, 1), np.nan)
    names = list(table.pathologies)
    return pd.DataFrame(freq, index=pd.Index(names, name="given"), columns=names)


def labels_per_image(table: LabelTable) -> dict[int, int]:
    """Number of positive labels per image -> images (0 = no finding among known labels)."""
    counts = (np.nan_to_num(table.labels, nan=0.0) == 1).sum(axis=1)
    values, n = np.unique(counts, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, n, strict=True)}


def images_per_patient(table: LabelTable) -> dict[int, int]:
    """Images of one patient -> number of patients with that many images."""
    per = table.meta["patient_id"].value_counts().to_numpy()
    values, n = np.unique(per, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, n, strict=True)}


def split_prevalence(tables: Mapping[str, LabelTable]) -> pd.DataFrame:
    """Prevalence (positives / known) per label (rows) and split (columns), over the union
    of the splits' labels in first-seen order; NaN where a split lacks a label."""
    names: list[str] = []
    for t in tables.values():
        names += [n for n in t.pathologies if n not in names]
    frame = pd.DataFrame(index=pd.Index(names, name="label"))
    for split, t in tables.items():
        frame[split] = label_stats(t)["prevalence"].reindex(names)
    return frame


def source_coverage(tables: Mapping[str, LabelTable]) -> pd.DataFrame:
    """Fraction of each source's images whose label is known, per label (rows) and source
    (columns); 0 where a source does not have the label at all (it is unknown there)."""
    names: list[str] = []
    for t in tables.values():
        names += [n for n in t.pathologies if n not in names]
    frame = pd.DataFrame(index=pd.Index(names, name="label"))
    for source, t in tables.items():
        known = (~np.isnan(t.labels)).mean(axis=0) if len(t) else np.zeros(len(t.pathologies))
        frame[source] = pd.Series(known, index=list(t.pathologies)).reindex(names).fillna(0.0)
    return frame


# demographics --------------------------------------------------------------------------
_AGE_KEYS = ("patientage", "age")
_SEX_KEYS = ("patientgender", "patientsex", "sex", "gender")
_IMAGE_KEYS = ("imageindex", "path", "image", "file", "filename", "imagepath", "img")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _tail(path: str, parts: int) -> str:
    return "/".join(path.replace("\\", "/").strip("/").split("/")[-parts:])


def _age_years(text: str) -> float:
    """``58``, ``058Y``, ``6M`` (months), ``20D`` (days) -> years; NaN if unreadable."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWDymwd]?)\s*", str(text))
    if not m:
        return float("nan")
    value = float(m.group(1))
    return value / {"": 1, "y": 1, "m": 12, "w": 52.18, "d": 365.25}[m.group(2).lower()]


def _sex(text: str) -> str:
    t = str(text).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(t, "unknown")


def demographics(table: LabelTable, csv_paths: Sequence[str]) -> dict[str, object] | None:
    """Patient age (years) and sex of the table's images, read from the label CSVs they
    came from (NIH ``Patient Age``/``Patient Gender``, CheXpert ``Age``/``Sex``, or columns
    named age/sex/gender). Rows are matched to images by the tail of their path (as many
    components as the CSV's image column holds, at most 4). None when no CSV has either.

    Returns ``{"ages": float array (images matched, NaN = unknown), "sex": {M, F, unknown:
    count}, "matched": images matched, "source": csv paths}``.
    """
    frames = []
    for path in csv_paths:
        if not path or not os.path.isfile(path):
            continue
        header = pd.read_csv(path, nrows=0).columns
        by = {_key(c): c for c in header}
        image = next((by[k] for k in _IMAGE_KEYS if k in by), None)
        age = next((by[k] for k in _AGE_KEYS if k in by), None)
        sex = next((by[k] for k in _SEX_KEYS if k in by), None)
        if image is None or (age is None and sex is None):
            continue
        cols = [c for c in (image, age, sex) if c is not None]
        frame = pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False)
        frame = frame.rename(columns={image: "image", age or "": "age", sex or "": "sex"})
        frames.append(frame)
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)
    depth = min(4, max(1, int(rows["image"].str.count("/").max()) + 1))
    rows["key"] = [_tail(p, depth) for p in rows["image"]]
    rows = rows.drop_duplicates("key")
    keys = pd.Series([_tail(p, depth) for p in table.meta["path"]])
    found = rows.set_index("key").reindex(keys)
    matched = int(found["image"].notna().sum())
    ages = (
        np.array([_age_years(a) for a in found["age"].fillna("")], np.float64)
        if "age" in found
        else np.full(len(found), np.nan)
    )
    sexes = (
        pd.Series([_sex(s) for s in found["sex"].fillna("")]).value_counts()
        if "sex" in found
        else pd.Series(dtype=int)
    )
    return {
        "ages": ages,
        "sex": {k: int(sexes.get(k, 0)) for k in ("M", "F", "unknown")},
        "matched": matched,
        "source": list(csv_paths),
    }
