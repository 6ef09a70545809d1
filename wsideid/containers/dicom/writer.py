"""Write one DICOM instance: a new header (pydicom), then the pixel data element copied by the
kernel from the source, or rebuilt from its fragments when some of them were replaced."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom.dataset import Dataset

from ..files import copy_range
from .io import PixelElement


def copy_pixels_after_header(header: Dataset, source: Path, pixel_start: int, out: Path) -> int:
    """`header`, then everything of `source` from its pixel data element on, copied by the
    kernel (as `cp` does); the caller cuts the file where the element ends once it knows.
    Returns where the header ends."""
    header.save_as(out, enforce_file_format=True)
    with open(source, "rb") as src, open(out, "r+b") as dst:
        header_end = dst.seek(0, 2)
        size = os.fstat(src.fileno()).st_size
        copy_range(src.fileno(), dst.fileno(), pixel_start, size, header_end)
    return header_end


def write_instance(header: Dataset, source: Path, pixels: PixelElement, out: Path,
                   replaced: dict[int, bytes], frames: int = 1) -> None:
    """`header` without pixel data, then the source's pixel data element: copied verbatim, or
    rebuilt with the `replaced` fragments (by frame index), each padded to an even length.
    Native (not encapsulated) pixel data is copied and the replaced frames, of their old
    length, written over their old place."""
    header.save_as(out, enforce_file_format=True)
    with open(source, "rb") as src, open(out, "r+b") as dst:
        at = dst.seek(0, 2)
        if not replaced or not len(pixels.frame_offsets):
            copy_range(src.fileno(), dst.fileno(), pixels.start, pixels.end, at)
            if replaced:
                size = (pixels.end - pixels.start - 12) // max(1, frames)
                for i, data in replaced.items():
                    if len(data) != size:
                        raise ValueError("a native frame must keep its length")
                    os.pwrite(dst.fileno(), data, at + 12 + i * size)
        else:
            def fragments():
                for i, (off, n) in enumerate(zip(pixels.frame_offsets.tolist(),
                                                 pixels.frame_lengths.tolist())):
                    data = replaced.get(i)
                    if data is None:
                        src.seek(off)
                        data = src.read(n)
                    yield data
            _write_encapsulated(dst, fragments())
        dst.flush()
        os.fsync(dst.fileno())


def write_new_pixels(header: Dataset, out: Path, frames: list[bytes] | None,
                     native: bytes | None) -> None:
    """`header`, then new pixel data: encapsulated `frames`, or `native` bytes (8-bit, OB)."""
    header.save_as(out, enforce_file_format=True)
    with open(out, "r+b") as dst:
        dst.seek(0, 2)
        if native is not None:
            data = native + (b"\x00" if len(native) % 2 else b"")
            dst.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, len(data)) + data)
        else:
            _write_encapsulated(dst, frames or [])
        dst.flush()
        os.fsync(dst.fileno())


def _write_encapsulated(dst, fragments) -> None:
    """Encapsulated pixel data (PS3.5 A.4): an empty Basic Offset Table, one item per frame
    padded to an even length, the sequence delimiter."""
    dst.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    dst.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    for data in fragments:
        if len(data) % 2:
            data += b"\x00"
        dst.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data)
    dst.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
