"""Split names, fractions and patient keys shared by the split modules."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr.table import LabelTable

#: The split used when none is given: 80% of images for training, 10% each for
#: validation and test (by images, whole patients at a time).
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}

#: Conventional split names, in the order tables and summaries list them.
CONVENTIONAL_ORDER: tuple[str, ...] = (
    "train",
    "train_val",
    "val",
    "valid",
    "validation",
    "dev",
    "test",
)

FRACTION_TOLERANCE = 1e-6
#: File names that :func:`save_split` writes besides the per-split tables.
RESERVED_NAMES = frozenset({"split", "split_summary"})
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------------------
# fractions and names
# --------------------------------------------------------------------------------------
def check_fractions(
    fractions: Mapping[str, float] | Iterable[tuple[str, float]],
) -> tuple[tuple[str, ...], np.ndarray]:
    """Validated split names and fractions (a float64 array summing to 1)."""
    pairs: list[tuple[Any, ...]]  # unvalidated user input, checked below
    if isinstance(fractions, Mapping):
        pairs = list(fractions.items())
    else:
        try:
            pairs = [tuple(p) for p in fractions]
        except TypeError:
            raise ValueError(
                f"fractions must map split names to fractions, got {fractions!r}"
            ) from None
        if any(len(p) != 2 for p in pairs):
            raise ValueError(
                f"fractions must be a mapping or (name, fraction) pairs, got {fractions!r}"
            )
    if not pairs:
        raise ValueError("fractions is empty; give at least one split, e.g. {'train': 1.0}")
    names: list[str] = []
    values: list[float] = []
    for name, value in pairs:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"split names must be non-empty strings, got {name!r}")
        if name != name.strip():
            raise ValueError(f"split name {name!r} has leading or trailing spaces")
        if name in names:
            raise ValueError(f"split name {name!r} appears more than once in fractions")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"fraction of split {name!r} is not a number: {value!r}") from None
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"fraction of split {name!r} must be a positive number, got {value!r}")
        names.append(name)
        values.append(v)
    total = float(sum(values))
    if abs(total - 1.0) > FRACTION_TOLERANCE:
        shown = ", ".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))
        raise ValueError(f"fractions must sum to 1, but {shown} sum to {total:.6g}")
    return tuple(names), np.asarray(values, dtype=np.float64) / total


def split_order(names: Iterable[str]) -> list[str]:
    """Conventional names first (train, val, test, ...), then the others sorted."""
    present = set(names)
    known = [n for n in CONVENTIONAL_ORDER if n in present]
    return known + sorted(present - set(known))


def check_assignment(table: LabelTable, assignment: np.ndarray) -> np.ndarray:
    values = np.asarray(assignment)
    if values.shape != (len(table),):
        raise ValueError(
            f"assignment has shape {values.shape}, expected ({len(table)},): one split name "
            "per image of the table"
        )
    values = pd.Series(values, dtype=object).fillna("").astype(str).to_numpy()
    empty = values == ""
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"{int(empty.sum())} images have no split name (first: {table.meta.at[row, 'path']!r})"
        )
    return values


def ordered_names(values: np.ndarray, order: Sequence[str] | None) -> list[str]:
    present = pd.unique(values).tolist()
    if order is None:
        return split_order(present)
    order = list(order)
    missing = sorted(set(present) - set(order))
    if missing:
        raise ValueError(f"assignment has split names {missing} that are not in order={order}")
    return order


# --------------------------------------------------------------------------------------
# grouping images into patients
# --------------------------------------------------------------------------------------
def patient_keys(table: LabelTable) -> np.ndarray:
    """One key per image naming its patient; an empty patient id makes the image its own
    patient (keyed by its path, so that a repeated image stays in one split)."""
    pid = table.meta["patient_id"].to_numpy(dtype=object)
    blank = table.meta["patient_id"].str.strip().to_numpy() == ""
    if blank.any():
        pid = pid.copy()
        pid[blank] = "\x00" + table.meta["path"].to_numpy(dtype=object)[blank]
    return pid
