"""Warnings that libraries raise while a slide is handled, held back and summarised.

pydicom's value checks (and other libraries') warn with the offending value in the message
("Invalid value for VR UI: '1.2.826.0.1.<a name>'", raw header bytes on a corrupt length):
printed as they come, they would put the slide's text on stderr. While a slide is handled they
are recorded instead, and the run reports how many there were and from which library, never
what they said.
"""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


API_NOTICES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@dataclass
class Withheld:
    caught: list = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per library: how many warnings it raised (their text withheld).
        Deprecation notices are about the library's own API, not the slide: not counted."""
        counts = Counter(_library(w) for w in self.caught
                         if not issubclass(w.category, API_NOTICES))
        return [f"{n} warning(s) from {library} about the slide's values (their text is not "
                "shown: it may quote the slide)" for library, n in sorted(counts.items())]


def _library(caught: warnings.WarningMessage) -> str:
    filename = (caught.filename or "").replace("\\", "/")
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0]
    return "a library"


@contextmanager
def withheld() -> Iterator[Withheld]:
    """Record every warning raised inside the block instead of printing it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Withheld(caught)
        yield result


def withhold_everywhere() -> None:
    """Outside any slide (finding inputs, say): a warning is shown as one line without its
    message (the command line installs this)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        import sys

        library = _library(warnings.WarningMessage(message, category, filename, lineno))
        (file or sys.stderr).write(f"wsideid: warning: {category.__name__} from {library} "
                                   "(its text is not shown: it may quote a slide)\n")

    warnings.showwarning = show
