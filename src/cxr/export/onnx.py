"""Export a cxr model file to ONNX, checked against torch before anything is written.

:func:`export_onnx` traces the classifier with torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``: about 2 s for DenseNet-121 where the dynamo
exporter took 28 s on the same CPU; the parity check below guards either). The graph:

- input ``input``: float32 (B, 1, S, S) = uint8 pixels / 255, B dynamic: the output of
  :func:`cxr.preprocessing.to_model_input`, so that preprocessing keeps one definition; the
  graph holds the rest (gray to RGB, mean/std, backbone, head);
- outputs ``logits`` (B, L), ``probabilities`` (B, L) = sigmoid(logits), ``features``
  (B, C, h, w) = the last feature map (the Grad-CAM target layer's output) and ``pooled``
  (B, C) = its pooling by the head.

The metadata (:mod:`cxr.export.metadata`) holds the model file's whole header; the file is
sealed with a SHA-256 (and signed when a signing key is configured).

Parity: probabilities of the ONNX graph (ONNX Runtime, CPU) against the torch model in fp32
on the same images at batch 1 and 8 — the first images of ``--check`` or ``--calibrate``
when given (real images), else phantom radiographs drawn at the model's size — must agree
within :data:`PARITY_TOLERANCE` (max |Δp|), else :class:`ExportError` and no file.

int8 (``quantize="int8"``, a ``calibrate`` cache needed): static QDQ per-channel
(:mod:`cxr.export.quantize`). Its macro AUC on a labelled cache (``check``, default the
calibration cache) is compared with the fp32 graph's; a drop over :data:`MAX_AUC_DROP` is
refused unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.export.metadata import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_KEY,
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAMES,
    HeadWeights,
    seal,
)
from cxr.export.quantize import CALIBRATION_IMAGES, cache_rows, macro_auc, open_cache

if TYPE_CHECKING:
    from cxr.modelfile import LoadedModel
    from cxr.models import ChestClassifier

__all__ = [
    "DEFAULT_OPSET",
    "MAX_AUC_DROP",
    "PARITY_BATCHES",
    "PARITY_TOLERANCE",
    "QUANTIZE_MODES",
    "ExportError",
    "ExportReport",
    "export_onnx",
    "head_weights",
]

#: ONNX opset of the exported graph unless asked otherwise.
DEFAULT_OPSET = 17
#: Largest |Δp| allowed between the fp32 ONNX graph and the torch model.
PARITY_TOLERANCE = 1e-4
#: Batch sizes of the parity check.
PARITY_BATCHES: tuple[int, ...] = (1, 8)
#: Largest macro-AUC drop of an int8 graph written without ``force``.
MAX_AUC_DROP = 0.005
#: Quantisation modes offered (static int8 only: dynamic int8 measured slower than fp32).
QUANTIZE_MODES: tuple[str, ...] = ("int8",)

_PathLike = str | os.PathLike[str]


class ExportError(ValueError):
    """An export refused: parity outside the tolerance, or an int8 graph that ranks images
    worse than allowed; the message gives the figures."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` did and measured.

    Attributes:
        path: the ONNX file written.
        source: the source model file (None for an in-memory model).
        precision: ``fp32`` or ``int8``.
        opset: ONNX opset of the graph.
        size_bytes: the file's size.
        parity: batch size -> max |Δp| of the fp32 ONNX graph against torch (fp32).
        parity_images: where the parity images came from.
        tolerance: the largest |Δp| allowed (:data:`PARITY_TOLERANCE`).
        int8_parity: batch size -> max |Δp| of the int8 graph against torch (reported, not
            checked: the AUC check decides).
        quantization: calibration cache, image count and method (int8 only).
        auc_check: cache, images, labels scored, macro AUC fp32 / int8, the drop, the
            largest drop allowed and whether it was forced (int8 only).
        seconds: wall time of the export.
        notes: anything the user should know.
    """

    path: Path
    source: Path | None
    precision: str
    opset: int
    size_bytes: int
    parity: dict[int, float]
    parity_images: str
    tolerance: float = PARITY_TOLERANCE
    int8_parity: dict[int, float] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    auc_check: dict[str, Any] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        """Max |Δp| of the fp32 graph against torch over every parity batch."""
        return max(self.parity.values(), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["source"] = None if self.source is None else str(self.source)
        out["max_abs_diff"] = self.max_abs_diff
        return out

    def to_text(self) -> str:
        lines = [
            f"wrote {self.path} ({self.precision}, opset {self.opset}, "
            f"{self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
            + (f" from {self.source}" if self.source else ""),
            "parity of the fp32 ONNX graph with torch (fp32) on "
            f"{self.parity_images}: "
            + ", ".join(f"batch {b} max |Δp| {d:.2e}" for b, d in self.parity.items())
            + f" (tolerance {self.tolerance:.0e}): ok",
        ]
        if self.int8_parity:
            lines.append(
                "int8 graph vs torch: "
                + ", ".join(f"batch {b} max |Δp| {d:.3f}" for b, d in self.int8_parity.items())
            )
        if self.quantization:
            q = self.quantization
            lines.append(
                f"int8 static quantisation ({q['format']}, per-channel weights, {q['method']} "
                f"calibration on {q['images']} images of {q['cache']})"
            )
        if self.auc_check:
            a = self.auc_check
            forced = " (forced)" if a["forced"] and a["drop"] > a["max_drop"] else ""
            lines.append(
                f"macro AUC on {a['images']} images of {a['cache']} ({len(a['labels'])} labels): "
                f"fp32 {a['macro_auc_fp32']:.4f}, int8 {a['macro_auc_int8']:.4f}, change "
                f"{-a['drop']:+.4f} (largest drop allowed {a['max_drop']}){forced}"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append(RESEARCH_NOTICE)
        return "\n".join(lines) + "\n"


# the graph ---------------------------------------------------------------------------------
def _graph_module(model: ChestClassifier) -> Any:
    """A module whose forward returns the four outputs of :data:`OUTPUT_NAMES`."""
    import torch
    from torch import nn

    class _Graph(nn.Module):
        def __init__(self, inner: ChestClassifier) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            features = self.inner.features(x)
            pooled = self.inner.head.pool(features)
            logits = self.inner.head.out(self.inner.head.mlp(pooled))
            return logits, torch.sigmoid(logits), features, pooled

    return _Graph(model).eval()


def _trace(model: ChestClassifier, opset: int) -> bytes:
    """The fp32 graph (no metadata) as bytes."""
    import torch

    size = model.spec.input_size
    example = torch.zeros(2, 1, size, size)
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # the input checks of ChestClassifier.normalise are traced as constants (the graph
        # has a fixed S); the exporter's deprecation notices are not for the user
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _graph_module(model),
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def head_weights(model: ChestClassifier) -> HeadWeights | None:
    """The head's pooling and output layer when it is pooling + one linear layer (no
    hidden layers), for CAM without autograd; None otherwise."""
    from cxr.models.classifier import GeM

    if model.spec.head.hidden:
        return None
    pool = model.head.pool
    p = float(pool.p.detach().clamp(min=1.0)) if isinstance(pool, GeM) else 1.0
    eps = float(pool.eps) if isinstance(pool, GeM) else 1e-6
    return HeadWeights(
        model.spec.head.pool,
        model.head.out.weight.detach().float().cpu().numpy(),
        model.head.out.bias.detach().float().cpu().numpy(),
        p,
        eps,
    )


def _with_metadata(graph: bytes, header: dict[str, Any], head: HeadWeights | None) -> bytes:
    """The graph with the cxr metadata (replacing any other), serialised."""
    from cxr.export.metadata import require

    onnx = require("onnx", "exporting to ONNX")

    proto = onnx.load_from_string(graph)
    del proto.metadata_props[:]
    proto.producer_name, proto.producer_version = "cxr", __version__
    proto.doc_string = f"cxr chest X-ray classifier ({header['spec']['backbone']}). " + (
        RESEARCH_NOTICE
    )
    entries = {META_KEY: json.dumps(header, sort_keys=True)}
    if head is not None:
        entries[HEAD_KEY] = json.dumps(head.to_dict(), sort_keys=True)
    onnx.helper.set_model_props(proto, entries)
    return bytes(proto.SerializeToString())


# checks --------------------------------------------------------------------------------
def _phantoms(size: int, n: int) -> np.ndarray:
    """n phantom radiographs uint8 (n, size, size), some with findings (seed 0)."""
    from cxr.synth import SYNTH_LABELS, render_phantom

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        findings = [SYNTH_LABELS[i % len(SYNTH_LABELS)]] if i % 2 else []
        out.append(render_phantom(rng, size, findings)[0])
    return np.stack(out)


def _torch_probs(model: ChestClassifier, pixels: np.ndarray) -> np.ndarray:
    import torch

    from cxr.preprocessing import to_model_input

    with torch.inference_mode():
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(pixels)), "cpu")
        return torch.sigmoid(model(x).float()).numpy().astype(np.float64)


def _onnx_probs(session: Any, pixels: np.ndarray) -> np.ndarray:
    from cxr.preprocessing import to_model_input

    x = to_model_input(np.ascontiguousarray(pixels))
    return np.asarray(session.run(["probabilities"], {INPUT_NAME: x})[0], dtype=np.float64)


def _parity(
    model: ChestClassifier, session: Any, pixels: np.ndarray, reference: dict[int, np.ndarray]
) -> dict[int, float]:
    """Batch size -> max |Δp| of the session against torch on the first images."""
    out = {}
    for batch in PARITY_BATCHES:
        if batch not in reference:
            reference[batch] = _torch_probs(model, pixels[:batch])
        out[batch] = float(np.abs(_onnx_probs(session, pixels[:batch]) - reference[batch]).max())
    return out


def _cache_probs(session: Any, cache: Any, rows: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate(
        [
            _onnx_probs(session, cache.read(rows[i : i + batch_size]))
            for i in range(0, len(rows), batch_size)
        ]
    )


def _auc_check(
    fp32: Any, int8: Any, cache: Any, labels: tuple[str, ...], images: int | None
) -> dict[str, Any]:
    """Macro AUC of the fp32 and int8 sessions on a labelled cache's images."""
    names = list(cache.table.pathologies)
    shared = [n for n in labels if n in names]
    if not shared:
        raise ValueError(
            f"--check {cache.path}: its labels {names} share none with the model's "
            f"{list(labels)}; give a labelled cache of the model's labels"
        )
    rows = cache_rows(len(cache), images)
    y = cache.labels(rows)[:, [names.index(n) for n in shared]]
    cols = [labels.index(n) for n in shared]
    auc32, used = macro_auc(_cache_probs(fp32, cache, rows)[:, cols], y, shared)
    auc8, _ = macro_auc(_cache_probs(int8, cache, rows)[:, cols], y, shared)
    if not used:
        raise ValueError(
            f"--check {cache.path}: no label has both positive and negative images among "
            f"the {len(rows)} images scored; give a larger labelled cache"
        )
    return {
        "cache": str(cache.path),
        "images": len(rows),
        "labels": used,
        "macro_auc_fp32": auc32,
        "macro_auc_int8": auc8,
        "drop": auc32 - auc8,
        "max_drop": MAX_AUC_DROP,
    }


# writing -------------------------------------------------------------------------------
def _write_verified(path: Path, data: bytes) -> None:
    """Write atomically, after reading the temporary file back as a cxr ONNX file."""
    from cxr.export.metadata import read_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        read_onnx(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_record(loaded: LoadedModel) -> dict[str, Any]:
    path = Path(loaded.path)
    record: dict[str, Any] = {"file": path.name or None, "cxr_version": loaded.cxr_version}
    if path.name and path.is_file():
        from cxr.modelfile import read_model_info

        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        record["sha256"] = digest.hexdigest()
        record["integrity_sha256"] = read_model_info(path).sha256
    return record


def export_onnx(
    model: LoadedModel | _PathLike,
    out: _PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    calibrate: Any = None,
    check: Any = None,
    force: bool = False,
    calibration_images: int | None = CALIBRATION_IMAGES,
    check_images: int | None = None,
) -> ExportReport:
    """Export a cxr model to an ONNX file, checked against torch first.

    Args:
        model: a model file path (loaded and verified) or a :class:`LoadedModel`.
        out: the ``.onnx`` file to write (atomically; nothing is written on failure).
        opset: ONNX opset (13 to 21 are accepted by the exporter used).
        quantize: None (fp32) or ``"int8"`` (static QDQ, per-channel; needs ``calibrate``).
        calibrate: a prepared cache (folder or :class:`~cxr.cache.PreparedCache`) of the
            model's size and fit, for the int8 activation ranges.
        check: a labelled prepared cache for the int8 macro-AUC check (default: the
            calibration cache); with fp32 its images are the parity images.
        force: write an int8 file even when its macro AUC drops by more than
            :data:`MAX_AUC_DROP`.
        calibration_images: calibration images (spread over the cache; None = all).
        check_images: images scored by the AUC check (None = all).

    Raises:
        ExportError: parity outside :data:`PARITY_TOLERANCE`, or an int8 AUC drop over
            :data:`MAX_AUC_DROP` without ``force``.
        ValueError: bad options, caches of another size/fit or without shared labels.
        cxr.modelfile.ModelFileError: the source model file cannot be used.
    """
    start = time.perf_counter()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise ValueError(f"opset must be an integer from 13 to 21, got {opset!r}")
    if quantize not in (None, *QUANTIZE_MODES):
        raise ValueError(
            f"quantize must be None or one of {list(QUANTIZE_MODES)}, got {quantize!r}"
        )
    if quantize and calibrate is None:
        raise ValueError("int8 quantisation needs a calibration cache (--calibrate CACHE)")
    if not quantize and calibrate is not None:
        raise ValueError("a calibration cache (--calibrate) is only used with --quantize int8")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"the output file must end in .onnx, got {out}")
    from cxr.export.metadata import require
    from cxr.inference.onnx_backend import make_session
    from cxr.modelfile import LoadedModel, load_model

    require("onnx", "exporting to ONNX")  # before minutes of work, not after
    require("onnxruntime", "the export's parity check")

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    net = loaded.model
    if any(p.device.type != "cpu" for p in net.parameters()):
        import copy

        net = copy.deepcopy(net).cpu()
    net = net.float().eval()
    spec = loaded.spec
    size, fit = spec.input_size, spec.fit
    calib = open_cache(calibrate, size, fit, "--calibrate") if calibrate is not None else None
    checked = open_cache(check, size, fit, "--check") if check is not None else None
    real = checked or calib
    if real is not None:
        pixels = real.read(cache_rows(len(real), max(PARITY_BATCHES)))
        source_text = f"{len(pixels)} images of {real.path}"
    else:
        pixels = _phantoms(size, max(PARITY_BATCHES))
        source_text = f"{len(pixels)} phantom radiographs at {size}px"
    if len(pixels) < max(PARITY_BATCHES):  # a tiny cache: repeat its images
        pixels = np.resize(pixels, (max(PARITY_BATCHES), size, size))

    graph = _trace(net, opset)
    fp32 = make_session(graph)
    reference: dict[int, np.ndarray] = {}
    parity = _parity(net, fp32, pixels, reference)
    if max(parity.values()) > PARITY_TOLERANCE:
        raise ExportError(
            "parity check failed: the ONNX graph's probabilities differ from torch's by "
            + ", ".join(f"{d:.2e} at batch {b}" for b, d in parity.items())
            + f" (max |Δp| allowed {PARITY_TOLERANCE:.0e}); {out} was not written"
        )
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "thresholds": dict(loaded.thresholds),
        "training": dict(loaded.training),
        "calibration": loaded.calibration.to_dict() if loaded.calibration is not None else None,
        "ood": loaded.ood.to_dict() if loaded.ood is not None else None,
        "cxr_version": __version__,
        "notice": RESEARCH_NOTICE,
        "source": _source_record(loaded),
        "precision": "fp32",
        "graph": {
            "input": INPUT_NAME,
            "input_layout": "float32 (B, 1, S, S) = uint8 pixels / 255",
            "outputs": list(OUTPUT_NAMES),
            "opset": opset,
        },
        "export": {"parity_max_abs_diff": max(parity.values()), "parity_images": source_text},
    }
    report = ExportReport(out, None, "fp32", opset, 0, parity, source_text)
    if isinstance(model, (str, os.PathLike)):
        report.source = Path(model)
    final = graph
    if quantize:
        assert calib is not None
        from cxr.export.quantize import quantize_int8

        final = quantize_int8(graph, calib, INPUT_NAME, calibration_images)
        int8 = make_session(final)
        report.int8_parity = _parity(net, int8, pixels, reference)
        check_cache = checked or calib
        auc = _auc_check(fp32, int8, check_cache, spec.labels, check_images)
        auc["forced"] = bool(force)
        if checked is None:
            report.notes.append(
                "the AUC check used the calibration cache; --check VAL_CACHE checks on "
                "images the calibration did not see"
            )
        if auc["drop"] > MAX_AUC_DROP and not force:
            raise ExportError(
                f"the int8 graph's macro AUC is {auc['macro_auc_int8']:.4f} against "
                f"{auc['macro_auc_fp32']:.4f} for fp32 on {auc['images']} images of "
                f"{auc['cache']} (a drop of {auc['drop']:.4f} > {MAX_AUC_DROP}); {out} was "
                "not written (--force writes it anyway)"
            )
        report.precision, report.auc_check = "int8", auc
        report.quantization = {
            "format": "QDQ",
            "weights": "int8 per channel",
            "activations": "uint8 per tensor",
            "method": "min-max",
            "cache": str(calib.path),
            "images": len(cache_rows(len(calib), calibration_images)),
        }
        header["precision"] = "int8"
        header["export"].update(quantization=report.quantization, auc_check=auc)

    from cxr.signing import signing_key

    data = seal(_with_metadata(final, header, head_weights(net)), signing_key())
    _write_verified(out, data)
    report.size_bytes = len(data)
    report.seconds = time.perf_counter() - start
    return report
