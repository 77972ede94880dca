"""The option groups that several ``cxr`` sub-commands take, defined once.

Each ``add_*`` function adds one option (or a group of them) to a parser or an argument
group, with the same flag, default and help text wherever it is used; :func:`add_command`
registers a sub-command with its run function. :func:`run_settings` turns the common run
options back into the keyword arguments the library functions take.

Nothing here imports torch, numpy or pandas: building the parser stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr.choices import (
    BLANK_POLICIES,
    CAM_METHODS,
    DATASET_FORMATS,
    DEVICE_HELP,
    PRECISIONS,
    TTA_MODES,
    UNCERTAIN_POLICIES,
)

__all__ = [
    "Parser",
    "add_batch_size",
    "add_cam_method",
    "add_command",
    "add_config",
    "add_dataset_format",
    "add_device",
    "add_json",
    "add_mlflow_experiment",
    "add_model",
    "add_model_update",
    "add_precision",
    "add_progress",
    "add_run_options",
    "add_seed",
    "add_source_options",
    "add_threads",
    "add_train_caches",
    "add_tta",
    "run_settings",
]

#: What an option is added to: a (sub-)parser or one of its argument groups.
Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], int],
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Register sub-command ``name`` (``help``, ``description``, ... as for ``add_parser``)
    that runs ``run(args)`` and returns its exit code; returns its parser."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=run)
    return p


# models ------------------------------------------------------------------------------------
def add_model(p: Parser, help: str = "the .safetensors model file") -> None:
    """The MODEL positional argument: a model file."""
    p.add_argument("model", type=Path, help=help)


def add_model_update(p: Parser) -> None:
    """``--out``, ``--batch-size``, ``--device`` and ``--no-progress`` of a command that fits
    something on a model's predictions and writes it into the model file."""
    p.add_argument("--out", type=Path, help="write here (default: update MODEL in place)")
    add_run_options(p, 64)


def add_cam_method(p: Parser) -> None:
    """``--method``: the heatmap method (Grad-CAM or Grad-CAM++)."""
    p.add_argument(
        "--method",
        choices=CAM_METHODS,
        default="gradcam",
        help="heatmap method (default: %(default)s)",
    )


def _tta_mode(value: str) -> str:
    if value not in TTA_MODES:
        raise argparse.ArgumentTypeError(
            f"takes {', '.join(TTA_MODES)}, got {value!r} (a bare --tta, meaning all, goes "
            "after the images or before another option)"
        )
    return value


def add_tta(p: Parser) -> None:
    """``--tta [{none,flip,all}]``: test-time augmentation; bare ``--tta`` = ``all``; absent =
    None (the model file's recommended mode)."""
    p.add_argument(
        "--tta",
        nargs="?",
        const="all",
        default=None,
        type=_tta_mode,
        metavar="{" + ",".join(TTA_MODES) + "}",
        help="test-time augmentation, the mean over views: none; flip (original and "
        "mirror); all (original, mirror and 4 small shifts). A bare --tta means all "
        "(write it after the images). Default: the mode the model file recommends (none "
        "when it names none)",
    )


# running -----------------------------------------------------------------------------------
def add_batch_size(p: Parser, default: int, what: str = "images per batch") -> None:
    """``--batch-size``: ``what`` (default ``default``)."""
    p.add_argument("--batch-size", type=int, default=default, help=f"{what} (default: %(default)s)")


def add_device(p: Parser, default: str = "cpu") -> None:
    """``--device``: the torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``)."""
    p.add_argument(
        "--device", default=default, help=f"torch device: {DEVICE_HELP} (default: %(default)s)"
    )


def add_precision(p: Parser) -> None:
    """``--precision``: the forward pass's number format."""
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="forward-pass precision; auto = bf16 on a GPU, fp32 on the CPU (default: %(default)s)",
    )


def add_progress(p: Parser) -> None:
    """``--no-progress``: no progress bar."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_run_options(
    p: Parser, batch_size: int, what: str = "images per batch", precision: bool = False
) -> None:
    """How a model runs: ``--batch-size`` (``what``, default ``batch_size``), ``--device``,
    ``--precision`` when ``precision`` and ``--no-progress`` (read by :func:`run_settings`)."""
    add_batch_size(p, batch_size, what)
    add_device(p)
    if precision:
        add_precision(p)
    add_progress(p)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``device``, ``batch_size`` and ``progress`` from the options of :func:`add_device`,
    :func:`add_batch_size` and :func:`add_progress`, as keyword arguments."""
    return {
        "device": args.device,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
    }


def add_seed(p: Parser, what: str = "random seed") -> None:
    """``--seed`` (an integer, default 0): ``what`` it seeds."""
    p.add_argument("--seed", type=int, default=0, help=f"{what} (default: %(default)s)")


def add_json(p: Parser) -> None:
    """``--json``: print JSON instead of a table."""
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


# training and tuning -----------------------------------------------------------------------
def add_train_caches(p: Parser) -> None:
    """The TRAIN_CACHE and VAL_CACHE positionals (optional: ``--resume`` or ``--config``
    may stand for them)."""
    p.add_argument("train_cache", nargs="?", type=Path, help="prepared cache to train on")
    p.add_argument("val_cache", nargs="?", type=Path, help="prepared cache to validate on")


def add_config(p: Parser, what: str = "settings") -> None:
    """``--config FILE``: read ``what`` from a saved config.yaml first."""
    p.add_argument("--config", type=Path, help=f"read {what} from a config.yaml first")


def add_threads(p: Parser, more: str = "") -> None:
    """``--threads N``: torch's CPU threads; ``more`` is added to the default's text."""
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: OMP_NUM_THREADS when set, else torch's choice"
        f"{more})",
    )


def add_mlflow_experiment(p: Parser, of: str) -> None:
    """``--mlflow-experiment NAME`` (default ``cxr``): the experiment ``of`` is logged to."""
    p.add_argument(
        "--mlflow-experiment",
        default="cxr",
        metavar="NAME",
        help=f"MLflow experiment of {of} (default: cxr)",
    )


# datasets ----------------------------------------------------------------------------------
def add_dataset_format(p: Parser, what: str = "dataset") -> None:
    """``--format``: the dataset format of the sources (default: detected)."""
    p.add_argument(
        "--format",
        choices=DATASET_FORMATS,
        help=f"{what} format (default: detected from the files present)",
    )


def add_source_options(p: argparse.ArgumentParser, many: bool = True) -> None:
    """The SOURCE argument(s) and the dataset reader options (read by
    :func:`cxr.cli._common.load_sources`)."""
    p.add_argument(
        "source",
        nargs="+" if many else None,
        type=Path,
        help="dataset: a folder or a label file (NIH Data_Entry_2017.csv, CheXpert "
        "train.csv/valid.csv, a plain CSV, a folder per class, a .txt image list)"
        + ("; several are merged over the union of their labels" if many else ""),
    )
    g = p.add_argument_group("dataset options (each applies to the formats that have it)")
    add_dataset_format(g)
    g.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        help="CheXpert: uncertain (-1) labels become 1 (U-Ones), 0 (U-Zeros) or unknown",
    )
    g.add_argument(
        "--blank",
        choices=BLANK_POLICIES,
        help="CheXpert: a blank label is unknown (nan, default) or absent (zero)",
    )
    g.add_argument(
        "--all-views",
        action="store_true",
        help="CheXpert: keep lateral views too (default: frontal only)",
    )
    g.add_argument("--image-column", help="plain CSV: the column holding image file names")
    g.add_argument("--patient-column", help="plain CSV: the column holding patient ids")
    g.add_argument(
        "--image-root",
        type=Path,
        help="plain CSV: folder the image names are relative to (default: the CSV's)",
    )
    g.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="plain CSV, CheXpert, image list: accept relative image paths that climb out of the "
        "dataset folder (../x.png; refused by default)",
    )
    g.add_argument(
        "--dicom-labels",
        type=Path,
        metavar="CSV",
        help="DICOM folder: the labels CSV (default: the one CSV in the folder, if any)",
    )
    g.add_argument(
        "--dicom-join",
        choices=("sop", "accession", "file"),
        help="DICOM folder: join the labels by SOPInstanceUID, AccessionNumber or file path "
        "(default: the first of these columns the CSV has)",
    )
    g.add_argument(
        "--labels",
        help="comma-separated labels to keep, in this order (default: all labels of the dataset)",
    )
