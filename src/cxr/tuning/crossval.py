"""Cross-validated trials (``cxr tune --folds K``): the folds of a study and their scores.

With K >= 2 folds a trial is not scored on VAL_CACHE. The training cache is cut into K
patient-level folds (:func:`cxr.split.patient_folds` with the study's seed: every image
of a patient in one fold, each label's positives spread evenly), and a trial trains K
times: fold i held out as the validation cache, the other K-1 folds as the training cache.
Its value is the mean of the K held-out macro AUCs (each fold's best epoch, as a plain
trial's value is its run's best epoch); the trial records each fold's AUC (user attribute
``fold_aucs``) and their spread (``fold_auc_sd``, the standard deviation over folds).

Pruning: after fold i the trial reports the running mean of its fold AUCs so far at step
i (1-based), and asks the pruner; so Hyperband or the median rule can stop a poor trial
after a fold or two (they compare trials at the same number of folds). Within a fold
nothing is reported (NaN losses and AUCs still fail the trial).

Made once per study, and reused by every trial and every worker, in the study's folder::

    folds.csv                 path, patient_id, fold (1..K) of every training image
    folds/fold-I/heldout/     fold I: a prepared cache (cxr.cache.write_subset)
    folds/fold-I/train/       the other folds: a prepared cache

The study records K, the seed and the training cache's fingerprint
(:func:`cxr.cache.cache_digest`); continuing it with another ``--folds`` or a changed
training cache is refused (the trials' values would not be comparable). The training
caches of the folds together hold K-1 copies of TRAIN_CACHE's pixels: mind the disk.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from cxr.cache import PreparedCache, cache_digest, write_subset
from cxr.split import MAX_FOLDS, patient_folds
from cxr.split.common import patient_keys
from cxr.tuning.outputs import write_atomic
from cxr.tuning.storage import TuneError

__all__ = [
    "CV_ATTR",
    "FOLDS_CSV",
    "FOLDS_DIR",
    "CvPlan",
    "Fold",
    "check_folds",
    "fold_stats",
    "plan_folds",
]

#: The study's user attribute: {"folds": K, "seed": ..., "train_cache": fingerprint}.
CV_ATTR = "cv"
FOLDS_CSV = "folds.csv"
FOLDS_DIR = "folds"


@dataclass(frozen=True)
class Fold:
    """Fold ``number`` (1..K): its held-out cache, the cache of the other folds, and how
    many patients and images it holds out."""

    number: int
    train: PreparedCache
    heldout: PreparedCache
    patients: int
    images: int


@dataclass(frozen=True)
class CvPlan:
    """The K folds of a study's training cache (see the module docstring)."""

    folds: tuple[Fold, ...]
    seed: int

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(patients, images) held out by each fold."""
        return tuple((f.patients, f.images) for f in self.folds)

    def describe(self) -> str:
        return describe_folds(self.sizes)


def describe_folds(sizes: Sequence[tuple[int, int]]) -> str:
    """One line: K-fold cross-validation over TRAIN_CACHE and each fold's patients, images."""
    each = "; ".join(f"fold {i}: {p} patients, {n} images" for i, (p, n) in enumerate(sizes, 1))
    return (
        f"{len(sizes)}-fold cross-validation over TRAIN_CACHE (patient-level folds; {each}); "
        "VAL_CACHE is not used to choose"
    )


def fold_stats(aucs: Sequence[float]) -> tuple[float, float | None]:
    """The mean of fold AUCs and their standard deviation over folds (ddof 1; None for one)."""
    values = np.asarray(aucs, dtype=np.float64)
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), sd


def _trial_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False))


def check_folds(
    study: optuna.Study, folds: int, train: PreparedCache, seed: int, name: str, out_dir: Path
) -> int:
    """Record the study's folds in a new study, or refuse other folds or a changed training
    cache in an existing one; returns the seed of the folds (the recorded one)."""
    k = folds if folds >= 2 else 0
    saved = study.user_attrs.get(CV_ATTR)
    if not isinstance(saved, dict):
        if _trial_count(study) == 0:
            record: dict[str, int | str] = {"folds": k, "seed": int(seed)}
            if k:
                record["train_cache"] = cache_digest(train)
            study.set_user_attr(CV_ATTR, record)
            return int(seed)
        saved = {"folds": 0}  # a study of an older cxr: scored on VAL_CACHE
    old = int(saved.get("folds", 0))
    where = f"study {name!r} in {out_dir}"
    if old != k:
        was = f"was started with --folds {old}" if old else "scores its trials on VAL_CACHE"
        again = f"--folds {old}" if old else "no --folds"
        now = f"--folds {k}" if k else "no --folds"
        raise TuneError(
            f"{where} {was}; its trials are not comparable with {now}: continue it with "
            f"{again}, or start a new study in another --out"
        )
    if k and saved.get("train_cache") != cache_digest(train):
        raise TuneError(
            f"the training cache {train.path} changed since {where} made its {k} folds "
            "(another image list, labels or image files); continue the study with the cache "
            "it was started with, or start a new study in another --out"
        )
    return int(saved.get("seed", seed))


def _folds_csv(train: PreparedCache, assigned: np.ndarray) -> str:
    frame = pd.DataFrame(
        {
            "path": train.table.meta["path"],
            "patient_id": train.table.meta["patient_id"],
            "fold": assigned + 1,
        }
    )
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def plan_folds(
    study: optuna.Study,
    train: PreparedCache,
    folds: int,
    seed: int,
    out_dir: Path,
    name: str,
    echo: Callable[[str], None] = print,
) -> CvPlan | None:
    """The study's folds, written when missing (see the module docstring); None for
    ``folds`` 0 or 1 (trials scored on VAL_CACHE), after checking the study agrees."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)):
        raise TuneError(f"folds must be a whole number, got {folds!r}")
    if not 0 <= folds <= MAX_FOLDS:
        raise TuneError(f"folds must be 0 (score on VAL_CACHE) or 2 to {MAX_FOLDS}, got {folds}")
    seed = check_folds(study, int(folds), train, seed, name, out_dir)
    if folds < 2:
        return None
    k = int(folds)
    try:
        assigned = patient_folds(train.table, k, seed)
    except ValueError as err:
        raise TuneError(f"--folds {k}: TRAIN_CACHE {train.path}: {err}") from None
    write_atomic(out_dir / FOLDS_CSV, _folds_csv(train, assigned))
    keys = patient_keys(train.table).astype(str)
    made = []
    for i in range(k):
        held = np.flatnonzero(assigned == i)
        if held.size == 0:
            raise TuneError(f"--folds {k}: fold {i + 1} of TRAIN_CACHE {train.path} is empty")
        where = out_dir / FOLDS_DIR / f"fold-{i + 1}"
        made.append(
            Fold(
                number=i + 1,
                train=write_subset(train, np.flatnonzero(assigned != i), where / "train"),
                heldout=write_subset(train, held, where / "heldout"),
                patients=len(np.unique(keys[held])),
                images=int(held.size),
            )
        )
    plan = CvPlan(tuple(made), seed)
    echo(f"folds: {out_dir / FOLDS_CSV}; fold caches in {out_dir / FOLDS_DIR}")
    return plan
