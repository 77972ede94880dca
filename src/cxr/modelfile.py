"""One self-describing model file: safetensors weights + cxr metadata, tamper-evident.

Layout: a standard safetensors file whose tensors are the classifier's ``state_dict()``
and whose header metadata holds one entry, ``"cxr"``, a JSON object::

    {"format": "cxr-model", "format_version": 2,
     "spec": {...ModelSpec.to_dict()...},          # labels, backbone, head, preprocessing
     "thresholds": {"Effusion": 0.31, ...},        # optional decision thresholds (probabilities)
     "calibration": {...},                         # optional (cxr.calibration.Calibration)
     "ood": {...},                                 # optional not-a-chest-X-ray gate (cxr.ood)
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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cxr.calibration import Calibration
from cxr.models.classifier import ChestClassifier
from cxr.models.spec import ModelSpec
from cxr.ood import OodGate
from cxr.signing import SigningError, signature_for, signing_key, verify_signature

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
]

FORMAT_NAME = "cxr-model"
FORMAT_VERSION = 2
_META_KEY = "cxr"
_SIGNATURE_KEY = "cxr_signature"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


class ModelFileError(Exception):
    """A model file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"model file {self.path}: {problem}")


@dataclass(frozen=True)
class ModelInfo:
    """A model file's metadata (read without building the model or checking the hash)."""

    path: Path
    spec: ModelSpec
    thresholds: dict[str, float]
    training: dict[str, Any]
    cxr_version: str
    format_version: int
    sha256: str
    #: the key id of the key that signed it (:func:`cxr.signing.key_id`), "" when unsigned
    signed_by: str = ""
    #: the probability calibration fitted on validation (None: uncalibrated)
    calibration: Calibration | None = None
    #: the not-a-chest-X-ray gate (:mod:`cxr.ood`; None: the file has none)
    ood: OodGate | None = None


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
    #: the not-a-chest-X-ray gate (:mod:`cxr.ood`; None: the file has none)
    ood: OodGate | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels


# helpers ---------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical(meta: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_canonical(meta))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype!s}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_thresholds(thresholds: Mapping[str, float] | None, spec: ModelSpec) -> dict[str, float]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise ValueError(
            f"thresholds must be a mapping label -> probability, got {type(thresholds).__name__}"
        )
    unknown = sorted(set(thresholds) - set(spec.labels))
    if unknown:
        raise ValueError(
            f"thresholds name labels the model does not have: {unknown}; "
            f"its labels: {list(spec.labels)}"
        )
    out: dict[str, float] = {}
    for label in spec.labels:  # model label order
        if label in thresholds:
            value = float(thresholds[label])
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"threshold for {label!r} must be a probability in [0, 1], "
                    f"got {thresholds[label]!r}"
                )
            out[label] = value
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], key: bytes | None = None
) -> Path:
    """Write atomically; signed with ``key``, else with the configured key (if any)."""
    key = key if key is not None else signing_key()
    meta = json.loads(json.dumps(meta, default=_json_default))  # JSON-safe, as it will be read
    meta["sha256"] = _digest(meta, tensors)
    header = {_META_KEY: json.dumps(meta)}
    if key is not None:
        header[_SIGNATURE_KEY] = json.dumps(signature_for(meta["sha256"], key))
    _write_atomic(path, st_save(tensors, metadata=header))
    return path


def _read_raw(path: Path) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:
    """File bytes, the parsed cxr metadata and signature (None when unsigned), with
    structural checks."""
    if not path.exists():
        raise ModelFileError(path, "not found; check the path")
    if not path.is_file():
        raise ModelFileError(path, "is not a file")
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ModelFileError(path, f"not a safetensors model file (only {len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n < 2 or n > _MAX_HEADER:
        raise ModelFileError(
            path,
            "not a safetensors model file (no valid header); "
            "cxr model files are .safetensors files written by cxr",
        )
    if 8 + n > len(raw):
        raise ModelFileError(
            path,
            f"truncated: its header needs {8 + n} bytes but the file has {len(raw)}; copy it again",
        )
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(path, "not a safetensors model file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a safetensors model file (header is not a JSON object)")
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in offsets)
        ):
            raise ModelFileError(
                path, f"bad header: tensor {name!r} has no valid data_offsets [start, end]"
            )
        ends.append(offsets[1])
    needed = 8 + n + max(ends, default=0)
    if needed > len(raw):
        raise ModelFileError(
            path,
            f"truncated: its tensors need {needed} bytes but the file has {len(raw)}; "
            "copy it again",
        )
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(path, "bad header: __metadata__ is not a JSON object")
    text = metadata.get(_META_KEY)
    if text is None:
        raise ModelFileError(
            path,
            "not a cxr model file: a safetensors file without cxr metadata "
            "(save models with cxr.modelfile.save_model)",
        )
    if not isinstance(text, str):
        raise ModelFileError(path, f"bad header: __metadata__.{_META_KEY} is not a string")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            path, f"cxr metadata is not valid JSON ({exc}); the file was edited or damaged"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(path, f"not a cxr model file (metadata format is not {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(path, f"invalid format_version {version!r} in its metadata")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"made by a newer cxr (format version {version}; this cxr reads up to "
            f"{FORMAT_VERSION}); upgrade cxr",
        )
    signature = metadata.get(_SIGNATURE_KEY)
    if signature is not None:
        try:
            signature = json.loads(signature) if isinstance(signature, str) else None
        except json.JSONDecodeError:
            signature = None
        if not isinstance(signature, dict):
            raise ModelFileError(path, f"bad header: __metadata__.{_SIGNATURE_KEY} is not valid")
    return raw, meta, signature


def _info(path: Path, meta: dict[str, Any], signature: dict[str, Any] | None) -> ModelInfo:
    training = meta.get("training") or {}
    if not isinstance(training, dict):
        raise ModelFileError(path, "its training summary is not a JSON object")
    try:
        spec_dict = meta.get("spec")
        if not isinstance(spec_dict, dict):
            raise ValueError(f"the spec must be a JSON object, got {type(spec_dict).__name__}")
        if meta["format_version"] == 1:
            spec_dict = ModelSpec.upgrade_v1(spec_dict, str(training.get("fit", "pad")))
        spec = ModelSpec.from_dict(spec_dict)
    except ValueError as exc:
        raise ModelFileError(path, f"its model spec cannot be used: {exc}") from None
    try:
        thresholds = _check_thresholds(meta.get("thresholds") or {}, spec)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"its thresholds are invalid: {exc}") from None
    calibration = None
    if meta.get("calibration") is not None:
        try:
            calibration = Calibration.from_dict(meta["calibration"], spec.labels)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(path, f"its calibration is invalid: {exc}") from None
    ood = None
    if meta.get("ood") is not None:
        try:
            ood = OodGate.from_dict(meta["ood"])
        except (TypeError, ValueError) as exc:
            raise ModelFileError(
                path, f"its not-a-chest-X-ray gate (ood) is invalid: {exc}"
            ) from None
    return ModelInfo(
        path,
        spec,
        thresholds,
        training,
        str(meta.get("cxr_version", "")),
        int(meta["format_version"]),
        str(meta.get("sha256", "")),
        str(signature.get("key_id", "")) if signature else "",
        calibration,
        ood,
    )


def _read_verified(
    path: Path, check_signature: bool = True
) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    raw, meta, signature = _read_raw(path)
    try:
        tensors = st_load(raw)
    except Exception as exc:  # safetensors' errors become one clear message
        raise ModelFileError(
            path, f"its tensors cannot be read ({exc}); the file is damaged"
        ) from exc
    expected = meta.get("sha256")
    if not isinstance(expected, str) or not expected:
        raise ModelFileError(
            path, "has no sha256 integrity field; it was not written by cxr.modelfile.save_model"
        )
    if _digest(meta, tensors) != expected:
        raise ModelFileError(
            path,
            "failed its integrity check (SHA-256 mismatch): the weights or metadata were changed "
            "after it was saved (tampered or corrupted); use an intact copy",
        )
    if check_signature:
        try:
            verify_signature(expected, signature, signing_key())
        except SigningError as exc:
            raise ModelFileError(path, str(exc)) from None
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
) -> Path:
    """Write ``model`` (weights, spec, thresholds, training summary) to ``path`` atomically
    (temporary file in the same folder, then rename). Returns the path.

    Args:
        thresholds: label -> decision threshold on the (uncalibrated) probability, in
            [0, 1]; a subset of the model's labels is fine.
        training: JSON-serialisable summary (numpy scalars/arrays and paths are converted).
        calibration: a probability calibration fitted on validation
            (:func:`cxr.calibration.fit_calibration`).
    """
    from cxr import __version__

    if not isinstance(model, ChestClassifier):
        raise TypeError(f"save_model needs a ChestClassifier, got {type(model).__name__}")
    spec = model.spec
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "thresholds": _check_thresholds(thresholds, spec),
        "training": dict(training or {}),
        "cxr_version": __version__,
    }
    if calibration is not None:
        meta["calibration"] = _check_calibration(calibration, spec)
    return _write(Path(path), tensors, meta)


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Metadata of a model file without building the model (the hash is not checked)."""
    path = Path(path)
    _, meta, signature = _read_raw(path)
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
    )


def with_thresholds(
    path: str | os.PathLike[str],
    thresholds: Mapping[str, float] | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with new thresholds (replacing the old ones), verified first.

    Writes to ``out`` when given, else replaces ``path`` atomically. Returns the path written.
    """
    path = Path(path)
    info, tensors = _read_verified(path)
    try:
        new = _check_thresholds(thresholds, info.spec)
    except ValueError as exc:
        raise ValueError(f"thresholds for model file {path}: {exc}") from None
    return _rewrite(path, out, info, tensors, thresholds=new)


def with_calibration(
    path: str | os.PathLike[str],
    calibration: Calibration | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with a new probability calibration (None removes it), verified
    first; thresholds and everything else are kept. Writes to ``out`` when given, else
    replaces ``path`` atomically. Returns the path written."""
    path = Path(path)
    info, tensors = _read_verified(path)
    try:
        checked = None if calibration is None else _check_calibration(calibration, info.spec)
    except ValueError as exc:
        raise ValueError(f"calibration for model file {path}: {exc}") from None
    return _rewrite(path, out, info, tensors, calibration=checked)


def with_ood(
    path: str | os.PathLike[str],
    gate: OodGate | None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite a model file with a not-a-chest-X-ray gate (:func:`cxr.ood.fit_model_gate`;
    None removes it), verified first; everything else is kept. Writes to ``out`` when
    given, else replaces ``path`` atomically. Returns the path written."""
    path = Path(path)
    info, tensors = _read_verified(path)
    if gate is not None and not isinstance(gate, OodGate):
        raise ValueError(
            f"gate for model file {path} must be an OodGate, got {type(gate).__name__}"
        )
    return _rewrite(path, out, info, tensors, ood=None if gate is None else gate.to_dict())


_KEEP: Any = object()


def _rewrite(
    path: Path,
    out: str | os.PathLike[str] | None,
    info: ModelInfo,
    tensors: dict[str, torch.Tensor],
    thresholds: Any = _KEEP,
    calibration: Any = _KEEP,
    ood: Any = _KEEP,
) -> Path:
    """Write ``info`` and ``tensors`` again with new thresholds, calibration and/or gate."""
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": info.spec.to_dict(),
        "thresholds": info.thresholds if thresholds is _KEEP else thresholds,
        "training": info.training,
        "cxr_version": info.cxr_version,
    }
    if calibration is _KEEP:
        calibration = info.calibration.to_dict() if info.calibration is not None else None
    if calibration is not None:
        meta["calibration"] = calibration
    if ood is _KEEP:
        ood = info.ood.to_dict() if info.ood is not None else None
    if ood is not None:
        meta["ood"] = ood
    return _write(Path(out) if out is not None else path, tensors, meta)


def _check_calibration(calibration: Calibration, spec: ModelSpec) -> dict[str, Any]:
    """The stored form of ``calibration``, checked against the model's labels."""
    if not isinstance(calibration, Calibration):
        raise ValueError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    data = calibration.to_dict()
    Calibration.from_dict(data, spec.labels)  # every map valid, labels the model's
    return data


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
        from cxr.signing import KEY_ENV, KEY_FILE_ENV

        raise SigningError(
            f"no signing key: set {KEY_ENV} (the key) or {KEY_FILE_ENV} (a file holding it)"
        )
    _, meta, _ = _read_raw(path)
    _, tensors = _read_verified(path, check_signature=False)
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return _write(Path(out) if out is not None else path, tensors, body, key)
