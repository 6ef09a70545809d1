"""Locate the Pixel Data element of a DICOM file and its frames without loading them.

Explicit VR Little Endian data sets (every WSI transfer syntax): the element is
tag (7FE0,0010), VR OB/OW, 2 reserved bytes, a 4-byte length; encapsulated pixel data has an
undefined length and is a sequence of items (FFFE,E000) (the first is the Basic Offset Table)
closed by (FFFE,E0DD) (PS3.5 A.4).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ...errors import SlideError
from ..files import read_sequentially

ITEM = (0xFFFE, 0xE000)
SEQ_END = (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
WINDOW = 64 << 20


@dataclass
class PixelElement:
    start: int                 # offset of the (7FE0,0010) tag
    end: int                   # offset just past the element
    frame_offsets: np.ndarray  # file offsets of each fragment's bytes (encapsulated only)
    frame_lengths: np.ndarray
    bot_offset: int = 0        # file offset and length of the Basic Offset Table item's value
    bot_length: int = 0


def read_header(path: Path) -> tuple[pydicom.Dataset, int]:
    """The data set without pixel data, and the offset where the pixel data element starts."""
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            return ds, fh.tell()
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        # pydicom's messages may quote the header's bytes (the slide's text): the kind only
        raise SlideError(f"not a readable DICOM file ({type(exc).__name__})") from exc


def locate_pixels(path: Path, start: int) -> PixelElement:
    """Find the pixel data element that starts at `start` and, when encapsulated, every frame
    item in it."""
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        read_sequentially(fh.fileno())
        fh.seek(start)
        head = fh.read(12)
        if len(head) < 12:
            raise SlideError("DICOM file ends before its pixel data")
        group, elem = struct.unpack("<HH", head[:4])
        if (group, elem) != (0x7FE0, 0x0010) or head[4:6] not in (b"OB", b"OW"):
            raise SlideError("pixel data is not an explicit VR little endian OB/OW element")
        length = struct.unpack("<I", head[8:12])[0]
        if length != UNDEFINED:
            end = start + 12 + length
            if end > size:
                raise SlideError("pixel data runs past the end of the file (truncated?)")
            return PixelElement(start, end, np.zeros(0, np.int64), np.zeros(0, np.int64))
        offsets, lengths, end = _walk_items(fh, start + 12, size)
        # the first item is the Basic Offset Table
        if not offsets:
            raise SlideError("encapsulated pixel data without its Basic Offset Table item")
        return PixelElement(start, end, np.asarray(offsets[1:], np.int64),
                            np.asarray(lengths[1:], np.int64), offsets[0], lengths[0])


def _walk_items(fh, pos: int, size: int) -> tuple[list[int], list[int], int]:
    """Offsets and lengths of every item up to the sequence delimiter, and where the element
    ends, read through bounded memory maps: only the item tags are touched, so a file in the
    page cache (just copied) is walked without copying its frames (2.14 GB series, warm:
    0.04 s instead of 0.40 s with 16 MB reads; cold, both 0.9-2.1 s)."""
    offsets: list[int] = []
    lengths: list[int] = []
    fd = fh.fileno()
    base = end = 0
    view = None
    try:
        while True:
            if pos + 8 > size:
                raise SlideError("encapsulated pixel data is truncated")
            if not (base <= pos and pos + 8 <= end):
                if view is not None:
                    view.close()
                base = pos // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
                end = min(size, base + WINDOW)
                view = mmap.mmap(fd, end - base, offset=base, access=mmap.ACCESS_READ)
                view.madvise(mmap.MADV_SEQUENTIAL)
            g, e, n = struct.unpack_from("<HHI", view, pos - base)
            if (g, e) == SEQ_END:
                return offsets, lengths, pos + 8
            if (g, e) != ITEM or pos + 8 + n > size:
                raise SlideError("encapsulated pixel data is corrupt or truncated")
            offsets.append(pos + 8)
            lengths.append(n)
            pos += 8 + n
    finally:
        if view is not None:
            view.close()
