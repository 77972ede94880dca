"""Experiment tracking: training callbacks that record a run somewhere else.

- :class:`~cxr.training.tensorboard.TensorBoardCallback`: per-epoch scalars in the run's
  ``tensorboard/`` folder (on by default when TensorBoard is installed; it lives in
  :mod:`cxr.training`, which never imports this package, and is re-exported here).
- :class:`~cxr.tracking.mlflow.MLflowCallback`: params, per-epoch metrics, provenance tags
  and the run's files in an MLflow store (``cxr train --mlflow``; needs the ``tune``
  extra), with :func:`~cxr.tracking.mlflow_store.log_evaluation` for a later test report
  and the run helpers a study uses (:func:`~cxr.tracking.mlflow_store.start_run`, ...).

Each callback is a :class:`cxr.training.callbacks.TrainingCallback`; pass more to
``cxr.training.train(..., callbacks=[...])``. Importing this package imports neither
TensorBoard nor MLflow (both are loaded when a run starts).
"""

from cxr.tracking.mlflow import MLflowCallback
from cxr.tracking.mlflow_store import (
    LINK_FILE,
    MLflowNotInstalled,
    end_run,
    git_commit,
    log_artifacts,
    log_evaluation,
    mlflow_available,
    run_link,
    start_run,
    tracking_requested,
    tracking_uri,
)
from cxr.training.tensorboard import TensorBoardCallback, tensorboard_available

__all__ = [
    "LINK_FILE",
    "MLflowCallback",
    "MLflowNotInstalled",
    "TensorBoardCallback",
    "end_run",
    "git_commit",
    "log_artifacts",
    "log_evaluation",
    "mlflow_available",
    "run_link",
    "start_run",
    "tensorboard_available",
    "tracking_requested",
    "tracking_uri",
]
