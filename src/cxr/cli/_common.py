"""What every ``cxr`` sub-command shares: exit codes, the CLI error, list parsing and the
options that several commands take (dataset, device, precision, progress).

Nothing here imports torch, numpy or pandas: building the parser stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.choices import DATASET_FORMATS, DEVICE_HELP, PRECISIONS

if TYPE_CHECKING:
    from cxr.table import LabelTable

__all__ = [
    "EXIT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "add_dataset_format",
    "add_device",
    "add_precision",
    "add_progress",
    "add_source_options",
    "load_sources",
    "parse_list",
]

#: Exit codes: success; something was found or skipped (leakage, unreadable images, rejects);
#: bad usage or input.
EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


class CLIError(ValueError):
    """A user error the CLI reports in one line (exit code 2)."""


def parse_list(text: str | None, flag: str) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None for no text. An empty list is an error
    naming ``flag``."""
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise CLIError(f"{flag} needs one or more comma-separated values, got {text!r}")
    return items


def add_dataset_format(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "dataset"
) -> None:
    p.add_argument(
        "--format",
        choices=DATASET_FORMATS,
        help=f"{what} format (default: detected from the files present)",
    )


def add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = "cpu") -> None:
    p.add_argument(
        "--device", default=default, help=f"torch device: {DEVICE_HELP} (default: %(default)s)"
    )


def add_precision(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="forward-pass precision; auto = bf16 on a GPU, fp32 on the CPU (default: %(default)s)",
    )


def add_progress(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# datasets ----------------------------------------------------------------------------------
def add_source_options(p: argparse.ArgumentParser, many: bool = True) -> None:
    """The SOURCE argument(s) and the dataset reader options."""
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
        choices=("ones", "zeros", "ignore"),
        help="CheXpert: uncertain (-1) labels become 1 (U-Ones), 0 (U-Zeros) or unknown",
    )
    g.add_argument(
        "--blank",
        choices=("nan", "zero"),
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


#: Reader option -> the flag that sets it, for messages.
_READER_FLAGS = {
    "uncertain": "--uncertain",
    "blank": "--blank",
    "frontal_only": "--all-views",
    "image_column": "--image-column",
    "patient_column": "--patient-column",
    "image_root": "--image-root",
    "allow_outside": "--allow-outside-paths",
    "labels_csv": "--dicom-labels",
    "join": "--dicom-join",
}


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.uncertain:
        options["uncertain"] = args.uncertain
    if args.blank:
        options["blank"] = args.blank
    if args.all_views:
        options["frontal_only"] = False
    if args.image_column:
        options["image_column"] = args.image_column
    if args.patient_column:
        options["patient_column"] = args.patient_column
    if args.image_root:
        options["image_root"] = args.image_root
    if getattr(args, "allow_outside_paths", False):
        options["allow_outside"] = True
    if getattr(args, "dicom_labels", None):
        options["labels_csv"] = args.dicom_labels
    if getattr(args, "dicom_join", None):
        options["join"] = args.dicom_join
    return options


def load_sources(args: argparse.Namespace, sources: Sequence[Path] | None = None) -> LabelTable:
    """Read (and merge) the sources; each reader gets the options that apply to its format."""
    from cxr.datasets import detect_format, load_dataset, reader_options
    from cxr.table import merge_tables

    sources = list(sources if sources is not None else args.source)
    options = _reader_options(args)
    formats = [args.format or detect_format(s) for s in sources]
    unused = set(options) - {k for f in formats for k in reader_options(f)}
    if unused:
        flags = sorted(_READER_FLAGS[k] for k in unused)
        raise CLIError(
            f"option(s) {', '.join(flags)} do not apply to the dataset format(s) "
            f"{', '.join(sorted(set(formats)))} of {', '.join(map(str, sources))}"
        )
    tables = [
        load_dataset(s, format=f, **{k: v for k, v in options.items() if k in reader_options(f)})
        for s, f in zip(sources, formats, strict=True)
    ]
    table = tables[0] if len(tables) == 1 else merge_tables(tables)
    labels = parse_list(args.labels, "--labels")
    return table.select_labels(labels) if labels else table
