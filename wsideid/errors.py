"""Errors that carry a one-line, user-facing message."""
from __future__ import annotations


class SlideError(Exception):
    """The input is not a readable slide (exit code 2)."""


class VerificationError(Exception):
    """The written output failed verification and was not released (exit code 1)."""
