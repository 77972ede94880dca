"""The label table: the one record every dataset reader produces.

A :class:`LabelTable` holds, for N images:

- ``meta``: a :class:`pandas.DataFrame` with columns ``path`` (str, the image file),
  ``patient_id`` (str), ``view`` (str, ``""`` when unknown; e.g. ``PA``, ``AP``, ``LL``)
  and ``split`` (str, ``""`` unless the source defines one, e.g. NIH's official lists);
- ``labels``: a float32 array of shape (N, L), 1 = present, 0 = absent, NaN = unknown;
- ``pathologies``: the L canonical label names (see :mod:`cxr.labels`).

Tables are saved as plain CSV (``path, patient_id, view, split, <label>...``), which
the plain-CSV reader reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

META_COLUMNS: tuple[str, ...] = ("path", "patient_id", "view", "split")


@dataclass(frozen=True)
class LabelTable:
    """Images, patients, views and a float label matrix over named labels.

    Attributes:
        meta: DataFrame with columns ``path, patient_id, view, split`` (all str), N rows,
            index 0..N-1.
        labels: float32 array (N, L); 1 present, 0 absent, NaN unknown.
        pathologies: L label names, canonical spelling, unique.
        source: free text saying where the table came from (for summaries).
    """

    meta: pd.DataFrame
    labels: np.ndarray
    pathologies: tuple[str, ...]
    source: str = field(default="")

    def __post_init__(self) -> None:
        missing = [c for c in META_COLUMNS if c not in self.meta.columns]
        if missing:
            raise ValueError(f"LabelTable.meta lacks columns {missing}")
        meta = self.meta.loc[:, list(META_COLUMNS)].reset_index(drop=True)
        meta = meta.fillna("").astype(str)
        labels = np.asarray(self.labels, dtype=np.float32)
        if labels.ndim != 2:
            raise ValueError(f"labels must be 2-D (N, L), got shape {labels.shape}")
        if labels.shape != (len(meta), len(self.pathologies)):
            raise ValueError(
                f"labels have shape {labels.shape} but the table has {len(meta)} images "
                f"and {len(self.pathologies)} label names"
            )
        if len(set(self.pathologies)) != len(self.pathologies):
            raise ValueError(f"label names repeat: {list(self.pathologies)}")
        bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"label {self.pathologies[col]!r} of {meta.at[row, 'path']!r} is "
                f"{float(labels[row, col]):g}; labels must be 0, 1 or NaN"
            )
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "pathologies", tuple(self.pathologies))

    # construction -----------------------------------------------------------------
    @classmethod
    def from_columns(
        cls,
        paths: Sequence[str],
        patient_ids: Sequence[str],
        labels: np.ndarray,
        pathologies: Sequence[str],
        views: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        source: str = "",
    ) -> LabelTable:
        """Build a table from parallel sequences (views and splits default to ``""``)."""
        n = len(paths)
        meta = pd.DataFrame(
            {
                "path": list(map(str, paths)),
                "patient_id": list(map(str, patient_ids)),
                "view": list(views) if views is not None else [""] * n,
                "split": list(splits) if splits is not None else [""] * n,
            }
        )
        return cls(meta, labels, tuple(pathologies), source)

    # basic properties ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta)

    @property
    def paths(self) -> list[str]:
        return self.meta["path"].tolist()

    @property
    def patient_ids(self) -> np.ndarray:
        return self.meta["patient_id"].to_numpy()

    @property
    def csv(self) -> pd.DataFrame:
        """The whole table as one DataFrame (meta columns then one column per label)."""
        return self.to_frame()

    def to_frame(self) -> pd.DataFrame:
        frame = self.meta.copy()
        for j, name in enumerate(self.pathologies):
            frame[name] = self.labels[:, j]
        return frame

    # selection -------------------------------------------------------------------
    def subset(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> LabelTable:
        """Rows by integer index or boolean mask, as a new table."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {rows.shape}, expected ({len(self)},)")
            rows = np.flatnonzero(rows)
        meta = self.meta.iloc[rows].reset_index(drop=True)
        return LabelTable(meta, self.labels[rows], self.pathologies, self.source)

    def select_labels(self, names: Sequence[str]) -> LabelTable:
        """Keep (and order) the named labels; an unknown name is an error naming the choices."""
        from cxr.labels import canonical_label

        wanted = [canonical_label(n) for n in names]
        unknown = [n for n in wanted if n not in self.pathologies]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; this table has {list(self.pathologies)}")
        cols = [self.pathologies.index(n) for n in wanted]
        return LabelTable(self.meta, self.labels[:, cols], tuple(wanted), self.source)

    # persistence -----------------------------------------------------------------
    def save_csv(self, path: str | Path) -> Path:
        """Write the table as CSV; unknown labels are written as empty cells."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path, index=False, float_format="%g")
        return path

    @classmethod
    def read_csv(cls, path: str | Path, source: str = "") -> LabelTable:
        """Read a table written by :meth:`save_csv` (columns ``path, patient_id, view, split``
        then one column per label, empty = unknown). Other CSV layouts: see
        :func:`cxr.datasets.read_csv_table`."""
        path = Path(path)
        frame = pd.read_csv(path, dtype={c: str for c in META_COLUMNS}, keep_default_na=False)
        missing = [c for c in META_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path} is not a cxr label table: columns {missing} are missing "
                f"(found {list(frame.columns)})"
            )
        names = [c for c in frame.columns if c not in META_COLUMNS]
        values = frame[names].replace("", np.nan) if names else frame[names]
        try:
            labels = values.to_numpy(dtype=np.float32).reshape(len(frame), len(names))
        except ValueError as err:
            raise ValueError(f"{path}: label columns must hold 0, 1 or nothing ({err})") from err
        return cls(frame[list(META_COLUMNS)], labels, tuple(names), source or str(path))


def merge_tables(tables: Sequence[LabelTable], source: str = "") -> LabelTable:
    """Stack tables over the union of their labels; a label a table lacks is NaN there.

    Labels keep the order in which they are first met. Nothing is guessed: an image of a
    dataset that never annotated ``Hernia`` gets NaN, not 0, for ``Hernia``.
    """
    if not tables:
        raise ValueError("merge_tables needs at least one table")
    names: list[str] = list(dict.fromkeys(n for t in tables for n in t.pathologies))
    blocks = []
    for t in tables:
        block = np.full((len(t), len(names)), np.nan, dtype=np.float32)
        for j, n in enumerate(t.pathologies):
            block[:, names.index(n)] = t.labels[:, j]
        blocks.append(block)
    meta = pd.concat([t.meta for t in tables], ignore_index=True)
    return LabelTable(
        meta, np.concatenate(blocks), tuple(names), source or " + ".join(t.source for t in tables)
    )
