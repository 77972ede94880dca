"""Observing a training run: callback objects that receive its events.

The loop delivers four events to every callback, in this order:

- ``on_start(run)``: once, before the first step (also when a run resumes), with a
  :class:`RunStart` record (run folder, settings, labels, images per split, device);
- ``on_step(step)``: after every micro-batch, ``{"epoch": e, "step": i}`` (0-based);
- ``on_epoch(row)``: after every epoch is validated and saved, with its ``history.csv`` row
  (epoch, phase, lr, losses, validation macro and per-label AUC, images/s, seconds);
- ``on_end(result)``: once, after the last epoch, with the :class:`~cxr.training.TrainResult`;
- ``on_error(error)``: instead of ``on_end`` when the run stops with an exception (a bad
  value, NaN loss, out of memory, Ctrl-C as :class:`~cxr.training.TrainingInterrupted`, or
  a callback's own exception such as a pruned trial); the exception is raised again after.

Subclass :class:`TrainingCallback` and override what you need; a plain function
``fn(event, info)`` is accepted too (``event`` in ``"start"``, ``"step"``, ``"epoch"``,
``"end"``, ``"error"``). Callbacks run on every process of a DDP job;
``RunStart.is_main`` says whether this one writes files. TensorBoard logging is one such callback
(:mod:`cxr.training.tensorboard`). A callback that raises stops the run: what the last
completed epoch saved is kept, and ``cxr train --resume`` continues from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.training.config import TrainConfig

__all__ = ["FunctionCallback", "RunStart", "TrainingCallback", "as_callbacks"]


@dataclass(frozen=True)
class RunStart:
    """What a run is about to do.

    Attributes:
        run_dir: the run folder.
        config: every setting.
        labels: the L labels learned, in output order.
        train_images, val_images: images in the training and validation caches.
        device: the torch device name of this process.
        start_epoch: 0 for a new run, else the epoch a resumed run continues at (0-based).
        is_main: whether this process is rank 0 (the one that writes files).
        train_cache, val_cache: the caches' folders.
    """

    run_dir: Path
    config: TrainConfig
    labels: tuple[str, ...]
    train_images: int
    val_images: int
    device: str
    start_epoch: int = 0
    is_main: bool = True
    train_cache: Path | None = None
    val_cache: Path | None = None


class TrainingCallback:
    """Base class: every event does nothing until overridden."""

    def on_start(self, run: RunStart) -> None:
        """Before the first step."""

    def on_step(self, step: dict[str, int]) -> None:
        """After each micro-batch: ``{"epoch": e, "step": i}``."""

    def on_epoch(self, row: dict[str, Any]) -> None:
        """After each epoch is validated and saved: its history row."""

    def on_end(self, result: Any) -> None:
        """After the last epoch: the :class:`~cxr.training.TrainResult`."""

    def on_error(self, error: BaseException) -> None:
        """The run stopped with ``error`` (raised again after every callback saw it)."""


class FunctionCallback(TrainingCallback):
    """A function ``fn(event, info)`` as a callback."""

    def __init__(self, fn: Callable[[str, Any], None]) -> None:
        self.fn = fn

    def on_start(self, run: RunStart) -> None:
        self.fn("start", run)

    def on_step(self, step: dict[str, int]) -> None:
        self.fn("step", step)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.fn("epoch", row)

    def on_end(self, result: Any) -> None:
        self.fn("end", result)

    def on_error(self, error: BaseException) -> None:
        self.fn("error", error)


def as_callbacks(
    items: Iterable[TrainingCallback | Callable[[str, Any], None]],
) -> list[TrainingCallback]:
    """Callback objects from objects and plain functions (wrapped in FunctionCallback)."""
    out: list[TrainingCallback] = []
    for item in items:
        if isinstance(item, TrainingCallback):
            out.append(item)
        elif callable(item):
            out.append(FunctionCallback(item))
        else:
            raise TypeError(
                f"a training callback must be a TrainingCallback or a function "
                f"fn(event, info), got {type(item).__name__}"
            )
    return out
