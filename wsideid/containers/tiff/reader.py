"""Read the structure of a TIFF container: every IFD, every tag value, every image byte run.

Classic TIFF and BigTIFF, both byte orders, SubIFDs, EXIF/GPS/Interop IFDs. The reader
records *where* everything lives so that the writer can patch a copy and zero what is freed.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import SlideError

TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
             13: 4, 16: 8, 17: 8, 18: 8}
TYPE_NUMPY = {1: "u1", 2: "u1", 3: "u2", 4: "u4", 5: "u4", 6: "i1", 7: "u1", 8: "i2",
              9: "i4", 10: "i4", 11: "f4", 12: "f8", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}
ASCII = 2

# Tags whose values are file offsets of IFDs.
SUBIFD_TAGS = {330: "subifd", 34665: "exif", 34853: "gps", 40965: "interop"}
# (offsets tag, byte counts tag) pairs that describe image bytes.
DATA_TAG_PAIRS = ((273, 279), (324, 325), (513, 514))

MAX_IFDS = 65536
MAX_ENTRIES = 4096


@dataclass
class Tag:
    code: int
    dtype: int
    count: int
    entry_offset: int
    value_offset: int | None  # None when the value sits inline in the entry
    data: bytes
    high: int = 0  # NDPI: high 32 bits of an inline LONG (a 64-bit strip offset or count)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def values(self, byteorder: str) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=np.dtype(TYPE_NUMPY[self.dtype]).newbyteorder(byteorder))
        return arr

    def ints(self, byteorder: str) -> np.ndarray:
        values = self.values(byteorder).astype(np.int64)
        if self.high:
            values = values + (self.high << 32)
        return values

    def text(self) -> str:
        return self.data.split(b"\x00", 1)[0].decode("utf-8", errors="replace") \
            if self.dtype == ASCII else self.data.decode("latin-1")


@dataclass
class Ifd:
    offset: int
    size: int
    tags: dict[int, Tag]
    next_offset: int
    kind: str  # "main", "subifd", "exif", "gps", "interop"
    label: str  # "IFD 3", "IFD 0 SubIFD 1", "IFD 0 EXIF"
    children: dict[int, list["Ifd"]] = field(default_factory=dict)
    duplicates: list[Tag] = field(default_factory=list)  # repeated tag codes (first one wins)

    def data_regions(self, byteorder: str) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """(offsets tag, counts tag, offsets, counts) of this IFD's image bytes."""
        for off_tag, cnt_tag in DATA_TAG_PAIRS:
            if off_tag in self.tags and cnt_tag in self.tags:
                offs = self.tags[off_tag].ints(byteorder)
                cnts = self.tags[cnt_tag].ints(byteorder)
                if len(offs) != len(cnts):
                    raise SlideError(f"{self.label}: {len(offs)} offsets but {len(cnts)} byte counts")
                return off_tag, cnt_tag, offs, cnts
        return None

    def int_value(self, code: int, byteorder: str, default: int | None = None) -> int | None:
        tag = self.tags.get(code)
        if tag is None or tag.count < 1 or tag.dtype == ASCII:
            return default
        return int(tag.values(byteorder)[0])

    def text(self, code: int) -> str | None:
        tag = self.tags.get(code)
        return tag.text() if tag is not None else None

    def walk(self):
        yield self
        for kids in self.children.values():
            for kid in kids:
                yield from kid.walk()


class TiffFile:
    """A parsed TIFF container. Holds an open descriptor; use as a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise SlideError(f"cannot open: {exc.strerror}") from exc
        try:
            self.size = os.fstat(self.fd).st_size
            self._parse()
        except Exception:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "TiffFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SlideError(f"offset {offset}+{length} is past the end of the file ({self.size} bytes)")
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise SlideError(f"short read at offset {offset}")
        return data

    # ---- header -------------------------------------------------------------------------
    def _parse(self) -> None:
        if self.size < 8:
            raise SlideError("not a TIFF file (too short)")
        head = self.read(0, min(16, self.size))
        if head[:2] == b"II":
            self.byteorder = "<"
        elif head[:2] == b"MM":
            self.byteorder = ">"
        else:
            raise SlideError("not a TIFF file (no II/MM byte-order mark)")
        version = struct.unpack(self.byteorder + "H", head[2:4])[0]
        self.ndpi = False
        if version == 42:
            self.bigtiff = False
            self.first_ifd = struct.unpack(self.byteorder + "I", head[4:8])[0]
            self.header_size = 8
            self._detect_ndpi(head)
        elif version == 43:
            if len(head) < 16:
                raise SlideError("truncated BigTIFF header")
            offsize, zero = struct.unpack(self.byteorder + "HH", head[4:8])
            if offsize != 8 or zero != 0:
                raise SlideError("unsupported BigTIFF offset size")
            self.bigtiff = True
            self.first_ifd = struct.unpack(self.byteorder + "Q", head[8:16])[0]
            self.header_size = 16
        else:
            raise SlideError(f"not a TIFF file (version {version})")
        self._parsed = 0
        self.ifds = self._read_chain(self.first_ifd)
        if not self.ifds:
            raise SlideError("TIFF has no image directory")
        self._check_overlaps()

    def _check_overlaps(self) -> None:
        """No image byte run may cover an IFD or a tag value: such a file is corrupt (or
        built to make a de-identified value look like image data, which is kept byte for
        byte). Runs overlapping each other (tiles shared) are legal."""
        meta: dict[int, int] = {}
        for top in self.ifds:
            for ifd in top.walk():
                meta[ifd.offset] = max(meta.get(ifd.offset, 0), ifd.offset + ifd.size)
                for tag in list(ifd.tags.values()) + ifd.duplicates:
                    if tag.value_offset is not None and tag.nbytes:
                        meta[tag.value_offset] = max(meta.get(tag.value_offset, 0),
                                                     tag.value_offset + tag.nbytes)
        if not meta:
            return
        starts = np.array(sorted(meta), dtype=np.int64)
        ends = np.maximum.accumulate(np.array([meta[a] for a in sorted(meta)], dtype=np.int64))
        for top in self.ifds:
            for ifd in top.walk():
                regions = ifd.data_regions(self.byteorder)
                if regions is None:
                    continue
                _, _, offs, cnts = regions
                used = cnts > 0
                if not used.any():
                    continue
                a, b = offs[used], offs[used] + cnts[used]
                # the last metadata range starting before each run's end must end before its start
                k = np.searchsorted(starts, b, side="left") - 1
                hit = (k >= 0) & (ends[np.maximum(k, 0)] > a)
                if hit.any():
                    raise SlideError(f"{ifd.label}: image data overlaps the file's directories or "
                                     "tag values (corrupt)")

    def _detect_ndpi(self, head: bytes) -> None:
        """Hamamatsu NDPI: classic TIFF whose header holds an 8-byte first-IFD offset, whose
        IFDs end with an 8-byte next offset followed by the high 32 bits of every entry's
        value/offset (4 bytes per entry). It is NDPI when the IFD found that way has tag 65420
        (OpenSlide openslide-decode-tifflike.c; tifffile TiffPage)."""
        if len(head) < 12:
            return
        trial = struct.unpack(self.byteorder + "Q", head[4:12])[0]
        self.ndpi = True
        try:
            self._parsed = 0
            ifd = self._read_ifd(trial, "main", "IFD 0", frozenset())
            if 65420 in ifd.tags:
                self.first_ifd = trial
                self.header_size = 12
                return
        except SlideError:
            pass
        self.ndpi = False

    @property
    def inline_size(self) -> int:
        """Bytes of the value field of an entry: values up to this size sit inline."""
        return 8 if self.bigtiff else 4

    @property
    def next_size(self) -> int:
        """Bytes of the next-IFD offset."""
        return 8 if (self.bigtiff or self.ndpi) else 4

    @property
    def entry_size(self) -> int:
        return 20 if self.bigtiff else 12

    @property
    def count_size(self) -> int:
        return 8 if self.bigtiff else 2

    def ifd_size(self, entries: int) -> int:
        size = self.count_size + entries * self.entry_size + self.next_size
        return size + 4 * entries if self.ndpi else size

    def is_inline(self, dtype: int, nbytes: int) -> bool:
        # NDPI writers always store ASCII out of line (OpenSlide reads them that way).
        if self.ndpi and dtype == ASCII:
            return False
        return nbytes <= self.inline_size

    def _read_chain(self, offset: int) -> list[Ifd]:
        chain: list[Ifd] = []
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise SlideError(f"IFD loop: IFD {len(chain) - 1} points back to offset {offset}")
            seen.add(offset)
            ifd = self._read_ifd(offset, "main", f"IFD {len(chain)}", frozenset())
            chain.append(ifd)
            offset = ifd.next_offset
        return chain

    def _read_ifd(self, offset: int, kind: str, label: str, ancestors: frozenset[int]) -> Ifd:
        # Child IFDs may be shared (one EXIF IFD for all pages) but never their own ancestor.
        if offset in ancestors:
            raise SlideError(f"IFD loop: {label} points back to offset {offset}")
        self._parsed += 1
        if self._parsed > MAX_IFDS:
            raise SlideError("too many IFDs")
        bo = self.byteorder
        if offset < self.header_size or offset + self.count_size > self.size:
            raise SlideError(f"{label} offset {offset} is outside the file ({self.size} bytes; truncated or corrupt)")
        count = struct.unpack(bo + ("Q" if self.bigtiff else "H"), self.read(offset, self.count_size))[0]
        if count == 0 or count > MAX_ENTRIES:
            raise SlideError(f"{label} has an implausible entry count ({count})")
        size = self.ifd_size(count)
        raw = self.read(offset, size)
        tags: dict[int, Tag] = {}
        duplicates: list[Tag] = []
        highs_at = self.count_size + count * self.entry_size + self.next_size
        for i in range(count):
            pos = self.count_size + i * self.entry_size
            if self.bigtiff:
                code, dtype, n = struct.unpack(bo + "HHQ", raw[pos:pos + 12])
                val = raw[pos + 12:pos + 20]
            else:
                code, dtype, n = struct.unpack(bo + "HHI", raw[pos:pos + 8])
                val = raw[pos + 8:pos + 12]
            if dtype not in TYPE_SIZE:
                raise SlideError(f"{label} tag {code} has unknown type {dtype}")
            nbytes = n * TYPE_SIZE[dtype]
            if nbytes > self.size:
                raise SlideError(f"{label} tag {code} has an absurd count ({n})")
            high = (struct.unpack(bo + "I", raw[highs_at + 4 * i:highs_at + 4 * i + 4])[0]
                    if self.ndpi else 0)
            if self.is_inline(dtype, nbytes):
                data = val[:nbytes]
                value_offset = None
                if high and not (dtype in (4, 9, 13) and n == 1):
                    raise SlideError(f"{label} tag {code}: 64-bit value in a type that cannot hold one")
            else:
                value_offset = struct.unpack(bo + ("Q" if self.bigtiff else "I"), val)[0]
                value_offset += high << 32
                high = 0
                if value_offset + nbytes > self.size:
                    raise SlideError(f"{label} tag {code} value at offset {value_offset} "
                                     f"is past the end of the file")
                data = self.read(value_offset, nbytes)
            tag = Tag(code, dtype, n, offset + pos, value_offset, data, high)
            if code in tags:
                duplicates.append(tag)  # readers use the first; the rest is removed
            else:
                tags[code] = tag
        next_at = self.count_size + count * self.entry_size
        next_raw = raw[next_at:next_at + self.next_size]
        next_offset = struct.unpack(bo + ("I" if self.next_size == 4 else "Q"), next_raw)[0]
        if kind != "main":
            next_offset = 0  # only the main chain is followed; others are reached by pointer tags
        ifd = Ifd(offset, size, tags, next_offset, kind, label, duplicates=duplicates)
        self._check_data(ifd)
        for code, child_kind in SUBIFD_TAGS.items():
            tag = tags.get(code)
            if tag is None or tag.dtype not in (4, 13, 16, 18):
                continue
            kids: list[Ifd] = []
            for j, child_off in enumerate(tag.ints(bo)):
                name = f"{label} {child_kind.upper() if child_kind != 'subifd' else 'SubIFD'}"
                name = f"{name} {j}" if child_kind == "subifd" else name
                kid = self._read_ifd(int(child_off), child_kind, name, ancestors | {offset})
                kids.append(kid)
            ifd.children[code] = kids
        return ifd

    def _check_data(self, ifd: Ifd) -> None:
        regions = ifd.data_regions(self.byteorder)
        if regions is None:
            return
        _, _, offs, cnts = regions
        if len(offs) and (np.any(offs < 0) or np.any(cnts < 0) or np.any((offs + cnts)[cnts > 0] > self.size)):
            raise SlideError(f"{ifd.label}: image data offsets point past the end of the file")
