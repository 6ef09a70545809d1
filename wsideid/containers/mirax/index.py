"""Index.dat: the MIRAX record index (https://openslide.org/formats/mirax/).

"01.02" + SLIDE_ID, then two little-endian int32 pointers to the hierarchical and
non-hierarchical record tables; each table holds one int32 per VAL of the [HIERARCHICAL]
section of Slidedat.ini, counted cumulatively across layers (0 = no record). A record points
at a head page `[0, first]`; a page is `[count, next, items...]`. Hierarchical items are
(image index, offset, length, file number); non-hierarchical ones (a, b, offset, length, file
number), where OpenSlide requires one item per page and b == 0 and tolerates any a.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import SlideError

VERSION = b"01.02"
HIER_ITEM = 4
NONHIER_ITEM = 5
MAX_PAGES = 1 << 20


@dataclass
class Record:
    pages: list[list[tuple[int, ...]]]   # items per page, in file order

    def items(self):
        for page in self.pages:
            yield from page


class IndexFile:
    def __init__(self, slide_id: str, hier: list[Record | None], nonhier: list[Record | None],
                 errors: dict[tuple[str, int], str] | None = None):
        self.slide_id = slide_id
        self.hier = hier
        self.nonhier = nonhier
        # records that could not be read, by ("hier" | "nonhier", number): like OpenSlide, the
        # caller fails only for the records it needs
        self.errors = errors or {}

    @classmethod
    def parse(cls, data: bytes, slide_id: str, hier_count: int, nonhier_count: int) -> IndexFile:
        reader = _Reader(data)
        if data[:len(VERSION)] != VERSION:
            raise SlideError("Index.dat does not start with version 01.02")
        if data[len(VERSION):len(VERSION) + len(slide_id)] != slide_id.encode("utf-8"):
            raise SlideError("Index.dat does not carry the SLIDE_ID of Slidedat.ini")
        root = len(VERSION) + len(slide_id.encode("utf-8"))
        hier_table, nonhier_table = reader.int32(root), reader.int32(root + 4)
        errors: dict[tuple[str, int], str] = {}

        def records(kind: str, table: int, count: int, width: int) -> list[Record | None]:
            out: list[Record | None] = []
            for i in range(count):
                head = reader.int32(table + 4 * i)
                try:
                    name = "hierarchical" if kind == "hier" else "non-hierarchical"
                    out.append(reader.record(head, width, f"{name} record {i}"))
                except SlideError as exc:
                    errors[(kind, i)] = str(exc)
                    out.append(None)
            return out

        return cls(slide_id, records("hier", hier_table, hier_count, HIER_ITEM),
                   records("nonhier", nonhier_table, nonhier_count, NONHIER_ITEM), errors)

    def to_bytes(self) -> bytes:
        """A fresh Index.dat: pages of a record follow each other (OpenSlide reads the
        hierarchical pages in sequence rather than following `next`)."""
        out = bytearray(VERSION + self.slide_id.encode("utf-8"))
        root = len(out)
        hier_table = root + 8
        nonhier_table = hier_table + 4 * len(self.hier)
        out += struct.pack("<ii", hier_table, nonhier_table)
        out += b"\x00" * (4 * (len(self.hier) + len(self.nonhier)))
        for table, records in ((hier_table, self.hier), (nonhier_table, self.nonhier)):
            for slot, record in enumerate(records):
                if record is None:
                    continue
                head = len(out)
                struct.pack_into("<i", out, table + 4 * slot, head)
                out += struct.pack("<ii", 0, head + 8 if record.pages else 0)
                for number, page in enumerate(record.pages):
                    body = b"".join(struct.pack(f"<{len(item)}i", *item) for item in page)
                    nxt = len(out) + 8 + len(body) if number + 1 < len(record.pages) else 0
                    out += struct.pack("<ii", len(page), nxt) + body
        return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data

    def int32(self, offset: int) -> int:
        if offset < 0 or offset + 4 > len(self.data):
            raise SlideError(f"Index.dat points past its end (offset {offset}, size {len(self.data)})")
        return struct.unpack_from("<i", self.data, offset)[0]

    def record(self, head: int, width: int, what: str) -> Record | None:
        if head == 0:
            return None
        if self.int32(head) != 0:
            raise SlideError(f"Index.dat {what}: head page is not empty")
        pages: list[list[tuple[int, ...]]] = []
        seen: set[int] = set()
        page = self.int32(head + 4)
        while page != 0:
            if page in seen or len(seen) > MAX_PAGES:
                raise SlideError(f"Index.dat {what}: pages form a loop")
            seen.add(page)
            count, nxt = self.int32(page), self.int32(page + 4)
            end = page + 8 + 4 * width * count
            if count < 0 or end > len(self.data):
                raise SlideError(f"Index.dat {what}: page at {page} runs past the end of the file")
            items = struct.unpack_from(f"<{width * count}i", self.data, page + 8)
            pages.append([items[i:i + width] for i in range(0, len(items), width)])
            page = nxt
        return Record(pages)
