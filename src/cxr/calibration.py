"""Post-hoc calibration: probabilities a reader can take at face value.

Models trained with imbalance-weighted losses score every finding too high. A calibration
map, fitted per label on validation predictions, turns the model's probability ``p`` into a
calibrated one without changing its ranking (every map is strictly increasing, so each
label's AUC is unchanged and a threshold ``t`` on ``p`` makes the same decisions as
``map(t)`` on the calibrated scale):

- ``temperature``: ``sigmoid(logit(p) / T)``, one parameter ``T > 0``;
- ``platt`` (default): ``sigmoid(a * logit(p) + b)`` with ``a > 0`` (logistic regression
  on the logit, Platt's smoothed targets);
- ``isotonic``: pool-adjacent-violators blocks placed at their mean probability, blended
  with ``p`` at 1e-3 and interpolated linearly, so that it is strictly increasing; for large
  validation sets (thousands of images per label).

Labels with fewer than ``min_positives`` positive (or negative) validation images get the
shared temperature fitted on all labels pooled, and a note says so. Numpy only: this module
imports neither torch nor scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.choices import CALIBRATIONS

__all__ = [
    "CALIBRATION_METHODS",
    "Calibration",
    "LabelMap",
    "fit_calibration",
]

#: The fitting methods (:data:`cxr.choices.CALIBRATIONS` without "none").
CALIBRATION_METHODS: tuple[str, ...] = tuple(c for c in CALIBRATIONS if c != "none")
_EPS = 1e-7
_ISO_BLEND = 1e-3  # isotonic fits are blended with the identity to be strictly increasing


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
        p = np.asarray(p, np.float64)
        if self.kind == "temperature":
            return _sigmoid(_logit(p) / float(self.params["t"]))
        if self.kind == "platt":
            return _sigmoid(float(self.params["a"]) * _logit(p) + float(self.params["b"]))
        if self.kind == "isotonic":
            return np.interp(p, self.params["x"], self.params["y"])
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
    """Per-label calibration maps (labels without a map are left as they are).

    Attributes:
        method: the method asked for.
        maps: label -> :class:`LabelMap`.
        source: where it was fitted (e.g. the validation cache), for the record and for
            refusing an evaluation on the same data.
        n_images: validation images it was fitted on.
        notes: e.g. labels that fell back to the shared temperature.
    """

    method: str
    maps: dict[str, LabelMap]
    source: str = ""
    n_images: int = 0
    notes: list[str] = field(default_factory=list)

    def apply(self, probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Calibrated float32 (N, L) of probabilities (N, L) whose columns are ``labels``;
        NaN stays NaN."""
        probs = np.asarray(probs)
        out = probs.astype(np.float32, copy=True)
        for j, name in enumerate(labels):
            m = self.maps.get(name)
            if m is not None:
                col = probs[:, j]
                ok = np.isfinite(col)
                out[ok, j] = m(col[ok]).astype(np.float32)
        return out

    def map(self, label: str, p: float) -> float:
        """One probability of ``label`` (the model's raw score, or a threshold on it) on the
        calibrated scale: the label's map applied, or ``p`` itself for a label without a map.
        The maps are strictly increasing, so a raw threshold ``t`` makes the same decisions
        on raw scores as ``map(label, t)`` on calibrated ones."""
        m = self.maps.get(label)
        return float(p) if m is None else float(m(np.array([p], np.float64))[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "source": self.source,
            "n_images": int(self.n_images),
            "notes": list(self.notes),
            "maps": {k: {"kind": m.kind, **m.params} for k, m in self.maps.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], labels: Sequence[str] = ()) -> Calibration:
        """Read :meth:`to_dict`'s form; every map is checked (ValueError naming the label)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"calibration must be a JSON object, got {type(data).__name__}")
        raw = data.get("maps")
        if not isinstance(raw, Mapping):
            raise ValueError("calibration.maps must be a JSON object label -> map")
        unknown = sorted(set(raw) - set(labels)) if labels else []
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
        return cls(
            method=str(data.get("method", "")),
            maps=maps,
            source=str(data.get("source", "")),
            n_images=int(data.get("n_images", 0) or 0),
            notes=[str(n) for n in data.get("notes", [])],
        )


# fitting -------------------------------------------------------------------------------
def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, z) - y * z))


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T minimising the log-loss of sigmoid(logit / T) (golden-section on log T)."""
    lo, hi = math.log(0.05), math.log(50.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits / math.exp(a), y), _nll(logits / math.exp(b), y)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits / math.exp(a), y)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits / math.exp(b), y)
    return math.exp((lo + hi) / 2)


def _platt_loss(w: np.ndarray, x: np.ndarray, target: np.ndarray, ridge: float) -> float:
    z = x @ w
    return float(np.sum(np.logaddexp(0, z) - target * z) + 0.5 * ridge * np.sum(w * w))


def _fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit + b): Newton's method with step halving on Platt's
    smoothed targets and a small ridge, so that separable data (a model that ranks its
    validation set perfectly) still gives a finite, moderate slope."""
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = np.stack([logits, np.ones_like(logits)], axis=1)
    w = np.array([1.0, 0.0])
    ridge = 1e-3 * len(y)
    loss = _platt_loss(w, x, target, ridge)
    for _ in range(100):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - target) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = w - t * step
            new = _platt_loss(trial, x, target, ridge)
            if new <= loss:
                break
            t /= 2
        else:
            break
        w, loss = trial, new
        if np.abs(t * step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots of an isotonic fit of y on p: the pool-adjacent-violators blocks, each at its
    mean probability, blended with the identity (weight :data:`_ISO_BLEND`) and anchored
    at (0, 0) and (1, 1), so that the linear interpolation is strictly increasing."""
    order = np.argsort(p, kind="mergesort")
    xs, ys = p[order], y[order].astype(np.float64)
    values: list[float] = []
    weights: list[float] = []
    sums: list[float] = []  # sum of p in each block
    for xv, v in zip(xs, ys, strict=True):
        values.append(float(v))
        weights.append(1.0)
        sums.append(float(xv))
        while len(values) > 1 and values[-2] >= values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            sums[-2] += sums[-1]
            weights[-2] = w
            del values[-1], weights[-1], sums[-1]
    centres = np.array(sums) / np.array(weights)
    blended = (1 - _ISO_BLEND) * np.array(values) + _ISO_BLEND * centres
    keep = (centres > 0) & (centres < 1)
    x = np.concatenate([[0.0], centres[keep], [1.0]])
    v = np.concatenate([[0.0], blended[keep], [1.0]])
    return x.tolist(), np.clip(v, 0.0, 1.0).tolist()


def fit_calibration(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    method: str = "platt",
    min_positives: int = 10,
    source: str = "",
) -> Calibration:
    """Fit a calibration map per label on validation data.

    Args:
        labels: (N, L) 1/0/NaN (NaN rows skipped per label).
        probs: (N, L) the model's probabilities on the same images.
        names: the L label names.
        method: ``platt``, ``temperature`` or ``isotonic``.
        min_positives: labels with fewer positive or negative images use the shared
            temperature (fitted on all labels pooled).
        source: where the data came from (kept in the result).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    labels = np.asarray(labels, np.float64)
    probs = np.asarray(probs, np.float64)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(
            f"labels {labels.shape} and probs {probs.shape} must both be (N, L), L = {len(names)}"
        )
    known = np.isfinite(labels) & np.isfinite(probs)
    if not known.any():
        raise ValueError("no validation image has both a known label and a probability")
    shared_t = _fit_temperature(_logit(probs[known]), labels[known])
    maps: dict[str, LabelMap] = {}
    fallback = []
    for j, name in enumerate(names):
        ok = known[:, j]
        y, p = labels[ok, j], probs[ok, j]
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if min(n_pos, n_neg) < min_positives:
            maps[name] = LabelMap("temperature", {"t": shared_t})
            fallback.append(f"{name} ({n_pos} positive, {n_neg} negative)")
            continue
        if method == "temperature":
            maps[name] = LabelMap("temperature", {"t": _fit_temperature(_logit(p), y)})
        elif method == "platt":
            a, b = _fit_platt(_logit(p), y)
            if a > 1e-3:
                maps[name] = LabelMap("platt", {"a": a, "b": b})
            else:  # a label the model does not rank: keep the ranking, use the shared map
                maps[name] = LabelMap("temperature", {"t": shared_t})
                fallback.append(f"{name} (no increasing fit)")
        else:
            x, v = _fit_isotonic(p, y)
            maps[name] = LabelMap("isotonic", {"x": x, "y": v})
    notes = []
    if fallback:
        notes.append(
            f"shared temperature {shared_t:.3f} (all labels pooled) used for labels with fewer "
            f"than {min_positives} positive or negative validation images: " + ", ".join(fallback)
        )
    return Calibration(method, maps, source, int(len(labels)), notes)
