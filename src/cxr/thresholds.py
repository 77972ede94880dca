"""The record of operating thresholds per label: what was chosen, how, and on what data.

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.labels import canonical_label

__all__ = ["Thresholds"]


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
