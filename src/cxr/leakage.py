"""The leakage check: patients that appear in more than one split.

:func:`find_leakage` checks any set of label tables (made by :mod:`cxr.split` or
elsewhere, e.g. NIH's official lists) for patient ids they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from cxr.table import LabelTable

__all__ = ["LeakageReport", "find_leakage"]


@dataclass(frozen=True)
class LeakageReport:
    """Patients found in more than one split.

    Attributes:
        splits: names of the compared splits, in the order given.
        shared: patient id -> names of the splits it appears in (only patients in >= 2
            splits), patients sorted by id.
        images_affected: images (over all splits) that belong to shared patients.
    """

    splits: tuple[str, ...]
    shared: dict[str, tuple[str, ...]]
    images_affected: int

    @property
    def leaked(self) -> bool:
        return bool(self.shared)

    def pair_counts(self) -> dict[tuple[str, str], int]:
        """Shared patients per pair of splits (pairs in split order, zero counts kept)."""
        return {pair: len(ids) for pair, ids in self._pair_patients().items()}

    def _pair_patients(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {p: [] for p in combinations(self.splits, 2)}
        for pid, where in self.shared.items():
            for pair in combinations([s for s in self.splits if s in where], 2):
                out[pair].append(pid)
        return out

    def to_text(self, max_examples: int = 10) -> str:
        """A short human summary: per pair of splits, how many patients they share and a
        few example ids."""
        listed = ", ".join(self.splits)
        if not self.leaked:
            return f"No patient leakage: no patient appears in more than one of {listed}."
        lines = [
            f"Patient leakage: {len(self.shared)} patients appear in more than one of {listed} "
            f"({self.images_affected} images affected)."
        ]
        for (a, b), ids in self._pair_patients().items():
            if not ids:
                continue
            shown = ", ".join(ids[: max(0, max_examples)])
            more = f", ... ({len(ids) - max_examples} more)" if len(ids) > max_examples else ""
            noun = "patient" if len(ids) == 1 else "patients"
            lines.append(f"  {a} & {b}: {len(ids)} shared {noun}, e.g. {shown}{more}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def find_leakage(tables: Mapping[str, LabelTable]) -> LeakageReport:
    """Patients that appear in more than one of the given tables.

    Images with an empty patient id belong to no known patient and are never counted.
    Vectorised (pandas), so the full NIH table split three ways is checked in well under
    a second.

    Raises:
        ValueError: fewer than two tables.
    """
    if not isinstance(tables, Mapping):
        raise TypeError("find_leakage takes a mapping of split name -> LabelTable")
    if len(tables) < 2:
        raise ValueError(f"find_leakage needs at least two tables to compare, got {len(tables)}")
    splits = tuple(str(n) for n in tables)
    ids = [t.meta["patient_id"].to_numpy(dtype=object) for t in tables.values()]
    frame = pd.DataFrame(
        {
            "patient": np.concatenate(ids) if ids else np.array([], dtype=object),
            "split": np.repeat(np.arange(len(splits)), [len(i) for i in ids]),
        }
    )
    frame = frame[frame["patient"].str.strip() != ""]
    pairs = frame.drop_duplicates()
    n_splits = pairs.groupby("patient", sort=True)["split"].nunique()
    leaking = n_splits.index[n_splits.to_numpy() >= 2]
    shared: dict[str, tuple[str, ...]] = {}
    images = 0
    if len(leaking):
        hits = pairs[pairs["patient"].isin(leaking)].sort_values(["patient", "split"])
        grouped = hits.groupby("patient", sort=True)["split"].agg(tuple)
        shared = {str(pid): tuple(splits[i] for i in where) for pid, where in grouped.items()}
        images = int(frame["patient"].isin(leaking).sum())
    return LeakageReport(splits=splits, shared=shared, images_affected=images)
