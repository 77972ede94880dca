"""A hyperparameter search over training settings: :func:`tune`.

One study maximises the validation macro AUC with Optuna's TPE sampler. Every trial is a
normal training run (:mod:`cxr.tuning.trial`) of the base config with the trial's values
(:mod:`cxr.tuning.space`), pruned on its per-epoch AUC by Hyperband (default), the median
rule or nothing. With ``folds`` K >= 2 a trial is scored instead by K-fold cross-validation
over the training cache (patient-level folds made once per study, pruned between folds;
VAL_CACHE is not used to choose): :mod:`cxr.tuning.crossval`.

``trials`` is the study's total: trials that ended (complete, pruned, failed) plus those
running in live workers. Running :func:`tune` again continues the study; running it in
several processes or machines at once (one storage: :mod:`cxr.tuning.storage`) searches in
parallel. A worker stops asking when the study has ``trials``; one that loses the race for
the last slot (it finds that many counted trials numbered below its own) gives its trial
back as ``surplus``. Trials of stopped workers are tried again (:mod:`cxr.tuning.workers`).

MLflow (``mlflow=True``): the study is one MLflow run, its id kept in the study so that
every worker and every rerun logs under it; each trial is a child run named
``trial-NNNN``; the study's files are logged to the parent after each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from cxr.split import MAX_FOLDS
from cxr.training.config import TrainConfig
from cxr.tuning import outputs, records
from cxr.tuning.crossval import CvPlan, describe_folds, plan_folds
from cxr.tuning.space import SearchSpace
from cxr.tuning.storage import TuneError, check_base, claim_folder, open_storage, open_study
from cxr.tuning.trial import run_trial
from cxr.tuning.workers import heartbeat, recover_stale, running_here, worker

__all__ = ["PRUNERS", "TuneError", "TuneResult", "tune", "tune_summary"]

PRUNERS = ("hyperband", "median", "none")
_OUTPUTS = (
    outputs.BEST_CONFIG,
    outputs.BEST_TRIAL,
    outputs.TRIALS_CSV,
    outputs.HISTORY_PNG,
    outputs.IMPORTANCES_PNG,
)


@dataclass(frozen=True)
class TuneResult:
    """Where a study stands after :func:`tune`.

    Attributes:
        counts: trials by kind (see :mod:`cxr.tuning.records`).
        best_value: the best validation macro AUC (None before a trial completes), of
            trial ``best_trial``, trained in ``best_run_dir`` with ``best_config``; with
            cross-validation the best mean held-out macro AUC, ``best_run_dir`` holding one
            run folder per fold.
        cv_folds: K of a cross-validated study (0: trials scored on VAL_CACHE).
        fold_sizes: (patients, images) held out by each fold.
        best_fold_aucs, best_fold_auc_sd: the best trial's held-out macro AUC of each fold
            and their standard deviation.
    """

    out_dir: Path
    study_name: str
    storage: str
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_trial: int | None = None
    best_config: TrainConfig | None = None
    best_run_dir: Path | None = None
    cv_folds: int = 0
    fold_sizes: tuple[tuple[int, int], ...] = ()
    best_fold_aucs: tuple[float, ...] = ()
    best_fold_auc_sd: float | None = None

    @property
    def best_config_file(self) -> Path:
        return self.out_dir / outputs.BEST_CONFIG


def _make_pruner(pruner: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")


def _mlflow_parent(
    study: optuna.Study, created: bool, name: str, experiment: str, base: TrainConfig, where: str
) -> str:
    """The study's MLflow run (its id kept in the study), started when missing."""
    from cxr.tracking import start_run

    run_id = study.user_attrs.get("mlflow_run_id")
    deadline = time.monotonic() + (0 if created else 5)  # its creator may be starting it now
    while run_id is None and time.monotonic() < deadline:
        time.sleep(0.25)
        run_id = study.user_attrs.get("mlflow_run_id")
    if run_id is None:
        tags = {"cxr.study": name, "cxr.study_storage": where}
        run_id = start_run(None, experiment, f"study-{name}", params=base.to_dict(), tags=tags)
        study.set_user_attr("mlflow_run_id", run_id)
    return str(run_id)


def tune(
    base_config: TrainConfig,
    train_cache: str | Path,
    val_cache: str | Path | None,
    out_dir: str | Path,
    trials: int,
    *,
    folds: int = 0,
    space: SearchSpace | None = None,
    storage: str | Path | BaseStorage | None = None,
    study_name: str = "cxr",
    timeout: float | None = None,
    pruner: str | optuna.pruners.BasePruner = "hyperband",
    seed: int = 0,
    mlflow: bool = False,
    mlflow_experiment: str = "cxr",
    force_config: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> TuneResult:
    """Search training settings that maximise the validation macro AUC (see the module
    docstring); running it again continues the study.

    Args:
        base_config: the settings every trial starts from.
        train_cache, val_cache: prepared caches (``cxr prepare``); ``val_cache`` is not
            used (and may be None) with ``folds``.
        out_dir: trial run folders (``trials/trial-NNNN``) and the study's files
            (:mod:`cxr.tuning.records`).
        trials: the study's total number of trials.
        folds: 0 or 1: each trial trains on ``train_cache`` and is scored on ``val_cache``;
            K from 2 to 20: scored by K-fold cross-validation over ``train_cache``
            (:mod:`cxr.tuning.crossval`; the folds are seeded with ``seed``). A study
            keeps its folds: continuing it with others is refused.
        space: what to search (default: :meth:`SearchSpace.default`).
        storage: see :func:`cxr.tuning.storage.open_storage` (default: the journal file
            ``out_dir/study.journal``).
        timeout: start no trial after this many seconds (None: no limit).
        pruner: "hyperband", "median", "none" or an Optuna pruner.
        seed: seed of the sampler (trial k draws with seed + k).
        mlflow: log the study as an MLflow run and each trial as a child run.
        force_config: continue a study whose base config differs (later trials use this one).
        progress: show each trial's training progress bar.
    """
    from cxr.cache import PreparedCache

    if isinstance(trials, bool) or int(trials) < 1:
        raise TuneError(f"trials must be at least 1, got {trials!r}")
    if timeout is not None and timeout <= 0:
        raise TuneError(f"timeout must be a positive number of seconds, got {timeout!r}")
    space = space or SearchSpace.default()
    space.check(base_config)
    space, notes = space.without_inert(base_config)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 0 <= folds <= MAX_FOLDS:
        raise TuneError(f"folds must be 0 (score on VAL_CACHE) or 2 to {MAX_FOLDS}, got {folds!r}")
    if val_cache is None and folds < 2:
        raise TuneError("give a validation cache (VAL_CACHE), or score by folds (--folds K)")
    train_c = PreparedCache(train_cache)  # opened once, shared
    val_c = PreparedCache(val_cache) if val_cache is not None and folds < 2 else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store, where = open_storage(storage, out_dir)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cxr prints its own trial lines
    try:
        study, created = open_study(store, study_name, where, _make_pruner(pruner))
        claim_folder(out_dir, study_name, where)
        cv = plan_folds(study, train_c, folds, seed, out_dir, study_name, echo)
        check_base(study, base_config, study_name, out_dir, force_config, echo)
        parent = None
        if mlflow:
            parent = _mlflow_parent(
                study, created, study_name, mlflow_experiment, base_config, where
            )
        for note in notes:
            echo(note)
        search = _Search(
            study, store, where, study_name, base_config, space, (train_c, val_c), out_dir,
            int(trials), seed, parent, mlflow_experiment, echo, progress, cv,
        )  # fmt: skip
        return search.run(timeout)
    finally:
        optuna.logging.set_verbosity(verbosity)


@dataclass
class _Search:
    """One worker's part of a study: ask, train and tell until the study is full."""

    study: optuna.Study
    store: BaseStorage
    where: str
    name: str
    base: TrainConfig
    space: SearchSpace
    caches: tuple[Any, Any]
    out_dir: Path
    trials: int
    seed: int
    parent: str | None
    experiment: str
    echo: Callable[[str], None]
    progress: bool
    cv: CvPlan | None = None

    def run(self, timeout: float | None) -> TuneResult:
        started = time.monotonic()
        recover_stale(self.study, self.store, self.name, self.echo)
        now = records.count(self.study.get_trials(deepcopy=False))
        self.echo(
            f"study {self.name} in {self.where}: {now.counted} of {self.trials} trials done or "
            f"running ({now.describe()}); searching {self.space.describe()}"
        )
        if self.cv is not None:
            self.echo(f"scoring each trial by {self.cv.describe()}")
        try:
            while True:
                recover_stale(self.study, self.store, self.name, self.echo)
                if records.count(self.study.get_trials(deepcopy=False)).counted >= self.trials:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    self.echo(f"timeout: {timeout:g} s passed; no new trial started")
                    break
                if self._one_trial():
                    self._write()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"interrupted; finished trials are kept in {self.where}: run the same command "
                "to continue the study (the trial in progress is tried again)"
            ) from None
        return self._finish()

    def _write(self) -> None:
        outputs.write_outputs(
            self.study.get_trials(deepcopy=False), self.study, self.out_dir, self.name
        )

    def _callbacks(self, number: int, fold: int | None = None) -> list[Any]:
        """MLflow's child run of trial ``number`` (of its fold ``fold``: one per fold)."""
        if self.parent is None:
            return []
        from cxr.tracking import MLflowCallback

        tags = {"cxr.study": self.name, "cxr.trial": str(number)}
        if fold is not None:
            tags["cxr.fold"] = str(fold)
        return [
            MLflowCallback(
                experiment=self.experiment,
                run_name=f"trial-{number:04d}" + (f"-fold-{fold}" if fold is not None else ""),
                parent_run_id=self.parent,
                tags=tags,
                log_model=False,
            )
        ]

    def _one_trial(self) -> bool:
        """Ask for a trial and run it; False when it was surplus (the study already full)."""
        study = self.study
        study.sampler = optuna.samplers.TPESampler(
            seed=self.seed + len(study.get_trials(deepcopy=False))
        )
        trial = study.ask()
        trial.set_user_attr("worker", worker())
        with running_here(self.name, trial.number):
            below = records.count(study.get_trials(deepcopy=False), below=trial.number)
            if below.counted + below.waiting >= self.trials:  # another worker took the last slot
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                return False
            with heartbeat(self.store, trial._trial_id):
                number = trial.number
                done = run_trial(
                    study, trial, self.space, self.base, self.caches[0], self.caches[1],
                    self.out_dir / "trials", progress=self.progress,
                    callbacks=[] if self.cv else self._callbacks(number), cv=self.cv,
                    fold_callbacks=lambda fold: self._callbacks(number, fold),
                )  # fmt: skip
        self.echo(records.trial_line(done, records.best_of(study.get_trials(deepcopy=False))))
        return True

    def _finish(self) -> TuneResult:
        self._write()
        all_trials = self.study.get_trials(deepcopy=False)
        counts, best = records.count(all_trials), records.best_of(all_trials)
        if self.parent is not None:
            from cxr.tracking import end_run, log_artifacts

            files = [self.out_dir / n for n in _OUTPUTS if (self.out_dir / n).is_file()]
            log_artifacts(None, self.parent, files)
            if counts.finished >= self.trials:
                end_run(None, self.parent, "FINISHED")
        config, run_dir, sd = None, None, None
        fold_aucs: tuple[float, ...] = ()
        if best is not None:
            if isinstance(best.user_attrs.get("config"), dict):
                config = TrainConfig.from_dict(best.user_attrs["config"])
            run_dir = best.user_attrs.get("run_dir")
            fold_aucs = tuple(float(a) for a in best.user_attrs.get("fold_aucs") or ())
            sd = best.user_attrs.get("fold_auc_sd")
        return TuneResult(
            out_dir=self.out_dir,
            study_name=self.name,
            storage=self.where,
            counts=counts.as_dict(),
            best_value=None if best is None or best.value is None else float(best.value),
            best_trial=None if best is None else best.number,
            best_config=config,
            best_run_dir=Path(run_dir) if run_dir else None,
            cv_folds=0 if self.cv is None else self.cv.k,
            fold_sizes=() if self.cv is None else self.cv.sizes,
            best_fold_aucs=fold_aucs,
            best_fold_auc_sd=None if sd is None else float(sd),
        )


def tune_summary(result: TuneResult) -> str:
    """A few lines about a study, for the command line."""
    out = result.out_dir
    counts = records.Counts(**result.counts).describe()
    lines = [f"study {result.study_name} in {result.storage}: {counts}"]
    if result.cv_folds:
        lines.append(f"scored by {describe_folds(result.fold_sizes)}")
    if result.best_trial is None:
        lines.append("no trial completed yet")
    elif result.cv_folds:
        each = ", ".join(f"{a:.4f}" for a in result.best_fold_aucs)
        sd = result.best_fold_auc_sd
        lines.append(
            f"best mean held-out macro AUC {result.best_value:.4f} over {result.cv_folds} "
            f"folds ({each}" + (f"; sd {sd:.4f}" if sd is not None else "") + f"): trial "
            f"{result.best_trial}, one run folder per fold in {result.best_run_dir}"
        )
        lines.append(
            f"best settings: {result.best_config_file} (train the final model on all of "
            "TRAIN_CACHE: cxr train --config FILE TRAIN_CACHE VAL_CACHE)"
        )
    else:
        lines.append(
            f"best validation macro AUC {result.best_value:.4f}: trial {result.best_trial}, "
            f"run folder {result.best_run_dir}"
        )
        lines.append(f"best settings: {result.best_config_file} (cxr train --config FILE)")
    lines.append(
        f"trials: {out / outputs.TRIALS_CSV}; figures: {out / outputs.HISTORY_PNG}, "
        f"{out / outputs.IMPORTANCES_PNG}"
    )
    return "\n".join(lines)
