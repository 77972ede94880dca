"""Training on a prepared cache: :func:`train`, :func:`resume` and their settings.

Example::

    from cxr.training import TrainConfig, train
    result = train(TrainConfig(phase1_epochs=1, phase2_epochs=5), "cache/train", "cache/val", "runs/a")
    print(result.best_auc, result.best_model)
"""

from cxr.training.config import AugmentConfig, ConfigError, TrainConfig
from cxr.training.loop import TrainError, TrainResult, resume, run_summary, train

__all__ = ["AugmentConfig", "ConfigError", "TrainConfig", "TrainError", "TrainResult",
           "resume", "run_summary", "train"]
