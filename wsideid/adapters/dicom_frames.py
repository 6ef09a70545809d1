"""The pixel data of a DICOM instance, every byte accounted for.

Encapsulated pixel data (PS3.5 A.4) is a Basic Offset Table item, then fragments: a frame is
one fragment or several, the first of which starts the frame's codestream. Each frame is
checked against its codec's grammar (images/codestreams.py; an odd-length frame is padded with
one NUL); a frame that cannot be parsed, or a transfer syntax this tool has no grammar for,
refuses the slide. The offset tables are copied with the pixel data only when they hold
exactly what they should: the Basic Offset Table empty or the offset of each frame's first
item tag from the first fragment's (A.4), the Extended Offset Table (PS3.3 C.7.6.3.1.8) one
offset and one length per frame with the Basic Offset Table empty; otherwise the Basic Offset
Table is rebuilt empty and the Extended one removed. Native pixel data must be exactly the
frames' size (plus one NUL to make it even).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SlideError
from ..images import codestreams, segments

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..containers.dicom.io import PixelElement

EOT, EOT_LENGTHS = 0x7FE00001, 0x7FE00002
SIGNATURES = {"jpeg": b"\xff\xd8", "j2k": b"\xff\x4f"}


def padded_frame(data: bytes) -> bytes:
    """A frame as stored, without the NUL that pads it to an even length (PS3.5 A.4)."""
    return data.rstrip(b"\x00") if data.endswith(b"\xff\xd9\x00") else data


@dataclass
class FrameCheck:
    cleaned: dict[int, tuple[bytes, list[tuple[str, bytes]]]] = field(default_factory=dict)
    rebuild: str = ""           # why the pixel data element is rebuilt (its BOT), if it is
    drop_eot: str = ""          # why the Extended Offset Table goes, if it does


def native_size(ds: Dataset) -> int:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2     # PS3.3 C.7.6.3.1.2: two samples a pixel as stored
    return (rows * cols * samples * bits * frames + 7) // 8


def check_native(ds: Dataset, source: Path, pixels: PixelElement, where: str) -> None:
    need = native_size(ds)
    stored = pixels.end - pixels.start - 12
    if stored == need or stored == need + 1 and need % 2:
        if stored == need:
            return
        with open(source, "rb") as fh:
            if os.pread(fh.fileno(), 1, pixels.end - 1) == b"\x00":
                return
    raise SlideError(f"{where}: native pixel data of {stored} bytes where its frames need {need}; "
                     "the slide is refused")


def frame_groups(fd: int, pixels: PixelElement, frames: int, tables: list[np.ndarray | None],
                 codec: str, where: str) -> list[list[int]]:
    """The fragments of each frame: one each, all of them for a single frame, or as an offset
    table or the codestreams' own start markers say."""
    n = len(pixels.frame_offsets)
    if n == frames:
        return [[i] for i in range(n)]
    if n < frames or not n:
        raise SlideError(f"{where}: {n} fragments for {frames} frames; the slide is refused")
    if frames == 1:
        return [list(range(n))]
    rel = pixels.frame_offsets - pixels.frame_offsets[0]
    starts = None
    for table in tables:
        if table is not None and len(table) == frames and np.isin(table, rel).all():
            starts = np.searchsorted(rel, table).tolist()
            break
    if starts is None:
        sig = SIGNATURES.get(codec, b"")
        starts = [i for i, off in enumerate(pixels.frame_offsets.tolist())
                  if os.pread(fd, len(sig), off) == sig]
    if len(starts) != frames or starts[0] != 0 or starts != sorted(set(starts)):
        raise SlideError(f"{where}: which fragments make up each frame cannot be told; the "
                         "slide is refused")
    bounds = starts + [n]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def _table(ds: Dataset, tag: int) -> np.ndarray | None:
    if tag not in ds:
        return None
    data = bytes(ds[tag].value or b"")
    return np.frombuffer(data[:len(data) // 8 * 8], "<u8").astype(np.int64)


def check_frames(ds: Dataset, source: Path, pixels: PixelElement, codec: str,
                 where: str) -> FrameCheck:
    """Every frame and offset table of one instance's encapsulated pixel data."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if codec not in SIGNATURES:
        raise SlideError(f"{where}: frames in transfer syntax {ds.file_meta.TransferSyntaxUID} "
                         "cannot be checked for hidden text; the slide is refused")
    result = FrameCheck()
    fd = os.open(source, os.O_RDONLY)
    try:
        bot = os.pread(fd, pixels.bot_length, pixels.bot_offset)
        bot_values = (np.frombuffer(bot, "<u4").astype(np.int64)
                      if len(bot) % 4 == 0 else None)
        eot, eot_lengths = _table(ds, EOT), _table(ds, EOT_LENGTHS)
        groups = frame_groups(fd, pixels, frames, [bot_values if len(bot) else None, eot],
                              codec, where)
        rel = pixels.frame_offsets - pixels.frame_offsets[0]
        firsts = rel[[g[0] for g in groups]]
        lengths = np.array([int(pixels.frame_lengths[g].sum()) for g in groups])
        if bot and (bot_values is None or not np.array_equal(bot_values, firsts)
                    or eot is not None):
            result.rebuild = "the Basic Offset Table does not hold exactly the frames' offsets"
        if eot is not None or eot_lengths is not None:
            fits = (eot is not None and eot_lengths is not None and np.array_equal(eot, firsts)
                    and len(eot_lengths) == frames
                    and np.all((eot_lengths == lengths) | (eot_lengths == lengths - 1)))
            if not fits:
                result.drop_eot = "the Extended Offset Table does not describe the frames"
        _screen(fd, pixels, groups, codec, where, result)
    finally:
        os.close(fd)
    return result


def _screen(fd: int, pixels: PixelElement, groups: list[list[int]], codec: str, where: str,
            result: FrameCheck) -> None:
    single = np.array([g[0] for g in groups if len(g) == 1], dtype=np.int64)
    found = codestreams.clean_runs(fd, os.fstat(fd).st_size, pixels.frame_offsets[single],
                                   pixels.frame_lengths[single], codec, prepare=padded_frame)
    for item in found:
        fragment = int(single[item.index])
        if isinstance(item, codestreams.Unparseable):
            raise SlideError(f"{where} frame {fragment}: outside its codec's grammar "
                             f"({item.reason}); the slide is refused")
        result.cleaned[fragment] = (item.data, item.removed)
    for n, group in enumerate(groups):
        if len(group) == 1:
            continue
        data = padded_frame(b"".join(os.pread(fd, int(pixels.frame_lengths[i]),
                                              int(pixels.frame_offsets[i])) for i in group))
        try:
            _, removed = codestreams.clean_stream(data, codec)
        except segments.MalformedStream as exc:
            raise SlideError(f"{where} frame {n}: outside its codec's grammar ({exc}); the "
                             "slide is refused") from None
        if removed:
            raise SlideError(f"{where} frame {n} spans {len(group)} fragments and holds "
                             f"{removed[0][0]}; rewriting such frames is not supported; the "
                             "slide is refused")
