"""Patient-level cross-validation folds.

:func:`patient_folds` gives every image a fold number 0..K-1 so that all images of a
patient share a fold and each label's positives spread evenly over the folds: it is
:func:`~cxr.split.split_by_patient` with K equal fractions, so the same leakage rules (and
the same stratification) hold for cross-validation as for a train/val/test split.
"""

from __future__ import annotations

import numpy as np

from cxr.split.common import patient_keys
from cxr.split.stratify import split_by_patient
from cxr.table import LabelTable

__all__ = ["MAX_FOLDS", "patient_folds"]

#: The most folds asked for; more is leave-few-out, not what cxr's statistics expect.
MAX_FOLDS = 20


def patient_folds(table: LabelTable, k: int, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of every image, whole patients at a time, stratified by label.

    Args:
        table: the images; ``meta['patient_id']`` groups them (an empty id makes the image
            a patient of its own).
        k: number of folds, 2..:data:`MAX_FOLDS`, at most the number of patients.
        seed: seeds the stratification's ties; the same table and seed give the same folds.

    Returns:
        An int64 array (N,) of fold numbers in row order.

    Raises:
        ValueError: ``k`` out of range or above the number of patients (the message says
            how many there are).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= MAX_FOLDS:
        raise ValueError(f"folds must be a whole number from 2 to {MAX_FOLDS}, got {k!r}")
    k = int(k)
    n_patients = len(np.unique(patient_keys(table).astype(str))) if len(table) else 0
    if n_patients < k:
        raise ValueError(
            f"{k} folds need at least {k} patients; the table has {n_patients} patients "
            f"({len(table)} images); use fewer folds"
        )
    names = [f"fold{i}" for i in range(k)]
    assigned = split_by_patient(table, {n: 1.0 / k for n in names}, seed=seed)
    order = {n: i for i, n in enumerate(names)}
    return np.array([order[a] for a in assigned], dtype=np.int64)
