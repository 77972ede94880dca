"""``cxr demo``: the whole pipeline in one command (see :mod:`cxr.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr import RESEARCH_NOTICE
from cxr.cli._common import EXIT_OK, CLIError, keywords
from cxr.cli.options import add_command, add_device, add_seed


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    p = add_command(
        sub,
        "demo",
        cmd_demo,
        help="the whole pipeline on generated phantoms (no data, no GPU) or on --data",
        description="Generate phantoms (or read --data), split by patient, check leakage, "
        "prepare the cache, train a model, evaluate it on the test split (report with ROC curves), "
        "predict and explain held-out images, and check where the heatmaps point. "
        "About a minute and a half on two idle CPU cores with the defaults. " + RESEARCH_NOTICE,
    )
    p.add_argument(
        "--out", type=Path, default=Path("cxr-demo"), help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="run on this dataset (any format cxr data inspect reads) instead of phantoms",
    )
    p.add_argument("--n", type=int, default=1000, help="phantom images (default: %(default)s)")
    p.add_argument(
        "--size",
        type=int,
        help="cache and model input side in pixels (default: 64 for phantoms, 224 with --data)",
    )
    p.add_argument("--epochs", type=int, default=16, help="training epochs (default: %(default)s)")
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone to train (default: cxr-small-cnn on phantoms; with --data, the "
        "default of cxr train, decided by the training set's size: the probe on "
        "efficientnet-lite0 for a small set; densenet121 wants a GPU)",
    )
    add_device(p, default="auto")
    add_seed(p, "seed of phantoms, split and training")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")


def cmd_demo(args: argparse.Namespace) -> int:
    from cxr.demo import run_demo

    if args.data is not None and not args.data.exists():
        raise CLIError(f"--data {args.data} does not exist")
    run_demo(
        args.out,
        n_images=args.n,
        **keywords(args, "size", "workers", "seed", "data", "epochs", "backbone", "device"),
    )
    return EXIT_OK
