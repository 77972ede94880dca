"""What a loaded dataset holds: images, patients, files on disk, views, labels, splits."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxr.table import LabelTable

LABEL_STAT_COLUMNS: tuple[str, ...] = ("positive", "negative", "unknown", "prevalence")


@dataclass(frozen=True)
class DatasetSummary:
    """Counts describing one :class:`~cxr.table.LabelTable`.

    Attributes:
        source: where the table came from.
        n_images: rows of the table.
        n_patients: distinct patient ids.
        images_on_disk: how many paths are existing files; None when not checked.
        views: view -> image count (``""`` = unknown), most frequent first.
        labels: one row per label (table order); columns ``positive``, ``negative``,
            ``unknown`` (NaN cells) and ``prevalence`` = positive / (positive + negative),
            NaN when a label has no known value.
        splits: split -> image count; empty when no image has a split.
    """

    source: str
    n_images: int
    n_patients: int
    images_on_disk: int | None
    views: dict[str, int]
    labels: pd.DataFrame
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain ints/floats/str, NaN prevalence as None."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "source": self.source,
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "images_on_disk": self.images_on_disk,
            "views": dict(self.views),
            "splits": dict(self.splits),
            "labels": {
                str(name): {
                    "positive": int(row.positive),
                    "negative": int(row.negative),
                    "unknown": int(row.unknown),
                    "prevalence": num(row.prevalence),
                }
                for name, row in self.labels.iterrows()
            },
        }

    def to_text(self) -> str:
        """A plain-text report with an aligned per-label table."""
        lines = [f"dataset: {self.source}" if self.source else "dataset"]
        lines.append(f"images:   {self.n_images}")
        lines.append(f"patients: {self.n_patients}")
        if self.images_on_disk is not None:
            missing = self.n_images - self.images_on_disk
            lines.append(
                f"on disk:  {self.images_on_disk}" + (f" ({missing} missing)" if missing else "")
            )
        if self.views:
            shown = (f"{v or '(unknown)'} {n}" for v, n in self.views.items())
            lines.append("views:    " + ", ".join(shown))
        if self.splits:
            lines.append("splits:   " + ", ".join(f"{s} {n}" for s, n in self.splits.items()))
        if len(self.labels):
            width = max(len("label"), *(len(str(n)) for n in self.labels.index))
            lines.append("")
            lines.append(
                f"{'label':<{width}}  {'positive':>8}  {'negative':>8}  "
                f"{'unknown':>7}  {'prevalence':>10}"
            )
            for name, row in self.labels.iterrows():
                prev = "-" if math.isnan(row.prevalence) else f"{row.prevalence:.3f}"
                lines.append(
                    f"{name!s:<{width}}  {int(row.positive):>8}  {int(row.negative):>8}  "
                    f"{int(row.unknown):>7}  {prev:>10}"
                )
        else:
            lines.append("labels:   none")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _counts(values: pd.Series) -> dict[str, int]:
    vc = values.value_counts(sort=False)
    return {str(k): int(v) for k, v in sorted(vc.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def label_stats(table: LabelTable) -> pd.DataFrame:
    """Per-label positive / negative / unknown counts and prevalence among known values."""
    y = table.labels
    pos = (y == 1).sum(axis=0).astype(np.int64)
    neg = (y == 0).sum(axis=0).astype(np.int64)
    unk = np.isnan(y).sum(axis=0).astype(np.int64)
    known = pos + neg
    with np.errstate(invalid="ignore", divide="ignore"):
        prev = np.where(known > 0, pos / np.maximum(known, 1), np.nan)
    frame = pd.DataFrame(
        {"positive": pos, "negative": neg, "unknown": unk, "prevalence": prev},
        index=pd.Index(list(table.pathologies), name="label"),
    )
    return frame


def describe(table: LabelTable, check_files: bool = True) -> DatasetSummary:
    """Summarise a table; ``check_files`` stats every path (about a second per 100k
    files on a local disk) to count the images actually present."""
    on_disk = None
    if check_files:
        isfile = os.path.isfile
        on_disk = sum(1 for p in table.meta["path"].tolist() if isfile(p))
    splits = table.meta["split"]
    return DatasetSummary(
        source=table.source,
        n_images=len(table),
        n_patients=int(table.meta["patient_id"].nunique()),
        images_on_disk=on_disk,
        views=_counts(table.meta["view"]),
        labels=label_stats(table),
        splits=_counts(splits) if (splits != "").any() else {},
    )
