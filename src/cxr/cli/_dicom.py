"""The DICOM options of ``cxr predict`` and ``cxr prepare``: which files are decoded
(:class:`cxr.dicom.DicomPolicy`). Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from cxr.choices import MULTIFRAME_MODES

__all__ = ["add_dicom_options", "with_dicom_options"]


def add_dicom_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM")
    g.add_argument(
        "--allow-any-modality",
        action="store_true",
        help="decode DICOM files of every modality and body part (default: only CR or DX "
        "radiographs, or files without a Modality tag, whose body part is unset or the chest; "
        "others are refused as wrong-modality)",
    )
    g.add_argument(
        "--multiframe",
        choices=MULTIFRAME_MODES,
        default="first",
        help="a multi-frame DICOM: use its first frame, with a warning (first, default), "
        "or refuse it (refuse)",
    )


def with_dicom_options(
    run: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``run`` with the DICOM options of ``args`` as the process-wide policy while it runs."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from cxr.dicom import dicom_policy

        with dicom_policy(
            any_modality=bool(getattr(args, "allow_any_modality", False)),
            multiframe=getattr(args, "multiframe", "first"),
        ):
            return run(args)

    return wrapped
