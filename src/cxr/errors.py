"""The one base class of every error a user can cause.

Every exception a user can trigger -- a bad file, a bad flag, bad data, a missing optional
extra -- derives from :class:`CxrError`, so a front end (the CLI, the service, the tuner)
catches them once and reports the one-line message instead of a traceback. Each subclass
keeps its older built-in base (``ValueError``, ``RuntimeError``, ...) so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = ["CxrError"]


class CxrError(Exception):
    """Base of every error a user can cause: a bad file, flag or data."""
