"""Calibration in an evaluation: ECE and Brier score before and after the model file's
calibration, and the rules that keep calibration away from the test set.

- :func:`calibration_table`: per label and pooled, the expected calibration error and the
  Brier score of the raw and the calibrated probabilities on the evaluated images;
- :func:`refuse_calibration_source`: an evaluation on the very data the calibration was
  fitted on is refused (as thresholds chosen on the test set are);
- :func:`calibrate_model`: fit a model file's calibration on a validation cache (``cxr
  calibrate``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr.calibration import Calibration, fit_calibration
from cxr.evaluation.metrics import expected_calibration_error

__all__ = ["brier_score", "calibrate_model", "calibration_table", "refuse_calibration_source"]

_PathLike = str | os.PathLike[str]


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between the 0/1 labels and the probabilities (NaN skipped);
    NaN when nothing is left."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    return float(np.mean((p[ok] - y[ok]) ** 2)) if ok.any() else math.nan


def _ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    ok = np.isfinite(y) & np.isfinite(p)
    return expected_calibration_error(y[ok], p[ok], n_bins) if ok.any() else math.nan


def calibration_table(
    labels: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
    names: list[str] | tuple[str, ...],
    calibration: Calibration,
    n_bins: int = 10,
) -> dict[str, Any]:
    """ECE and Brier of ``raw`` and ``calibrated`` probabilities (N, L) against ``labels``
    (N, L, NaN = unknown): ``{"method", "source", "per_label": {label: {"ece_raw", "ece",
    "brier_raw", "brier", "n"}}, "overall": {...}, "notes"}``."""
    labels = np.asarray(labels, np.float64)
    raw = np.asarray(raw, np.float64)
    calibrated = np.asarray(calibrated, np.float64)
    per_label = {}
    for j, name in enumerate(names):
        y, r, c = labels[:, j], raw[:, j], calibrated[:, j]
        per_label[str(name)] = {
            "n": int((np.isfinite(y) & np.isfinite(r)).sum()),
            "ece_raw": _ece(y, r, n_bins),
            "ece": _ece(y, c, n_bins),
            "brier_raw": brier_score(y, r),
            "brier": brier_score(y, c),
            "map": calibration.maps[name].kind if name in calibration.maps else "none",
        }
    y, r, c = labels.ravel(), raw.ravel(), calibrated.ravel()
    overall = {
        "ece_raw": _ece(y, r, n_bins),
        "ece": _ece(y, c, n_bins),
        "brier_raw": brier_score(y, r),
        "brier": brier_score(y, c),
    }
    return {
        "method": calibration.method,
        "source": calibration.source,
        "per_label": per_label,
        "overall": overall,
        "notes": list(calibration.notes),
    }


def _same_place(a: _PathLike, b: _PathLike) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def refuse_calibration_source(
    calibration: Calibration | None, source: _PathLike, model: str
) -> None:
    """Raise ValueError when ``source`` is the data ``calibration`` was fitted on."""
    if calibration is None or not calibration.source:
        return
    if _same_place(calibration.source, source):
        raise ValueError(
            f"the calibration of {model} was fitted on {source}; evaluating on the same images "
            "would hide miscalibration. Evaluate on held-out data (the test split), or pass "
            "--raw to evaluate the uncalibrated scores"
        )


def calibrate_model(
    model: _PathLike,
    val_cache: _PathLike,
    *,
    method: str = "platt",
    out: _PathLike | None = None,
    min_positives: int = 10,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Path, Calibration, dict[str, Any]]:
    """Fit the calibration of a model file on a prepared validation cache and write it into
    the file (``out``, or in place). The thresholds stay as they are (on the raw scale;
    predictions re-express them); the prior shift of the file's earlier calibration, if
    any, is kept (the training labels it came from are not in the file). Returns the path
    written, the calibration and its :func:`calibration_table` on the validation images
    (a fit, not a test)."""
    from cxr.cache import PreparedCache
    from cxr.inference import Predictor
    from cxr.modelfile import with_calibration

    predictor = Predictor(model, device=device, batch_size=batch_size, calibrated=False)
    if predictor.backend.name != "torch":
        raise ValueError(
            f"calibrate the .safetensors model file, then export it again ({model} is "
            f"a {predictor.backend.name} model)"
        )
    cache = PreparedCache(Path(val_cache))
    raw = predictor.predict_cache(cache, progress=progress)
    names = list(predictor.labels)
    have = cache.table.pathologies
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the cache {cache.path} lacks the model's label(s) {missing}")
    labels = cache.table.labels[:, [have.index(n) for n in names]]
    earlier = predictor.backend.calibration
    calibration = fit_calibration(
        labels,
        raw,
        names,
        method=method,
        min_positives=min_positives,
        source=str(Path(cache.path).resolve()),
        shift=None if earlier is None else earlier.shift,
    )
    written = with_calibration(model, calibration, out)
    table = calibration_table(labels, raw, calibration.apply(raw, names), names, calibration)
    return written, calibration, table


def _f(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def calibration_lines(table: dict[str, Any]) -> list[str]:
    """:func:`calibration_table` as text lines (``cxr evaluate``'s output)."""
    o = table["overall"]
    lines = [
        f"calibration ({table['method']}, fitted on {table['source'] or 'validation data'}): "
        f"ECE {_f(o['ece_raw'])} raw -> {_f(o['ece'])} calibrated, Brier "
        f"{_f(o['brier_raw'])} -> {_f(o['brier'])} (pooled over labels)",
        f"  {'label':<20} {'ECE raw':>8} {'ECE cal':>8} {'Brier raw':>9} {'Brier cal':>9}  map",
    ]
    for name, r in table["per_label"].items():
        lines.append(
            f"  {name:<20} {_f(r['ece_raw']):>8} {_f(r['ece']):>8} {_f(r['brier_raw']):>9} "
            f"{_f(r['brier']):>9}  {r['map']}"
        )
    lines += [f"  note: {n}" for n in table.get("notes", [])]
    return lines


def calibration_markdown(table: dict[str, Any]) -> list[str]:
    """:func:`calibration_table` as a Markdown section."""
    o = table["overall"]
    lines = [
        "## Calibration",
        "",
        f"Probabilities calibrated with **{table['method']}**, fitted on "
        f"{table['source'] or 'validation data'} (never on these images). Thresholds are on "
        "the calibrated scale and make the same decisions as on the raw scores.",
        "",
        "| label | ECE raw | ECE calibrated | Brier raw | Brier calibrated | map |",
        "|---|---|---|---|---|---|",
        f"| **all (pooled)** | {_f(o['ece_raw'])} | {_f(o['ece'])} | {_f(o['brier_raw'])} "
        f"| {_f(o['brier'])} | |",
    ]
    for name, r in table["per_label"].items():
        lines.append(
            f"| {name} | {_f(r['ece_raw'])} | {_f(r['ece'])} | {_f(r['brier_raw'])} "
            f"| {_f(r['brier'])} | {r['map']} |"
        )
    lines += [""] + [f"- {n}" for n in table.get("notes", [])] + [""]
    return lines
