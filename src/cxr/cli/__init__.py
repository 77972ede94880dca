"""The ``cxr`` command line: a thin layer over the Python API.

Every sub-command parses its arguments, calls library functions and prints their result;
one module per command group (:mod:`~cxr.cli.data`, :mod:`~cxr.cli.train`,
:mod:`~cxr.cli.evaluate`, :mod:`~cxr.cli.predict`, :mod:`~cxr.cli.demo`), the exit codes
and the CLI error in :mod:`cxr.cli._common`, the shared option groups in
:mod:`cxr.cli.options`. Errors in the user's input (a bad file, a wrong option) are printed
as one line naming what was wrong, with exit code 2; set ``CXR_DEBUG=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from cxr import RESEARCH_NOTICE, __version__
from cxr.cli import (
    calibrate,
    data,
    demo,
    dicom,
    evaluate,
    export,
    gate,
    predict,
    serve,
    sign,
    train,
    tune,
)
from cxr.cli._common import EXIT_FOUND, EXIT_OK, EXIT_USAGE, CLIError
from cxr.errors import CxrError

__all__ = [
    "EXIT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "USER_ERRORS",
    "CLIError",
    "CxrError",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``cxr`` parser with every sub-command (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Multi-label chest X-ray classification: datasets, decode-once cache, "
        f"training, evaluation, prediction and Grad-CAM explanations. {RESEARCH_NOTICE}",
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        data,
        demo,
        train,
        tune,
        evaluate,
        calibrate,
        gate,
        predict,
        export,
        sign,
        serve,
        dicom,
    ):
        module.add_parsers(sub)
    return parser


#: Exceptions that mean bad input (printed as one line), not a bug in cxr: every error a user
#: can cause derives from :class:`~cxr.errors.CxrError`; ``ValueError`` and ``OSError`` cover
#: bad values and files reported by the standard library and third-party readers.
USER_ERRORS: tuple[type[BaseException], ...] = (CxrError, ValueError, OSError)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def one_line(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())
        print(f"cxr {args.command}: warning: {text}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return int(args.func(args))
    except BrokenPipeError:  # `cxr ... | head`: the reader left; end quietly
        _quiet_stdout()
        return EXIT_OK
    except USER_ERRORS as err:
        if os.environ.get("CXR_DEBUG"):
            raise
        print(f"cxr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        # cxr train says what it saved and the exact command that continues the run
        print(
            f"cxr {args.command}: {err}"
            if str(err)
            else "interrupted; work done so far is kept (run the same command to continue)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
