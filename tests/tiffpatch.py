"""Plant things in real TIFF files for tests: replace a tag's value (type, count, bytes) or one
image run, appending the new bytes at the end of the file and pointing the entry there. Works
on classic TIFF, NDPI (small files: high offset bits zero) and BigTIFF, either byte order."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from wsideid.containers.tiff.reader import TYPE_SIZE, TiffFile


def _append(path: Path, data: bytes) -> int:
    with open(path, "r+b") as fh:
        end = fh.seek(0, 2)
        end += (-end) % 8
        fh.seek(end)
        fh.write(data)
    return end


def set_tag(path: Path, ifd: int, code: int, dtype: int, data: bytes) -> None:
    """Give tag `code` of main-chain IFD `ifd` (it must exist) a new type and value."""
    with TiffFile(path) as tiff:
        tag = tiff.ifds[ifd].tags[code]
        bo, big, ndpi = tiff.byteorder, tiff.bigtiff, tiff.ndpi
    count = len(data) // TYPE_SIZE[dtype]
    inline = 8 if big else 4
    if len(data) <= inline and not (ndpi and dtype == 2):
        value = data.ljust(inline, b"\x00")
    else:
        value = struct.pack(bo + ("Q" if big else "I"), _append(path, data))
    head = struct.pack(bo + ("HHQ" if big else "HHI"), code, dtype, count)
    with open(path, "r+b") as fh:
        fh.seek(tag.entry_offset)
        fh.write(head + value)


def set_text(path: Path, ifd: int, code: int, text: str) -> None:
    set_tag(path, ifd, code, 2, text.encode("utf-8") + b"\x00")


def replace_run(path: Path, ifd: int, index: int, data: bytes) -> None:
    """Point run `index` (tile or strip) of IFD `ifd` at `data`, appended to the file."""
    with TiffFile(path) as tiff:
        node = tiff.ifds[ifd]
        off_tag, cnt_tag, _, _ = node.data_regions(tiff.byteorder)
        offsets, counts = node.tags[off_tag], node.tags[cnt_tag]
        bo = tiff.byteorder
    at = _append(path, data)
    with open(path, "r+b") as fh:
        for tag, value in ((offsets, at), (counts, len(data))):
            size = TYPE_SIZE[tag.dtype]
            fmt = {2: "H", 4: "I", 8: "Q"}[size]
            where = (tag.value_offset if tag.value_offset is not None
                     else tag.entry_offset + (12 if size == 8 else 8))
            fh.seek(where + index * size)
            fh.write(struct.pack(bo + fmt, value))


def read_run(path: Path, ifd: int, index: int) -> bytes:
    with TiffFile(path) as tiff:
        _, _, offs, cnts = tiff.ifds[ifd].data_regions(tiff.byteorder)
        return os.pread(tiff.fd, int(cnts[index]), int(offs[index]))


def drop_ifd_from_chain(path: Path, index: int) -> None:
    """Unlink main-chain IFD `index` (> 0): the one before it points past it."""
    with TiffFile(path) as tiff:
        before = tiff.ifds[index - 1]
        after = tiff.ifds[index].next_offset
        bo, big = tiff.byteorder, tiff.bigtiff
        entries = len(before.tags) + len(before.duplicates)
        at = before.offset + (8 if big else 2) + entries * (20 if big else 12)
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack(bo + ("Q" if big else "I"), after))
