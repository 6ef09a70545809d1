"""Text segments inside stored images, found and removed run by run, for every container.

A *run* is one stored piece of an image (a tile, a strip, a DICOM frame, a MIRAX image). JPEG
and JPEG 2000 runs are screened all at once (segments.screen_*), and only the flagged ones are
parsed and cleaned; PNG runs are always walked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import segments

SCREENS = {"jpeg": segments.screen_jpeg, "j2k": segments.screen_j2k}
CLEANERS = {"jpeg": segments.clean_jpeg, "j2k": segments.clean_j2k, "png": segments.clean_png,
            "image": segments.clean_image}


@dataclass
class Cleaned:
    index: int
    data: bytes                           # the run without its text segments
    removed: list[tuple[str, bytes]]      # (segment name, payload)
    header_shift: int                     # bytes removed before the entropy-coded data (JPEG)


@dataclass
class Unparseable:
    index: int
    reason: str


def clean_runs(fd: int, size: int, offsets: np.ndarray, counts: np.ndarray, codec: str,
               screen: bool = True,
               prepare: Callable[[bytes], bytes] | None = None) -> list[Cleaned | Unparseable]:
    """Every run of `codec` ("jpeg", "j2k", "png", or "image": JPEG or PNG by signature) that
    holds text segments, with its cleaned bytes; runs that cannot be parsed are listed as such.
    `screen=False` parses every run; `prepare` adjusts a run's bytes before parsing (DICOM
    frames padded to an even length)."""
    clean = CLEANERS.get(codec)
    if clean is None:
        return []
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if screen and codec in SCREENS:
        candidates = np.nonzero(segments.screen_runs(fd, size, offsets, counts, SCREENS[codec]))[0]
    else:
        candidates = np.nonzero(counts > 0)[0]
    out: list[Cleaned | Unparseable] = []
    for index in candidates.tolist():
        data = os.pread(fd, int(counts[index]), int(offsets[index]))
        if prepare is not None:
            data = prepare(data)
        try:
            cleaned, removed = clean(data)
        except segments.MalformedStream as exc:
            out.append(Unparseable(index, str(exc)))
            continue
        if removed:
            shift = (segments.scan_start(data) - segments.scan_start(cleaned)
                     if data[:2] == b"\xff\xd8" else 0)
            out.append(Cleaned(index, cleaned, removed, shift))
    return out
