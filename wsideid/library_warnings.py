"""Warnings and log records that libraries raise while a slide is handled, held back and
summarised.

pydicom's value checks (and other libraries') warn with the offending value in the message
("Invalid value for VR UI: '1.2.826.0.1.<a name>'", raw header bytes on a corrupt length), and
tifffile, pydicom, wsidicom, PIL ... log through `logging` (tifffile: "<TiffTag.fromfile> raised
TiffFileError(...)", which can quote a tag's value); with no handler configured, Python prints
such records on stderr (logging.lastResort), one line each. While a slide is handled both are
recorded instead, and the run reports how many there were and from which library, never what
they said: warnings on stderr and in the report, log records in the report only (stderr is for
wsideid's own lines). Outside a slide, log records are dropped.
"""
from __future__ import annotations

import logging
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


API_NOTICES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _LogCounter(logging.Handler):
    """Counts log records by library (the logger's top-level name); keeps no message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)    # what logging.lastResort would have printed
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if not _own_handler(record.name):
            self.counts[record.name.split(".", 1)[0] or "a library"] += 1


def _own_handler(name: str) -> bool:
    """Whether the logger (or a parent below the root) has a handler: pydicom's NullHandler
    says its records are not to be shown unless an application asks, and without the root's
    handler they would not reach stderr either (logging.lastResort is for records no handler
    takes)."""
    logger: logging.Logger | None = logging.getLogger(name)
    root = logging.getLogger()
    while logger is not None and logger is not root:
        if logger.handlers:
            return True
        logger = logger.parent if logger.propagate else None
    return False


@dataclass
class Withheld:
    caught: list = field(default_factory=list)
    logged: Counter = field(default_factory=Counter)

    def summary(self) -> list[str]:
        """One line per library: how many warnings and log records it raised (their text
        withheld). Deprecation notices are about the library's own API, not the slide: not
        counted."""
        counts = Counter(_library(w) for w in self.caught
                         if not issubclass(w.category, API_NOTICES))
        return [f"{n} warning(s) from {library} about the slide's values (their text is not "
                "shown: it may quote the slide)" for library, n in sorted(counts.items())]

    def log_summary(self) -> list[str]:
        """One line per library: how many log records it emitted (their text withheld)."""
        return [f"{n} log message(s) from {library} while reading the slide (their text is "
                "not shown: it may quote the slide)" for library, n in sorted(self.logged.items())]


def _library(caught: warnings.WarningMessage) -> str:
    filename = (caught.filename or "").replace("\\", "/")
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0]
    return "a library"


@contextmanager
def withheld() -> Iterator[Withheld]:
    """Record every warning and log record raised inside the block instead of printing it.
    The root logger's own handlers are set aside meanwhile: every library logger propagates
    to it (none of them has a handler of its own)."""
    root = logging.getLogger()
    counter = _LogCounter()
    outside = root.handlers[:]
    root.handlers = [counter]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = Withheld(caught, counter.counts)
            yield result
    finally:
        root.handlers = outside


def withhold_everywhere() -> None:
    """Outside any slide (finding inputs, say): a warning is shown as one line without its
    message (the command line installs this)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        import sys

        library = _library(warnings.WarningMessage(message, category, filename, lineno))
        (file or sys.stderr).write(f"wsideid: warning: {category.__name__} from {library} "
                                   "(its text is not shown: it may quote a slide)\n")

    warnings.showwarning = show
    root = logging.getLogger()
    if not root.handlers:       # a handler, even one that drops, keeps lastResort silent
        root.addHandler(logging.NullHandler())
