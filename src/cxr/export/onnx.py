"""Export a cxr model file to ONNX, checked against torch before anything is written.

:func:`export_onnx` traces the classifier (:mod:`cxr.export.graph`: input float32
(B, 1, S, S) = uint8 pixels / 255; outputs logits, probabilities, the last feature map and
its pooling), checks it against torch, packs the model file's whole header into its metadata
(:mod:`cxr.modelformat.onnx_metadata`) and seals the file with a SHA-256 (signed when a
signing key is configured); the result is described by :class:`~cxr.export.report.
ExportReport`.

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
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr import RESEARCH_NOTICE, __version__
from cxr.errors import CxrError
from cxr.export.graph import head_weights, trace_graph, with_metadata
from cxr.export.quantize import CALIBRATION_IMAGES, cache_rows, macro_auc, open_cache
from cxr.export.report import PARITY_TOLERANCE, ExportReport
from cxr.modelformat.atomic import write_atomic
from cxr.modelformat.header import Header
from cxr.modelformat.onnx_metadata import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAMES,
    read_onnx,
    require,
    seal,
)
from cxr.modelformat.safetensors_file import read_raw

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
#: Batch sizes of the parity check.
PARITY_BATCHES: tuple[int, ...] = (1, 8)
#: Largest macro-AUC drop of an int8 graph written without ``force``.
MAX_AUC_DROP = 0.005
#: Quantisation modes offered (static int8 only: dynamic int8 measured slower than fp32).
QUANTIZE_MODES: tuple[str, ...] = ("int8",)

_PathLike = str | os.PathLike[str]


class ExportError(CxrError, ValueError):
    """An export refused: parity outside the tolerance, or an int8 graph that ranks images
    worse than allowed; the message gives the figures."""


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
def _source_record(loaded: LoadedModel) -> dict[str, Any]:
    path = Path(loaded.path)
    record: dict[str, Any] = {"file": path.name or None, "cxr_version": loaded.cxr_version}
    if path.name and path.is_file():
        raw, meta, _ = read_raw(path)  # the header as written, without checking it again
        record["sha256"] = hashlib.sha256(raw).hexdigest()
        record["integrity_sha256"] = str(meta.get("sha256", ""))
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

    graph = trace_graph(net, opset)
    fp32 = make_session(graph)
    reference: dict[int, np.ndarray] = {}
    parity = _parity(net, fp32, pixels, reference)
    if max(parity.values()) > PARITY_TOLERANCE:
        raise ExportError(
            "parity check failed: the ONNX graph's probabilities differ from torch's by "
            + ", ".join(f"{d:.2e} at batch {b}" for b, d in parity.items())
            + f" (max |Δp| allowed {PARITY_TOLERANCE:.0e}); {out} was not written"
        )
    shared = Header(
        spec,
        loaded.thresholds,
        loaded.training,
        __version__,
        loaded.calibration,
        loaded.ood,
        loaded.tta,
    )
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **shared.stored(),  # what the model file's header shares, in its stored form
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

    data = seal(with_metadata(final, header, head_weights(net)), signing_key())
    write_atomic(out, data, check=read_onnx)  # read back as a cxr ONNX file before the rename
    report.size_bytes = len(data)
    report.seconds = time.perf_counter() - start
    return report
