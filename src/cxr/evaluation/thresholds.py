"""Operating thresholds per label, chosen on validation data and applied unchanged to test.

A threshold ``t`` calls an image positive when its probability is ``>= t``. Two rules:

- ``"youden"`` (default): maximise sensitivity + specificity - 1
  (:func:`cxr.evaluation.metrics.youden_threshold`);
- ``"sensitivity"``: the highest threshold reaching a target sensitivity, e.g. 0.9
  (:func:`cxr.evaluation.metrics.threshold_for_sensitivity`).

A label whose validation data lack a class gets **no** threshold, and a note saying why;
its operating-point metrics are then reported as absent, never computed from the test set.
:class:`Thresholds` saves to / loads from JSON (``{"method", "target", "thresholds",
"notes"}``), the layout a model file stores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.choices import THRESHOLD_METHODS
from cxr.evaluation.metrics import threshold_for_sensitivity, youden_threshold
from cxr.labels import canonical_label

METHODS: tuple[str, ...] = THRESHOLD_METHODS


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

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "target": self.target,
            "source": self.source,
            "thresholds": dict(self.thresholds),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "thresholds") -> Thresholds:
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


def choose_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    method: str = "youden",
    target: float = 0.9,
    source: str = "",
) -> Thresholds:
    """Choose one threshold per label on validation data.

    Args:
        labels: (N, L) 1/0/NaN; NaN (unknown) rows are skipped for that label.
        probs: (N, L) probabilities; NaN rows are skipped for that label.
        names: the L label names.
        method: ``"youden"`` or ``"sensitivity"`` (then ``target`` in (0, 1]).
        source: where the validation data came from (kept in the result).

    Returns:
        :class:`Thresholds` (a ``Mapping[str, float]``); labels lacking positives (or, for
        Youden, negatives) are absent from it and explained in ``.notes``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
        raise ValueError(
            f"labels {labels.shape} and probs {probs.shape} must both be (N, L) with L = "
            f"{len(names)} label names"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "sensitivity" and not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    for j, name in enumerate(names):
        ok = ~np.isnan(labels[:, j]) & ~np.isnan(probs[:, j])
        y, p = labels[ok, j], probs[ok, j]
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or (method == "youden" and n_neg == 0):
            missing = "positive" if n_pos == 0 else "negative"
            notes[name] = (
                f"no threshold: the validation data have no {missing} images "
                f"for {name} ({n_pos} positive, {n_neg} negative)"
            )
            continue
        if method == "youden":
            values[name] = youden_threshold(y, p)
        else:
            values[name] = threshold_for_sensitivity(y, p, target)
    return Thresholds(
        values, method, float(target) if method == "sensitivity" else None, notes, source
    )
