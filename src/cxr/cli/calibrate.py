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
        "too few positives share one slope and keep an intercept of their own, pulled toward "
        "the prior-corrected score) and write it into the model file. The log-odds shift of "
        "the training loss's class weights, stored by cxr train, is kept (it needs the "
        "training labels, which the model file does not hold). cxr "
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
        help="labels with fewer positive (or negative) validation images share one slope, "
        "with an intercept each pulled toward the prior-corrected score (default: %(default)s)",
    )
    add_model_update(p)


def run_calibrate(args: argparse.Namespace) -> int:
    from cxr.evaluation.calibration_check import calibrate_model, calibration_lines

    if args.min_positives < 1:
        raise CLIError(f"--min-positives must be 1 or more, got {args.min_positives}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
    trained_with = _training_loss(args.model)
    written, calibration, table = calibrate_model(
        args.model,
        args.val_cache,
        method=args.method,
        out=args.out,
        min_positives=args.min_positives,
        **run_settings(args),
    )
    print("\n".join(calibration_lines(table)))
    if calibration.shift:
        print(
            "the prior shift of the training loss was kept from the model's earlier "
            "calibration (it cannot be recomputed here: the training labels are not in the file)"
        )
    elif trained_with in WEIGHTED_LOSSES:
        print(
            f"no prior shift: the model was trained with {trained_with} but its file holds no "
            "shift (train with --calibration platt to store one), so the labels with few "
            "validation positives are pulled toward the uncorrected scores"
        )
    print(f"calibration written to {written} (on the validation images: a fit, not a test)")
    return EXIT_OK


#: The losses whose class weights shift the logits (:func:`cxr.losses.prior_shift`).
WEIGHTED_LOSSES = ("weighted-bce", "pos-weight-bce", "inverse-frequency")


def _training_loss(model: Path) -> str:
    """The loss the model file says it was trained with ("" when it does not say)."""
    from cxr.errors import CxrError
    from cxr.modelfile import read_model_info

    try:
        config = read_model_info(model).training.get("config", {})
    except (OSError, ValueError, CxrError):
        return ""  # calibrate_model reports an unreadable file
    return str(config.get("loss", "")) if isinstance(config, dict) else ""
