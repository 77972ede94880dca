"""Build and write a dataset report: :func:`dataset_report` and :func:`write_dataset_report`.

``write_dataset_report`` writes into ``out_dir``:

- ``report.html``: one self-contained page (figures as ``data:`` URIs, nothing loaded from
  the network), the research-use notice at the top;
- ``report.json``: the numbers (the per-label counts are those of ``cxr data inspect``);
- one PNG per figure (``label_counts.png``, ``cooccurrence.png``, ...).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.datareport import figures as fg
from cxr.datareport import stats as st
from cxr.datareport.samples import HeaderStats, SampleGrid, read_headers, sample_grid
from cxr.datasets.summary import DatasetSummary, describe
from cxr.htmlpage import figure, notes, page, table
from cxr.leakage import LeakageReport, find_leakage
from cxr.table import LabelTable, merge_tables

__all__ = ["DatasetReport", "dataset_report", "label_csvs", "write_dataset_report"]


def label_csvs(source: str | Path) -> list[str]:
    """The label CSV(s) behind a dataset source, where patient age and sex may be: the
    file itself, or a folder's NIH ``Data_Entry*.csv`` or CheXpert ``train.csv``/``valid.csv``."""
    import os

    from cxr.datasets.nih import find_nih_csv

    path = os.fspath(source)
    if os.path.isfile(path):
        return [path] if ".csv" in os.path.basename(path).lower() else []
    if not os.path.isdir(path):
        return []
    nih = find_nih_csv(path)
    if nih:
        return [nih]
    return [
        p for p in (os.path.join(path, n) for n in ("train.csv", "valid.csv")) if os.path.isfile(p)
    ]


@dataclass
class DatasetReport:
    """Everything a dataset report shows (see :func:`dataset_report`)."""

    summary: DatasetSummary
    cooccurrence: Any
    labels_per_image: dict[int, int]
    images_per_patient: dict[int, int]
    sources: dict[str, LabelTable]
    coverage: Any | None
    split_prevalence: Any | None
    leakage: LeakageReport | None
    demographics: dict[str, Any] | None
    headers: HeaderStats | None
    grid: SampleGrid | None
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (NaN as None)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float):
                return None if math.isnan(x) else round(x, 6)
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, np.generic):
                return clean(x.item())
            return x

        def frame(f: Any) -> Any:
            return None if f is None else clean({k: dict(v) for k, v in f.to_dict().items()})

        demo = None
        if self.demographics is not None:
            ages = self.demographics["ages"]
            known = ages[np.isfinite(ages)]
            demo = {
                "matched": self.demographics["matched"],
                "sex": self.demographics["sex"],
                "age_known": len(known),
                "age_median": float(np.median(known)) if len(known) else None,
            }
        headers = None
        if self.headers is not None:
            h = self.headers
            headers = {
                "sampled": h.sampled,
                "n_paths": h.n_paths,
                "missing": h.missing,
                "depth": h.depth,
                "unreadable": [list(u) for u in h.unreadable],
            }
        return clean(
            {
                **self.summary.to_dict(),
                "labels_per_image": self.labels_per_image,
                "images_per_patient": self.images_per_patient,
                "cooccurrence": frame(self.cooccurrence.T),
                "sources": {k: len(t) for k, t in self.sources.items()},
                "coverage": frame(self.coverage),
                "split_prevalence": frame(self.split_prevalence),
                "leakage": None
                if self.leakage is None
                else {"leaked": self.leakage.leaked, "shared_patients": len(self.leakage.shared)},
                "demographics": demo,
                "headers": headers,
                "grid": None if self.grid is None else self.grid.paths(),
                "unreadable": [list(u) for u in self.unreadable()],
                "figures": sorted(self.figures),
                "notes": self.notes,
            }
        )

    def unreadable(self) -> list[tuple[str, str]]:
        """Files the report could not read (headers and sample images), with the reason."""
        seen: dict[str, str] = {}
        for part in (self.headers, self.grid):
            for path, reason in getattr(part, "unreadable", []):
                seen.setdefault(path, reason)
        return sorted(seen.items())


def dataset_report(
    sources: Mapping[str, LabelTable] | LabelTable,
    *,
    splits: Mapping[str, LabelTable] | None = None,
    csv_paths: Sequence[str] = (),
    seed: int = 0,
    per_label: int = 4,
    header_limit: int = 2000,
    images: bool = True,
) -> DatasetReport:
    """The numbers and figures of a dataset report.

    Args:
        sources: one table, or name -> table for several sources (merged over the union
            of their labels; the report shows which labels each source has).
        splits: split name -> table (e.g. ``cxr data split``'s files); None: the splits the
            table itself defines, if any. Two or more splits are checked for leakage.
        csv_paths: label CSVs to read patient age and sex from (when they have them).
        seed: chooses the sampled files and the sample images (same seed, same grid).
        per_label: sample images per label.
        header_limit: image headers read at most (a seeded sample).
        images: read image headers and sample images (False: the tables only).
    """
    tables = {"dataset": sources} if isinstance(sources, LabelTable) else dict(sources)
    if not tables:
        raise ValueError("dataset_report needs at least one source table")
    merged = (
        next(iter(tables.values())) if len(tables) == 1 else merge_tables(list(tables.values()))
    )
    summary = describe(merged, check_files=False)
    if splits is None and (merged.meta["split"] != "").any():
        names = [s for s in dict.fromkeys(merged.meta["split"]) if s]
        splits = {s: merged.subset(merged.meta["split"].to_numpy() == s) for s in names}
    report = DatasetReport(
        summary=summary,
        cooccurrence=st.cooccurrence(merged),
        labels_per_image=st.labels_per_image(merged),
        images_per_patient=st.images_per_patient(merged),
        sources=tables,
        coverage=st.source_coverage(tables) if len(tables) > 1 else None,
        split_prevalence=st.split_prevalence(splits) if splits else None,
        leakage=find_leakage(dict(splits)) if splits and len(splits) >= 2 else None,
        demographics=st.demographics(merged, csv_paths) if csv_paths else None,
        headers=read_headers(merged, header_limit, seed) if images else None,
        grid=None,
    )
    if report.headers is not None and report.headers.found == 0:
        report.notes.append(
            f"no images were found: none of the {report.headers.sampled} sampled paths "
            f"(of {len(merged)}) is a file, so the image sizes and sample images are left out"
        )
    elif images:
        report.grid = sample_grid(merged, per_label, seed)
    _figures(report)
    return report


def _figures(r: DatasetReport) -> None:
    f = r.figures
    f["label_counts"] = fg.label_counts_png(r.summary.labels)
    if len(r.cooccurrence):
        f["cooccurrence"] = fg.cooccurrence_png(r.cooccurrence)
    f["labels_per_image"] = fg.bars_png(
        r.labels_per_image, "Positive labels per image", "labels present", "images"
    )
    f["images_per_patient"] = fg.bars_png(
        r.images_per_patient, "Images per patient", "images of one patient", "patients"
    )
    f["views"] = fg.bars_png(r.summary.views, "View positions", "view", "images")
    if r.demographics is not None and r.demographics["matched"]:
        f["demographics"] = fg.demographics_png(r.demographics["ages"], r.demographics["sex"])
    if r.split_prevalence is not None:
        f["split_prevalence"] = fg.split_prevalence_png(r.split_prevalence)
    if r.coverage is not None:
        f["coverage"] = fg.coverage_png(r.coverage)
    if r.headers is not None and r.headers.sizes:
        f["image_sizes"] = fg.sizes_png(r.headers.sizes, r.headers.depth)
    if r.grid is not None and any(r.grid.rows.values()):
        f["samples"] = fg.grid_png(r.grid)


_CAPTIONS = {
    "label_counts": "Images per label",
    "cooccurrence": "Label co-occurrence: P(B | A)",
    "labels_per_image": "Positive labels per image",
    "images_per_patient": "Images per patient",
    "views": "View positions",
    "demographics": "Patient age and sex",
    "split_prevalence": "Prevalence per split",
    "coverage": "Labels known per source",
    "image_sizes": "Image sizes and bit depths (from file headers)",
    "samples": "Sample images per label",
}


def render_html(r: DatasetReport, title: str = "cxr dataset report") -> str:
    s = r.summary
    body = [
        table(
            ("", "value"),
            [
                ("source", s.source),
                ("images", s.n_images),
                ("patients", s.n_patients),
                ("labels", len(s.labels)),
                ("splits", ", ".join(f"{k}: {v}" for k, v in s.splits.items()) or "none"),
            ],
        ),
        notes(r.notes, "What could not be shown"),
        "<h2>Labels</h2>",
        table(
            ("label", "positive", "negative", "unknown", "prevalence"),
            [
                (n, int(x.positive), int(x.negative), int(x.unknown), _pct(x.prevalence))
                for n, x in s.labels.iterrows()
            ],
        ),
    ]
    for key in ("label_counts", "cooccurrence", "labels_per_image", "images_per_patient", "views"):
        if key in r.figures:
            body.append(figure(r.figures[key], _CAPTIONS[key]))
    if "demographics" in r.figures:
        body += ["<h2>Patients</h2>", figure(r.figures["demographics"], _CAPTIONS["demographics"])]
    if r.split_prevalence is not None:
        body.append("<h2>Splits</h2>")
        if r.leakage is not None:
            text = r.leakage.to_text().splitlines()[0]
            css = "warn" if r.leakage.leaked else ""
            body.append(f'<p class="{css}">Leakage check: {html.escape(text)}</p>')
        body.append(figure(r.figures["split_prevalence"], _CAPTIONS["split_prevalence"]))
    if r.coverage is not None:
        rows = [(k, len(t), ", ".join(t.pathologies)) for k, t in r.sources.items()]
        body += ["<h2>Sources</h2>", table(("source", "images", "labels"), rows)]
        body.append(figure(r.figures["coverage"], _CAPTIONS["coverage"]))
    if r.headers is not None:
        h = r.headers
        body.append("<h2>Images</h2>")
        body.append(
            f"<p>{h.found} of {h.sampled} sampled paths (of {h.n_paths}) are files; "
            f"{h.missing} missing.</p>"
        )
        for key in ("image_sizes", "samples"):
            if key in r.figures:
                body.append(figure(r.figures[key], _CAPTIONS[key]))
    bad = r.unreadable()
    body.append("<h2>Files that could not be read</h2>")
    body.append(table(("file", "reason"), bad) if bad else "<p>none among those read</p>")
    return page(title, "\n".join(body))


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def write_dataset_report(report: DatasetReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and the PNGs into ``out_dir``; key -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, png in report.figures.items():
        (out / f"{key}.png").write_bytes(png)
        written[key] = out / f"{key}.png"
    written["json"] = out / "report.json"
    written["json"].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    written["html"] = out / "report.html"
    written["html"].write_text(render_html(report))
    return written
