"""The record of operating thresholds per label: what was chosen, how, and on what data;
and the one headline of an image's findings against them (:func:`headline`).

:class:`Thresholds` is a read-only mapping label -> threshold (positive when ``p >= t``)
with its rule and source; it saves to / loads from JSON (``{"method", "target",
"thresholds", "notes", "source"}``). Chosen on validation data by
:func:`cxr.evaluation.thresholds.choose_thresholds`; a record at the bottom of the layers,
so that a :class:`~cxr.inference.Predictor` can describe a model file's stored thresholds
without importing the evaluation package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.labels import canonical_label

__all__ = ["Thresholds", "format_pair", "headline"]


@dataclass(frozen=True)
class Thresholds(Mapping[str, float]):
    """Label name -> threshold (a read-only mapping), with how they were chosen.

    Attributes:
        thresholds: canonical label name -> threshold (probability, positive when
            ``p >= t``); named so as not to hide the mapping's ``values()``.
        method: ``"youden"``, ``"sensitivity"`` or ``"given"`` (read from a plain mapping).
        target: the target sensitivity for ``"sensitivity"``, else None.
        notes: label -> why it has no threshold (e.g. no positives in validation).
        source: where they were chosen (free text, e.g. the validation file).
    """

    thresholds: dict[str, float]
    method: str = "given"
    target: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        clean: dict[str, float] = {}
        for name, value in dict(self.thresholds).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"threshold of {name!r} is {value!r}; it must be a number"
                ) from None
            if math.isnan(value):
                raise ValueError(f"threshold of {name!r} is NaN; leave the label out instead")
            clean[canonical_label(name)] = value
        object.__setattr__(self, "thresholds", clean)
        object.__setattr__(
            self, "notes", {canonical_label(k): str(v) for k, v in self.notes.items()}
        )

    def __getitem__(self, name: str) -> float:
        return self.thresholds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.thresholds)

    def __len__(self) -> int:
        return len(self.thresholds)

    def describe(self) -> str:
        """One line: the rule and where it was applied, e.g. ``youden on val.csv``."""
        rule = f"sensitivity >= {self.target:g}" if self.method == "sensitivity" else self.method
        return f"{rule} on {self.source}" if self.source else rule

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "source": self.source,
            "thresholds": dict(self.thresholds),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "thresholds") -> Thresholds:
        """From :meth:`to_dict` output, or from a plain ``{label: threshold}`` mapping."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{where}: expected a JSON object of label -> threshold, got {type(data).__name__}"
            )
        if "thresholds" in data:
            return cls(
                dict(data["thresholds"]),
                str(data.get("method", "given")),
                data.get("target"),
                dict(data.get("notes", {})),
                str(data.get("source", "")),
            )
        return cls(dict(data), "given", source=where)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        """Read a JSON file written by :meth:`save` or holding ``{label: threshold}``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f'{path} is not valid JSON ({err}); write {{"Label": 0.5, ...}}'
            ) from err
        return cls.from_dict(data, where=str(path))


def format_pair(p: float, t: float | None) -> tuple[str, str]:
    """A probability and its threshold as text: 3 decimals, more (up to 9) where 3 would
    show two different numbers alike (``0.42`` as float32 is 0.41999998 < 0.42), so a
    shown p never seems to contradict its present/absent decision. ``t`` None -> ``""``."""
    digits = 3
    while t is not None and p != t and digits < 9 and f"{p:.{digits}f}" == f"{t:.{digits}f}":
        digits += 1
    return f"{p:.{digits}f}", "" if t is None else f"{t:.{digits}f}"


def headline(
    labels: Sequence[str],
    probabilities: Sequence[float] | np.ndarray,
    thresholds: Mapping[str, float | None],
    not_chest: bool | None = None,
) -> str:
    """The one headline of an image, shown by the text table, the web page, the JSON, the
    DICOM SR's summary and the Secondary Capture: the findings at or above their thresholds
    (in label order, each with its p as the table shows it), or that none is, naming the
    most probable finding and its threshold so that a reader sees how close it came::

        At or above threshold: Effusion 0.912, Edema 0.640
        No finding at or above its threshold (highest: Nodule 0.720, threshold 0.760)
        Not a chest X-ray: no findings reported

    Labels without a stored threshold are never called present (``thresholds`` maps a label
    to its threshold on the scale of ``probabilities``, or lacks it / holds None)."""
    if not_chest:
        return "Not a chest X-ray: no findings reported"
    probs = [float(p) for p in probabilities]
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} labels")
    present = [
        f"{n} {format_pair(p, thresholds[n])[0]}"
        for n, p in zip(labels, probs, strict=True)
        if thresholds.get(n) is not None and p >= float(thresholds[n])  # type: ignore[arg-type]
    ]
    if present:
        return "At or above threshold: " + ", ".join(present)
    if not probs:
        return "No finding at or above its threshold"
    i = int(np.argmax(probs))
    t = thresholds.get(labels[i])
    if t is None:
        if not any(thresholds.get(n) is not None for n in labels):
            return f"No thresholds stored (highest: {labels[i]} {probs[i]:.3f})"
        return f"No finding at or above its threshold (highest: {labels[i]} {probs[i]:.3f})"
    ps, ts = format_pair(probs[i], float(t))
    return f"No finding at or above its threshold (highest: {labels[i]} {ps}, threshold {ts})"
