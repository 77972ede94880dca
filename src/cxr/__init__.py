"""cxr: multi-label chest X-ray pathology classification. Research use only."""

from cxr.labels import CHEXPERT14_LABELS, NIH14_LABELS, canonical_label
from cxr.table import LabelTable, merge_tables

__version__ = "0.1.0"

RESEARCH_NOTICE = (
    "Research use only: cxr is not a medical device and its outputs are not a diagnosis."
)

__all__ = [
    "CHEXPERT14_LABELS",
    "NIH14_LABELS",
    "LabelTable",
    "RESEARCH_NOTICE",
    "__version__",
    "canonical_label",
    "merge_tables",
]
