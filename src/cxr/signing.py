"""Keyed signatures for model files: who may have written this file.

A model file's SHA-256 (see :mod:`cxr.modelfile`) detects accidental damage, but anyone who
edits a file can recompute it. A signature is an HMAC-SHA-256 of that digest under a secret
key that only the people allowed to publish models hold; without the key, an edited file
cannot be re-signed.

The key comes from the environment, never from the command line (where it would show in
process lists and shell history):

* ``CXR_SIGNING_KEY``: the key itself (at least 16 characters), or
* ``CXR_SIGNING_KEY_FILE``: a file whose bytes are the key (at least 16 bytes; a trailing
  newline is ignored).

When a key is configured, :func:`cxr.modelfile.save_model` (so ``cxr train``) and ``cxr
export`` sign what they write, and loading refuses files that are unsigned or signed with
another key. Without a key, files load as before and a signature is not checked.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from cxr.errors import CxrError

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MIN_KEY_BYTES",
    "SIGNATURE_SCHEME",
    "SigningError",
    "key_id",
    "signature_for",
    "signing_key",
    "verify_signature",
]

KEY_ENV = "CXR_SIGNING_KEY"
KEY_FILE_ENV = "CXR_SIGNING_KEY_FILE"
MIN_KEY_BYTES = 16
SIGNATURE_SCHEME = "hmac-sha256"


class SigningError(CxrError, ValueError):
    """A signing key that cannot be used, or a file whose signature fails; the message says
    which and what to do."""


def signing_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The configured signing key (bytes), or None when neither variable is set.

    Raises:
        SigningError: both variables set, an unreadable key file, or a key shorter than
            :data:`MIN_KEY_BYTES`.
    """
    env = os.environ if environ is None else environ
    text, file = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
    if text and file:
        raise SigningError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if file:
        path = Path(file)
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise SigningError(
                f"{KEY_FILE_ENV}={file}: cannot read the signing key file ({exc.strerror or exc})"
            ) from None
        key = key.rstrip(b"\r\n")
        where = f"the key file {file} ({KEY_FILE_ENV})"
    elif text:
        key, where = text.encode(), KEY_ENV
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise SigningError(
            f"{where} holds {len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES} "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (the first 12 hex digits of its SHA-256): it tells
    which key signed a file without revealing the key."""
    return hashlib.sha256(b"cxr-key-id:" + key).hexdigest()[:12]


def signature_for(digest: str, key: bytes) -> dict[str, str]:
    """The signature record of a file whose integrity digest is ``digest`` (hex string)."""
    mac = hmac.new(key, f"cxr-signature:{digest}".encode(), hashlib.sha256).hexdigest()
    return {"scheme": SIGNATURE_SCHEME, "key_id": key_id(key), "mac": mac}


def verify_signature(
    digest: str, signature: Mapping[str, object] | None, key: bytes | None
) -> bool:
    """Check ``signature`` of a file with integrity digest ``digest``.

    Returns True when verified, False when no key is configured (nothing to check).

    Raises:
        SigningError: a key is configured and the file is unsigned, signed with another key,
            or its signature does not match (the caller names the file).
    """
    if key is None:
        return False
    if not signature:
        raise SigningError(
            f"is not signed, and a signing key is configured ({KEY_ENV} or "
            f"{KEY_FILE_ENV}), so only signed files are accepted; sign it with `cxr sign` "
            "if you trust it"
        )
    if not isinstance(signature, Mapping) or signature.get("scheme") != SIGNATURE_SCHEME:
        raise SigningError(f"its signature is not a {SIGNATURE_SCHEME} signature")
    expected = signature_for(digest, key)
    if signature.get("key_id") != expected["key_id"]:
        raise SigningError(
            f"was signed with another key (key id {signature.get('key_id')!s}, the "
            f"configured key is {expected['key_id']}); use the key that signed it"
        )
    mac = signature.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, expected["mac"]):
        raise SigningError("its signature does not match: the file was changed after it was signed")
    return True
