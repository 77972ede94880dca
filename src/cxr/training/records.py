"""What a training run writes as it goes: history rows, the epoch's files (with the
calibration fitted on its validation predictions), the summary line.

Used by :mod:`cxr.training.loop`; rank 0 writes. Files are replaced atomically (written to
a temporary name, then renamed), so a kill never leaves a half-written ``state.pt`` or
``history.csv``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxr.training.config import TrainConfig
from cxr.training.engine import Engine, EpochStats

if TYPE_CHECKING:
    from cxr.cache.batches import CacheBatches
    from cxr.calibration import Calibration

__all__ = [
    "STATE_VERSION",
    "atomic_torch_save",
    "epoch_calibration",
    "epoch_line",
    "history_row",
    "save_epoch",
    "write_history",
]

#: Version of ``state.pt``: a resume refuses other versions.
STATE_VERSION = 1


def history_row(epoch, phase, stats: EpochStats, val_loss, val_labels, probs, names) -> dict:
    from cxr.evaluation.metrics import roc_auc

    aucs = {}
    for j, name in enumerate(names):
        known = ~np.isnan(val_labels[:, j])
        y = val_labels[known, j]
        aucs[name] = roc_auc(y, probs[known, j]) if 0 < y.sum() < len(y) else float("nan")
    valid = [a for a in aucs.values() if not math.isnan(a)]
    row = {
        "epoch": epoch + 1,
        "phase": phase,
        "lr": stats.lr,
        "train_loss": stats.loss,
        "val_loss": val_loss,
        "val_macro_auc": float(np.mean(valid)) if valid else float("nan"),
        "images_per_second": stats.images_per_second,
        "seconds": stats.seconds,
    }
    row.update({f"val_auc_{n}": a for n, a in aucs.items()})
    # added later: after the per-label columns, so older columns keep their places
    row["images_per_second_steady"] = stats.images_per_second_steady
    row["warmup_seconds"] = stats.warmup_seconds
    return row


def epoch_line(row: dict, epochs: int, best: float) -> str:
    rate = row.get("images_per_second_steady", row["images_per_second"])
    return (
        f"epoch {row['epoch']}/{epochs} (phase {row['phase']}): train loss "
        f"{row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, val macro AUC "
        f"{row['val_macro_auc']:.4f} (best {best:.4f}), {rate:.0f} img/s (steady)"
        + (f" [{row['note']}]" if row.get("note") else "")
    )


def epoch_calibration(
    config: TrainConfig,
    val_labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    val_b: CacheBatches,
    echo: Callable[[str], None],
    train_labels: np.ndarray | None = None,
) -> Calibration | None:
    """The calibration of this epoch's model, fitted on its validation predictions
    (``val_labels``, ``probs``: (N, L)); None when ``config.calibration`` is "none" or the
    validation set cannot support one (said with ``echo``). With ``train_labels`` (N_train,
    L; the labels the loss took its class weights from), the prior shift of
    ``config.loss`` (:func:`cxr.losses.prior_shift`) is undone before the maps and stored."""
    if config.calibration == "none":
        return None
    from cxr.calibration import fit_calibration
    from cxr.losses import prior_shift

    try:
        shift = None if train_labels is None else prior_shift(config.loss, train_labels)
        return fit_calibration(
            val_labels,
            probs,
            names,
            method=config.calibration,
            source=str(val_b.cache.path.resolve()),
            shift=shift,
        )
    except ValueError as err:
        echo(f"no calibration: {err}")
        return None


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_epoch(
    run_dir: Path,
    engine: Engine,
    row: dict,
    history: list[dict],
    improved: bool,
    progress_state: dict,
    thresholds: dict[str, float] | None = None,
    calibration: Any = None,
) -> None:
    """Write last (and, when ``improved``, best, with ``thresholds`` and ``calibration``
    fitted on this epoch's validation predictions) model files, the history and the resume
    state, each atomically: an interrupted run keeps a usable best model."""
    from cxr.modelfile import save_model

    summary = {
        "epoch": row["epoch"],
        "val_macro_auc": row["val_macro_auc"],
        "val_auc": {k[len("val_auc_") :]: v for k, v in row.items() if k.startswith("val_auc_")},
        "config": engine.config.to_dict(),
    }
    model = engine.eval_model()
    save_model(run_dir / "last.safetensors", model, training=summary)
    if improved:
        save_model(run_dir / "best.safetensors", model, thresholds, summary, calibration)
    write_history(run_dir / "history.csv", history)
    state = engine.state_dict()
    state.update(progress_state, version=STATE_VERSION, history=history)
    atomic_torch_save(state, run_dir / "state.pt")


def write_history(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)
