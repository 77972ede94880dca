"""The stored calibration: a per-label map, preceded by the training loss's prior shift.

A label's calibrated probability is ``map(sigmoid(logit(p) - shift))``: ``shift`` (log-odds,
0 when absent) undoes the constant that a class-weighted loss adds to the label's logits
(:func:`cxr.losses.prior_shift`), and the map is fitted on the shifted scores. Both steps
are strictly increasing, so ranking (AUC) and threshold decisions are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.choices import CALIBRATIONS

__all__ = ["CALIBRATION_METHODS", "Calibration", "LabelMap"]

#: The fitting methods (:data:`cxr.choices.CALIBRATIONS` without "none").
CALIBRATION_METHODS: tuple[str, ...] = tuple(c for c in CALIBRATIONS if c != "none")
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.clip(np.asarray(z, np.float64), -500.0, 500.0)  # exp stays finite
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class LabelMap:
    """One label's map. ``kind``: ``temperature`` (``t``), ``platt`` (``a``, ``b``) or
    ``isotonic`` (``x``, ``y``: knots, probabilities, non-decreasing)."""

    kind: str
    params: dict[str, Any]

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64, same shape) of probabilities ``p``."""
        p = np.asarray(p, np.float64)
        if self.kind == "isotonic":
            return np.interp(p, self.params["x"], self.params["y"])
        return self.on_logit(_logit(p))

    def on_logit(self, z: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) of log-odds ``z`` (``self(sigmoid(z))``,
        without the round trip for the maps on the logit)."""
        z = np.asarray(z, np.float64)
        if self.kind == "temperature":
            return _sigmoid(z / float(self.params["t"]))
        if self.kind == "platt":
            return _sigmoid(float(self.params["a"]) * z + float(self.params["b"]))
        if self.kind == "isotonic":
            return np.interp(_sigmoid(z), self.params["x"], self.params["y"])
        raise ValueError(f"unknown calibration map {self.kind!r}")

    def check(self, label: str) -> None:
        """Raise ValueError naming ``label`` unless the parameters make a strictly increasing
        map (what keeps AUC and threshold decisions)."""
        bad = ""
        if self.kind == "temperature":
            t = self.params.get("t")
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                bad = f"temperature must be a positive number, got {t!r}"
        elif self.kind == "platt":
            a, b = self.params.get("a"), self.params.get("b")
            ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b))
            if not ok or a <= 0:  # type: ignore[operator]
                bad = f"platt needs finite a > 0 and b, got a={a!r}, b={b!r}"
        elif self.kind == "isotonic":
            x = np.asarray(self.params.get("x", []), np.float64)
            y = np.asarray(self.params.get("y", []), np.float64)
            if (
                x.ndim != 1
                or x.shape != y.shape
                or len(x) < 2
                or not np.all(np.isfinite(x) & np.isfinite(y))
                or np.any(np.diff(x) < 0)
                or np.any(np.diff(y) < 0)
                or y.min() < 0
                or y.max() > 1
            ):
                bad = "isotonic needs increasing knots x and non-decreasing y in [0, 1]"
        else:
            bad = f"unknown map {self.kind!r}; one of {list(CALIBRATION_METHODS)}"
        if bad:
            raise ValueError(f"calibration of {label!r}: {bad}")


@dataclass
class Calibration:
    """Per-label calibration maps (labels without a map or shift are left as they are).

    Attributes:
        method: the method asked for.
        maps: label -> :class:`LabelMap`.
        source: where it was fitted (e.g. the validation cache), for the record and for
            refusing an evaluation on the same data.
        n_images: validation images it was fitted on.
        notes: e.g. labels that fell back to the shared slope.
        shift: label -> log-odds subtracted from the model's logit before the label's map
            (the prior shift of the training loss's class weights); absent labels: 0.
            Older files have none, and calibrate exactly as before.
    """

    method: str
    maps: dict[str, LabelMap]
    source: str = ""
    n_images: int = 0
    notes: list[str] = field(default_factory=list)
    shift: dict[str, float] = field(default_factory=dict)

    def _column(self, label: str, p: np.ndarray) -> np.ndarray | None:
        """``label``'s calibrated probabilities (float64) of raw ones ``p``; None when the
        label has neither a map nor a shift."""
        m = self.maps.get(label)
        s = float(self.shift.get(label, 0.0))
        if s == 0.0:
            return None if m is None else m(p)
        z = _logit(p) - s
        return _sigmoid(z) if m is None else m.on_logit(z)

    def apply(self, probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Calibrated float32 (N, L) of probabilities (N, L) whose columns are ``labels``;
        NaN stays NaN."""
        probs = np.asarray(probs)
        out = probs.astype(np.float32, copy=True)
        for j, name in enumerate(labels):
            col = probs[:, j]
            ok = np.isfinite(col)
            new = self._column(name, col[ok])
            if new is not None:
                out[ok, j] = new.astype(np.float32)
        return out

    def map(self, label: str, p: float) -> float:
        """One probability of ``label`` (the model's raw score, or a threshold on it) on the
        calibrated scale: the label's shift and map applied, or ``p`` itself for a label with
        neither. Both are strictly increasing, so a raw threshold ``t`` makes the same
        decisions on raw scores as ``map(label, t)`` on calibrated ones."""
        new = self._column(label, np.array([p], np.float64))
        return float(p) if new is None else float(new[0])

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "source": self.source,
            "n_images": int(self.n_images),
            "notes": list(self.notes),
            "maps": {k: {"kind": m.kind, **m.params} for k, m in self.maps.items()},
        }
        if self.shift:  # written only when there is one: older records stay as they were
            data["shift"] = {k: float(v) for k, v in self.shift.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], labels: Sequence[str] = ()) -> Calibration:
        """Read :meth:`to_dict`'s form; every map and shift is checked (ValueError naming the
        label). A record without ``shift`` (older files) has none."""
        if not isinstance(data, Mapping):
            raise ValueError(f"calibration must be a JSON object, got {type(data).__name__}")
        raw = data.get("maps")
        if not isinstance(raw, Mapping):
            raise ValueError("calibration.maps must be a JSON object label -> map")
        shift = data.get("shift", {})
        if not isinstance(shift, Mapping):
            raise ValueError("calibration.shift must be a JSON object label -> log-odds")
        unknown = sorted((set(raw) | set(shift)) - set(labels)) if labels else []
        if unknown:
            raise ValueError(f"calibration names labels the model does not have: {unknown}")
        maps = {}
        for name, entry in raw.items():
            if not isinstance(entry, Mapping) or "kind" not in entry:
                raise ValueError(f"calibration of {name!r} is not a map with a kind")
            params = {k: v for k, v in entry.items() if k != "kind"}
            m = LabelMap(str(entry["kind"]), params)
            m.check(name)
            maps[str(name)] = m
        for name, s in shift.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(
                    f"calibration.shift of {name!r} must be a finite number (log-odds), got {s!r}"
                )
        return cls(
            method=str(data.get("method", "")),
            maps=maps,
            source=str(data.get("source", "")),
            n_images=int(data.get("n_images", 0) or 0),
            notes=[str(n) for n in data.get("notes", [])],
            shift={str(k): float(v) for k, v in shift.items()},
        )
