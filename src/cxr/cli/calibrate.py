"""``cxr calibrate``: fit a model file's probability calibration on a validation cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.choices import CALIBRATIONS
from cxr.cli._common import EXIT_OK, CLIError
from cxr.cli.options import add_command, add_model, add_model_update, run_settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``calibrate``."""
    p = add_command(
        sub,
        "calibrate",
        run_calibrate,
        help="fit calibrated probabilities on a validation cache and store them in the model",
        description="Predict VAL_CACHE with MODEL, fit a calibration map per label (platt: "
        "logistic on the logit; temperature; isotonic for large validation sets; labels with "
        "too few positives share one temperature) and write it into the model file. cxr "
        "predict, evaluate and serve then show calibrated probabilities (--raw shows the raw "
        "scores); thresholds are re-expressed so the above/below marks do not change. cxr "
        "train already does this with its validation cache. Never calibrate on the test set: "
        "cxr evaluate refuses to evaluate on the data the calibration was fitted on.",
    )
    add_model(p)
    p.add_argument("val_cache", type=Path, help="prepared validation cache (cxr prepare)")
    p.add_argument(
        "--method",
        choices=[c for c in CALIBRATIONS if c != "none"],
        default="platt",
        help="calibration map (default: %(default)s)",
    )
    p.add_argument(
        "--min-positives",
        type=int,
        default=10,
        help="labels with fewer positive (or negative) validation images use the shared "
        "temperature (default: %(default)s)",
    )
    add_model_update(p)


def run_calibrate(args: argparse.Namespace) -> int:
    from cxr.evaluation.calibration_check import calibrate_model, calibration_lines

    if args.min_positives < 1:
        raise CLIError(f"--min-positives must be 1 or more, got {args.min_positives}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
    written, _, table = calibrate_model(
        args.model,
        args.val_cache,
        method=args.method,
        out=args.out,
        min_positives=args.min_positives,
        **run_settings(args),
    )
    print("\n".join(calibration_lines(table)))
    print(f"calibration written to {written} (on the validation images: a fit, not a test)")
    return EXIT_OK
