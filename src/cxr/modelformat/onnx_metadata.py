"""The cxr metadata of an exported ONNX model, and its integrity seal.

An ONNX file written by ``cxr export`` is as self-describing as a cxr model file. Its
``metadata_props`` hold:

- ``"cxr"``: a JSON object, the source model file's whole header (:mod:`cxr.modelformat.
  header`) plus the export record::

      {"format": "cxr-onnx", "format_version": 1,
       "spec": {...ModelSpec.to_dict()...},       # labels, backbone, head, preprocessing
       "thresholds": {"Effusion": 0.31, ...},     # chosen on validation during training
       "calibration": {...}, "ood": {...},        # when the source model has them
       "tta": "flip",                             # its recommended test-time augmentation
                                                  # (when not "none")
       "training": {...},                         # the training summary
       "cxr_version": "0.1.0",                    # the cxr that exported it
       "notice": "Research use only: ...",
       "source": {"file": "best.safetensors", "sha256": "<hex of the file's bytes>",
                  "integrity_sha256": "<its own sha256 field>", "cxr_version": "0.1.0"},
       "precision": "fp32" | "int8",
       "graph": {"input": "input", "outputs": [...], "opset": 17},
       "export": {...}}                           # quantisation settings, AUC check

- ``"cxr.head"`` (heads of pooling + one linear layer only): the classifier's weights
  (float32 (L, C) and (L,), base64), its pooling and GeM exponent, for heatmaps computed
  without autograd (:mod:`cxr.explain.cam`);
- ``"cxr.integrity"``, always the file's last field: ``{"sha256": ..., "signature": ...}``,
  the SHA-256 of every byte before it (graph, weights and the metadata above) and, when a
  signing key is configured (:mod:`cxr.signing`), its signature.

The seal is appended as one more serialised ``metadata_props`` entry (protobuf merges
repeated fields), so it is checked on the raw bytes, before ONNX Runtime parses anything:
a changed byte anywhere, or a file saved again by another tool, fails the check.

Reading needs neither ``onnx`` nor torch: a walker of the protobuf wire format
(:mod:`cxr.modelformat.protobuf`) reads the file's top-level fields. The ``onnx`` package's
parser (``onnx.ModelProto.FromString``, then the same seal check on the bytes) was measured in
its place by ``bench/onnx_header_read.py`` (idle 2-core AMD EPYC, 2026-12-07, fresh processes
each reading and verifying a header, median of 10): 0.13 s with the walker against 0.75 s with
``onnx`` for a 0.6 MB export, 0.16 s against 0.79 s for DenseNet-121 (26.5 MB); ``import
onnx`` alone is most of it (``python -X importtime``: mostly ``ml_dtypes``), where a whole
``cxr predict model.onnx`` of one image takes about 1 s (BENCHMARKS.md).
The package would add about 0.6 s (some 60 %) to the cold start of every ONNX prediction,
so the walker stays
(and ``cxr predict model.onnx`` imports neither onnx nor torch); this module imports only the
standard library, numpy and the header's records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import CxrError
from cxr.modelformat.header import Header, HeaderError, check_format, read_header
from cxr.modelformat.protobuf import GRAPH_FIELD, METADATA_FIELD, encode_entry, entry, fields

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEAD_KEY",
    "INPUT_NAME",
    "INSTALL_HINT",
    "INTEGRITY_KEY",
    "META_KEY",
    "OUTPUT_NAMES",
    "HeadWeights",
    "OnnxFileError",
    "OnnxInfo",
    "OnnxNotInstalled",
    "encode_entry",
    "is_onnx_path",
    "read_onnx",
    "read_onnx_info",
    "require",
    "seal",
]

FORMAT_NAME = "cxr-onnx"
FORMAT_VERSION = 1
META_KEY = "cxr"
HEAD_KEY = "cxr.head"
INTEGRITY_KEY = "cxr.integrity"
#: The graph's input: float32 (B, 1, S, S) = uint8 pixels / 255 (:func:`cxr.preprocessing.
#: to_model_input`); the batch axis is dynamic.
INPUT_NAME = "input"
#: The graph's outputs: logits (B, L), probabilities (B, L) = sigmoid(logits), the last
#: feature map (B, C, h, w) (the Grad-CAM target layer's output) and its pooling (B, C).
OUTPUT_NAMES: tuple[str, ...] = ("logits", "probabilities", "features", "pooled")
#: How to install what ONNX export and inference need.
INSTALL_HINT = "pip install 'cxr[onnx]'"

_MAX_BYTES = 2**31  # protobuf's limit; cxr exports keep the weights inside the file


class OnnxNotInstalled(CxrError, ImportError):
    """onnx or onnxruntime is missing; the message says what needs it and how to install."""


def require(module: str, what: str) -> Any:
    """Import ``module`` (``onnx``, ``onnxruntime``) or raise :class:`OnnxNotInstalled`
    saying that ``what`` needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxNotInstalled(
            f"{what} needs the {module} package, which is not installed: {INSTALL_HINT}"
        ) from None


class OnnxFileError(CxrError, ValueError):
    """An ONNX file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"model file {self.path}: {problem}")


def is_onnx_path(path: object) -> bool:
    """True for a path (str or PathLike) whose name ends in ``.onnx`` (any case)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".onnx")


@dataclass(frozen=True)
class HeadWeights:
    """A head of pooling + one linear layer, as stored in ``"cxr.head"``.

    Attributes:
        pool: ``"avg"`` or ``"gem"``.
        weight: float32 (L, C), the output layer's weight.
        bias: float32 (L,).
        p: GeM exponent as applied (``max(p, 1)``); 1.0 for ``avg``.
        eps: GeM's clamp of the feature map before the power.
    """

    pool: str
    weight: np.ndarray
    bias: np.ndarray
    p: float = 1.0
    eps: float = 1e-6

    def to_dict(self) -> dict[str, Any]:
        w = np.ascontiguousarray(self.weight, dtype="<f4")
        b = np.ascontiguousarray(self.bias, dtype="<f4")
        return {
            "pool": self.pool,
            "p": float(self.p),
            "eps": float(self.eps),
            "shape": list(w.shape),
            "weight": base64.b64encode(w.tobytes()).decode("ascii"),
            "bias": base64.b64encode(b.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], labels: int) -> HeadWeights:
        """Inverse of :meth:`to_dict`; a ValueError names what does not fit."""
        try:
            n_labels, channels = (int(v) for v in data["shape"])
            weight = np.frombuffer(base64.b64decode(data["weight"]), dtype="<f4")
            bias = np.frombuffer(base64.b64decode(data["bias"]), dtype="<f4")
            pool, p, eps = str(data["pool"]), float(data["p"]), float(data["eps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the head weights are unreadable ({exc})") from None
        if n_labels != labels or weight.size != n_labels * channels or bias.size != n_labels:
            raise ValueError(
                f"the head weights have shape {data['shape']} for {labels} labels "
                f"({weight.size} weight and {bias.size} bias values)"
            )
        if pool not in ("avg", "gem") or not (math.isfinite(p) and p >= 1.0 and eps > 0):
            raise ValueError(f"the head's pooling is invalid: pool {pool!r}, p {p}, eps {eps}")
        return cls(pool, weight.reshape(n_labels, channels).astype(np.float32), bias.copy(), p, eps)


@dataclass(frozen=True)
class OnnxInfo(Header):
    """The verified cxr metadata of an exported ONNX file: the source model's header fields
    (:class:`~cxr.modelformat.header.Header`: spec, thresholds, training, calibration, gate,
    recommended ``tta``; ``cxr_version`` is the cxr that exported the file) and the
    export's own.

    Attributes:
        path: the file.
        precision: ``"fp32"`` or ``"int8"``.
        source: the source model file (name, SHA-256 of its bytes, its integrity field).
        head: the classifier weights for CAM, or None (heads with hidden layers).
        sha256: the integrity digest (of every byte before the seal).
        signed_by: key id of the signing key, "" when unsigned.
        header: the whole ``"cxr"`` JSON object.
    """

    path: Path = Path()
    precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)
    head: HeadWeights | None = None
    sha256: str = ""
    signed_by: str = ""
    header: dict[str, Any] = field(default_factory=dict)


# writing -----------------------------------------------------------------------------------
def seal(body: bytes, key: bytes | None = None) -> bytes:
    """``body`` (a serialised ONNX model with its cxr metadata) with the integrity entry
    appended: the SHA-256 of ``body`` and, when ``key`` is given, its signature."""
    from cxr.signing import signature_for

    digest = hashlib.sha256(body).hexdigest()
    record: dict[str, Any] = {"sha256": digest}
    if key is not None:
        record["signature"] = signature_for(digest, key)
    return body + encode_entry(INTEGRITY_KEY, json.dumps(record, sort_keys=True))


# reading -----------------------------------------------------------------------------------
def _metadata(path: Path, raw: bytes) -> tuple[dict[str, str], int, str]:
    """(metadata entries, start of the file's last field, that field's metadata key or ""
    when it is not a metadata entry); a file without a graph is refused."""
    entries: dict[str, str] = {}
    last_start, last_key, has_graph = 0, "", False
    try:
        for number, wire, start, begin, end in fields(raw):
            last_start, last_key = start, ""
            has_graph |= number == GRAPH_FIELD and wire == 2
            if number == METADATA_FIELD and wire == 2:
                last_key, value = entry(raw[begin:end])
                entries[last_key] = value
    except (ValueError, UnicodeDecodeError):
        raise OnnxFileError(
            path, "not an ONNX model file (its bytes are not a valid ONNX protobuf)"
        ) from None
    if not has_graph:
        raise OnnxFileError(path, "not an ONNX model file (it has no graph)")
    return entries, last_start, last_key


def read_onnx(path: str | os.PathLike[str]) -> tuple[OnnxInfo, bytes]:
    """Read and verify an ONNX file exported by cxr: its metadata and its bytes (hand
    these to ONNX Runtime, so that what runs is what was verified).

    Raises:
        OnnxFileError: missing, not ONNX, no cxr metadata (a foreign ONNX file), changed
            after export (SHA-256 mismatch), newer format, bad metadata.
        cxr.signing.SigningError: a signing key is configured and the file is unsigned
            or signed with another key (the message names the file).
    """
    from cxr.signing import SigningError, key_id, signing_key, verify_signature

    path = Path(path)
    if not path.is_file():
        problem = "not found; check the path" if not path.exists() else "is not a file"
        raise OnnxFileError(path, problem)
    if path.stat().st_size >= _MAX_BYTES:
        raise OnnxFileError(path, "is over 2 GiB; cxr exports keep the weights inside the file")
    raw = path.read_bytes()
    entries, last_start, last_key = _metadata(path, raw)
    if META_KEY not in entries:
        raise OnnxFileError(
            path,
            "not a cxr ONNX model: it has no cxr metadata (labels, preprocessing, "
            "thresholds); export cxr models with `cxr export MODEL --format onnx`",
        )
    if INTEGRITY_KEY not in entries:
        raise OnnxFileError(
            path, "has no integrity entry; it was not written by `cxr export` or was re-saved"
        )
    try:
        record = json.loads(entries[INTEGRITY_KEY])
        expected = str(record["sha256"])
    except (json.JSONDecodeError, TypeError, KeyError):
        raise OnnxFileError(path, "its integrity entry is not valid JSON") from None
    if last_key != INTEGRITY_KEY or hashlib.sha256(raw[:last_start]).hexdigest() != expected:
        raise OnnxFileError(
            path,
            "failed its integrity check (SHA-256 mismatch): the graph, weights or metadata "
            "were changed after export (tampered, corrupted or re-saved); use an intact copy",
        )
    key = signing_key()
    try:
        signed = verify_signature(expected, record.get("signature"), key)
    except SigningError as exc:
        raise SigningError(f"model file {path}: {exc}") from None
    return _info(path, entries, expected, key_id(key) if signed and key else ""), raw


def _info(path: Path, entries: Mapping[str, str], digest: str, signed_by: str) -> OnnxInfo:
    try:
        header = json.loads(entries[META_KEY])
    except json.JSONDecodeError as exc:
        raise OnnxFileError(path, f"its cxr metadata is not valid JSON ({exc})") from None
    try:
        check_format(header, FORMAT_NAME, FORMAT_VERSION, "cxr ONNX model", "ONNX format version")
        shared = read_header(header)
    except HeaderError as exc:
        raise OnnxFileError(path, str(exc)) from None
    source = header.get("source") or {}
    if not isinstance(source, dict):
        raise OnnxFileError(path, "its source record is not a JSON object")
    precision = header.get("precision")
    if precision not in ("fp32", "int8"):
        raise OnnxFileError(path, f"its precision must be fp32 or int8, got {precision!r}")
    head = None
    if HEAD_KEY in entries:
        try:
            head = HeadWeights.from_dict(json.loads(entries[HEAD_KEY]), shared.spec.num_labels)
        except (json.JSONDecodeError, ValueError) as exc:
            raise OnnxFileError(path, f"its {HEAD_KEY} entry cannot be used: {exc}") from None
    return OnnxInfo(
        **vars(shared),
        path=path,
        precision=str(precision),
        source=source,
        head=head,
        sha256=digest,
        signed_by=signed_by,
        header=header,
    )


def read_onnx_info(path: str | os.PathLike[str]) -> OnnxInfo:
    """The verified metadata of an ONNX file exported by cxr (see :func:`read_onnx`)."""
    return read_onnx(path)[0]
