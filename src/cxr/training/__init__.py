"""Training on a prepared cache: :func:`train`, :func:`resume` and their settings.

Example::

    from cxr.training import TrainConfig, train
    config = TrainConfig(phase1_epochs=1, phase2_epochs=5)
    result = train(config, "cache/train", "cache/val", "runs/a")
    print(result.best_auc, result.best_model)
"""

from typing import TYPE_CHECKING, Any

from cxr.training.config import AugmentConfig, ConfigError, TrainConfig, TrainError

if TYPE_CHECKING:
    from cxr.training.loop import TrainingInterrupted, TrainResult, resume, run_summary, train
    from cxr.training.probe import train_probe
    from cxr.training.probe_features import pooled_features
    from cxr.training.probe_fit import ProbeFit, fit_probe

#: Names loaded on first use, by module (the probe's fitting needs numpy only, its
#: recipe and features torch).
_LAZY = {
    "train_probe": "probe",
    "pooled_features": "probe_features",
    "ProbeFit": "probe_fit",
    "fit_probe": "probe_fit",
}


def __getattr__(name: str) -> Any:
    # the loop imports torch: loaded on first use, so that `cxr --help` and the settings
    # (TrainConfig) stay quick to import
    if name in ("TrainResult", "TrainingInterrupted", "resume", "run_summary", "train"):
        from cxr.training import loop

        return getattr(loop, name)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cxr.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cxr.training' has no attribute {name!r}")


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "ProbeFit",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainingInterrupted",
    "fit_probe",
    "pooled_features",
    "resume",
    "run_summary",
    "train",
    "train_probe",
]
