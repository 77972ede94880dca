"""The result of one image, as the SR and the SC take it, checked once at construction.

:class:`ImageResult` holds what one prediction of ``cxr predict`` says about one image:
the model's labels, the calibrated probabilities, the thresholds, the decisions
(probability >= threshold), the not-a-chest-X-ray gate's flag and the model's identity.
Both writers (:func:`cxr.dicomout.sr.build_sr`, :func:`cxr.dicomout.sc.build_sc`) read
only this record, so the SR, the SC and every other rendering show one result.

Research use only: the outputs are not a diagnosis.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxr.errors import CxrError
from cxr.thresholds import format_pair, headline

__all__ = ["DicomOutError", "ImageResult", "MissingExtraError", "format_pair"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
# DICOM LO (Code Meaning, Algorithm Name/Version items are text but viewers show ~64)
_MAX_TEXT = 64


class DicomOutError(CxrError, ValueError):
    """A result or a source image that cannot become a DICOM result object."""


class MissingExtraError(CxrError, ImportError):
    """highdicom (the ``dicom-node`` extra) is not installed."""


def require_highdicom() -> Any:
    """Import highdicom, or raise :class:`MissingExtraError` saying how to install it."""
    try:
        import highdicom
    except ImportError as err:  # pragma: no cover - the extra is installed in the tests
        raise MissingExtraError(
            "writing DICOM results needs highdicom: pip install 'cxr[dicom-node]'"
        ) from err
    return highdicom


@dataclass(frozen=True)
class ImageResult:
    """One image's result (all sequences in the model's label order, length L >= 1).

    - ``labels``: label names, unique non-empty strings of at most 64 characters.
    - ``probabilities``: calibrated probabilities, floats in [0, 1] (unitless).
    - ``thresholds``: the model's decision threshold per label, in [0, 1], or None where
      the model stores none (that label then has no present/absent decision).
    - ``decisions``: ``probability >= threshold`` per label (None where no threshold);
      must agree with the probabilities and thresholds.
    - ``not_chest``: the not-a-chest-X-ray gate's flag (True: flagged, the SR holds no
      findings); None when the model has no gate.
    - ``model_name``, ``model_version``: non-empty, at most 64 characters.
    - ``model_sha256``: the model file's SHA-256, 64 lower-case hex digits.

    Raises :class:`DicomOutError` naming the field when any of these does not hold.
    """

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    decisions: tuple[bool | None, ...]
    not_chest: bool | None
    model_name: str
    model_version: str
    model_sha256: str

    def __post_init__(self) -> None:
        n = len(self.labels)
        if n == 0:
            raise DicomOutError("ImageResult.labels: at least one label is needed")
        for field in ("probabilities", "thresholds", "decisions"):
            if len(getattr(self, field)) != n:
                raise DicomOutError(
                    f"ImageResult.{field}: {len(getattr(self, field))} values for {n} labels"
                )
        seen: set[str] = set()
        for name in self.labels:
            if not isinstance(name, str) or not name.strip() or len(name) > _MAX_TEXT:
                raise DicomOutError(
                    f"ImageResult.labels: {name!r} is not a non-empty name of at most "
                    f"{_MAX_TEXT} characters"
                )
            if name in seen:
                raise DicomOutError(f"ImageResult.labels: {name!r} appears twice")
            seen.add(name)
        for name, p in zip(self.labels, self.probabilities, strict=True):
            _check_unit("probabilities", name, p)
        for name, p, t, d in zip(
            self.labels, self.probabilities, self.thresholds, self.decisions, strict=True
        ):
            if t is None:
                if d is not None:
                    raise DicomOutError(
                        f"ImageResult.decisions: {name!r} has a decision but no threshold"
                    )
                continue
            _check_unit("thresholds", name, t)
            if not isinstance(d, bool) or d != (p >= t):
                raise DicomOutError(
                    f"ImageResult.decisions: {name!r} is {d!r} but probability {p!r} "
                    f"{'>=' if p >= t else '<'} threshold {t!r}"
                )
        if self.not_chest not in (None, True, False):
            raise DicomOutError(
                f"ImageResult.not_chest: True, False or None, got {self.not_chest!r}"
            )
        for field in ("model_name", "model_version"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
                raise DicomOutError(
                    f"ImageResult.{field}: a non-empty text of at most {_MAX_TEXT} "
                    f"characters, got {value!r}"
                )
        if not isinstance(self.model_sha256, str) or not _SHA256.fullmatch(self.model_sha256):
            raise DicomOutError(
                "ImageResult.model_sha256: 64 lower-case hex digits (the model file's "
                f"SHA-256), got {self.model_sha256!r}"
            )

    @classmethod
    def from_prediction(
        cls,
        labels: Sequence[str],
        probabilities: Sequence[float] | Any,
        thresholds: Mapping[str, float],
        *,
        not_chest: bool | None,
        model_name: str,
        model_version: str,
        model_sha256: str,
    ) -> ImageResult:
        """Build a record from a prediction: ``probabilities`` float (L,) (a numpy array
        or a sequence), ``thresholds`` label -> threshold (labels missing from it have
        none); the decisions are computed here (``p >= threshold``)."""
        labels_t = tuple(labels)
        try:
            probs = tuple(float(p) for p in probabilities)
        except (TypeError, ValueError) as err:
            raise DicomOutError(f"ImageResult.probabilities: not numbers ({err})") from err
        ts: tuple[float | None, ...] = tuple(
            None if thresholds.get(n) is None else float(thresholds[n]) for n in labels_t
        )
        decisions = tuple(
            None if t is None else bool(p >= t) for p, t in zip(probs, ts, strict=False)
        )
        return cls(
            labels=labels_t,
            probabilities=probs,
            thresholds=ts,
            decisions=decisions,
            not_chest=None if not_chest is None else bool(not_chest),
            model_name=model_name,
            model_version=model_version,
            model_sha256=model_sha256,
        )

    @property
    def present(self) -> tuple[str, ...]:
        """Labels at or above their thresholds, in label order (empty when gated)."""
        if self.not_chest:
            return ()
        return tuple(n for n, d in zip(self.labels, self.decisions, strict=True) if d)

    def headline(self) -> str:
        """The one headline of this image (:func:`cxr.thresholds.headline`, as the
        table, the page and the JSON show it): the findings at or above their thresholds,
        or that none is, or that the image is not a chest X-ray."""
        return headline(
            self.labels,
            self.probabilities,
            dict(zip(self.labels, self.thresholds, strict=True)),
            not_chest=self.not_chest,
        )


def _check_unit(field: str, name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise DicomOutError(f"ImageResult.{field}: {name!r} is {value!r}, not a number in [0, 1]")
