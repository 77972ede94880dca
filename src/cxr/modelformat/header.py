"""The one validation of a model header, shared by the safetensors and the ONNX format.

A header is the JSON object a model file stores beside its weights (``"cxr"`` in the
safetensors metadata of a ``.safetensors`` file, in the ``metadata_props`` of a ``.onnx``
file)::

    {"format": "cxr-model" | "cxr-onnx", "format_version": 2,
     "spec": {...ModelSpec.to_dict()...},          # labels, backbone, head, preprocessing
     "thresholds": {"Effusion": 0.31, ...},        # optional decision thresholds (probabilities)
     "calibration": {...},                         # optional (cxr.calibration.Calibration)
     "ood": {...},                                 # optional not-a-chest-X-ray gate (cxr.gate)
     "tta": "none" | "flip" | "all",               # optional recommended test-time
                                                   # augmentation; absent = "none"
     "training": {...},                            # free summary of how it was trained
     "cxr_version": "0.1.0", ...}                  # and what the format adds

:func:`check_format` checks the format name and version, :func:`read_header` the shared
fields; both raise :class:`HeaderError` with the problem only, and each format adds the
file's name (so that both formats refuse the same bad field with the same words).
:func:`check_thresholds`, :func:`calibration_record` and :func:`check_tta` check what a
caller hands to a writer (plain ``ValueError``). Imports no torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxr.calibration import Calibration
from cxr.choices import TTA_MODES
from cxr.errors import CxrError
from cxr.gate import OodGate
from cxr.models.spec import ModelSpec

__all__ = [
    "Header",
    "HeaderError",
    "calibration_record",
    "check_format",
    "check_thresholds",
    "check_tta",
    "read_header",
]


class HeaderError(CxrError, ValueError):
    """A model header that cannot be used; the message is the problem alone (the file
    format that read it names the file)."""


@dataclass(frozen=True)
class Header:
    """The validated fields both model file formats share.

    Attributes:
        spec: labels, backbone, head and preprocessing.
        thresholds: label -> decision threshold (a probability in [0, 1]), in label order.
        training: the free training summary.
        cxr_version: the cxr that wrote the file.
        calibration: the probability calibration, or None.
        ood: the not-a-chest-X-ray gate, or None.
        tta: the test-time augmentation recommended for this model (``"none"``,
            ``"flip"`` or ``"all"``, :mod:`cxr.inference.tta`), used when a predictor is not
            told which; ``"none"`` when the file does not say.
    """

    spec: ModelSpec
    thresholds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    cxr_version: str = ""
    calibration: Calibration | None = None
    ood: OodGate | None = None
    tta: str = "none"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def stored(self) -> dict[str, Any]:
        """The fields in their stored (JSON-safe) form; ``calibration`` and ``ood`` only
        when present, ``tta`` only when not ``"none"``."""
        out: dict[str, Any] = {
            "spec": self.spec.to_dict(),
            "thresholds": dict(self.thresholds),
            "training": dict(self.training),
            "cxr_version": self.cxr_version,
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        if self.ood is not None:
            out["ood"] = self.ood.to_dict()
        if self.tta != "none":
            out["tta"] = self.tta
        return out


def check_format(meta: Any, name: str, newest: int, kind: str, version_name: str) -> int:
    """The ``format_version`` of header ``meta`` whose ``format`` must be ``name``.

    Args:
        newest: the newest version this cxr reads.
        kind: what the file is called in messages (``"cxr model file"``).
        version_name: what its version is called (``"format version"``).

    Raises:
        HeaderError: not a JSON object of that format, a version that is not an integer
            >= 1, or a newer version than ``newest``.
    """
    if not isinstance(meta, Mapping) or meta.get("format") != name:
        raise HeaderError(f"not a {kind} (metadata format is not {name!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HeaderError(f"invalid format_version {version!r} in its metadata")
    if version > newest:
        raise HeaderError(
            f"made by a newer cxr ({version_name} {version}; this cxr reads up to "
            f"{newest}); upgrade cxr"
        )
    return version


def check_thresholds(thresholds: Any, spec: ModelSpec) -> dict[str, float]:
    """``thresholds`` (label -> probability in [0, 1], a subset of the model's labels) as a
    plain dict in the model's label order; None is no thresholds.

    Raises:
        ValueError: not a mapping, labels the model lacks, or a value that is not a
            probability.
    """
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise ValueError(
            f"thresholds must be a mapping label -> probability, got {type(thresholds).__name__}"
        )
    unknown = sorted(set(thresholds) - set(spec.labels), key=str)
    if unknown:
        raise ValueError(
            f"thresholds name labels the model does not have: {unknown}; "
            f"its labels: {list(spec.labels)}"
        )
    out: dict[str, float] = {}
    for label in spec.labels:  # model label order
        if label in thresholds:
            value = thresholds[label]
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(float(value))
                or not 0.0 <= float(value) <= 1.0
            ):
                raise ValueError(
                    f"threshold for {label!r} must be a probability in [0, 1], got {value!r}"
                )
            out[label] = float(value)
    return out


def check_tta(tta: Any) -> str:
    """A recommended test-time augmentation as stored: one of ``"none"``, ``"flip"``,
    ``"all"``; None is ``"none"``.

    Raises:
        ValueError: anything else (True/False included: a file names its mode).
    """
    if tta is None:
        return "none"
    if not isinstance(tta, str) or tta not in TTA_MODES:
        raise ValueError(
            f"the recommended test-time augmentation (field 'tta') must be one of "
            f"{', '.join(repr(m) for m in TTA_MODES)}, got {tta!r}"
        )
    return tta


def calibration_record(calibration: Calibration, spec: ModelSpec) -> dict[str, Any]:
    """The stored form of ``calibration``, checked against the model's labels (a
    ValueError names what does not fit)."""
    if not isinstance(calibration, Calibration):
        raise ValueError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    data = calibration.to_dict()
    Calibration.from_dict(data, spec.labels)  # every map valid, labels the model's
    return data


def _spec(meta: Mapping[str, Any], training: Mapping[str, Any], v1: bool) -> ModelSpec:
    try:
        spec = meta.get("spec")
        if not isinstance(spec, dict):
            raise ValueError(f"the spec must be a JSON object, got {type(spec).__name__}")
        if v1:
            spec = ModelSpec.upgrade_v1(spec, str(training.get("fit", "pad")))
        return ModelSpec.from_dict(spec)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"its model spec cannot be used: {exc}") from None


def read_header(meta: Mapping[str, Any], v1_spec: bool = False) -> Header:
    """The shared fields of a header whose format :func:`check_format` accepted.

    Args:
        v1_spec: the spec is of the safetensors format 1 (input size, mean and std at its
            top; the fit in the training summary, ``pad`` when absent): read as format 2.

    Raises:
        HeaderError: the field that cannot be used and why.
    """
    training = meta.get("training") or {}
    if not isinstance(training, dict):
        raise HeaderError("its training summary is not a JSON object")
    spec = _spec(meta, training, v1_spec)
    try:
        thresholds = check_thresholds(meta.get("thresholds") or {}, spec)
    except ValueError as exc:
        raise HeaderError(f"its thresholds are invalid: {exc}") from None
    calibration = None
    if meta.get("calibration") is not None:
        try:
            calibration = Calibration.from_dict(meta["calibration"], spec.labels)
        except (TypeError, ValueError) as exc:
            raise HeaderError(f"its calibration is invalid: {exc}") from None
    ood = None
    if meta.get("ood") is not None:
        try:
            ood = OodGate.from_dict(meta["ood"])
        except (TypeError, ValueError) as exc:
            raise HeaderError(f"its not-a-chest-X-ray gate (ood) is invalid: {exc}") from None
    try:
        tta = check_tta(meta.get("tta"))
    except ValueError as exc:
        raise HeaderError(f"{exc}; use a model file written by cxr") from None
    return Header(
        spec, thresholds, training, str(meta.get("cxr_version", "")), calibration, ood, tta
    )
