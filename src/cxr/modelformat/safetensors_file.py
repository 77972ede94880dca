"""The ``cxr-model`` file format: safetensors weights and a JSON header, tamper-evident.

Layout: a standard safetensors file whose tensors are the classifier's ``state_dict()``
and whose header metadata holds ``"cxr"``, the JSON header (:mod:`cxr.modelformat.header`,
with ``"format": "cxr-model"``, ``"format_version"`` and ``"sha256"``) and, when signed,
``"cxr_signature"`` (:mod:`cxr.signing`).

``sha256`` (:func:`digest`) covers every tensor (name, dtype, shape, bytes, in name order)
and the rest of the header, so a changed byte anywhere meaningful is detected. It protects
against damage, not against a deliberate edit (anyone can recompute it); the signature, an
HMAC-SHA-256 of ``sha256`` under a signing key, does. Nothing is ever unpickled: files are
read with safetensors and ``json`` only, and the header's structure is checked before
safetensors sees the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cxr.errors import CxrError
from cxr.modelformat.atomic import write_atomic
from cxr.modelformat.header import Header, HeaderError, check_format, read_header
from cxr.signing import SigningError, signature_for, signing_key, verify_signature

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_KEY",
    "SIGNATURE_KEY",
    "ModelFileError",
    "digest",
    "read_file_header",
    "read_raw",
    "read_tensors",
    "write_model_file",
]

FORMAT_NAME = "cxr-model"
FORMAT_VERSION = 2
META_KEY = "cxr"
SIGNATURE_KEY = "cxr_signature"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


class ModelFileError(CxrError):
    """A model file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"model file {self.path}: {problem}")


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


def digest(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """The hex SHA-256 of the header ``meta`` (without its ``sha256``) and every tensor."""
    h = hashlib.sha256(_canonical(meta))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype!s}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def write_model_file(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], key: bytes | None = None
) -> Path:
    """Write the tensors and header ``meta`` (made JSON-safe: numpy values and paths are
    converted) with its digest, atomically; signed with ``key``, else with the configured
    key (if any). Returns ``path``."""
    key = key if key is not None else signing_key()
    meta = json.loads(json.dumps(meta, default=_json_default))  # JSON-safe, as it will be read
    meta["sha256"] = digest(meta, tensors)
    header = {META_KEY: json.dumps(meta)}
    if key is not None:
        header[SIGNATURE_KEY] = json.dumps(signature_for(meta["sha256"], key))
    write_atomic(path, st_save(tensors, metadata=header))
    return path


def _safetensors_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The safetensors JSON header of ``raw``, its tensors' offsets checked against its size."""
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
    return header


def read_raw(path: Path) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:
    """The file's bytes, its cxr header (format and version checked) and its signature
    record (None when unsigned), after structural checks; nothing is verified yet."""
    if not path.exists():
        raise ModelFileError(path, "not found; check the path")
    if not path.is_file():
        raise ModelFileError(path, "is not a file")
    raw = path.read_bytes()
    metadata = _safetensors_header(path, raw).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(path, "bad header: __metadata__ is not a JSON object")
    text = metadata.get(META_KEY)
    if text is None:
        raise ModelFileError(
            path,
            "not a cxr model file: a safetensors file without cxr metadata "
            "(save models with cxr.modelfile.save_model)",
        )
    if not isinstance(text, str):
        raise ModelFileError(path, f"bad header: __metadata__.{META_KEY} is not a string")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            path, f"cxr metadata is not valid JSON ({exc}); the file was edited or damaged"
        ) from None
    try:
        check_format(meta, FORMAT_NAME, FORMAT_VERSION, "cxr model file", "format version")
    except HeaderError as exc:
        raise ModelFileError(path, str(exc)) from None
    signature = metadata.get(SIGNATURE_KEY)
    if signature is not None:
        try:
            signature = json.loads(signature) if isinstance(signature, str) else None
        except json.JSONDecodeError:
            signature = None
        if not isinstance(signature, dict):
            raise ModelFileError(path, f"bad header: __metadata__.{SIGNATURE_KEY} is not valid")
    return raw, meta, signature


def read_file_header(path: Path, meta: Mapping[str, Any]) -> Header:
    """The shared header fields of a header :func:`read_raw` returned (a format-1 spec is
    read as format 2); a :class:`ModelFileError` names the field that cannot be used."""
    try:
        return read_header(meta, v1_spec=meta["format_version"] == 1)
    except HeaderError as exc:
        raise ModelFileError(path, str(exc)) from None


def read_tensors(
    path: Path,
    raw: bytes,
    meta: Mapping[str, Any],
    signature: dict[str, Any] | None,
    check_signature: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors of a file :func:`read_raw` read, verified: its digest, and its signature
    against the configured key (unless ``check_signature`` is False)."""
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
    if digest(meta, tensors) != expected:
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
    return tensors
