"""MIRAX camera positions: the VIMSLIDE_POSITION_BUFFER record, or its zlib-compressed twin in
StitchingIntensityLayer, checked byte for byte before it is kept.

As OpenSlide reads them (openslide-vendor-mirax.c, process_indexfile and
read_slide_position_buffer): one 9-byte entry per camera photo, (IMAGENUMBER_X / divisions) x
(IMAGENUMBER_Y / divisions) of them: a flag byte (0 or 1; any other bit is refused) and the
photo's x and y as little-endian int32, in level-0 pixels divided by level 0's concat factor.
The plain record must be exactly that long (OpenSlide refuses another size); the compressed
one must inflate to exactly that (OpenSlide stops at the stream's end and ignores what the
record's length covers after it). Text appended after either is cut off (the record gets
shorter); a flag with other bits set, a position far outside the slide (four ASCII bytes make
an int32 above 538 million), or too few bytes refuse the slide.
"""
from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

from ..containers.mirax.slidedat import GENERAL
from ..errors import SlideError

if TYPE_CHECKING:
    from .mrxs import MiraxSlide, NonhierValue

POSITION_RECORD = 9
LAYERS = ("VIMSLIDE_POSITION_BUFFER", "StitchingIntensityLayer")


def position_count(slide: MiraxSlide) -> int:
    divisions = int(slide.ini.sections[GENERAL].get("CameraImageDivisionsPerSide", "1") or 1)
    return (slide.images_x // divisions) * (slide.images_y // divisions)


def _stored(slide: MiraxSlide, value: NonhierValue) -> tuple[bytes, int, int, int]:
    if value.record is None:
        raise SlideError("Index.dat: the camera positions record cannot be read")
    items = list(value.record.items())
    if len(items) != 1:
        raise SlideError("the camera positions record is stored in several pieces")
    *_, offset, length, fileno = items[0]
    return slide.read(fileno, offset, length), offset, length, fileno


def read_positions(slide: MiraxSlide, value: NonhierValue) -> tuple[bytes, int]:
    """(the positions, how many bytes of the stored record they take)."""
    raw, _, length, _ = _stored(slide, value)
    need = POSITION_RECORD * position_count(slide)
    if value.layer_name == "StitchingIntensityLayer":
        inflater = zlib.decompressobj()
        try:
            positions = inflater.decompress(raw, need + 1)
        except zlib.error:
            raise SlideError("the camera positions do not inflate") from None
        if not inflater.eof or len(positions) != need:
            raise SlideError("the camera positions record is not of the expected size")
        return positions, length - len(inflater.unused_data)
    if len(raw) < need:
        raise SlideError("the camera positions record is not of the expected size")
    return raw[:need], need


def check_positions(slide: MiraxSlide, positions: bytes) -> list[tuple[int, int, int]]:
    """(flag, x, y) of every entry; raises SlideError for values no scanner writes."""
    count = len(positions) // POSITION_RECORD
    values = struct.unpack("<" + "Bii" * count, positions)
    entries = [values[3 * i:3 * i + 3] for i in range(count)]
    (base_w, base_h), = slide.level_dimensions()[:1]
    concat = 1 << int(slide.ini.value(slide.level_sections[0], "IMAGE_CONCAT_FACTOR") or 0)
    limit = 4 * max(base_w, base_h, 1) // concat + (1 << 16)
    for flag, x, y in entries:
        if flag & 0xFE:
            raise SlideError(f"a camera position has the flag value {flag} (OpenSlide refuses it)")
        if abs(x) > limit or abs(y) > limit:
            raise SlideError("a camera position lies far outside the slide")
    return entries


def kept_length(slide: MiraxSlide, value: NonhierValue) -> tuple[int, bytes]:
    """How much of the stored record is kept, and what is cut off after it."""
    positions, used = read_positions(slide, value)
    check_positions(slide, positions)
    raw, _, length, _ = _stored(slide, value)
    tail = raw[used:]
    return (used, tail) if any(tail) else (length, b"")
