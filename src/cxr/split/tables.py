"""Using a split: per-split tables, the prevalence summary, and the split files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.split.common import (
    RESERVED_NAMES,
    SAFE_NAME,
    check_assignment,
    ordered_names,
    patient_keys,
)
from cxr.table import LabelTable

__all__ = ["save_split", "split_summary", "split_tables"]


# --------------------------------------------------------------------------------------
# using a split
# --------------------------------------------------------------------------------------
def split_tables(
    table: LabelTable, assignment: np.ndarray, order: Sequence[str] | None = None
) -> dict[str, LabelTable]:
    """One table per split name, with ``meta['split']`` set to that name.

    Args:
        table: the images that were split.
        assignment: (N,) split name per image (from :func:`split_by_patient`).
        order: the order of the returned dict (e.g. ``list(fractions)``); names in it that
            no image has give empty tables. Default: conventional names first
            (train, val, test, ...), then the others sorted.
    """
    values = check_assignment(table, assignment)
    out: dict[str, LabelTable] = {}
    for name in ordered_names(values, order):
        part = table.subset(np.flatnonzero(values == name))
        meta = part.meta.copy()
        meta["split"] = name
        out[name] = LabelTable(meta, part.labels, part.pathologies, part.source)
    return out


def split_summary(
    table: LabelTable, assignment: np.ndarray, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Rows = splits (index ``split``); columns ``images``, ``patients``, then each
    label's prevalence, positives / known (NaN where a split knows no value of it).
    ``order`` as in :func:`split_tables`."""
    values = check_assignment(table, assignment)
    names = ordered_names(values, order)
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    k = len(names)
    labels = table.labels
    known = np.zeros((k, labels.shape[1]))
    positives = np.zeros((k, labels.shape[1]))
    np.add.at(known, codes, (~np.isnan(labels)).astype(np.float64))
    np.add.at(positives, codes, (labels == 1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        prevalence = np.where(known > 0, positives / np.maximum(known, 1), np.nan)
    keys = patient_keys(table)
    patients = pd.DataFrame({"split": codes, "patient": keys}).groupby("split")["patient"].nunique()
    frame = pd.DataFrame(
        {
            "images": np.bincount(codes, minlength=k).astype(np.int64),
            "patients": patients.reindex(range(k), fill_value=0).to_numpy(dtype=np.int64),
        },
        index=pd.Index(names, name="split"),
    )
    for j, label in enumerate(table.pathologies):
        frame[label] = prevalence[:, j]
    return frame


def save_split(
    out_dir: str | os.PathLike[str],
    table: LabelTable,
    assignment: np.ndarray,
    order: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write a split to ``out_dir``.

    Files: ``<name>.csv`` per split (the :meth:`LabelTable.save_csv` format, readable by
    :meth:`LabelTable.read_csv`), ``split.csv`` (columns ``path, patient_id, split``, one row
    per image in table order) and ``split_summary.csv`` (:func:`split_summary`).

    Returns:
        The written paths: one per split name, then ``"split"`` and ``"split_summary"``.

    Raises:
        ValueError: a split name that is not a plain file name (letters, digits, ``_.-``,
            not starting with ``.``/``-``) or is ``split``/``split_summary``.
    """
    values = check_assignment(table, assignment)
    names = ordered_names(values, order)
    for name in names:
        if not SAFE_NAME.match(name) or name in RESERVED_NAMES:
            raise ValueError(
                f"cannot save split {name!r}: split names used as file names must be letters, "
                "digits, '_', '.', '-' (not starting with '.' or '-') and not "
                f"{sorted(RESERVED_NAMES)}"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, part in split_tables(table, values, order=names).items():
        paths[name] = part.save_csv(out / f"{name}.csv")
    listing = pd.DataFrame(
        {"path": table.meta["path"], "patient_id": table.meta["patient_id"], "split": values}
    )
    paths["split"] = out / "split.csv"
    listing.to_csv(paths["split"], index=False)
    paths["split_summary"] = out / "split_summary.csv"
    split_summary(table, values, order=names).to_csv(paths["split_summary"], float_format="%.6g")
    return paths
