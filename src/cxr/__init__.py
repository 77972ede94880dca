"""cxr: multi-label chest X-ray pathology classification. Research use only."""

from typing import TYPE_CHECKING, Any

from cxr.labels import CHEXPERT14_LABELS, NIH14_LABELS, canonical_label

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    # the label table needs pandas: loaded on first use, so that `import cxr` (and the
    # ONNX prediction path) stays quick
    if name in ("LabelTable", "merge_tables"):
        from cxr import table

        return getattr(table, name)
    raise AttributeError(f"module 'cxr' has no attribute {name!r}")
