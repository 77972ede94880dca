"""Experiment tracking: training callbacks that record a run somewhere else.

- :class:`~cxr.tracking.tensorboard.TensorBoardCallback`: per-epoch scalars in the run's
  ``tensorboard/`` folder (on by default when TensorBoard is installed).
- :class:`~cxr.tracking.mlflow.MLflowCallback`: params, per-epoch metrics, provenance tags
  and the run's files in an MLflow store (``cxr train --mlflow``; needs the ``tune``
  extra), with :func:`~cxr.tracking.mlflow.log_evaluation` for a later test report and
  the run helpers a study uses (:func:`~cxr.tracking.mlflow.start_run`, ...).

Each callback is a :class:`cxr.training.callbacks.TrainingCallback`; pass more to
``cxr.training.train(..., callbacks=[...])``. Importing this package imports neither
TensorBoard nor MLflow (both are loaded when a run starts).
"""

from cxr.tracking.mlflow import (
    MLflowCallback,
    MLflowNotInstalled,
    end_run,
    log_artifacts,
    log_evaluation,
    mlflow_available,
    run_link,
    start_run,
    tracking_requested,
    tracking_uri,
)
from cxr.tracking.tensorboard import TensorBoardCallback, tensorboard_available

__all__ = [
    "MLflowCallback",
    "MLflowNotInstalled",
    "TensorBoardCallback",
    "end_run",
    "log_artifacts",
    "log_evaluation",
    "mlflow_available",
    "run_link",
    "start_run",
    "tensorboard_available",
    "tracking_requested",
    "tracking_uri",
]
