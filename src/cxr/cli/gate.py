"""``cxr gate``: fit a model file's not-a-chest-X-ray check on its training and validation
caches (:func:`cxr.ood.fit_model_gate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.cli._common import EXIT_OK, CLIError
from cxr.cli.options import add_command, add_model, add_model_update, run_settings
from cxr.ood import MAX_TRAIN_IMAGES, OOD_COMPONENTS, OOD_PERCENTILE


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``gate``."""
    p = add_command(
        sub,
        "gate",
        run_gate,
        help="fit the not-a-chest-X-ray check and store it in the model file",
        description="Describe the model's pooled features of TRAIN_CACHE (mean and the main "
        "axes of their covariance, shrunk), choose the threshold of the distance to it on "
        "VAL_CACHE (a percentile of its scores) and write both into the model file. cxr "
        "predict and serve then flag images that do not look like the training images "
        "(photos, screenshots, CT slices, blank or text images). cxr train already does this.",
    )
    add_model(p)
    p.add_argument("train_cache", type=Path, help="the prepared training cache (cxr prepare)")
    p.add_argument("val_cache", type=Path, help="the prepared validation cache")
    p.add_argument(
        "--percentile",
        type=float,
        default=OOD_PERCENTILE,
        help="threshold = this percentile of the validation scores (default: %(default)s: "
        "about 1%% of chest X-rays like the validation ones are flagged)",
    )
    p.add_argument(
        "--components",
        type=int,
        default=OOD_COMPONENTS,
        help="principal axes kept (default: %(default)s)",
    )
    p.add_argument(
        "--max-train",
        type=int,
        default=MAX_TRAIN_IMAGES,
        help="training images used at most, a seeded sample (default: %(default)s)",
    )
    add_model_update(p)


def run_gate(args: argparse.Namespace) -> int:
    from cxr.ood import fit_model_gate

    if not 0 < args.percentile <= 100:
        raise CLIError(f"--percentile must be in (0, 100], got {args.percentile}")
    for flag, value in (
        ("--components", args.components),
        ("--max-train", args.max_train),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise CLIError(f"{flag} must be 1 or more, got {value}")
    written, gate = fit_model_gate(
        args.model,
        args.train_cache,
        args.val_cache,
        args.out,
        percentile=args.percentile,
        components=args.components,
        max_train=args.max_train,
        **run_settings(args),
    )
    print(f"not-a-chest-X-ray check written to {written}: {gate.describe()}")
    return EXIT_OK
