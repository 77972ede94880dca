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
import pickle
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxr import __version__
from cxr.cache import PreparedCache
from cxr.preprocessing import Preprocessing
from cxr.training import distributed as dd
from cxr.training.callbacks import RunStart, TrainingCallback, as_callbacks
from cxr.training.config import TrainConfig, TrainError
from cxr.training.engine import Engine
from cxr.training.loader import CacheBatches
from cxr.training.records import STATE_VERSION, epoch_line, history_row, save_epoch


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced."""

    run_dir: Path
    best_auc: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)

    @property
    def best_model(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def last_model(self) -> Path:
        return self.run_dir / "last.safetensors"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str(err)`` says what was saved and how to continue."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir

    def __str__(self) -> str:
        return str(self.args[0])


#: A :class:`~cxr.training.callbacks.TrainingCallback`, or a function ``fn(event, info)``.
Callback = TrainingCallback | Callable[[str, Any], None]


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
    """
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
    train_c, val_c = _open(train_cache), _open(val_cache)
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
    for name in ("config.yaml", "run.json", "state.pt"):
        if not (run_dir / name).is_file():
            raise TrainError(
                f"cannot resume {run_dir}: it has no {name} "
                "(a run saves state.pt after its first epoch)"
            )
    config = TrainConfig.load(run_dir / "config.yaml")
    meta = json.loads((run_dir / "run.json").read_text())
    info = dd.setup(config.device)
    try:
        state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainError(
            f"{run_dir / 'state.pt'} holds pickled objects other than tensors and plain values; "
            "cxr never unpickles code, so it cannot resume from it; start a new run"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise TrainError(
            f"{run_dir / 'state.pt'} cannot be read ({type(err).__name__}); start a new run"
        ) from None
    if state.get("version") != STATE_VERSION:
        raise TrainError(
            f"{run_dir / 'state.pt'} was written by another cxr version; start a new run"
        )
    if int(state["world_size"]) != info.world_size:
        raise TrainError(
            f"{run_dir} was trained with {state['world_size']} processes; resume it "
            f"with the same number (now {info.world_size})"
        )
    train_c, val_c = _open(meta["train_cache"]), _open(meta["val_cache"])
    return _run(config, train_c, val_c, run_dir, info, state, progress, echo, callbacks, threads)


def _open(cache: str | Path | PreparedCache) -> PreparedCache:
    return cache if isinstance(cache, PreparedCache) else PreparedCache(cache)


def _label_index(config: TrainConfig, train_c: PreparedCache, val_c: PreparedCache):
    names = tuple(config.labels or train_c.table.pathologies)
    index = {}
    for which, cache in (("training", train_c), ("validation", val_c)):
        have = cache.table.pathologies
        missing = [n for n in names if n not in have]
        if missing:
            raise TrainError(
                f"the {which} cache {cache.path} lacks label(s) {missing}; it has {list(have)}"
            )
        index[which] = [have.index(n) for n in names]
    if train_c.size != val_c.size:
        raise TrainError(
            f"the training cache is {train_c.size}px but the validation cache "
            f"is {val_c.size}px; prepare both at the same --size"
        )
    return names, index["training"], index["validation"]


def _default_callbacks(callbacks: Sequence[Callback]) -> list[TrainingCallback]:
    from cxr.tracking.tensorboard import TensorBoardCallback, tensorboard_available

    out = as_callbacks(callbacks)
    if tensorboard_available() and not any(isinstance(c, TensorBoardCallback) for c in out):
        out.append(TensorBoardCallback())
    return out


def _run(
    config, train_c, val_c, run_dir, info, state, progress, echo, callbacks, threads=None
) -> TrainResult:
    callbacks = _default_callbacks(callbacks)
    names, train_index, val_index = _label_index(config, train_c, val_c)
    torch.manual_seed(config.seed)
    if config.deterministic_on(info.device.type):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    pin = info.device.type == "cuda"
    train_b = CacheBatches(
        train_c,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
        drop_last=True,
        label_index=train_index,
        pin_memory=pin,
        prefetch=2 * config.loader_threads,
    )
    val_b = CacheBatches(
        val_c,
        config.val_batch_size,
        shuffle=False,
        rank=info.rank,
        world_size=info.world_size,
        label_index=val_index,
        pin_memory=pin,
    )
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
        _resume_threads(int(state.get("cpu_threads", 0)), threads, info, echo)
    if info.is_main:
        echo(_plan_line(config, info, names, train_c, val_c, run_dir, start))
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
        raise TrainingInterrupted(_interrupted(run_dir, config, history), run_dir) from None
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


def _calibrate(config: TrainConfig, val_labels, probs, names, val_b: CacheBatches, echo):
    """The calibration of this epoch's model, fitted on its validation predictions (None
    when ``config.calibration`` is "none" or the validation set cannot support one)."""
    if config.calibration == "none":
        return None
    from cxr.calibration import fit_calibration

    try:
        return fit_calibration(
            val_labels,
            probs,
            names,
            method=config.calibration,
            source=str(val_b.cache.path.resolve()),
        )
    except ValueError as err:
        echo(f"no calibration: {err}")
        return None


def _resume_threads(saved: int, asked: int | None, info: dd.Dist, echo) -> None:
    """CPU kernels sum in an order that depends on the thread count: by default use the
    run's own, so that the resumed run ends exactly where an uninterrupted one would."""
    if info.device.type != "cpu" or not saved:
        return
    if asked is not None:
        torch.set_num_threads(int(asked))
        if int(asked) != saved and info.is_main:
            echo(
                f"using {asked} CPU threads as asked; the run used {saved}, so from here its "
                "numbers may differ in the last digits from an uninterrupted run"
            )
    elif saved != torch.get_num_threads():
        torch.set_num_threads(saved)
        if info.is_main:
            echo(f"using {saved} CPU threads, as the run did before")


def _interrupted(run_dir: Path, config: TrainConfig, history: list[dict]) -> str:
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
                calibration = _calibrate(config, val_labels, probs, names, val_b, echo)
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


def _plan_line(
    config: TrainConfig,
    info: dd.Dist,
    names: Sequence[str],
    train_c: PreparedCache,
    val_c: PreparedCache,
    run_dir: Path,
    start: int,
) -> str:
    """What the run is about to do, printed before its first step."""
    where = str(info.device)
    if info.device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    if info.enabled:
        where += f", {info.world_size} processes"
    weights = config.pretrained or "none (random initialisation)"
    return (
        f"training {config.backbone} on {where}: {len(train_c)} training and {len(val_c)} "
        f"validation images at {train_c.size} px ({train_c.fit}), {len(names)} labels "
        f"({', '.join(names)}); pretrained weights: {weights}; epochs {start + 1} to "
        f"{config.epochs} into {run_dir}"
    )


def run_summary(result: TrainResult) -> str:
    """A few lines about a finished run, for the command line."""
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
