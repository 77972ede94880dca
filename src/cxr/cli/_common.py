"""What every ``cxr`` sub-command shares: exit codes, the CLI error, list parsing and reading
the datasets named by the source options (the options themselves: :mod:`cxr.cli.options`).

Nothing here imports torch, numpy or pandas: building the parser stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.errors import CxrError

if TYPE_CHECKING:
    from cxr.table import LabelTable

__all__ = [
    "EXIT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "as_cli_error",
    "keywords",
    "load_sources",
    "parse_list",
]

#: Exit codes: success; something was found or skipped (leakage, unreadable images, rejects);
#: bad usage or input.
EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


class CLIError(CxrError, ValueError):
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


@contextmanager
def as_cli_error(*errors: type[Exception]) -> Iterator[None]:
    """Re-raise ``errors`` raised inside the block as a :class:`CLIError` with the same
    message (one line, exit code 2): for library errors that mean bad input only where the
    CLI calls (e.g. a ``RuntimeError`` for a CUDA device on a machine without one)."""
    try:
        yield
    except errors as err:
        raise CLIError(str(err)) from None


def keywords(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options ``names`` of ``args`` as keyword arguments of the same names, for the
    library function a command calls: ``f(**keywords(args, "seed", "epochs"))``."""
    return {name: getattr(args, name) for name in names}


# datasets ----------------------------------------------------------------------------------
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
