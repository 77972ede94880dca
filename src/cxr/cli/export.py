"""The ``cxr export`` sub-command (wired into :mod:`cxr.cli` by :func:`add_parsers`).

``cxr export MODEL --format onnx [--out MODEL.onnx] [--opset 17]
[--quantize int8 --calibrate CACHE [--check CACHE] [--force]]``
    writes an ONNX file (dynamic batch; logits, probabilities, last feature map) with the
    model file's whole header in its metadata, after checking its probabilities against
    the torch model (max |Δp| <= 1e-4 at batch 1 and 8; the export fails otherwise).
    ``--quantize int8``: static QDQ per-channel quantisation calibrated on a prepared
    cache; refused when its macro AUC on ``--check`` drops by more than 0.005, unless
    ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr import RESEARCH_NOTICE
from cxr.cli._common import EXIT_OK, CLIError, keywords
from cxr.cli.options import add_command, add_model


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``export`` (with ``set_defaults(func=...)``)."""
    p = add_command(
        subparsers,
        "export",
        run_export,
        help="export a model file to ONNX (parity-checked; optional int8)",
        description="Export a cxr model file to ONNX for ONNX Runtime: dynamic batch axis; "
        "outputs logits, probabilities and the last feature map; the model file's header "
        "(labels, preprocessing, thresholds, training summary, source SHA-256, cxr version, "
        "research-use notice) in the ONNX metadata. The ONNX probabilities are checked "
        "against torch at batch 1 and 8 (max |Δp| <= 1e-4) before the file is written. "
        f"{RESEARCH_NOTICE}",
    )
    add_model(p, "model file (.safetensors written by cxr train)")
    p.add_argument(
        "--format", choices=("onnx",), default="onnx", help="export format (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="the .onnx file to write (default: MODEL with .onnx, or .int8.onnx with "
        "--quantize int8)",
    )
    p.add_argument(
        "--opset", type=int, default=17, help="ONNX opset, 13 to 21 (default: %(default)s)"
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="static int8 quantisation (QDQ, per-channel weights) calibrated on --calibrate",
    )
    p.add_argument(
        "--calibrate",
        type=Path,
        metavar="CACHE",
        help="prepared cache (model's size and fit) whose images calibrate the int8 ranges",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        metavar="N",
        help="calibration images, spread over the cache (default: %(default)s)",
    )
    p.add_argument(
        "--check",
        type=Path,
        metavar="CACHE",
        help="labelled prepared cache for the int8 macro-AUC check (default: the "
        "calibration cache); its images are also the parity images",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write the int8 file even when its macro AUC drops by more than 0.005",
    )


def run_export(args: argparse.Namespace) -> int:
    """``cxr export``: returns the exit code."""
    from cxr.export import export_onnx

    if args.quantize is None and (args.calibrate is not None or args.force):
        raise CLIError("--calibrate and --force go with --quantize int8")
    if args.quantize and args.calibrate is None:
        raise CLIError("--quantize int8 needs --calibrate CACHE (a prepared cache of the model)")
    if args.calibration_images < 1:
        raise CLIError(f"--calibration-images must be 1 or more, got {args.calibration_images}")
    out = args.out
    if out is None:
        out = args.model.with_suffix(".int8.onnx" if args.quantize else ".onnx")
    report = export_onnx(
        args.model,
        out,
        **keywords(args, "opset", "quantize", "calibrate", "check", "force", "calibration_images"),
    )
    sys.stdout.write(report.to_text())
    return EXIT_OK
