"""Experiment tracking: training callbacks that record a run somewhere else.

- :class:`~cxr.tracking.tensorboard.TensorBoardCallback`: per-epoch scalars in the run's
  ``tensorboard/`` folder (on by default when TensorBoard is installed).

Each is a :class:`cxr.training.callbacks.TrainingCallback`; pass more to
``cxr.training.train(..., callbacks=[...])``.
"""

from cxr.tracking.tensorboard import TensorBoardCallback, tensorboard_available

__all__ = ["TensorBoardCallback", "tensorboard_available"]
