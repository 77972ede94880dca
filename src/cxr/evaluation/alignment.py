"""Pairing predictions with a label table: by image file name (by path where names repeat),
refusing with one message that lists every problem (images on one side only, duplicate rows,
NaN or out-of-range probabilities) unless ``allow_missing`` / ``allow_duplicates``, in which
case the report says what was dropped and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from cxr.evaluation.predictions import PredictionError, Predictions
from cxr.labels import canonical_label
from cxr.table import LabelTable

__all__ = ["Aligned", "AlignmentReport", "align", "align_pair"]

_RANGE_TOLERANCE = 1e-6
_SHOW = 5  # examples named in a message


@dataclass
class AlignmentReport:
    """How predictions were paired with labels. ``images`` (M,) and ``table_rows`` (M,)
    are the matched table paths and row numbers, in table order; ``notes`` say what was
    dropped or ignored and why."""

    pathologies: tuple[str, ...]
    images: np.ndarray
    table_rows: np.ndarray
    n_label_rows: int
    n_prediction_rows: int
    missing_predictions: int = 0
    unlabelled_predictions: int = 0
    duplicate_rows: int = 0
    nan_predictions: dict[str, int] = field(default_factory=dict)
    labels_only_in_table: tuple[str, ...] = ()
    labels_only_in_predictions: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "n_label_rows": self.n_label_rows,
            "n_prediction_rows": self.n_prediction_rows,
            "n_matched": len(self.table_rows),
            "missing_predictions": self.missing_predictions,
            "unlabelled_predictions": self.unlabelled_predictions,
            "duplicate_rows": self.duplicate_rows,
            "nan_predictions": dict(self.nan_predictions),
            "labels_only_in_table": list(self.labels_only_in_table),
            "labels_only_in_predictions": list(self.labels_only_in_predictions),
            "notes": list(self.notes),
        }


class Aligned(NamedTuple):
    """``labels`` (M, L) float 1/0/NaN, ``probs`` (M, L) float (NaN only with
    ``allow_missing``), ``patient_ids`` (M,) str, ``report``."""

    labels: np.ndarray
    probs: np.ndarray
    patient_ids: np.ndarray
    report: AlignmentReport


def _norm(path: str) -> str:
    return path.strip().replace("\\", "/")


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(map(str, items[:_SHOW]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


def _match_rows(table_paths: list[str], pred_keys: list[str]) -> tuple[np.ndarray, list[str]]:
    """Table row of each prediction key (-1: none); ambiguity problems."""
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(table_paths):
        by_name.setdefault(_norm(p).rsplit("/", 1)[-1], []).append(i)
    rows = np.full(len(pred_keys), -1, dtype=np.int64)
    ambiguous: list[str] = []
    for k, key in enumerate(pred_keys):
        key = _norm(key)
        cands = by_name.get(key.rsplit("/", 1)[-1], [])
        if len(cands) > 1:
            tail = "/" + key.lstrip("/")
            cands = [i for i in cands if ("/" + _norm(table_paths[i]).lstrip("/")).endswith(tail)]
            if len(cands) != 1:
                ambiguous.append(key)
                continue
        if cands:
            rows[k] = cands[0]
    problems = []
    if ambiguous:
        problems.append(
            f"{len(ambiguous)} predicted image(s) match several images of the labels by file name "
            f"({_examples(ambiguous)}); write their paths (e.g. folder/name.png) so that each "
            "matches one"
        )
    return rows, problems


def _duplicates(
    keys: np.ndarray, probs: np.ndarray, images: np.ndarray, allow: bool
) -> tuple[np.ndarray, str | None, str | None]:
    """First-occurrence mask (N,) of ``keys``, and a problem or a note about the repeats:
    repeats with other probabilities are always a problem; identical ones unless ``allow``."""
    first = ~pd.Series(keys).duplicated().to_numpy()
    n_dup = int((~first).sum())
    if not n_dup:
        return first, None, None
    frame = pd.DataFrame(np.nan_to_num(probs, nan=-1.0)).assign(key=keys)
    shown = _examples(images[~first].tolist())
    if frame.drop_duplicates().duplicated(subset="key").any():
        return (
            first,
            (
                f"{n_dup} duplicate prediction row(s) with different probabilities for the same "
                f"image ({shown}); keep one row per image"
            ),
            None,
        )
    if not allow:
        return (
            first,
            (
                f"{n_dup} duplicate prediction row(s) for the same image ({shown}); keep one row "
                "per image, or pass allow_duplicates=True (--allow-duplicates) to keep the first "
                "of identical rows"
            ),
            None,
        )
    return (
        first,
        None,
        f"{n_dup} identical duplicate prediction row(s) dropped (first kept): {shown}",
    )


def align(
    table: LabelTable,
    preds: Predictions,
    labels: Sequence[str] | None = None,
    allow_missing: bool = False,
    allow_duplicates: bool = False,
) -> Aligned:
    """Pair predictions with a label table, image by image and label by label.

    Images are matched by file name; where the table holds one name several times, by the
    end of the path. Labels are those on both sides (or ``labels``, which must be on both).

    Args:
        allow_missing: evaluate the matched images when some images are on one side only
            or some probabilities are NaN (NaN cells are skipped for their label), instead
            of refusing; the report counts what was dropped.
        allow_duplicates: keep the first of repeated prediction rows that agree exactly.

    Raises:
        PredictionError: one message listing every problem found, each with its fix.
    """
    where = preds.source or "the predictions"
    names = [n for n in table.pathologies if n in preds.pathologies]
    if labels is not None:
        wanted = [canonical_label(n) for n in labels]
        absent = [
            f"{n} ({'labels' if n not in table.pathologies else where})"
            for n in wanted
            if n not in names
        ]
        if absent:
            raise PredictionError(
                f"requested label(s) missing: {absent}; the labels have "
                f"{list(table.pathologies)}, {where} has {list(preds.pathologies)}"
            )
        names = wanted
    if not names:
        raise PredictionError(
            f"{where} shares no label with the dataset: predictions "
            f"{list(preds.pathologies)}, labels {list(table.pathologies)}"
        )
    only_table = tuple(n for n in table.pathologies if n not in preds.pathologies)
    only_preds = tuple(n for n in preds.pathologies if n not in table.pathologies)
    notes = list(preds.notes)
    if only_table:
        notes.append(f"labels without predictions, not evaluated: {list(only_table)}")
    if only_preds:
        notes.append(f"predicted labels absent from the dataset, not evaluated: {list(only_preds)}")
    problems: list[str] = []
    fix = "pass allow_missing=True (--allow-missing) to evaluate the images that match"

    paths = table.paths
    dup_paths = pd.Series(paths)[pd.Series(paths).duplicated()].unique().tolist()
    if dup_paths:
        problems.append(
            f"the dataset lists {len(dup_paths)} image(s) more than once "
            f"({_examples(dup_paths)}); remove the repeated rows from the label file"
        )
    cols = [preds.pathologies.index(n) for n in names]
    probs_all = preds.probs[:, cols]
    rows, ambiguity = _match_rows(paths, list(preds.images))
    problems += ambiguity

    # duplicates: several prediction rows for one table image (or one unmatched key)
    keys = np.where(rows >= 0, rows.astype(str), np.char.add("?", preds.images.astype(str)))
    first, problem, note = _duplicates(keys, probs_all, preds.images, allow_duplicates)
    n_dup = int((~first).sum())
    problems += [problem] if problem else []
    notes += [note] if note else []
    rows, probs_all, pred_images = rows[first], probs_all[first], preds.images[first]

    unlabelled = pred_images[rows < 0].tolist()
    matched = rows >= 0
    missing_mask = np.ones(len(table), dtype=bool)
    missing_mask[rows[matched]] = False
    missing = [paths[i] for i in np.flatnonzero(missing_mask)]
    if missing:
        (notes if allow_missing else problems).append(
            f"{len(missing)} of {len(table)} labelled image(s) have no prediction in {where} "
            f"({_examples([os.path.basename(m) for m in missing])})"
            + ("; left out" if allow_missing else f"; {fix}")
        )
    if unlabelled:
        (notes if allow_missing else problems).append(
            f"{len(unlabelled)} of {len(preds)} predicted image(s) are not in the dataset's labels "
            f"({_examples(unlabelled)})" + ("; left out" if allow_missing else f"; {fix}")
        )

    order = np.argsort(rows[matched], kind="stable")
    table_rows = rows[matched][order]
    probs = probs_all[matched][order]
    nan_counts = {n: int(np.isnan(probs[:, j]).sum()) for j, n in enumerate(names)}
    nan_counts = {n: c for n, c in nan_counts.items() if c}
    if nan_counts:
        first_nan = pred_images[matched][order][np.isnan(probs).any(axis=1)].tolist()
        text = (
            f"{sum(nan_counts.values())} prediction(s) are NaN/empty ({nan_counts}; images "
            f"{_examples(first_nan)})"
        )
        (notes if allow_missing else problems).append(
            text + ("; those cells are left out of their label" if allow_missing else f"; {fix}")
        )
    outside = (probs < -_RANGE_TOLERANCE) | (probs > 1 + _RANGE_TOLERANCE)  # NaN compares False
    if outside.any():
        bad = [n for j, n in enumerate(names) if outside[:, j].any()]
        problems.append(
            f"probabilities outside [0, 1] for {bad} (from {np.nanmin(probs):g} to "
            f"{np.nanmax(probs):g}); these look like logits: apply a sigmoid and write "
            "probabilities"
        )
    if problems:
        raise PredictionError(
            f"cannot pair {where} with the labels of {table.source or 'the dataset'}:\n- "
            + "\n- ".join(problems)
        )
    probs = np.clip(probs, 0.0, 1.0)
    label_cols = [table.pathologies.index(n) for n in names]
    report = AlignmentReport(
        tuple(names),
        np.asarray(paths, dtype=object)[table_rows],
        table_rows,
        len(table),
        len(preds),
        missing_predictions=len(missing),
        unlabelled_predictions=len(unlabelled),
        duplicate_rows=n_dup,
        nan_predictions=nan_counts,
        labels_only_in_table=only_table,
        labels_only_in_predictions=only_preds,
        notes=notes,
    )
    labels_out = table.labels[np.ix_(table_rows, label_cols)].astype(np.float64)
    return Aligned(labels_out, probs, table.patient_ids[table_rows], report)


def align_pair(
    table: LabelTable,
    preds_a: Predictions,
    preds_b: Predictions,
    labels: Sequence[str] | None = None,
    allow_missing: bool = False,
    allow_duplicates: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, AlignmentReport]:
    """Align two prediction sets with one table on the same images and labels.

    Returns ``labels`` (M, L), ``probs_a`` (M, L), ``probs_b`` (M, L), ``patient_ids`` (M,)
    and the report of the images and labels both share (notes of both, prefixed A:/B:).
    """
    a = align(table, preds_a, labels, allow_missing, allow_duplicates)
    b = align(table, preds_b, labels, allow_missing, allow_duplicates)
    names = [n for n in a.report.pathologies if n in b.report.pathologies]
    if not names:
        raise PredictionError(
            "the two prediction files share no label with each other and the dataset"
        )
    rows = np.intersect1d(a.report.table_rows, b.report.table_rows)
    notes = [f"A: {n}" for n in a.report.notes] + [f"B: {n}" for n in b.report.notes]
    dropped = len(a.report.table_rows) + len(b.report.table_rows) - 2 * len(rows)
    if dropped:
        notes.append(f"{dropped} image(s) predicted by only one of the two files left out")
    ia = np.searchsorted(a.report.table_rows, rows)
    ib = np.searchsorted(b.report.table_rows, rows)
    ca = np.asarray([a.report.pathologies.index(n) for n in names], dtype=np.intp)
    cb = np.asarray([b.report.pathologies.index(n) for n in names], dtype=np.intp)
    report = AlignmentReport(
        tuple(names),
        a.report.images[ia],
        rows,
        len(table),
        max(len(preds_a), len(preds_b)),
        missing_predictions=len(table) - len(rows),
        duplicate_rows=a.report.duplicate_rows + b.report.duplicate_rows,
        nan_predictions={
            n: a.report.nan_predictions.get(n, 0) + b.report.nan_predictions.get(n, 0)
            for n in names
            if a.report.nan_predictions.get(n) or b.report.nan_predictions.get(n)
        },
        notes=notes,
    )
    return (
        a.labels[np.ix_(ia, ca)],
        a.probs[np.ix_(ia, ca)],
        b.probs[np.ix_(ib, cb)],
        a.patient_ids[ia],
        report,
    )
