"""Post-hoc calibration: probabilities a reader can take at face value.

Models trained with class-weighted losses score every finding too high: at the loss's
optimum each label's log-odds are shifted by the log of its weight ratio
(:func:`cxr.losses.prior_shift`). That shift is known from the training labels, so it is
undone exactly first (stored per label as :attr:`Calibration.shift`); then a map, fitted
per label on validation predictions, turns the shifted probability into a calibrated one
without changing its ranking (every map is strictly increasing, so each label's AUC is
unchanged and a threshold ``t`` on ``p`` makes the same decisions as ``map(t)`` on the
calibrated scale):

- ``temperature``: ``sigmoid(z / T)``, one parameter ``T > 0``;
- ``platt`` (default): ``sigmoid(a * z + b)`` with ``a > 0`` (logistic regression on the
  shifted logit ``z``, Platt's smoothed targets);
- ``isotonic``: pool-adjacent-violators blocks placed at their mean probability, blended
  with ``p`` at 1e-3 and interpolated linearly, so that it is strictly increasing; for large
  validation sets (thousands of images per label).

Labels with fewer than ``min_positives`` positive (or negative) validation images get one
slope shared by those labels and an intercept of their own pulled toward 0 (the
prior-corrected score): a ``platt`` map; a note says so (``fallback="temperature"`` gives
the earlier shared temperature instead). Numpy only: this package imports neither torch
nor scipy.

- :mod:`cxr.calibration.maps`: :class:`LabelMap`, :class:`Calibration` (stored form);
- :mod:`cxr.calibration.fitting`: :func:`fit_calibration`.
"""

from cxr.calibration.fitting import FALLBACKS, INTERCEPT_RIDGE, fit_calibration
from cxr.calibration.maps import CALIBRATION_METHODS, Calibration, LabelMap

__all__ = [
    "CALIBRATION_METHODS",
    "FALLBACKS",
    "INTERCEPT_RIDGE",
    "Calibration",
    "LabelMap",
    "fit_calibration",
]
