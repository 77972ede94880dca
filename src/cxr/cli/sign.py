"""``cxr sign``: sign a model file with the configured key (see :mod:`cxr.signing`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.cli._common import EXIT_OK
from cxr.cli.options import add_command, add_model


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sign``."""
    p = add_command(
        sub,
        "sign",
        cmd_sign,
        help="sign a model file with the key in CXR_SIGNING_KEY or CXR_SIGNING_KEY_FILE",
        description="Verify a cxr model file's integrity and add (or replace) its keyed "
        "signature: an HMAC-SHA-256 under the key in the environment variable CXR_SIGNING_KEY, "
        "or in the file named by CXR_SIGNING_KEY_FILE (at least 16 bytes). When a key is "
        "configured, cxr train signs the models it writes and every command that loads a "
        "model refuses files that are unsigned or signed with another key.",
    )
    add_model(p)
    p.add_argument(
        "--out", type=Path, help="write the signed file here (default: sign the file in place)"
    )


def cmd_sign(args: argparse.Namespace) -> int:
    from cxr.modelfile import read_model_info, sign_model

    written = sign_model(args.model, args.out)
    print(f"signed {written} (key id {read_model_info(written).signed_by})")
    return EXIT_OK
