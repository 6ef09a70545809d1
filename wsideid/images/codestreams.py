"""Every byte of every stored image run accounted for by its codec's grammar, for every
container.

A *run* is one stored piece of an image (a tile, a strip, a DICOM frame, a MIRAX image). Its
codec's module checks it: JPEG (segments), JPEG 2000 (j2k), PNG (png), and the lossless TIFF
codecs (lossless), which also need the size the run must decode to. A run is then either left
as it is (every byte accounted for), rewritten (`Cleaned`: without its text segments, its
trailing bytes, with canonical JFIF/Adobe segments ...), or `Unparseable`: a byte the grammar
cannot account for, and the caller refuses the slide. A codec without a grammar here is not
screened at all (`screened`), and callers refuse kept images in it.

JPEG and JPEG 2000 runs are screened all at once with numpy (segments.screen_*, j2k) and only
the flagged ones are parsed; PNG and lossless runs are all parsed, lossless ones decoded in
threads (zlib and imagecodecs release the GIL).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import j2k, lossless, png, segments

SCREENS = {"jpeg": segments.screen_jpeg, "j2k": j2k.screen_j2k}


def clean_image(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A JPEG or PNG image (chosen by the image's own signature) without its text segments."""
    if data.startswith(png.SIGNATURE):
        return png.clean_png(data)
    return segments.clean_jpeg(data)


STREAMS = {"jpeg": segments.clean_jpeg, "j2k": j2k.clean_j2k, "png": png.clean_png,
           "image": clean_image}
SIZED = lossless.CLEANERS   # lzw, deflate, packbits, none: they need the decoded size
BATCH = 64                  # runs a thread checks at a time (a future per run cost 40 us)


def screened(codec: str) -> bool:
    """Whether runs of this codec can be accounted for here."""
    return codec in STREAMS or codec in SIZED


@dataclass
class Cleaned:
    index: int
    data: bytes                           # the run as it is to be written
    removed: list[tuple[str, bytes]]      # (what, payload) of everything taken out or rewritten
    header_shift: int                     # bytes removed before the entropy-coded data (JPEG)


@dataclass
class Unparseable:
    index: int
    reason: str


def clean_stream(data: bytes, codec: str, sizes: tuple[int, ...] = ()
                 ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One run checked against its grammar; raises segments.MalformedStream."""
    if codec in SIZED:
        return SIZED[codec](data, sizes)
    return STREAMS[codec](data)


def check_run(data: bytes, codec: str, sizes: tuple[int, ...] = ()) -> str | None:
    """Why a run about to be released is not clean (None: it is). For verification."""
    if not screened(codec):
        return None
    try:
        cleaned, removed = clean_stream(data, codec, sizes)
    except segments.MalformedStream as exc:
        return str(exc)
    return f"it still holds {removed[0][0]}" if removed else None


def clean_runs(fd: int, size: int, offsets: np.ndarray, counts: np.ndarray, codec: str,
               screen: bool = True, prepare: Callable[[bytes], bytes] | None = None,
               sizes: tuple[np.ndarray, np.ndarray] | None = None) -> list[Cleaned | Unparseable]:
    """Every run of `codec` that must be rewritten, with its new bytes, and every run that
    cannot be parsed. `screen=False` parses every run; `prepare` adjusts a run's bytes before
    parsing (DICOM frames padded to an even length); `sizes` are the (exact, also allowed)
    decoded sizes of each run, for the lossless codecs. Runs of a codec that is not screened
    are not looked at: callers check `screened` first."""
    if not screened(codec):
        return []
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if codec in SIZED:
        if sizes is None:
            raise ValueError(f"{codec} runs need their decoded sizes")
        need, alt = (np.asarray(s, dtype=np.int64) for s in sizes)
        live = counts > 0
        candidates = np.nonzero(live & (counts != need) if codec == "none" else live)[0]
    elif screen and codec in SCREENS:
        candidates = np.nonzero(segments.screen_runs(fd, size, offsets, counts, SCREENS[codec]))[0]
    else:
        candidates = np.nonzero(counts > 0)[0]

    def one(index: int, data: bytes | None = None) -> Cleaned | Unparseable | None:
        if data is None:
            data = os.pread(fd, int(counts[index]), int(offsets[index]))
        if prepare is not None:
            data = prepare(data)
        wanted = (int(need[index]), int(alt[index])) if codec in SIZED else ()
        try:
            cleaned, removed = clean_stream(data, codec, wanted)
        except segments.MalformedStream as exc:
            return Unparseable(index, str(exc))
        if not removed:
            return None
        shift = (segments.scan_start(data) - segments.scan_start(cleaned)
                 if data[:2] == b"\xff\xd8" else 0)
        return Cleaned(index, cleaned, removed, shift)

    def batch(indices: list[int]) -> list[Cleaned | Unparseable | None]:
        """Runs next to each other in the file, read with one pread when they lie close
        together (a cold file read tile by tile from two threads is read out of order)."""
        lo = int(offsets[indices].min())
        hi = int((offsets[indices] + counts[indices]).max())
        if hi - lo > 2 * int(counts[indices].sum()) + (1 << 20):
            return [one(i) for i in indices]
        block = os.pread(fd, hi - lo, lo)
        return [one(i, block[int(offsets[i]) - lo:int(offsets[i] + counts[i]) - lo])
                for i in indices]

    todo = candidates.tolist()
    if (codec in SIZED or codec == "png") and len(todo) > BATCH:   # every run decoded
        todo.sort(key=lambda i: int(offsets[i]))
        batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            found = [f for part in pool.map(batch, batches) for f in part]
    else:
        found = [one(index) for index in todo]
    return [f for f in found if f is not None]
