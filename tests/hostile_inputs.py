"""Hostile inputs for tests/test_hostile.py, made at test time from the project's fixture
generators (valid slides full of planted identifiers) and then corrupted byte by byte.

Each `make_*` function writes into a folder and returns a `Hostile`: the paths to give the
command line, the identifiers that must not survive if the tool de-identifies instead of
refusing, and whether a de-identified output (exit 0) is an acceptable answer at all.
Nothing here imports wsideid.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from fixtures.images import pattern
from fixtures.mrxs import PLANTED as MRXS_PLANTED
from fixtures.mrxs import write_mrxs
from fixtures.ndpi import PLANTED as NDPI_PLANTED
from fixtures.ndpi import write_ndpi
from fixtures.ometiff import PLANTED as OME_PLANTED
from fixtures.ometiff import ome_xml, write_ome_tiff
from fixtures.svs import PLANTED as SVS_PLANTED
from fixtures.svs import write_svs

DICOM_SOURCE = Path(__file__).resolve().parent.parent.parent / "shared" / "slides" / "dicom" / \
    "highdicom-sm" / "sm_image.dcm"
DICOM_NEEDLES = ["Test^Patient", "AA01", "17890505", "S19-1_A_1_1", "Test^Physician"]

NEEDLES = {
    "svs": sorted(set(SVS_PLANTED.values())),
    "ndpi": sorted(set(NDPI_PLANTED.values())),
    "ome": sorted(set(OME_PLANTED.values())),
    "mrxs": sorted(set(MRXS_PLANTED.values())),
    "dicom": DICOM_NEEDLES,
}


@dataclass
class Hostile:
    inputs: list[Path]                 # what goes on the command line
    needles: list[str] = field(default_factory=list)
    ok_allowed: bool = False           # exit 0 is fine too, if no needle is in the output
    misleading: list[str] = field(default_factory=list)   # the error line must not say these


# ---------------------------------------------------------------- base slides (valid)

def base_svs(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_svs(path)


def base_ndpi(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_ndpi(path)


def base_ome(path: Path, xml: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_ome_tiff(path, xml=xml)


def base_mrxs(folder: Path, name: str = "slide") -> Path:
    return write_mrxs(folder / f"{name}.mrxs")


def base_dicom(folder: Path, name: str = "sm_image.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / name
    shutil.copyfile(DICOM_SOURCE, dst)
    return dst


BIG_NEEDLES = ["BIG-SVS-USER-QUACK", "BIG-SVS-BARCODE-4711", "BIG-MACRO-QUACK"]


def write_big_svs(path: Path, megabytes: int = 50) -> Path:
    """An Aperio SVS of about `megabytes`: a JPEG-tiled pyramid (tiles drawn from 16 distinct
    ones, so it is cheap to make) and a large uncompressed macro image that de-identification
    drops (so the writer has many bytes to zero: a wide window for a kill to land in)."""
    tiles = [imagecodecs.jpeg8_encode(pattern(256, 256, s), level=90) for s in range(16)]
    macro_bytes = megabytes * (1 << 20) // 2
    tile_budget = megabytes * (1 << 20) - macro_bytes
    side = max(4, int((tile_budget / (sum(map(len, tiles)) / 16) / (1 + 1 / 16)) ** 0.5))
    w = h = side * 256
    head = "Aperio Image Library v12.0.5\r\n"
    pairs = (f"|AppMag = 40|MPP = 0.2520|User = {BIG_NEEDLES[0]}|Barcode = {BIG_NEEDLES[1]}"
             f"|Date = 03/14/21|Time = 13:37:42")
    macro_side = int((macro_bytes / 3) ** 0.5)
    rng = np.random.default_rng(7)
    macro = rng.integers(0, 255, (macro_side, macro_side, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        def level(lw: int, lh: int, desc: str) -> None:
            n = ((lw + 255) // 256) * ((lh + 255) // 256)
            tw.write((tiles[i % 16] for i in range(n)), shape=(lh, lw, 3), dtype=np.uint8,
                     tile=(256, 256), compression=7, photometric="rgb", description=desc,
                     metadata=None, software=False, subfiletype=0)

        level(w, h, f"{head}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90{pairs}")
        tw.write(pattern(128, 128, 3), compression="jpeg", photometric="rgb", rowsperstrip=16,
                 description=f"{head}{w}x{h} -> 128x128 - {pairs}", metadata=None, software=False)
        level(w // 4, h // 4, f"{head}{w}x{h} (256x256) -> {w // 4}x{h // 4} JPEG/RGB Q=90")
        tw.write(macro, photometric="rgb", rowsperstrip=64, subfiletype=9, metadata=None,
                 software=False, description=f"{head}macro {macro_side}x{macro_side}"
                                             f"|Title = {BIG_NEEDLES[2]}")
    return path


# ---------------------------------------------------------------- TIFF byte surgery

@dataclass
class Entry:
    at: int          # offset of the 12/20-byte IFD entry
    code: int
    dtype: int
    count: int
    value_at: int    # where the value (or its offset) is


@dataclass
class Ifd:
    offset: int
    entries: dict[int, Entry]
    next_at: int     # offset of the next-IFD pointer


@dataclass
class Layout:
    byteorder: str
    bigtiff: bool
    ndpi: bool
    ifds: list[Ifd]
    subifds: list[int]      # offsets of the first page's SubIFDs

    @property
    def offset_format(self) -> str:
        return "Q" if self.bigtiff else "I"


def layout(path: Path) -> Layout:
    with tifffile.TiffFile(path) as tf:
        bo = tf.byteorder
        big = tf.is_bigtiff
        ndpi = tf.is_ndpi
        ifds = []
        for page in tf.pages:
            entries = {}
            for tag in page.tags.values():
                entries[tag.code] = Entry(tag.offset, tag.code, int(tag.dtype), tag.count,
                                          tag.offset + (12 if big else 8))
            n = len(page.tags)
            next_at = page.offset + (8 + n * 20 if big else 2 + n * 12)
            ifds.append(Ifd(page.offset, entries, next_at))
        subifds = list(tf.pages[0].subifds or ())
    return Layout(bo, big, ndpi, ifds, subifds)


def poke(path: Path, offset: int, fmt: str, *values, byteorder: str = "<") -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(byteorder + fmt, *values))


def set_entry(path: Path, lay: Layout, entry: Entry, *, dtype: int | None = None,
              count: int | None = None, value: int | None = None) -> None:
    bo = lay.byteorder
    if dtype is not None:
        poke(path, entry.at + 2, "H", dtype, byteorder=bo)
    if count is not None:
        poke(path, entry.at + 4, lay.offset_format, count, byteorder=bo)
    if value is not None:
        poke(path, entry.value_at, lay.offset_format, value, byteorder=bo)


def append_value(path: Path, lay: Layout, entries: list[Entry], data: bytes) -> int:
    """Append `data` at the end of the file and point every entry in `entries` at it."""
    with open(path, "r+b") as fh:
        end = fh.seek(0, 2)
        if end % 2:
            fh.write(b"\x00")
            end += 1
        fh.write(data)
    for entry in entries:
        set_entry(path, lay, entry, count=len(data), value=end)
    return end


def read_value(path: Path, lay: Layout, entry: Entry) -> bytes:
    size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 16: 8}[entry.dtype] * entry.count
    with open(path, "rb") as fh:
        inline = 8 if lay.bigtiff else 4
        if size <= inline:
            fh.seek(entry.value_at)
        else:
            fh.seek(entry.value_at)
            (off,) = struct.unpack(lay.byteorder + lay.offset_format, fh.read(inline))
            fh.seek(off)
        return fh.read(size)


def minimal_tiff(path: Path, entries: list[tuple[int, int, int, int]], *, bigtiff: bool = False,
                 tail: bytes = b"", count_override: int | None = None, next_ifd: int = 0) -> Path:
    """A little-endian TIFF: header, one IFD with `entries` (code, type, count, inline value),
    then `tail`."""
    if bigtiff:
        head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16)
        ifd = struct.pack("<Q", len(entries) if count_override is None else count_override)
        for code, dtype, count, value in entries:
            ifd += struct.pack("<HHQQ", code, dtype, count, value)
        ifd += struct.pack("<Q", next_ifd)
    else:
        head = b"II*\x00" + struct.pack("<I", 8)
        ifd = struct.pack("<H", len(entries) if count_override is None else count_override)
        for code, dtype, count, value in entries:
            ifd += struct.pack("<HHII", code, dtype, count, value)
        ifd += struct.pack("<I", next_ifd)
    path.write_bytes(head + ifd + tail)
    return path


# ---------------------------------------------------------------- TIFF corpus

def _svs(folder: Path, name: str = "bad.svs") -> tuple[Path, Layout]:
    path = base_svs(folder / name)
    return path, layout(path)


def make_ifd_self_loop(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    poke(path, lay.ifds[0].next_at, "I", lay.ifds[0].offset)
    return Hostile([path])


def make_ifd_loop_middle(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    poke(path, lay.ifds[2].next_at, "I", lay.ifds[1].offset)
    return Hostile([path])


def make_subifd_self_reference(folder: Path) -> Hostile:
    """The first page's SubIFDs tag names the first page itself."""
    path = base_ome(folder / "bad.ome.tif")
    lay = layout(path)
    entry = lay.ifds[0].entries[330]
    with open(path, "rb") as fh:
        fh.seek(entry.value_at)
        (table,) = struct.unpack("<I", fh.read(4))
    poke(path, table, "I", lay.ifds[0].offset)
    return Hostile([path])


def make_subifd_chain_loop(folder: Path) -> Hostile:
    """The second SubIFD's next pointer goes back to the first SubIFD."""
    path = base_ome(folder / "bad.ome.tif")
    lay = layout(path)
    with open(path, "rb") as fh:   # the next pointer of an IFD sits after its entries
        fh.seek(lay.subifds[1])
        (n,) = struct.unpack("<H", fh.read(2))
    poke(path, lay.subifds[1] + 2 + 12 * n, "I", lay.subifds[0])
    # SubIFDs are listed in their tag; a reader that does not follow their next pointers
    # (and writes 0 there) sees no loop: exit 0 is fine
    return Hostile([path], needles=NEEDLES["ome"], ok_allowed=True)


def make_subifd_points_to_main_chain(folder: Path) -> Hostile:
    """A SubIFD's next pointer joins the main chain (an IFD reachable twice)."""
    path = base_ome(folder / "bad.ome.tif")
    lay = layout(path)
    with open(path, "rb") as fh:
        fh.seek(lay.subifds[1])
        (n,) = struct.unpack("<H", fh.read(2))
    poke(path, lay.subifds[1] + 2 + 12 * n, "I", lay.ifds[1].offset)
    return Hostile([path], needles=NEEDLES["ome"], ok_allowed=True)


def make_value_offset_past_eof(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[270], value=path.stat().st_size + 4096)
    return Hostile([path])


def make_value_offset_wraps(folder: Path) -> Hostile:
    """offset + count overflows 32 bits (0xFFFFFFF0 + 0x100)."""
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[270], count=0x100, value=0xFFFFFFF0)
    return Hostile([path])


def make_tile_count_past_eof(folder: Path) -> Hostile:
    """A tile that starts inside the file and ends 100 MB past its end."""
    path, lay = _svs(folder)
    counts = lay.ifds[0].entries[325]
    with open(path, "rb") as fh:
        fh.seek(counts.value_at)
        (table,) = struct.unpack("<I", fh.read(4))
    poke(path, table + 4 * (counts.count - 1), "I", 100 << 20)
    return Hostile([path])


def make_strip_offset_past_eof(folder: Path) -> Hostile:
    """The thumbnail's first strip starts past the end of the file."""
    path, lay = _svs(folder)
    offsets = lay.ifds[1].entries[273]
    with open(path, "rb") as fh:
        fh.seek(offsets.value_at)
        (table,) = struct.unpack("<I", fh.read(4))
    poke(path, table, "I", path.stat().st_size + 10)
    return Hostile([path])


def make_overlapping_tiles(folder: Path) -> Hostile:
    """Every level-0 tile points at the bytes of the first one (legal, if odd)."""
    path, lay = _svs(folder)
    offsets, counts = lay.ifds[0].entries[324], lay.ifds[0].entries[325]
    offs = struct.unpack(f"<{offsets.count}I", read_value(path, lay, offsets))
    cnts = struct.unpack(f"<{counts.count}I", read_value(path, lay, counts))
    with open(path, "rb") as fh:
        fh.seek(offsets.value_at)
        (o_table,) = struct.unpack("<I", fh.read(4))
        fh.seek(counts.value_at)
        (c_table,) = struct.unpack("<I", fh.read(4))
    poke(path, o_table, f"{offsets.count}I", *([offs[0]] * offsets.count))
    poke(path, c_table, f"{counts.count}I", *([cnts[0]] * counts.count))
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_tile_over_metadata(folder: Path) -> Hostile:
    """A level-0 tile whose byte range is the ImageDescription (with the user name, barcode,
    ...): keeping "tile bytes" as they are would keep the identifiers."""
    path, lay = _svs(folder)
    desc = lay.ifds[0].entries[270]
    with open(path, "rb") as fh:
        fh.seek(desc.value_at)
        (desc_at,) = struct.unpack("<I", fh.read(4))
        fh.seek(lay.ifds[0].entries[324].value_at)
        (o_table,) = struct.unpack("<I", fh.read(4))
        fh.seek(lay.ifds[0].entries[325].value_at)
        (c_table,) = struct.unpack("<I", fh.read(4))
    poke(path, o_table + 4, "I", desc_at)
    poke(path, c_table + 4, "I", desc.count)
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_tag_count_max_ascii(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[270], count=0xFFFFFFFF)
    return Hostile([path])


def make_tag_count_max_offsets(folder: Path) -> Hostile:
    """TileOffsets with 2^32-1 values (16 GiB if believed)."""
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[324], count=0xFFFFFFFF)
    return Hostile([path])


def make_width_zero(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[256], value=0)
    return Hostile([path])


def make_huge_strip_in_tiny_file(folder: Path) -> Hostile:
    """A 1 KB BigTIFF whose one strip claims 10 GB (100000 x 100000 grey, uncompressed)."""
    path = folder / "bad.tif"
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 16, 1, 512), (277, 3, 1, 1), (278, 4, 1, 100_000),
               (279, 16, 1, 10_000_000_000)]
    minimal_tiff(path, entries, bigtiff=True, tail=b"\x00" * (1024 - 16 - 8 - 9 * 20 - 8))
    return Hostile([path])


def make_huge_strip_classic(folder: Path) -> Hostile:
    """A 1 KB classic TIFF whose one strip claims 4 GB - 1."""
    path = folder / "bad.tif"
    entries = [(256, 4, 1, 65_535), (257, 4, 1, 65_535), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 512), (277, 3, 1, 1), (278, 4, 1, 65_535),
               (279, 4, 1, 0xFFFFFFFF)]
    minimal_tiff(path, entries, tail=b"\x00" * (1024 - 8 - 2 - 9 * 12 - 4))
    return Hostile([path])


def make_unknown_type_on_removed_tag(folder: Path) -> Hostile:
    """Artist (planted name) with field type 0, which no TIFF version defines."""
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[315], dtype=0)
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_unknown_type_on_private_tag(folder: Path) -> Hostile:
    """The unknown private tag 65000 (planted text) with field type 0xABCD."""
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[65000], dtype=0xABCD)
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_unknown_type_on_required_tag(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    set_entry(path, lay, lay.ifds[0].entries[322], dtype=0xFFFF)
    return Hostile([path])


def make_ifd_entry_count_zero(folder: Path) -> Hostile:
    """A TIFF whose only IFD has no entries."""
    path = minimal_tiff(folder / "bad.tif", [], tail=b"\x00" * 64)
    return Hostile([path])


def make_ifd_entry_count_zero_first_page(folder: Path) -> Hostile:
    """A valid SVS whose first IFD now says 0 entries (its next pointer is then read from what
    was the first entry)."""
    path, lay = _svs(folder)
    poke(path, lay.ifds[0].offset, "H", 0)
    return Hostile([path])


def make_ifd_entry_count_65535(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    poke(path, lay.ifds[-1].offset, "H", 65535)
    return Hostile([path])


def make_bigtiff_offset_size_4(folder: Path) -> Hostile:
    path = write_svs(folder / "bad.svs", _bigspec())
    poke(path, 4, "H", 4)
    return Hostile([path])


def make_bigtiff_offset_size_16(folder: Path) -> Hostile:
    path = write_svs(folder / "bad.svs", _bigspec())
    poke(path, 4, "H", 16)
    return Hostile([path])


def make_bigtiff_reserved_nonzero(folder: Path) -> Hostile:
    path = write_svs(folder / "bad.svs", _bigspec())
    poke(path, 6, "H", 0xFFFF)
    return Hostile([path])


def _bigspec():
    from fixtures.svs import SvsSpec

    return SvsSpec(bigtiff=True)


def make_sparse_huge_tiff(folder: Path) -> Hostile:
    """A 64 GiB sparse BigTIFF (no disk used) whose first IFD, near the end, has no entries."""
    path = folder / "bad.svs"
    size = 64 << 30
    with open(path, "wb") as fh:
        fh.write(b"II+\x00" + struct.pack("<HHQ", 8, 0, size - 64))
        fh.truncate(size)
    return Hostile([path])


def make_sparse_huge_junk(folder: Path) -> Hostile:
    """A 64 GiB sparse file that starts like a TIFF and is zeros from byte 8 on (IFD at 0)."""
    path = folder / "bad.svs"
    with open(path, "wb") as fh:
        fh.write(b"II*\x00\x00\x00\x00\x00")
        fh.truncate(64 << 30)
    return Hostile([path])


def _tile_bytes(path: Path, lay: Layout, ifd: int, index: int) -> tuple[int, int]:
    """(offset, length) of tile `index` of IFD `ifd`."""
    offs = struct.unpack(f"<{lay.ifds[ifd].entries[324].count}I",
                         read_value(path, lay, lay.ifds[ifd].entries[324]))
    cnts = struct.unpack(f"<{lay.ifds[ifd].entries[325].count}I",
                         read_value(path, lay, lay.ifds[ifd].entries[325]))
    return offs[index], cnts[index]


def make_jpeg_tile_segment_past_end(folder: Path) -> Hostile:
    """The COM segment of the first tile (planted text) claims 65535 bytes: past the tile."""
    path, lay = _svs(folder)
    at, length = _tile_bytes(path, lay, 0, 0)
    with open(path, "rb") as fh:
        fh.seek(at)
        head = fh.read(6)
    assert head[:4] == b"\xff\xd8\xff\xfe", head
    poke(path, at + 4, "H", 0xFFFF, byteorder=">")
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_jpeg_tile_segment_length_zero(folder: Path) -> Hostile:
    """The COM segment of the first tile says length 0 (less than its own length field)."""
    path, lay = _svs(folder)
    at, _ = _tile_bytes(path, lay, 0, 0)
    poke(path, at + 4, "H", 0, byteorder=">")
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_jpeg_tables_segment_past_end(folder: Path) -> Hostile:
    """JPEGTables whose APP5 segment (planted text) claims 65535 bytes."""
    path, lay = _svs(folder)
    entry = lay.ifds[0].entries[347]
    with open(path, "rb") as fh:
        fh.seek(entry.value_at)
        (at,) = struct.unpack("<I", fh.read(4))
        fh.seek(at)
        head = fh.read(4)
    assert head == b"\xff\xd8\xff\xe5", head
    poke(path, at + 4, "H", 0xFFFF, byteorder=">")
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


def make_jpeg_tile_not_jpeg(folder: Path) -> Hostile:
    """A level-0 tile of random bytes holding a planted identifier (compression says JPEG)."""
    path, lay = _svs(folder)
    at, length = _tile_bytes(path, lay, 0, 3)
    junk = (b"JUNK-TILE-QUACK " * (length // 16 + 1))[:length]
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(junk)
    return Hostile([path], needles=NEEDLES["svs"], ok_allowed=True)


TIFF_CASES = {
    "ifd-self-loop": make_ifd_self_loop,
    "ifd-loop-middle": make_ifd_loop_middle,
    "subifd-self-reference": make_subifd_self_reference,
    "subifd-chain-loop": make_subifd_chain_loop,
    "subifd-joins-main-chain": make_subifd_points_to_main_chain,
    "value-offset-past-eof": make_value_offset_past_eof,
    "value-offset-wraps-32bit": make_value_offset_wraps,
    "tile-count-past-eof": make_tile_count_past_eof,
    "strip-offset-past-eof": make_strip_offset_past_eof,
    "overlapping-tiles": make_overlapping_tiles,
    "tile-over-metadata": make_tile_over_metadata,
    "tag-count-2^32-1-ascii": make_tag_count_max_ascii,
    "tag-count-2^32-1-tileoffsets": make_tag_count_max_offsets,
    "width-zero": make_width_zero,
    "10GB-strip-in-1KB-bigtiff": make_huge_strip_in_tiny_file,
    "4GB-strip-in-1KB-tiff": make_huge_strip_classic,
    "unknown-type-artist": make_unknown_type_on_removed_tag,
    "unknown-type-private": make_unknown_type_on_private_tag,
    "unknown-type-tilewidth": make_unknown_type_on_required_tag,
    "ifd-entry-count-0": make_ifd_entry_count_zero,
    "ifd-entry-count-0-first-page": make_ifd_entry_count_zero_first_page,
    "ifd-entry-count-65535": make_ifd_entry_count_65535,
    "bigtiff-offset-size-4": make_bigtiff_offset_size_4,
    "bigtiff-offset-size-16": make_bigtiff_offset_size_16,
    "bigtiff-reserved-nonzero": make_bigtiff_reserved_nonzero,
    "sparse-64GiB-bigtiff": make_sparse_huge_tiff,
    "sparse-64GiB-zero-ifd": make_sparse_huge_junk,
    "jpeg-tile-COM-length-past-tile": make_jpeg_tile_segment_past_end,
    "jpeg-tile-COM-length-0": make_jpeg_tile_segment_length_zero,
    "jpegtables-APP5-length-past-end": make_jpeg_tables_segment_past_end,
    "jpeg-tile-not-jpeg": make_jpeg_tile_not_jpeg,
}


# ---------------------------------------------------------------- truncation

TRUNCATE_BASES = {"svs": base_svs, "ndpi": base_ndpi, "ome": base_ome}
# fractions of the file kept (and a few absolute cut points near the start and the end)
CUT_POINTS = ["1", "7", "8", "64", "10%", "30%", "50%", "70%", "90%", "-1"]


def cut_at(size: int, point: str) -> int:
    if point.endswith("%"):
        return size * int(point[:-1]) // 100
    n = int(point)
    return size + n if n < 0 else n


# ---------------------------------------------------------------- OME-XML corpus

def _ome_with_xml(folder: Path, xml: str) -> Path:
    return base_ome(folder / "bad.ome.tif", xml=xml)


def _ome_body() -> str:
    xml = ome_xml(1024, 768)
    return xml[xml.index("<OME"):]


def make_billion_laughs(folder: Path) -> Hostile:
    lol = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    body = _ome_body().replace('Name="slide"', 'Name="&lol9;"', 1)
    body = body.replace(f'Name="{OME_PLANTED["image_name"]}"', 'Name="&lol9;"', 1)
    xml = f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE OME [{"".join(lol)}]>{body}'
    return Hostile([_ome_with_xml(folder, xml)])


def make_external_entity(folder: Path) -> Hostile:
    secret = folder / "secret-outside.txt"
    secret.write_text("XXE-SECRET-QUACK root:x:0:0\n")
    body = _ome_body().replace(f'Name="{OME_PLANTED["image_name"]}"', 'Name="&xxe;"', 1)
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE OME [<!ENTITY xxe SYSTEM '
           f'"file://{secret}"><!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>{body}')
    return Hostile([_ome_with_xml(folder, xml)], needles=["XXE-SECRET-QUACK"])


def make_deep_nesting(folder: Path) -> Hostile:
    depth = 100_000
    body = _ome_body()
    at = body.index("<StructuredAnnotations>")
    deep = ('<XMLAnnotation ID="Annotation:9"><Value>' + "<a>" * depth + "DEEP-OME-QUACK"
            + "</a>" * depth + "</Value></XMLAnnotation>")
    body = body[:at] + "<StructuredAnnotations>" + deep + body[at + len("<StructuredAnnotations>"):]
    xml = f'<?xml version="1.0" encoding="UTF-8"?>{body}'
    return Hostile([_ome_with_xml(folder, xml)], needles=NEEDLES["ome"] + ["DEEP-OME-QUACK"],
                   ok_allowed=True)


def make_ome_non_utf8(folder: Path) -> Hostile:
    """OME-XML that declares UTF-8 but holds the bytes FF FE inside the Image name and a
    Description (same length as the placeholders, patched into the file)."""
    body = _ome_body().replace(OME_PLANTED["image_name"], "S26-@@-OMEBAD-QUACK", 1)
    xml = f'<?xml version="1.0" encoding="UTF-8"?>{body}'
    path = _ome_with_xml(folder, xml)
    data = path.read_bytes()
    assert data.count(b"S26-@@-OMEBAD-QUACK") == 1
    path.write_bytes(data.replace(b"S26-@@-OMEBAD-QUACK", b"S26-\xff\xfe-OMEBAD-QUACK"))
    return Hostile([path], needles=NEEDLES["ome"] + ["OMEBAD-QUACK"], ok_allowed=True)


def make_ome_latin1_declared(folder: Path) -> Hostile:
    """OME-XML declared ISO-8859-1 with a Latin-1 name: legal XML."""
    body = _ome_body().replace(OME_PLANTED["image_name"], "S26-\u00e9\u00e8-OMELATIN-QUACK", 1)
    xml = f'<?xml version="1.0" encoding="ISO-8859-1"?>{body}'
    path = _ome_with_xml(folder, "X" * len(xml.encode("latin-1")))
    data = path.read_bytes()
    placeholder = b"X" * len(xml.encode("latin-1"))
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, xml.encode("latin-1")))
    return Hostile([path], needles=NEEDLES["ome"] + ["OMELATIN-QUACK"], ok_allowed=True)


OME_CASES = {
    "ome-billion-laughs": make_billion_laughs,
    "ome-external-entity": make_external_entity,
    "ome-deep-nesting-100000": make_deep_nesting,
    "ome-non-utf8-bytes": make_ome_non_utf8,
    "ome-latin1-declared": make_ome_latin1_declared,
}


# ---------------------------------------------------------------- Aperio and NDPI text

def _replace_description(path: Path, new: bytes, page: int = 0) -> None:
    lay = layout(path)
    append_value(path, lay, [lay.ifds[page].entries[270]], new + b"\x00")


def make_aperio_non_utf8(folder: Path) -> Hostile:
    path, lay = _svs(folder)
    desc = read_value(path, lay, lay.ifds[0].entries[270]).rstrip(b"\x00")
    user = SVS_PLANTED["user"].encode()
    assert user in desc
    desc = desc.replace(user, b"Zeb\xffulon\xfe\x80 Quackenbush")
    desc += b"|Operator = \xc3\x28APERIO-BADUTF8-QUACK\xed\xa0\x80"
    _replace_description(path, desc)
    return Hostile([path], needles=NEEDLES["svs"] + ["APERIO-BADUTF8-QUACK", "Quackenbush"],
                   ok_allowed=True)


def make_aperio_huge_value(folder: Path) -> Hostile:
    """A 50 MB value in the first page's description, an identifier at its end."""
    path, lay = _svs(folder)
    desc = read_value(path, lay, lay.ifds[0].entries[270]).rstrip(b"\x00")
    desc += b"|Comments = " + b"lorem ipsum " * (50_000_000 // 12) + b"APERIO-HUGE-QUACK"
    _replace_description(path, desc)
    return Hostile([path], needles=NEEDLES["svs"] + ["APERIO-HUGE-QUACK"], ok_allowed=True)


def _ndpi_properties(path: Path, lay: Layout) -> bytes:
    return read_value(path, lay, lay.ifds[0].entries[65449])


def _replace_ndpi_properties(path: Path, lay: Layout, props: bytes) -> None:
    append_value(path, lay, [ifd.entries[65449] for ifd in lay.ifds], props)


def make_ndpi_non_utf8(folder: Path) -> Hostile:
    path = base_ndpi(folder / "bad.ndpi")
    lay = layout(path)
    props = _ndpi_properties(path, lay).rstrip(b"\x00")
    op = NDPI_PLANTED["user_key"].encode()
    assert op in props
    props = props.replace(op, b"NDPI-\xff\xfeOPERATOR-QUACK")
    props += b"Scan.Comment=\x80\x81NDPI-BADUTF8-QUACK\xc3\r\n\x00"
    _replace_ndpi_properties(path, lay, props)
    return Hostile([path], needles=NEEDLES["ndpi"] + ["NDPI-BADUTF8-QUACK", "OPERATOR-QUACK"],
                   ok_allowed=True)


def make_ndpi_huge_value(folder: Path) -> Hostile:
    path = base_ndpi(folder / "bad.ndpi")
    lay = layout(path)
    props = _ndpi_properties(path, lay).rstrip(b"\x00")
    props += b"Scan.Comment=" + b"lorem ipsum " * (50_000_000 // 12) + b"NDPI-HUGE-QUACK\r\n\x00"
    _replace_ndpi_properties(path, lay, props)
    return Hostile([path], needles=NEEDLES["ndpi"] + ["NDPI-HUGE-QUACK"], ok_allowed=True)


TEXT_CASES = {
    "aperio-non-utf8": make_aperio_non_utf8,
    "aperio-50MB-value": make_aperio_huge_value,
    "ndpi-props-non-utf8": make_ndpi_non_utf8,
    "ndpi-props-50MB-value": make_ndpi_huge_value,
}


# ---------------------------------------------------------------- MIRAX corpus

def _mrxs(folder: Path) -> Path:
    return base_mrxs(folder)


def _ini(path: Path) -> Path:
    return path.with_suffix("") / "Slidedat.ini"


def _set_ini(path: Path, old: str, new: str) -> None:
    ini = _ini(path)
    text = ini.read_bytes()
    assert old.encode() in text, old
    ini.write_bytes(text.replace(old.encode(), new.encode(), 1))


def make_mrxs_million_sections(folder: Path) -> Hostile:
    path = _mrxs(folder)
    with open(_ini(path), "ab") as fh:
        fh.write(b"".join(b"[S%d]\r\nKEY = MRXS-MANY-QUACK\r\n" % i for i in range(1_000_000)))
    return Hostile([path], needles=NEEDLES["mrxs"] + ["MRXS-MANY-QUACK"], ok_allowed=True)


def make_mrxs_dotdot_name(folder: Path) -> Hostile:
    path = _mrxs(folder)
    inner = path.with_suffix("")
    shutil.move(inner / "Data0001.dat", folder / "Data0001.dat")
    _set_ini(path, "FILE_1 = Data0001.dat", "FILE_1 = ../Data0001.dat")
    return Hostile([path])


def make_mrxs_absolute_name(folder: Path) -> Hostile:
    path = _mrxs(folder)
    inner = path.with_suffix("")
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    shutil.move(inner / "Data0001.dat", elsewhere / "Data0001.dat")
    _set_ini(path, "FILE_1 = Data0001.dat", f"FILE_1 = {elsewhere / 'Data0001.dat'}")
    return Hostile([path])


def make_mrxs_symlink_data(folder: Path) -> Hostile:
    path = _mrxs(folder)
    inner = path.with_suffix("")
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    shutil.move(inner / "Data0001.dat", elsewhere / "Data0001.dat")
    os.symlink(elsewhere / "Data0001.dat", inner / "Data0001.dat")
    return Hostile([path])


def make_mrxs_symlink_folder(folder: Path) -> Hostile:
    """NAME/ itself is a symbolic link to a folder elsewhere."""
    path = _mrxs(folder)
    inner = path.with_suffix("")
    real = folder / "elsewhere"
    shutil.move(inner, real)
    os.symlink(real, inner)
    return Hostile([path])


def _index_pages(index: bytes, which: int) -> list[tuple[int, int]]:
    """(offset, next) of every page of record 0 of the hierarchical (0) or
    non-hierarchical (1) table."""
    table = struct.unpack_from("<I", index, 37 + 4 * which)[0]
    head = struct.unpack_from("<I", index, table)[0]
    _, nxt = struct.unpack_from("<ii", index, head)
    pages = []
    while nxt:
        count, after = struct.unpack_from("<ii", index, nxt)
        pages.append((nxt, after))
        nxt = after
    return pages


def make_mrxs_index_page_loop_hier(folder: Path) -> Hostile:
    path = _mrxs(folder)
    index_path = path.with_suffix("") / "Index.dat"
    index = bytearray(index_path.read_bytes())
    pages = _index_pages(bytes(index), 0)
    assert len(pages) >= 2
    struct.pack_into("<i", index, pages[-1][0] + 4, pages[0][0])   # last page -> first page
    index_path.write_bytes(bytes(index))
    return Hostile([path])


def make_mrxs_index_page_self_loop_nonhier(folder: Path) -> Hostile:
    path = _mrxs(folder)
    index_path = path.with_suffix("") / "Index.dat"
    index = bytearray(index_path.read_bytes())
    pages = _index_pages(bytes(index), 1)
    struct.pack_into("<i", index, pages[0][0] + 4, pages[0][0])    # page -> itself
    index_path.write_bytes(bytes(index))
    # OpenSlide reads one page of a non-hierarchical record; Index.dat is rebuilt: exit 0 is fine
    return Hostile([path], needles=NEEDLES["mrxs"], ok_allowed=True)


def make_mrxs_missing_data_file(folder: Path) -> Hostile:
    path = _mrxs(folder)
    (path.with_suffix("") / "Data0001.dat").unlink()
    return Hostile([path])


def make_mrxs_data_file_fifo(folder: Path) -> Hostile:
    path = _mrxs(folder)
    data = path.with_suffix("") / "Data0001.dat"
    data.unlink()
    os.mkfifo(data)
    return Hostile([path])


def make_mrxs_slidedat_fifo(folder: Path) -> Hostile:
    path = _mrxs(folder)
    ini = _ini(path)
    ini.unlink()
    os.mkfifo(ini)
    return Hostile([path])


def make_mrxs_index_truncated(folder: Path) -> Hostile:
    path = _mrxs(folder)
    index_path = path.with_suffix("") / "Index.dat"
    data = index_path.read_bytes()
    index_path.write_bytes(data[: len(data) // 2])
    return Hostile([path])


def _nonhier_length(path: Path, slots: list[int], length: int) -> None:
    """Set the length of the first item of these non-hierarchical records."""
    index_path = path.with_suffix("") / "Index.dat"
    index = bytearray(index_path.read_bytes())
    table = struct.unpack_from("<I", index, 41)[0]
    for slot in slots:
        head = struct.unpack_from("<I", index, table + 4 * slot)[0]
        _, page = struct.unpack_from("<ii", index, head)
        struct.pack_into("<i", index, page + 8 + 12, length)     # (0, 0, offset, LENGTH, file)
    index_path.write_bytes(bytes(index))


def make_mrxs_dropped_record_past_eof(folder: Path) -> Hostile:
    """The macro and label records (dropped by default) run 1 GB past their data file."""
    path = _mrxs(folder)
    _nonhier_length(path, [0, 1], 1 << 30)
    return Hostile([path], needles=NEEDLES["mrxs"], ok_allowed=True)


def make_mrxs_kept_record_past_eof(folder: Path) -> Hostile:
    """The preview record (kept) runs 1 GB past its data file: it cannot be decoded to be
    checked, so it is dropped (released without it, with a warning) or the slide refused."""
    path = _mrxs(folder)
    _nonhier_length(path, [2], 1 << 30)
    return Hostile([path], ok_allowed=True)


def make_mrxs_tile_record_past_eof(folder: Path) -> Hostile:
    """The first level-0 tile runs 1 GB past its data file."""
    path = _mrxs(folder)
    index_path = path.with_suffix("") / "Index.dat"
    index = bytearray(index_path.read_bytes())
    [(page, _), *_] = _index_pages(bytes(index), 0)
    struct.pack_into("<i", index, page + 8 + 8, 1 << 30)     # (image, offset, LENGTH, file)
    index_path.write_bytes(bytes(index))
    return Hostile([path])


def make_mrxs_page_count_huge(folder: Path) -> Hostile:
    """A hierarchical page that claims 2^31-1 items."""
    path = _mrxs(folder)
    index_path = path.with_suffix("") / "Index.dat"
    index = bytearray(index_path.read_bytes())
    [(page, _), *_] = _index_pages(bytes(index), 0)
    struct.pack_into("<i", index, page, 0x7FFFFFFF)
    index_path.write_bytes(bytes(index))
    return Hostile([path])


MRXS_CASES = {
    "mrxs-slidedat-10^6-sections": make_mrxs_million_sections,
    "mrxs-datafile-dotdot": make_mrxs_dotdot_name,
    "mrxs-datafile-absolute": make_mrxs_absolute_name,
    "mrxs-datafile-symlink": make_mrxs_symlink_data,
    "mrxs-folder-symlink": make_mrxs_symlink_folder,
    "mrxs-index-page-loop-hier": make_mrxs_index_page_loop_hier,
    "mrxs-index-page-self-loop-nonhier": make_mrxs_index_page_self_loop_nonhier,
    "mrxs-missing-data-file": make_mrxs_missing_data_file,
    "mrxs-datafile-is-fifo": make_mrxs_data_file_fifo,
    "mrxs-slidedat-is-fifo": make_mrxs_slidedat_fifo,
    "mrxs-index-truncated": make_mrxs_index_truncated,
    "mrxs-dropped-record-1GB-past-eof": make_mrxs_dropped_record_past_eof,
    "mrxs-kept-record-1GB-past-eof": make_mrxs_kept_record_past_eof,
    "mrxs-tile-record-1GB-past-eof": make_mrxs_tile_record_past_eof,
    "mrxs-index-page-count-2^31-1": make_mrxs_page_count_huge,
}


# ---------------------------------------------------------------- DICOM corpus

def make_dicom_deep_sequence(folder: Path) -> Hostile:
    """A sequence nested 1000 deep, an identifier at the bottom; written by hand (undefined
    lengths) just before PixelData."""
    import pydicom

    path = base_dicom(folder / "series")
    ds = pydicom.dcmread(path)
    assert not ds.file_meta.TransferSyntaxUID.is_implicit_VR
    leaf = (struct.pack("<HH", 0x0040, 0xA160) + b"UT" + b"\x00\x00"
            + struct.pack("<I", 18) + b"DCM-DEEP-SQ-QUACK ")
    blob = leaf
    for _ in range(1000):   # (0040,A730) ContentSequence, one item, all undefined length
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + blob + \
            struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        blob = (struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
                + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    # (0040,A730) sorts after every element before PixelData in this file except (0048,...),
    # (5200,...): put it in the right place by splitting the file at the first element > it.
    data = path.read_bytes()
    at = _element_offset(data, ds, (0x0048, 0x0001))
    path.write_bytes(data[:at] + blob + data[at:])
    return Hostile([path.parent], needles=DICOM_NEEDLES + ["DCM-DEEP-SQ-QUACK"], ok_allowed=True)


def _element_offset(data: bytes, ds, tag: tuple[int, int]) -> int:
    """File offset of the top-level element `tag` (explicit VR little endian)."""
    needle = struct.pack("<HH", *tag)
    elem = ds[tag]
    vr = elem.VR.encode()
    pos = data.find(needle + vr)
    assert pos > 0
    return pos


def make_dicom_file_meta_element_in_data_set(folder: Path) -> Hostile:
    """(0002,0013) ImplementationVersionName, a File Meta element, written among the data
    set's elements after (0008,0008): pydicom reads it, then refuses to write it (an internal
    error before the fix; found by a stranger's attack)."""
    import pydicom

    path = base_dicom(folder / "series")
    ds = pydicom.dcmread(path)
    data = path.read_bytes()
    at = _element_offset(data, ds, (0x0008, 0x0016))
    stray = struct.pack("<HH", 0x0002, 0x0013) + b"SH" + struct.pack("<H", 14) + b"DCM-META-QUACK"
    path.write_bytes(data[:at] + stray + data[at:])
    return Hostile([path.parent], needles=DICOM_NEEDLES + ["DCM-META-QUACK"],
                   misleading=["died", "internal error", "ValueError"])


def make_dicom_truncated_pixels(folder: Path) -> Hostile:
    path = base_dicom(folder / "series")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    return Hostile([path.parent])


def make_dicom_truncated_header(folder: Path) -> Hostile:
    path = base_dicom(folder / "series")
    data = path.read_bytes()
    path.write_bytes(data[:700])
    return Hostile([path.parent])


def make_dicom_bad_lengths(folder: Path) -> Hostile:
    """PixelData (OB, 4-byte length) claims 0xFFFFFFF0 bytes in a 17 KB file."""
    import pydicom

    path = base_dicom(folder / "series")
    ds = pydicom.dcmread(path)
    data = bytearray(path.read_bytes())
    at = _element_offset(bytes(data), ds, (0x7FE0, 0x0010))
    struct.pack_into("<I", data, at + 8, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    return Hostile([path.parent])


# VRs whose values follow SpecificCharacterSet, and VRs restricted to the default repertoire
CHARSET_VRS = {"SH", "LO", "ST", "LT", "PN", "UC", "UT"}
RESTRICTED_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UR"}
KEEP_FOR_DETECTION = {"ImageType", "Modality", "SOPClassUID", "SpecificCharacterSet",
                      "PhotometricInterpretation", "DimensionOrganizationType"}


def _dicom_bad_text(folder: Path, vrs: set[str]) -> Hostile:
    """Every element of one of `vrs` (nested ones too) holds bytes that are not UTF-8
    (SpecificCharacterSet ISO_IR 192 declared) around its own identifier. pydicom would
    re-encode such values, so ASCII placeholders of the same length are written and then
    replaced in the file."""
    import warnings

    import pydicom

    path = base_dicom(folder / "series")
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 192"
    needles = []

    def walk(dataset) -> None:
        for elem in list(dataset):
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            if elem.VR not in vrs or elem.keyword in KEEP_FOR_DETECTION:
                continue
            needle = f"BAD{elem.VR}-{elem.tag.group:04X}{elem.tag.element:04X}-{len(needles)}"
            needles.append(needle)
            elem.value = f"@@{needle}##"

    # pydicom warns about every value it is given here; the values are invalid on purpose (a
    # library the suite imports elsewhere, wsidicom, may have made pydicom raise on those)
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        walk(ds)
        ds.save_as(path, enforce_file_format=True)
    assert needles
    data = path.read_bytes()
    for needle in needles:
        placeholder = f"@@{needle}##".encode()
        assert data.count(placeholder) == 1, needle
        data = data.replace(placeholder, b"\xff\xfe" + needle.encode() + b"\xc3\x28")
    path.write_bytes(data)
    return Hostile([path.parent], needles=DICOM_NEEDLES + needles, ok_allowed=True)


def make_dicom_non_utf8_charset_vrs(folder: Path) -> Hostile:
    return _dicom_bad_text(folder, CHARSET_VRS)


def make_dicom_non_utf8_restricted_vrs(folder: Path) -> Hostile:
    return _dicom_bad_text(folder, RESTRICTED_VRS)


DICOM_CASES = {
    "dicom-sequence-1000-deep": make_dicom_deep_sequence,
    "dicom-file-meta-element-in-data-set": make_dicom_file_meta_element_in_data_set,
    "dicom-truncated-pixel-data": make_dicom_truncated_pixels,
    "dicom-truncated-header": make_dicom_truncated_header,
    "dicom-pixeldata-length-4GB": make_dicom_bad_lengths,
    "dicom-non-utf8-SH-LO-ST-LT-PN-UC-UT": make_dicom_non_utf8_charset_vrs,
    "dicom-non-utf8-AE-AS-CS-DA-DT-TM-UR": make_dicom_non_utf8_restricted_vrs,
}


# ---------------------------------------------------------------- odd files

def make_empty(folder: Path) -> Hostile:
    path = folder / "x.ndpi"
    path.write_bytes(b"")
    return Hostile([path])


def make_empty_mrxs(folder: Path) -> Hostile:
    """An empty NAME.mrxs with no NAME/ folder beside it."""
    path = folder / "x.mrxs"
    path.write_bytes(b"")
    return Hostile([path])


def make_directory_named_like_slide(folder: Path) -> Hostile:
    path = folder / "x.svs"
    path.mkdir()
    return Hostile([path])


def make_fifo(folder: Path) -> Hostile:
    path = folder / "x.svs"
    os.mkfifo(path)
    return Hostile([path], misleading=["no such file"])


def make_fifo_in_folder(folder: Path) -> Hostile:
    """A folder input holding a FIFO named like a slide (and nothing else)."""
    inner = folder / "batch"
    inner.mkdir()
    os.mkfifo(inner / "x.svs")
    return Hostile([inner])


def make_dev_zero(folder: Path) -> Hostile:
    return Hostile([Path("/dev/zero")], misleading=["no such file"])


def make_symlink_loop(folder: Path) -> Hostile:
    a, b = folder / "a.svs", folder / "b.svs"
    os.symlink(b, a)
    os.symlink(a, b)
    return Hostile([a])


ODD_CASES = {
    "empty-file": make_empty,
    "empty-mrxs-no-folder": make_empty_mrxs,
    "directory-named-x.svs": make_directory_named_like_slide,
    "fifo-x.svs": make_fifo,
    "fifo-in-input-folder": make_fifo_in_folder,
    "dev-zero": make_dev_zero,
    "symlink-loop": make_symlink_loop,
}

ALL_CASES = {**TIFF_CASES, **OME_CASES, **TEXT_CASES, **MRXS_CASES, **DICOM_CASES, **ODD_CASES}
