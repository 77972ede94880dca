"""Patient-level cross-validation folds (cxr.split.folds)."""

import numpy as np
import pytest

from cxr.split import patient_folds
from cxr.table import LabelTable


def _table(n_patients=60, per_patient=2, seed=0, blank=0):
    rng = np.random.default_rng(seed)
    pids = [f"p{i}" for i in range(n_patients) for _ in range(per_patient)]
    pids += [""] * blank
    n = len(pids)
    labels = (rng.random((n, 3)) < [0.5, 0.2, 0.05]).astype(float)
    labels[::7, 1] = np.nan
    return LabelTable.from_columns([f"img{i}.png" for i in range(n)], pids, labels, ["A", "B", "C"])


def test_every_image_gets_one_fold_and_patients_stay_together():
    table = _table()
    folds = patient_folds(table, 5, seed=3)
    assert folds.shape == (len(table),) and folds.dtype == np.int64
    assert set(folds.tolist()) == set(range(5))
    for pid in set(table.meta["patient_id"]):
        rows = np.flatnonzero(table.meta["patient_id"].to_numpy() == pid)
        assert len(set(folds[rows].tolist())) == 1, pid
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 2 * 2  # whole patients of 2 images each


def test_positives_spread_over_folds_and_seed_repeats():
    table = _table(n_patients=100)
    folds = patient_folds(table, 5, seed=1)
    pos = np.nan_to_num(table.labels[:, 0]) == 1
    per_fold = np.bincount(folds[pos], minlength=5)
    assert per_fold.max() - per_fold.min() <= 4, per_fold
    assert np.array_equal(folds, patient_folds(table, 5, seed=1))
    assert not np.array_equal(folds, patient_folds(table, 5, seed=2))


def test_blank_patient_ids_are_patients_of_their_own():
    table = _table(n_patients=2, blank=4)
    folds = patient_folds(table, 6, seed=0)  # 2 patients + 4 single images
    assert sorted(np.bincount(folds).tolist()) == [1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("k", [1, 0, 21, 2.5, True])
def test_bad_fold_counts_are_refused(k):
    with pytest.raises(ValueError, match="folds must be a whole number"):
        patient_folds(_table(), k)


def test_more_folds_than_patients_says_how_many():
    with pytest.raises(ValueError, match="3 patients"):
        patient_folds(_table(n_patients=3), 4)
