"""The one table of codes in cxr's DICOM results: findings, measurements, the algorithm.

Every finding of NIH ChestX-ray14 and CheXpert (canonical names of :mod:`cxr.labels`) has
one row. A row carries a SNOMED CT code (scheme designator ``SCT``) only where the code
and its meaning are in the DICOM standard's code tables as pydicom bundles them
(``pydicom.sr.codedict.codes.SCT``; the test suite checks every such row against that
dictionary). Where no verified SNOMED CT concept exists, the row uses cxr's own coding
scheme ``99CXR`` (a private scheme: DICOM reserves designators starting with ``99`` for
local use), identified in every SR by :data:`CXR_SCHEME` in the Coding Scheme
Identification Sequence. A label outside the table (a folder dataset's own class name)
gets a ``99CXR`` code derived from its name (:func:`finding_code`).

The other codes of the results (probability, threshold, present/absent, the procedure,
the not-a-chest-X-ray evaluation and the research-use notice) are listed in
:data:`OTHER_CODES`. :func:`codes_markdown` renders both tables for the README.

Nothing here imports pydicom or highdicom: rows are plain records; :meth:`Concept.code`
builds a ``pydicom.sr.coding.Code`` on demand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxr.labels import CHEXPERT14_LABELS, NIH14_LABELS, canonical_label

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

__all__ = [
    "ABSENT",
    "CXR_SCHEME",
    "FINDING_CODES",
    "NOT_CHEST_XRAY",
    "OTHER_CODES",
    "PRESENT",
    "PROBABILITY",
    "PROCEDURE_REPORTED",
    "QUALITATIVE_EVALUATIONS",
    "RESEARCH_NOTICE_CONCEPT",
    "SUMMARY",
    "THRESHOLD",
    "UNIT_ONE",
    "CodingScheme",
    "Concept",
    "FindingCode",
    "codes_markdown",
    "finding_code",
]

#: Where a standard code was checked: pydicom's bundled copy of DICOM PS3.16's tables.
_PYDICOM = "pydicom codedict"


@dataclass(frozen=True)
class CodingScheme:
    """A coding scheme as DICOM's Coding Scheme Identification Sequence names it."""

    designator: str
    name: str
    version: str
    responsible_organization: str


#: cxr's own coding scheme, for findings without a verified SNOMED CT code.
CXR_SCHEME = CodingScheme(
    designator="99CXR",
    name="cxr chest X-ray findings (research use only)",
    version="1",
    responsible_organization="cxr project",
)


@dataclass(frozen=True)
class Concept:
    """One coded concept: ``value`` (Code Value, at most 16 characters), ``scheme``
    (Coding Scheme Designator), ``meaning`` (Code Meaning, at most 64 characters) and
    ``source``: where the code was verified (or ``"cxr"`` for cxr's own codes)."""

    value: str
    scheme: str
    meaning: str
    source: str

    def code(self) -> Code:
        """The concept as a ``pydicom.sr.coding.Code`` (what highdicom takes)."""
        from pydicom.sr.coding import Code

        return Code(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class FindingCode:
    """The code of one of cxr's labels (``label``: its canonical name)."""

    label: str
    concept: Concept


def _sct(value: str, meaning: str, where: str) -> Concept:
    return Concept(value, "SCT", meaning, f"{_PYDICOM}: SCT {where}")


def _cxr(value: str, meaning: str) -> Concept:
    return Concept(value, CXR_SCHEME.designator, meaning, "cxr")


# label -> concept. SCT rows: in pydicom's dictionary with exactly this meaning (the CIDs
# name where DICOM uses them). 99CXR rows: no SNOMED CT concept with that meaning is in
# the dictionary (commonly cited codes such as 8186001 for cardiomegaly or 233604007 for
# pneumonia could not be checked here, so they are not used).
_TABLE: dict[str, Concept] = {
    "Atelectasis": _cxr("F0001", "Atelectasis"),
    "Cardiomegaly": _cxr("F0002", "Cardiomegaly"),
    "Effusion": _sct("60046008", "Pleural effusion", "PleuralEffusion (CID 645, 8134)"),
    "Infiltration": _cxr("F0004", "Infiltration"),
    "Mass": _sct("4147007", "Mass", "Mass (CID 6102, 6104 chest findings)"),
    "Nodule": _sct("27925004", "Nodule", "Nodule (CID 6102, 6104 chest findings)"),
    "Pneumonia": _cxr("F0007", "Pneumonia"),
    "Pneumothorax": _sct("36118008", "Pneumothorax", "Pneumothorax (CID 6102, 6105)"),
    "Consolidation": _cxr("F0009", "Consolidation"),
    "Edema": _sct("19242006", "Pulmonary edema", "PulmonaryEdema (CID 3700)"),
    "Emphysema": _cxr("F0011", "Emphysema"),
    "Fibrosis": _sct("112674009", "Fibrosis", "Fibrosis (CID 6335-6338)"),
    "Pleural_Thickening": _cxr("F0013", "Pleural thickening"),
    "Hernia": _cxr("F0014", "Hernia"),
    "No Finding": _cxr("F0015", "No finding"),
    "Enlarged Cardiomediastinum": _cxr("F0016", "Enlarged cardiomediastinum"),
    "Lung Opacity": _cxr("F0017", "Lung opacity"),
    "Lung Lesion": _cxr("F0018", "Lung lesion"),
    "Pleural Other": _cxr("F0019", "Pleural abnormality, other"),
    "Fracture": _cxr("F0020", "Fracture"),
    "Support Devices": _cxr("F0021", "Support devices"),
}

#: One row per label of NIH ChestX-ray14 and CheXpert, in that order (no repeats).
FINDING_CODES: tuple[FindingCode, ...] = tuple(
    FindingCode(label, _TABLE[label]) for label in dict.fromkeys(NIH14_LABELS + CHEXPERT14_LABELS)
)
_BY_LABEL: dict[str, Concept] = {row.label: row.concept for row in FINDING_CODES}

#: Measurement: the calibrated probability of a finding, unit :data:`UNIT_ONE`.
PROBABILITY = Concept("122157", "DCM", "Probability", f"{_PYDICOM}: DCM Probability")
#: Measurement: the model's decision threshold for the finding, unit :data:`UNIT_ONE`.
THRESHOLD = Concept("122411", "DCM", "Threshold Value", f"{_PYDICOM}: DCM ThresholdValue")
#: UCUM's dimensionless unit "1" (probabilities and thresholds are fractions in [0, 1]).
UNIT_ONE = Concept("1", "UCUM", "no units", f"{_PYDICOM}: UCUM NoUnits (CID 7181)")
#: Qualitative evaluation values: the finding is at/above (present) or below its threshold.
PRESENT = Concept("52101004", "SCT", "Present", f"{_PYDICOM}: SCT Present (CID 240, 241)")
ABSENT = Concept("272519000", "SCT", "Absent", f"{_PYDICOM}: SCT Absent (CID 240, 241)")
#: TID 1500's "Procedure reported".
PROCEDURE_REPORTED = Concept(
    "363679005", "SCT", "Imaging procedure", f"{_PYDICOM}: SCT ImagingProcedure (CID 100)"
)
#: The not-a-chest-X-ray gate's evaluation (present: the image was flagged).
NOT_CHEST_XRAY = _cxr("G0001", "Not a chest radiograph")
#: The SR's one-line summary (the findings at or above their thresholds, or none).
SUMMARY = Concept("121111", "DCM", "Summary", f"{_PYDICOM}: DCM Summary")
#: The research-use notice's TEXT item.
RESEARCH_NOTICE_CONCEPT = _cxr("N0001", "Research use notice")
#: TID 1500's document-level container of qualitative evaluations (rows 12-14).
QUALITATIVE_EVALUATIONS = Concept(
    "C0034375", "UMLS", "Qualitative Evaluations", "DICOM PS3.16 TID 1500 (not in pydicom)"
)

#: Every code of the results besides the findings, for the README's table.
OTHER_CODES: tuple[tuple[str, Concept], ...] = (
    ("probability (measurement, unit 1)", PROBABILITY),
    ("threshold (measurement, unit 1)", THRESHOLD),
    ("unit of both", UNIT_ONE),
    ("finding at/above its threshold", PRESENT),
    ("finding below its threshold", ABSENT),
    ("procedure reported", PROCEDURE_REPORTED),
    ("not-a-chest-X-ray gate", NOT_CHEST_XRAY),
    ("summary line (TEXT)", SUMMARY),
    ("research-use notice (TEXT)", RESEARCH_NOTICE_CONCEPT),
    ("document-level evaluations container", QUALITATIVE_EVALUATIONS),
    ("algorithm name (TID 4019)", Concept("111001", "DCM", "Algorithm Name", _PYDICOM)),
    ("algorithm version (TID 4019)", Concept("111003", "DCM", "Algorithm Version", _PYDICOM)),
    (
        "algorithm parameters: model-sha256=..., cxr-version=... (TID 4019)",
        Concept("111002", "DCM", "Algorithm Parameters", _PYDICOM),
    ),
)


def finding_code(label: str) -> Concept:
    """The concept of a label: its row of the table (spellings are canonicalised with
    :func:`cxr.labels.canonical_label`), else a ``99CXR`` code ``U`` + 12 hex digits of
    the SHA-256 of the canonical name, with the name as its meaning (cut to 64 characters,
    DICOM's limit for a Code Meaning)."""
    name = canonical_label(label)
    if name in _BY_LABEL:
        return _BY_LABEL[name]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12].upper()
    return _cxr(f"U{digest}", name[:64])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def codes_markdown() -> str:
    """Both tables as GitHub Markdown: the findings (label, code, scheme, meaning, where
    verified), then the other codes, then the private scheme's line."""
    lines = [
        "| cxr label | Code | Scheme | Meaning | Verified in |",
        "|---|---|---|---|---|",
    ]
    for row in FINDING_CODES:
        c = row.concept
        lines.append(
            f"| {row.label} | {c.value} | {c.scheme} | {_md_escape(c.meaning)} "
            f"| {_md_escape(c.source)} |"
        )
    lines += ["", "| Used for | Code | Scheme | Meaning | Verified in |", "|---|---|---|---|---|"]
    for use, c in OTHER_CODES:
        lines.append(
            f"| {_md_escape(use)} | {c.value} | {c.scheme} | {_md_escape(c.meaning)} "
            f"| {_md_escape(c.source)} |"
        )
    lines += [
        "",
        f"`{CXR_SCHEME.designator}` is cxr's own coding scheme ({CXR_SCHEME.name}, version "
        f"{CXR_SCHEME.version}); a label outside the table gets `U` + 12 hex digits of the "
        "SHA-256 of its name.",
    ]
    return "\n".join(lines) + "\n"
