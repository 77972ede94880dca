"""Patient-level train/val/test splits.

:func:`split_by_patient` gives every image a split name so that all images of a patient
land in the same split (no patient leaks from training into evaluation) while each
label's prevalence stays close across splits. It uses multi-label iterative
stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011) adapted to groups: each
patient is one item that carries, per label, the number of its images positive for it.

The leakage check lives in :mod:`cxr.leakage`.
"""

from cxr.split.common import DEFAULT_FRACTIONS
from cxr.split.folds import MAX_FOLDS, patient_folds
from cxr.split.stratify import split_by_patient
from cxr.split.tables import save_split, split_summary, split_tables

__all__ = [
    "DEFAULT_FRACTIONS",
    "MAX_FOLDS",
    "patient_folds",
    "save_split",
    "split_by_patient",
    "split_summary",
    "split_tables",
]
