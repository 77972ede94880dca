"""``cxr tune``: the command-line face of :mod:`cxr.tuning`.

The base config is given exactly as to ``cxr train`` (every training option, or
``--config FILE``); the search options say how many trials, where the study lives and what
is searched. Running the same command again continues the study.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

from cxr.cli._common import EXIT_OK, CLIError
from cxr.cli.options import (
    add_command,
    add_config,
    add_mlflow_experiment,
    add_threads,
    add_train_caches,
)
from cxr.cli.train import _threads, add_training_settings, config_from_args
from cxr.split import MAX_FOLDS
from cxr.training.config import TrainConfig

#: Pruner names (cxr.tuning.study.PRUNERS; repeated here so that the parser imports no Optuna).
_PRUNERS = ("hyperband", "median", "none")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cxr tune`` on the top-level sub-command parser."""
    p = add_command(
        sub,
        "tune",
        run_tune,
        help="search training settings with Optuna (maximises the validation macro AUC)",
        description="Search training settings on TRAIN_CACHE, scored by the best validation "
        "macro AUC on VAL_CACHE; each trial is a normal run folder in OUT/trials/trial-NNNN. "
        "OUT gets best_config.yaml (for cxr train --config), best_trial.json, trials.csv, "
        "optimisation_history.png and param_importances.png, rewritten after every trial. "
        "Run the same command again to continue a stopped study, or in several terminals or "
        "machines at once (with a shared --storage) to search in parallel. The base config "
        "takes every cxr train option (its --folds as --probe-folds), or --config; --seed also "
        "seeds the sampler. With --folds K each trial is scored by K-fold cross-validation over "
        "TRAIN_CACHE instead (VAL_CACHE is then not used and may be left out).",
    )
    add_train_caches(p)
    s = p.add_argument_group("search")
    s.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="the study's total number of trials (finished and running; interrupted ones are "
        "not counted and are tried again)",
    )
    s.add_argument("--out", type=Path, metavar="DIR", help="folder of the study's files and trials")
    s.add_argument(
        "--space",
        type=Path,
        metavar="FILE",
        help="YAML file that narrows or replaces the default search space (see the README)",
    )
    s.add_argument(
        "--storage",
        metavar="URL",
        help="where the study lives: a database URL (postgresql://user@host/db, "
        "sqlite:///study.db) or a journal file (default: DIR/study.journal)",
    )
    s.add_argument("--study", default="cxr", metavar="NAME", help="study name (default: cxr)")
    s.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="start no new trial after S seconds (a running one finishes)",
    )
    s.add_argument(
        "--pruner",
        choices=_PRUNERS,
        default="hyperband",
        help="stop poor trials early on their per-epoch validation AUC (with --folds: on the "
        "running mean after each fold) (default: hyperband)",
    )
    s.add_argument(
        "--force-config",
        action="store_true",
        help="continue a study whose base config differs from this one (later trials use it)",
    )
    s.add_argument(
        "--mlflow",
        action="store_true",
        help="log the study as an MLflow run and each trial as a child run (on by default when "
        "MLFLOW_TRACKING_URI is set; default store: ./mlflow.db)",
    )
    add_mlflow_experiment(s, "the study")
    add_config(s, "base settings")
    add_threads(s)
    add_training_settings(p, "base ")
    _add_folds(s)


def _add_folds(s: argparse._ArgumentGroup) -> None:
    """``--folds K``: cross-validated trials. It takes the flag from the base config's
    ``folds`` (cxr train --folds: a probe recipe's ensemble), which ``cxr tune`` offers as
    ``--probe-folds`` instead."""
    s.conflict_handler = "resolve"  # the training option of that name gives way in cxr tune
    s.add_argument(
        "--folds",
        dest="cv_folds",
        type=int,
        default=0,
        metavar="K",
        help="score each trial by K-fold cross-validation over TRAIN_CACHE (K from 2 to 20): "
        "patient-level folds, made once per study (DIR/folds.csv, DIR/folds/), each held out "
        "once while the other K-1 train; the trial's value is the mean held-out macro AUC "
        "(each fold's AUC is recorded in trials.csv) and the pruner may stop a trial after any "
        "fold. VAL_CACHE is not used to choose and may be left out; a study keeps its K. "
        "Costs K trainings per trial and K-1 copies of TRAIN_CACHE on disk "
        "(default: 0, one training per trial scored on VAL_CACHE)",
    )
    s.conflict_handler = "error"
    if "folds" in {f.name for f in dataclasses.fields(TrainConfig)}:
        s.add_argument(
            "--probe-folds",
            dest="folds",
            type=int,
            default=None,
            metavar="K",
            help="the base config's folds (what cxr train --folds sets: with --recipe probe, one "
            "model of K probes fitted on K-1 of K patient folds); not --folds, which "
            "cross-validates the trials",
        )


def _check_cache(path: Path | None, what: str) -> Path:
    if path is None:
        raise CLIError(
            "give TRAIN_CACHE and VAL_CACHE (folders made by `cxr prepare`; VAL_CACHE may be "
            "left out with --folds K)"
        )
    if not (path / "manifest.json").is_file():
        raise CLIError(
            f"{what} {path} is not a prepared cache (no manifest.json); make one with `cxr prepare`"
        )
    return path


def run_tune(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise CLIError("cxr tune needs Optuna: pip install 'cxr[tune]'")
    folds = args.cv_folds
    if folds < 0 or folds > MAX_FOLDS:
        raise CLIError(
            f"--folds must be from 2 to {MAX_FOLDS} (or 0: score on VAL_CACHE), got {folds}"
        )
    train_cache = _check_cache(args.train_cache, "TRAIN_CACHE")
    val_cache = None
    if folds < 2 or args.val_cache is not None:
        val_cache = _check_cache(args.val_cache, "VAL_CACHE")
    if args.trials is None:
        raise CLIError("give --trials N, the study's total number of trials")
    if args.trials < 1:
        raise CLIError(f"--trials must be at least 1, got {args.trials}")
    if args.out is None:
        raise CLIError("give --out DIR, the folder of the study's files and trials")
    if args.timeout is not None and args.timeout <= 0:
        raise CLIError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if not args.study.strip():
        raise CLIError("--study needs a name")

    from cxr.tracking import MLflowNotInstalled, mlflow_available, tracking_requested
    from cxr.tuning import SearchSpace, tune, tune_summary

    mlflow = tracking_requested(args.mlflow)
    if mlflow and not mlflow_available():
        raise CLIError(str(MLflowNotInstalled()))
    space = SearchSpace.load(args.space) if args.space else None
    config = config_from_args(args)
    threads = _threads(args)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = tune(
        config,
        train_cache,
        val_cache,
        args.out,
        args.trials,
        folds=folds,
        space=space,
        storage=args.storage,
        study_name=args.study.strip(),
        timeout=args.timeout,
        pruner=args.pruner,
        seed=config.seed,
        mlflow=mlflow,
        mlflow_experiment=args.mlflow_experiment,
        force_config=args.force_config,
    )
    print(tune_summary(result))
    return EXIT_OK
