"""``cxr tune``: the command-line face of :mod:`cxr.tuning`.

The base config is given exactly as to ``cxr train`` (every training option, or
``--config FILE``); the search options say how many trials, where the study lives and what
is searched. Running the same command again continues the study.
"""

from __future__ import annotations

import argparse
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
        "takes every cxr train option, or --config; --seed also seeds the sampler.",
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
        help="stop poor trials early on their per-epoch validation AUC (default: hyperband)",
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


def _check_cache(path: Path | None, what: str) -> Path:
    if path is None:
        raise CLIError("give TRAIN_CACHE and VAL_CACHE (folders made by `cxr prepare`)")
    if not (path / "manifest.json").is_file():
        raise CLIError(
            f"{what} {path} is not a prepared cache (no manifest.json); make one with `cxr prepare`"
        )
    return path


def run_tune(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise CLIError("cxr tune needs Optuna: pip install 'cxr[tune]'")
    train_cache = _check_cache(args.train_cache, "TRAIN_CACHE")
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
