"""The training loop: two phases, validation AUC, best and last model, resume, DDP.

:func:`train` starts a run in a new run folder; :func:`resume` continues one after a
crash or a kill from the last completed epoch, with the optimiser, schedule, scaler, EMA
and random-number states, so that the resumed run ends where an uninterrupted one would.

The run folder::

    config.yaml        the TrainConfig (written before the first step)
    run.json           the caches, labels and model spec of the run
    history.csv        one row per epoch: phase, lr, losses, val macro AUC, per-label AUC, img/s
    state.pt           everything needed to resume (tensors and plain values only)
    last.safetensors   the model after the latest epoch
    best.safetensors   the model of the best validation macro AUC, with per-label
                       thresholds chosen on the validation set (Youden's J)
    tensorboard/       the same metrics, when TensorBoard is installed

The run is observed through callbacks (:mod:`cxr.training.callbacks`): ``start``, ``step``,
``epoch`` and ``end`` events; TensorBoard logging is one of them.

Ctrl-C stops the run at once (the epoch in progress is dropped; every completed epoch is
already saved, the best model with its thresholds) and raises :class:`TrainingInterrupted`,
whose message is the exact command that continues the run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cxr import __version__
from cxr.prepared_cache import PreparedCache
from cxr.preprocessing import Preprocessing
from cxr.training import distributed as dd
from cxr.training.callbacks import RunStart
from cxr.training.config import TrainConfig, TrainError
from cxr.training.engine import Engine
from cxr.training.records import epoch_calibration, epoch_line, history_row, save_epoch
from cxr.training.results import TrainResult, interrupted_message, run_summary
from cxr.training.startup import (
    Callback,
    cache_batches,
    default_callbacks,
    label_index,
    load_state,
    open_cache,
    plan_line,
    resume_threads,
)

__all__ = ["Callback", "TrainResult", "TrainingInterrupted", "resume", "run_summary", "train"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str(err)`` says what was saved and how to continue."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir

    def __str__(self) -> str:
        return str(self.args[0])


def train(
    config: TrainConfig,
    train_cache: str | Path | PreparedCache,
    val_cache: str | Path | PreparedCache,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a new model on a prepared cache; validate on another each epoch.

    Args:
        config: every setting (see :class:`TrainConfig`).
        train_cache, val_cache: prepared caches (``cxr prepare``) or their folders; both
            must have the same image size and hold the labels the model learns.
        run_dir: new folder for the run; an existing run there is an error (use
            :func:`resume`) unless ``overwrite``.
        progress: show a progress bar (rank 0 only).
        callbacks: observers of the run's events (:mod:`cxr.training.callbacks`); a
            TensorBoard callback is added when TensorBoard is installed.

    ``config.recipe == "probe"`` fits a linear probe on frozen features instead
    (:func:`cxr.training.probe.train_probe`).
    """
    config, _ = _decided(config, train_cache, echo)
    if config.recipe == "probe":
        from cxr.training.probe import train_probe

        return train_probe(
            config, train_cache, val_cache, run_dir,
            overwrite=overwrite, progress=progress, echo=echo, callbacks=callbacks,
        )  # fmt: skip
    run_dir = Path(run_dir)
    info = dd.setup(config.device)
    if info.is_main:
        if (run_dir / "state.pt").exists() and not overwrite:
            raise TrainError(
                f"{run_dir} already holds a run; continue it with "
                f"`cxr train --resume {run_dir}` or choose another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("state.pt", "history.csv", "best.safetensors", "last.safetensors"):
            (run_dir / stale).unlink(missing_ok=True)
    train_c, val_c = open_cache(train_cache), open_cache(val_cache)
    if info.is_main:
        config.save(run_dir / "config.yaml")
        (run_dir / "run.json").write_text(
            json.dumps(
                {
                    "train_cache": str(train_c.path.resolve()),
                    "val_cache": str(val_c.path.resolve()),
                    "cxr_version": __version__,
                    "world_size": info.world_size,
                },
                indent=2,
            )
        )
    return _run(config, train_c, val_c, run_dir, info, None, progress, echo, callbacks)


def _decided(
    config: TrainConfig, train_cache: str | Path | PreparedCache, echo: Callable[[str], None]
) -> tuple[TrainConfig, str | None]:
    """``config`` with its "auto" settings decided by the training set's size (said once,
    by the main process)."""
    from cxr.training.defaults import resolve_auto

    decided, line = resolve_auto(config, len(open_cache(train_cache)))
    if line and int(os.environ.get("RANK", "0")) == 0:
        echo(line)
    return decided, line


def resume(
    run_dir: str | Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
    threads: int | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last completed epoch.

    Args:
        threads: CPU threads to use. None: the run's own count, so that a CPU run ends
            exactly where an uninterrupted one would (sums depend on the thread count);
            another count is used as asked, and said to differ.
    """
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise TrainError(f"threads must be a positive number of CPU threads, got {threads!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"cannot resume {run_dir}: no such run folder")
    run_json = run_dir / "run.json"
    if run_json.is_file() and json.loads(run_json.read_text()).get("recipe") == "probe":
        raise TrainError(
            f"{run_dir} is a probe run: it is fitted in one pass and has nothing to resume; "
            "run the same cxr train command again with --overwrite to refit it"
        )
    for name in ("config.yaml", "run.json", "state.pt"):
        if not (run_dir / name).is_file():
            raise TrainError(
                f"cannot resume {run_dir}: it has no {name} "
                "(a run saves state.pt after its first epoch)"
            )
    config = TrainConfig.load(run_dir / "config.yaml")
    meta = json.loads((run_dir / "run.json").read_text())
    info = dd.setup(config.device)
    state = load_state(run_dir, info)
    train_c, val_c = open_cache(meta["train_cache"]), open_cache(meta["val_cache"])
    return _run(config, train_c, val_c, run_dir, info, state, progress, echo, callbacks, threads)


def _run(
    config, train_c, val_c, run_dir, info, state, progress, echo, callbacks, threads=None
) -> TrainResult:
    callbacks = default_callbacks(callbacks)
    names, train_index, val_index = label_index(config, train_c, val_c)
    torch.manual_seed(config.seed)
    if config.deterministic_on(info.device.type):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    train_b = cache_batches(config, train_c, info, train_index, training=True)
    val_b = cache_batches(config, val_c, info, val_index, training=False)
    if len(train_b) == 0:
        raise TrainError(
            f"the training cache {train_c.path} has {len(train_c)} images, fewer "
            f"than one batch of {config.batch_size} per process; lower --batch-size"
        )
    steps_per_epoch = math.ceil(len(train_b) / config.accumulate)
    sizing = config.sizing_note(steps_per_epoch)
    config = config.sized(steps_per_epoch)  # the phases' epochs, decided by the data
    engine = Engine(
        config,
        names,
        Preprocessing(size=train_c.size, fit=train_c.fit),
        train_c.table.labels[:, train_index],
        info,
        steps_per_epoch=steps_per_epoch,
    )
    val_labels = val_c.table.labels[:, val_index]
    history: list[dict] = []
    best_auc, best_epoch, bad_epochs, start = -math.inf, -1, 0, 0
    if state is not None:
        engine.load_state_dict(state)
        history, start = list(state["history"]), int(state["next_epoch"])
        best_auc, best_epoch = float(state["best_auc"]), int(state["best_epoch"])
        bad_epochs = int(state["bad_epochs"])
        if info.is_main:
            echo(f"resuming {run_dir} at epoch {start + 1} of {config.epochs}")
        resume_threads(int(state.get("cpu_threads", 0)), threads, info, echo)
    if info.is_main:
        echo(plan_line(config, info, names, train_c, val_c, run_dir, start))
        if sizing:
            echo(sizing)
    try:
        result = _observed(
            config, engine, train_b, val_b, val_labels, names, run_dir, info, progress, echo,
            callbacks, history, start, best_auc, best_epoch, bad_epochs, train_c, val_c,
        )  # fmt: skip
    except BaseException as err:
        for cb in callbacks:
            cb.on_error(err)
        raise
    dd.teardown(info)
    return result


def _observed(
    config, engine, train_b, val_b, val_labels, names, run_dir, info, progress, echo,
    callbacks, history, start, best_auc, best_epoch, bad_epochs, train_c, val_c,
) -> TrainResult:  # fmt: skip
    """The run from its start event to its end event (the caller reports errors)."""
    for cb in callbacks:
        cb.on_start(
            RunStart(
                run_dir,
                config,
                tuple(names),
                len(train_c),
                len(val_c),
                str(info.device),
                start,
                info.is_main,
                train_c.path,
                val_c.path,
            )
        )
    epoch = start
    try:
        best_auc, best_epoch = _epochs(
            config, engine, train_b, val_b, val_labels, names, run_dir, info, progress, echo,
            callbacks, history, epoch, best_auc, best_epoch, bad_epochs,
        )  # fmt: skip
    except KeyboardInterrupt:
        dd.teardown(info)
        raise TrainingInterrupted(interrupted_message(run_dir, config, history), run_dir) from None
    if best_epoch >= 0 and info.is_main:
        echo(
            f"best model: {run_dir / 'best.safetensors'} (epoch {best_epoch + 1}; thresholds "
            "chosen and probabilities calibrated on validation)"
        )
        from cxr.ood import fit_model_gate

        try:
            _, gate = fit_model_gate(
                run_dir / "best.safetensors", train_c, val_c, device=str(info.device)
            )
            echo(f"not-a-chest-X-ray check stored in the best model: {gate.describe()}")
        except ValueError as err:
            echo(f"no not-a-chest-X-ray check: {err}")
    result = TrainResult(run_dir, float(best_auc), best_epoch, len(history), history)
    for cb in callbacks:
        cb.on_end(result)
    return result


def _epochs(
    config, engine, train_b, val_b, val_labels, names, run_dir, info, progress, echo,
    callbacks, history, epoch, best_auc, best_epoch, bad_epochs,
) -> tuple[float, int]:  # fmt: skip
    """Run epochs from ``epoch`` to the end (or an early stop), saving each one; returns
    the best validation macro AUC and its epoch (``history`` grows in place)."""
    from cxr.evaluation.thresholds import choose_thresholds

    while epoch < config.epochs:
        phase = 1 if epoch < config.phase1_epochs else 2
        engine.enter_phase(phase)
        train_b.set_epoch(epoch)
        stats = engine.train_epoch(train_b, epoch, progress and info.is_main, callbacks)
        probs, val_loss = engine.predict(val_b, with_loss_on=val_labels)
        row = history_row(epoch, phase, stats, val_loss, val_labels, probs, names)
        improved = row["val_macro_auc"] > best_auc
        if improved:
            best_auc, best_epoch, bad_epochs = row["val_macro_auc"], epoch, 0
        else:
            bad_epochs += 1
        assert engine.schedule is not None  # set by enter_phase
        engine.schedule.epoch_end(row["val_macro_auc"])
        history.append(row)
        next_epoch = epoch + 1
        stop = config.early_stopping and bad_epochs >= config.early_stopping
        if stop and phase == 1 and config.phase2_epochs:
            next_epoch, bad_epochs, stop = config.phase1_epochs, 0, False
            row["note"] = "early stop of phase 1"
        elif stop:
            row["note"] = f"early stop: no better val AUC for {bad_epochs} epochs"
        if info.is_main:
            chosen = calibration = None
            if improved:
                chosen = dict(choose_thresholds(val_labels, probs, names, source="validation"))
                train_labels = train_b.cache.table.labels[:, train_b.label_index]
                calibration = epoch_calibration(
                    config, val_labels, probs, names, val_b, echo, train_labels
                )
            save_epoch(
                run_dir,
                engine,
                row,
                history,
                improved,
                dict(
                    next_epoch=config.epochs if stop else next_epoch,
                    best_auc=best_auc,
                    best_epoch=best_epoch,
                    bad_epochs=bad_epochs,
                    world_size=info.world_size,
                    cpu_threads=torch.get_num_threads(),
                ),
                chosen,
                calibration,
            )
            echo(epoch_line(row, config.epochs, best_auc))
        for cb in callbacks:
            cb.on_epoch(row)
        if stop:
            break
        epoch = next_epoch
    return best_auc, best_epoch
