"""What a training run leaves: :class:`TrainResult`, and the lines that tell a user about a
finished run (:func:`run_summary`) or an interrupted one (:func:`interrupted_message`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.training.config import TrainConfig

__all__ = ["TrainResult", "interrupted_message", "run_summary"]


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced: the best validation macro AUC, its
    epoch (0-based), the epochs run, and the ``history.csv`` rows."""

    run_dir: Path
    best_auc: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_model(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def last_model(self) -> Path:
        return self.run_dir / "last.safetensors"


def run_summary(result: TrainResult) -> str:
    """A few lines about a finished run, for the command line."""
    last_row = result.history[-1] if result.history else {}
    if "cv_macro_auc" in last_row:  # the probe recipe: one fit, no epochs
        return "\n".join(
            [
                f"run folder: {result.run_dir}",
                f"probe: cross-validated macro AUC on the training set "
                f"{last_row['cv_macro_auc']:.4f}, validation macro AUC {result.best_auc:.4f}",
                f"model: {result.best_model}",
            ]
        )
    lines = [
        f"run folder: {result.run_dir}",
        f"epochs run: {result.epochs_run}; best validation macro AUC "
        f"{result.best_auc:.4f} at epoch {result.best_epoch + 1}",
        f"models: {result.best_model} (best), {result.last_model} (last)",
    ]
    if result.history:
        last = result.history[-1]
        steady = last.get("images_per_second_steady", last["images_per_second"])
        lines.append(
            f"training throughput (last epoch): {steady:.0f} images/s in steady state, "
            f"{last['images_per_second']:.0f} with the warm-up of "
            f"{last.get('warmup_seconds', 0.0):.1f} s"
        )
    return "\n".join(lines)


def interrupted_message(run_dir: Path, config: TrainConfig, history: list[dict[str, Any]]) -> str:
    """What an interrupted run kept and the command that continues it."""
    if not (run_dir / "state.pt").is_file():
        return (
            f"interrupted before the first epoch ended: nothing was saved in {run_dir}; "
            "run the same command again to start over"
        )
    done = len(history)
    best = max(history, key=lambda r: r["val_macro_auc"]) if history else None
    kept = f"epochs 1-{done} of {config.epochs} are saved in {run_dir}"
    if best is not None:
        kept += (
            f" (best model {run_dir / 'best.safetensors'}: validation macro AUC "
            f"{best['val_macro_auc']:.4f} at epoch {int(best['epoch'])}, with thresholds)"
        )
    return f"interrupted; {kept}. Continue with: cxr train --resume {shlex.quote(str(run_dir))}"
