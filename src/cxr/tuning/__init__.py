"""Hyperparameter search with Optuna: :func:`tune` (``cxr tune``).

Example::

    from cxr.training import TrainConfig
    from cxr.tuning import SearchSpace, tune
    base = TrainConfig(backbone="densenet121", pretrained="imagenet")
    result = tune(base, "cache/train", "cache/val", "tune", trials=40)
    print(result.best_value, result.best_config_file)

Modules: :mod:`~cxr.tuning.space` (what is searched, the YAML space file),
:mod:`~cxr.tuning.study` (storage, workers, kills, the search loop),
:mod:`~cxr.tuning.trial` (one trial: a training run with pruning),
:mod:`~cxr.tuning.crossval` (``folds=K``: trials scored by patient-level K-fold
cross-validation over the training cache),
:mod:`~cxr.tuning.params` (one parameter, a space file's entry),
:mod:`~cxr.tuning.records` (kinds and counts of trials), :mod:`~cxr.tuning.outputs` and
:mod:`~cxr.tuning.figures` (the output folder).
Needs the ``tune`` extra (``pip install 'cxr[tune]'``): Optuna, MLflow, psycopg2.
"""

from typing import TYPE_CHECKING, Any

from cxr.tuning.space import DEFAULT_SPACE, Param, SearchSpace, SpaceError

if TYPE_CHECKING:
    from cxr.tuning.study import TuneError, TuneResult, tune, tune_summary


def __getattr__(name: str) -> Any:
    # the study imports Optuna (slow to import): loaded on first use
    if name in ("TuneError", "TuneResult", "tune", "tune_summary"):
        from cxr.tuning import study

        return getattr(study, name)
    raise AttributeError(f"module 'cxr.tuning' has no attribute {name!r}")


__all__ = [
    "DEFAULT_SPACE",
    "Param",
    "SearchSpace",
    "SpaceError",
    "TuneError",
    "TuneResult",
    "tune",
    "tune_summary",
]
