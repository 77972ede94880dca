"""Label names: the standard label lists and the harmonisation of spellings.

Every dataset reader passes its column names through :func:`canonical_label`, so
that the same finding has one name whichever dataset it came from (CheXpert's
``Pleural Effusion`` and NIH's ``Effusion`` both become ``Effusion``). Merged
tables are then built over the union of canonical names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The 14 findings of NIH ChestX-ray14, in the order of the CheXNet papers.
NIH14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: The 14 observation columns of CheXpert as its CSVs spell them (column order of train.csv).
CHEXPERT14_COLUMNS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: CheXpert columns whose canonical name is NIH's (the one finding both datasets name).
_CHEXPERT_RENAMED: dict[str, str] = {"Pleural Effusion": "Effusion"}

#: The 14 observations of CheXpert, as canonical names (column order of train.csv).
CHEXPERT14_LABELS: tuple[str, ...] = tuple(_CHEXPERT_RENAMED.get(c, c) for c in CHEXPERT14_COLUMNS)

#: Label names that mean "no finding" rather than a finding (folder-per-class datasets).
NORMAL_CLASS_NAMES: frozenset[str] = frozenset({"normal", "nofinding", "healthy", "negative"})

_KNOWN: tuple[str, ...] = tuple(dict.fromkeys(NIH14_LABELS + CHEXPERT14_LABELS))

# Spellings (after _key normalisation) that name a known label differently.
_ALIASES: dict[str, str] = {
    "pleuraleffusion": "Effusion",
    "effusions": "Effusion",
    "pleuralthickening": "Pleural_Thickening",
    "enlargedcardiom": "Enlarged Cardiomediastinum",
    "nodules": "Nodule",
    "masses": "Mass",
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pneumothoraces": "Pneumothorax",
}


def _key(name: str) -> str:
    """Lower-case a name and drop everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: dict[str, str] = {_key(n): n for n in _KNOWN} | _ALIASES


def canonical_label(name: str) -> str:
    """Return the canonical spelling of a label name.

    Known findings are matched ignoring case, spaces, underscores and hyphens
    (``"PLEURAL EFFUSION"`` -> ``"Effusion"``, ``"pneumonia"`` -> ``"Pneumonia"``).
    An unknown name is returned stripped but otherwise unchanged.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a label name must be a non-empty string, got {name!r}")
    return _BY_KEY.get(_key(name), name.strip())


def canonical_labels(names: Iterable[str]) -> tuple[str, ...]:
    """Canonicalise several names; raise if two of them become the same label."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for name in names:
        canon = canonical_label(name)
        if canon in seen:
            raise ValueError(
                f"label columns {seen[canon]!r} and {name!r} both mean {canon!r}; keep one of them"
            )
        seen[canon] = name
        out.append(canon)
    return tuple(out)


def is_normal_class(name: str) -> bool:
    """True for class names that mean "no finding" (``NORMAL``, ``No Finding``, ...)."""
    return _key(name) in NORMAL_CLASS_NAMES
