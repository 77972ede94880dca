"""One self-describing model file: safetensors weights + cxr metadata, tamper-evident.

Layout: a standard safetensors file whose tensors are the classifier's ``state_dict()``
and whose header metadata holds one entry, ``"cxr"``, a JSON object::

    {"format": "cxr-model", "format_version": 2,
     "spec": {...ModelSpec.to_dict()...},          # labels, backbone, head, preprocessing
     "thresholds": {"Effusion": 0.31, ...},        # optional decision thresholds (probabilities)
     "calibration": {...},                         # optional (cxr.calibration.Calibration)
     "ood": {...},                                 # optional not-a-chest-X-ray gate (cxr.gate)
     "tta": "flip",                                # optional recommended test-time
                                                   # augmentation (none | flip | all)
     "training": {...},                            # free summary of how it was trained
     "cxr_version": "0.1.0",
     "sha256": "<hex>"}

``sha256`` covers every tensor (name, dtype, shape, bytes, in name order) and the rest of
the metadata, so a changed byte anywhere meaningful is detected on :func:`load_model`.
It protects against damage, not against a deliberate edit (anyone can recompute it). When a
signing key is configured (:mod:`cxr.signing`), the header also holds ``"cxr_signature"``,
an HMAC-SHA-256 of ``sha256`` under that key, and :func:`load_model` refuses files that are
unsigned or signed with another key. Whatever the key, loading refuses an input size outside
32-2048, labels that are empty or repeated, and weights that are NaN or infinite.
Nothing is ever unpickled: files are read with safetensors and ``json`` only.

Format versions: 2 keeps the preprocessing record (size, fit, intensity, mean, std) in the
spec. Files of version 1 (input size, mean and std at the top of the spec; the fit, when
recorded, in the training summary) still load: they are read as version 2 with the fit of
their training summary, ``pad`` when it has none.

This module is the API; the format itself (header checks, digest, signature, atomic write)
lives in :mod:`cxr.modelformat`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxr.calibration import Calibration
from cxr.gate import OodGate
from cxr.modelformat.header import Header, calibration_record, check_thresholds, check_tta
from cxr.modelformat.safetensors_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelFileError,
    read_file_header,
    read_raw,
    read_tensors,
    write_model_file,
)
from cxr.models.classifier import ChestClassifier
from cxr.models.spec import ModelSpec
from cxr.signing import KEY_ENV, KEY_FILE_ENV, SigningError, signing_key

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelFileError",
    "ModelInfo",
    "load_model",
    "read_model_info",
    "save_model",
    "sign_model",
    "with_calibration",
    "with_ood",
    "with_thresholds",
    "with_tta",
]


@dataclass(frozen=True)
class ModelInfo(Header):
    """A model file's metadata (read without building the model or checking the hash): its
    header fields (:class:`~cxr.modelformat.header.Header`: spec, thresholds, training,
    cxr_version, calibration, gate ``ood``, recommended ``tta``) and the file's own.

    Attributes:
        path: the file.
        format_version: the format version it was written in (1 is read as 2).
        sha256: its integrity digest.
        signed_by: the key id of the key that signed it (:func:`cxr.signing.key_id`), ""
            when unsigned.
    """

    path: Path = Path()
    format_version: int = FORMAT_VERSION
    sha256: str = ""
    signed_by: str = ""


@dataclass
class LoadedModel:
    """A loaded, verified model (in eval mode) and its metadata."""

    model: ChestClassifier
    spec: ModelSpec
    thresholds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    cxr_version: str = ""
    path: Path = Path()
    #: the probability calibration fitted on validation (None: uncalibrated)
    calibration: Calibration | None = None
    #: the not-a-chest-X-ray gate (:mod:`cxr.gate`; None: the file has none)
    ood: OodGate | None = None
    #: the recommended test-time augmentation (none | flip | all; :mod:`cxr.inference.tta`)
    tta: str = "none"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels


# helpers ---------------------------------------------------------------------------------
def _info(path: Path, meta: dict[str, Any], signature: dict[str, Any] | None) -> ModelInfo:
    return ModelInfo(
        **vars(read_file_header(path, meta)),
        path=path,
        format_version=int(meta["format_version"]),
        sha256=str(meta.get("sha256", "")),
        signed_by=str(signature.get("key_id", "")) if signature else "",
    )


def _read_verified(path: Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """The file's metadata and its tensors, verified (digest and signature)."""
    raw, meta, signature = read_raw(path)
    tensors = read_tensors(path, raw, meta, signature)
    return _info(path, meta, signature), tensors


def _label_difference(expected: Sequence[str], found: Sequence[str]) -> str:
    missing = [x for x in expected if x not in found]
    extra = [x for x in found if x not in expected]
    if not missing and not extra:
        return (
            f"same labels in another order: the model has {list(found)}, expected {list(expected)}"
        )
    parts = []
    if missing:
        parts.append(f"missing from the model: {missing}")
    if extra:
        parts.append(f"in the model but not expected: {extra}")
    return "; ".join(parts)


# public API ------------------------------------------------------------------------------
def save_model(
    path: str | os.PathLike[str],
    model: ChestClassifier,
    thresholds: Mapping[str, float] | None = None,
    training: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    tta: str | None = None,
) -> Path:
    """Write ``model`` (weights, spec, thresholds, training summary) to ``path`` atomically
    (temporary file in the same folder, then rename). Returns the path.

    Args:
        thresholds: label -> decision threshold on the (uncalibrated) probability, in
            [0, 1]; a subset of the model's labels is fine.
        training: JSON-serialisable summary (numpy scalars/arrays and paths are converted).
        calibration: a probability calibration fitted on validation
            (:func:`cxr.calibration.fit_calibration`).
        tta: the test-time augmentation recommended for this model, ``"none"``, ``"flip"``
            or ``"all"`` (:mod:`cxr.inference.tta`); a predictor not told otherwise uses
            it. None = ``"none"`` (stored only when not ``"none"``).
    """
    from cxr import __version__

    if not isinstance(model, ChestClassifier):
        raise TypeError(f"save_model needs a ChestClassifier, got {type(model).__name__}")
    tta = check_tta(tta)
    spec = model.spec
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "thresholds": check_thresholds(thresholds, spec),
        "training": dict(training or {}),
        "cxr_version": __version__,
    }
    if calibration is not None:
        meta["calibration"] = calibration_record(calibration, spec)
    if tta != "none":
        meta["tta"] = tta
    return write_model_file(Path(path), tensors, meta)


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Metadata of a model file without building the model (the hash is not checked)."""
    path = Path(path)
    _, meta, signature = read_raw(path)
    return _info(path, meta, signature)


def load_model(
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Read, verify and build the model in a file; the model is in eval mode on ``device``.

    Args:
        labels: when given, the labels (in order) the caller needs; other labels are refused
            with the difference listed.

    Raises:
        ModelFileError: missing, not a cxr model file, truncated, tampered, newer format,
            unknown backbone, other labels, weights that do not fit the spec or are not
            finite; with a signing key configured (:mod:`cxr.signing`), unsigned or signed
            with another key.
    """
    path = Path(path)
    info, tensors = _read_verified(path)
    if labels is not None and tuple(labels) != info.spec.labels:
        raise ModelFileError(
            path, f"made for other labels: {_label_difference(list(labels), info.spec.labels)}"
        )
    with torch.device("meta"):
        model = ChestClassifier(info.spec)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelFileError(path, f"its weights do not fit its model spec: {exc}") from None
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ModelFileError(path, f"its weights lack {leftover[:5]}")
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(
            path, f"its weights hold NaN or infinite values (e.g. {bad[0]}); use an intact model"
        )
    model = model.to(device).eval()
    return LoadedModel(
        model,
        info.spec,
        info.thresholds,
        info.training,
        info.cxr_version,
        path,
        info.calibration,
        info.ood,
        info.tta,
    )


def with_thresholds(
    path: str | os.PathLike[str],
    thresholds: Mapping[str, float] | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with new thresholds (replacing the old ones), verified first.

    Writes to ``out`` when given, else replaces ``path`` atomically. Returns the path written.
    """
    return _update(path, out, "thresholds", lambda spec: check_thresholds(thresholds, spec))


def with_calibration(
    path: str | os.PathLike[str],
    calibration: Calibration | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with a new probability calibration (None removes it), verified
    first; thresholds and everything else are kept. Writes to ``out`` when given, else
    replaces ``path`` atomically. Returns the path written."""
    return _update(
        path,
        out,
        "calibration",
        lambda spec: None if calibration is None else calibration_record(calibration, spec),
    )


def with_ood(
    path: str | os.PathLike[str],
    gate: OodGate | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with a not-a-chest-X-ray gate (:func:`cxr.ood.fit_model_gate`;
    None removes it), verified first; everything else is kept. Writes to ``out`` when
    given, else replaces ``path`` atomically. Returns the path written."""

    if gate is not None and not isinstance(gate, OodGate):
        raise ValueError(
            f"gate for model file {path} must be an OodGate, got {type(gate).__name__}"
        )
    return _update(path, out, "ood", lambda spec: None if gate is None else gate.to_dict())


def with_tta(
    path: str | os.PathLike[str],
    tta: str | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with a new recommended test-time augmentation (``"none"``,
    ``"flip"``, ``"all"``; None or ``"none"`` removes it), verified first; everything else
    is kept. Writes to ``out`` when given, else replaces ``path`` atomically. Returns the
    path written."""

    def stored(spec: ModelSpec) -> str | None:
        mode = check_tta(tta)
        return None if mode == "none" else mode

    return _update(path, out, "tta", stored)


def _update(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    name: str,
    stored: Callable[[ModelSpec], Any],
) -> Path:
    """Rewrite a verified model file with header field ``name`` replaced by
    ``stored(spec)`` (its stored form; None removes it); a ValueError of ``stored`` names
    the file."""
    path = Path(path)
    info, tensors = _read_verified(path)
    try:
        value = stored(info.spec)
    except ValueError as exc:
        raise ValueError(f"{name} for model file {path}: {exc}") from None
    return _rewrite(path, out, info, tensors, **{name: value})


def _rewrite(
    path: Path,
    out: str | os.PathLike[str] | None,
    info: ModelInfo,
    tensors: dict[str, torch.Tensor],
    **stored: Any,
) -> Path:
    """Write ``info`` and ``tensors`` again (in the current format) with the header fields
    ``stored`` (``thresholds``, ``calibration``, ``ood``, ``tta``: stored forms; None
    removes an optional one) replacing the file's."""
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **info.stored(),
    }
    for name, value in stored.items():
        if value is None:
            meta.pop(name, None)
        else:
            meta[name] = value
    return write_model_file(Path(out) if out is not None else path, tensors, meta)


def sign_model(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
) -> Path:
    """Sign a model file with ``key`` (default: the configured key, :mod:`cxr.signing`).

    The file is verified first (its SHA-256; an existing signature is replaced), then
    written to ``out`` when given, else in place, atomically. Returns the path written.

    Raises:
        SigningError: no key given and none configured.
        ModelFileError: the file is damaged or not a cxr model file.
    """
    path = Path(path)
    key = key if key is not None else signing_key()
    if key is None:
        raise SigningError(
            f"no signing key: set {KEY_ENV} (the key) or {KEY_FILE_ENV} (a file holding it)"
        )
    raw, meta, signature = read_raw(path)
    tensors = read_tensors(path, raw, meta, signature, check_signature=False)
    _info(path, meta, signature)  # a header this cxr can use
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return write_model_file(Path(out) if out is not None else path, tensors, body, key)
