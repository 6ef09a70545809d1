"""Errors that carry a one-line, user-facing message; the class says what failed."""
from __future__ import annotations


class SlideError(Exception):
    """The input is not a readable slide, or cannot be de-identified (exit code 2)."""


class NotASlide(SlideError):
    """A file a format's detection claims that is not a slide of its own (a DICOMDIR): in a
    folder it is left out like any other file that is not a slide."""


class VerificationError(Exception):
    """The written output failed verification and was not released (exit code 1)."""


class InstallError(Exception):
    """The installation is broken (a catalog is missing): not the input's fault (exit code 2)."""


class OutputError(Exception):
    """The output cannot be written (read-only or full folder, a failing report write): not
    the input's fault (exit code 2). The message names what failed."""


# what an interrupt (Ctrl-C, SIGTERM) before any slide was written says
INTERRUPTED = "interrupted before any slide was written; run the same command again"
