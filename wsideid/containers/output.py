"""Where a slide is written: a hidden staging place in an output folder, or the input itself
(in place); and what a finished write hands to verification and release."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Target:
    outdir: Path | None = None      # None: in place, beside (and over) the input

    @property
    def in_place(self) -> bool:
        return self.outdir is None


@dataclass
class Written:
    """A complete, durable output that is not yet released: `paths` are what a reader opens
    (re-read by verification), `release` gives it its final name, `discard` removes it."""
    paths: tuple[Path, ...]
    release: Callable[[], Path]
    discard: Callable[[], None]
    zeroed_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # in place: the undo record to forget once the release is recorded (the map row of the
    # renamed slide written): until then a crash puts the old slide back under its old name
    undo: Path | None = None
