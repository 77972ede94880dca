"""The ``cxr`` command line: a thin layer over the Python API.

Every sub-command parses its arguments, calls library functions and prints their result;
one module per command group (:mod:`~cxr.cli.data`, :mod:`~cxr.cli.train`,
:mod:`~cxr.cli.evaluate`, :mod:`~cxr.cli.predict`, :mod:`~cxr.cli.demo`), the shared
options and exit codes in :mod:`cxr.cli._common`. Errors in the user's input (a bad file,
a wrong option) are printed as one line naming what was wrong, with exit code 2; set
``CXR_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cxr import RESEARCH_NOTICE, __version__
from cxr.cli import data, demo, evaluate, predict, train
from cxr.cli._common import EXIT_FOUND, EXIT_OK, EXIT_USAGE, CLIError

__all__ = ["EXIT_FOUND", "EXIT_OK", "EXIT_USAGE", "CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``cxr`` parser with every sub-command (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Multi-label chest X-ray classification: datasets, decode-once cache, "
        f"training, evaluation, prediction and Grad-CAM explanations. {RESEARCH_NOTICE}",
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, demo, train, evaluate, predict):
        module.add_parsers(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (printed as one line), not a bug in cxr."""
    from cxr.cache import CacheError
    from cxr.images import ImageReadError
    from cxr.modelfile import ModelFileError
    from cxr.training import TrainError

    return (CLIError, CacheError, TrainError, ModelFileError, ImageReadError, ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _user_errors() as err:
        if os.environ.get("CXR_DEBUG"):
            raise
        print(f"cxr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "interrupted; work done so far is kept (run the same command to continue)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
