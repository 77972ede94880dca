"""TensorBoard logging of a training run, as a training callback.

On by default when TensorBoard is installed (:func:`cxr.training.train` adds it); the
scalars go to the run's ``tensorboard/`` folder. :mod:`cxr.tracking` re-exports it beside
the MLflow callback. TensorBoard is imported when a run starts, not with this module.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cxr.training.callbacks import RunStart, TrainingCallback

__all__ = ["TensorBoardCallback", "tensorboard_available"]


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardCallback(TrainingCallback):
    """Writes every numeric value of each epoch's history row as a scalar (step = epoch).

    Args:
        log_dir: the event folder; default: ``<run folder>/tensorboard``.

    Only rank 0 of a DDP job writes.
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.writer: Any = None

    def on_start(self, run: RunStart) -> None:
        if not run.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir or run.run_dir / "tensorboard"))

    def on_epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def on_end(self, result: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
