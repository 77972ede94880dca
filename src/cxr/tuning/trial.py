"""One trial of a study: a normal training run, observed for pruning and NaN.

:func:`run_trial` builds the trial's :class:`~cxr.training.TrainConfig` from the base
config and the space, trains it in ``trials/trial-NNNN/`` (a normal run folder: ``cxr
evaluate`` and ``cxr predict`` work on its ``best.safetensors``) and tells the study how it
ended:

- COMPLETE with the run's best validation macro AUC;
- PRUNED when the pruner stopped it (:class:`PruningCallback` reports the AUC of every
  epoch and raises :class:`optuna.TrialPruned` inside the training loop);
- FAIL with the user attribute ``fail_reason`` (one line) for any error of training: a
  refused value, NaN loss or AUC, out of memory. The study goes on.

A cross-validated trial (a :class:`~cxr.tuning.crossval.CvPlan`) trains once per fold in
``trials/trial-NNNN/fold-I/`` (each a normal run folder) and is scored, reported and pruned
fold by fold (:mod:`cxr.tuning.crossval`); its fail_reason names the fold that failed.

Ctrl-C is not caught: the trial stays RUNNING and the next run of the study marks it
interrupted and tries its values again (:mod:`cxr.tuning.study`).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cxr.errors import CxrError
from cxr.training.callbacks import TrainingCallback
from cxr.tuning.crossval import CvPlan, fold_stats
from cxr.tuning.space import SearchSpace

if TYPE_CHECKING:
    from cxr.cache import PreparedCache
    from cxr.training import TrainConfig

__all__ = ["PruningCallback", "TrialFailed", "fold_dir", "one_line", "run_trial", "trial_dir"]

#: Characters of an error message kept as a trial's fail_reason.
REASON_CHARS = 300


class TrialFailed(CxrError, RuntimeError):
    """A trial cannot give a value (NaN loss or AUC: settings that do not learn); the
    message says why. Recorded as the trial's failure, without a traceback."""


def one_line(error: BaseException) -> str:
    """An error as one line: its type and message, whitespace folded, shortened."""
    text = " ".join(str(error).split())
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


def trial_dir(trials_dir: Path, number: int) -> Path:
    """The run folder of trial ``number``: ``trials_dir/trial-0007``."""
    return trials_dir / f"trial-{number:04d}"


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The run folder of fold ``fold`` (1-based) of a cross-validated trial."""
    return run_dir / f"fold-{fold}"


class PruningCallback(TrainingCallback):
    """Reports each epoch's validation macro AUC to ``trial`` (step = epoch, 1-based) and
    stops the run when the pruner says so (:class:`optuna.TrialPruned`) or when the loss or
    the AUC is NaN (:class:`TrialFailed`; NaN values are never reported).

    With ``report=False`` (a fold of a cross-validated trial, reported per fold) it only
    stops the run on NaN."""

    def __init__(self, trial: optuna.Trial, report: bool = True) -> None:
        self.trial = trial
        self.report = report
        self.epochs = 0

    def on_epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        self.epochs = epoch
        loss = float(row.get("train_loss", math.nan))
        auc = float(row.get("val_macro_auc", math.nan))
        if not math.isfinite(loss):
            raise TrialFailed(f"the training loss is {loss} at epoch {epoch}")
        if not math.isfinite(auc):
            raise TrialFailed(f"the validation macro AUC is NaN at epoch {epoch}")
        if not self.report:
            return
        self.trial.report(auc, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (validation macro AUC {auc:.4f})")


def _log_to(path: Path) -> Callable[[str], None]:
    """An echo that appends the run's lines to ``path`` (the trial's own log)."""

    def echo(line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")

    return echo


def _free_memory() -> None:
    """Give back what a failed run held (an out-of-memory trial must not fail the next)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 (best effort only)
        pass


def _train_folds(
    trial: optuna.Trial,
    config: TrainConfig,
    plan: CvPlan,
    run_dir: Path,
    progress: bool,
    callbacks_for: Callable[[int], Sequence[TrainingCallback]],
) -> float:
    """Train ``config`` once per fold of ``plan``; report the running mean of the held-out
    macro AUCs after each fold (step = fold, 1-based) and prune between folds; returns the
    mean over all folds. Records ``fold_aucs``, ``fold_auc_sd`` and ``epochs`` (trained,
    all folds) as the trial's user attributes after every fold."""
    from cxr.training import train

    echo = _log_to(run_dir / "tune.log")
    aucs: list[float] = []
    epochs = 0
    mean = math.nan
    for fold in plan.folds:
        echo(
            f"fold {fold.number} of {plan.k}: training on {len(fold.train)} images, scoring on "
            f"the {fold.images} held-out images of {fold.patients} patients"
        )
        result = train(
            config,
            fold.train,
            fold.heldout,
            fold_dir(run_dir, fold.number),
            overwrite=True,
            progress=progress,
            echo=echo,
            callbacks=[PruningCallback(trial, report=False), *callbacks_for(fold.number)],
        )
        if not math.isfinite(result.best_auc):
            raise TrialFailed(
                "no epoch gave a macro AUC on the held-out images (does any label have both "
                "positives and negatives there?)"
            )
        aucs.append(float(result.best_auc))
        epochs += int(result.epochs_run)
        mean, sd = fold_stats(aucs)
        trial.set_user_attr("fold_aucs", list(aucs))
        trial.set_user_attr("fold_auc_sd", sd)
        trial.set_user_attr("epochs", epochs)
        trial.report(mean, step=fold.number)
        if fold.number < plan.k and trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after fold {fold.number} of {plan.k} (mean held-out macro AUC {mean:.4f})"
            )
    return mean


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    base: TrainConfig,
    train_cache: PreparedCache | Path | None,
    val_cache: PreparedCache | Path | None,
    trials_dir: Path,
    *,
    progress: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
    cv: CvPlan | None = None,
    fold_callbacks: Callable[[int], Sequence[TrainingCallback]] | None = None,
) -> FrozenTrial:
    """Train ``trial``'s settings and tell ``study`` how it ended (see the module docstring).

    Args:
        train_cache, val_cache: the caches of a plain trial (unused with ``cv``).
        callbacks: more observers of the training run (of every fold's run with ``cv``,
            unless ``fold_callbacks`` gives each fold its own: fold number -> callbacks).
        cv: score the trial by cross-validation over these folds.

    Returns the finished trial, with user attributes ``run_dir``, ``config`` (the full
    TrainConfig as a dict), ``seconds`` and, for a failure, ``fail_reason``; with ``cv``
    also ``cv_folds``, ``fold_aucs``, ``fold_auc_sd`` and ``epochs``.
    """
    from cxr.training import train

    run_dir = trial_dir(trials_dir, trial.number)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    if cv is not None:
        trial.set_user_attr("cv_folds", cv.k)
    started = time.monotonic()
    value: float | None = None
    reason: str | None = None
    try:
        config = space.suggest(trial, base)
        trial.set_user_attr("config", config.to_dict())
        if cv is not None:
            value = _train_folds(
                trial, config, cv, run_dir, progress, fold_callbacks or (lambda _: callbacks)
            )
        else:
            if train_cache is None or val_cache is None:
                raise TrialFailed("a trial without folds needs a training and a validation cache")
            result = train(
                config,
                train_cache,
                val_cache,
                run_dir,
                overwrite=True,  # a trial number is issued once: a folder there is a leftover
                progress=progress,
                echo=_log_to(run_dir / "tune.log"),
                callbacks=[PruningCallback(trial), *callbacks],
            )
            if not math.isfinite(result.best_auc):
                raise TrialFailed("no epoch gave a validation macro AUC")
            value = float(result.best_auc)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except CxrError as err:  # bad input for this trial (a setting, a file): its one line
        state, reason = TrialState.FAIL, one_line(err)
        _free_memory()
    except Exception as err:  # noqa: BLE001 (any failure of one trial; the study goes on)
        # not a user error: the same one line, and the traceback in the trial's log
        state, reason = TrialState.FAIL, one_line(err)
        with contextlib.suppress(OSError):  # a trial folder that cannot be written
            _log_to(run_dir / "tune.log")(traceback.format_exc().rstrip())
        _free_memory()
    trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    if reason is not None:
        if cv is not None:
            done = len(trial.user_attrs.get("fold_aucs") or [])
            reason = f"fold {done + 1} of {cv.k}: {reason}"[:REASON_CHARS]
        trial.set_user_attr("fail_reason", reason)
    return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
