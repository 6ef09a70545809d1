"""PNG images (PNG 3rd edition) with every byte accounted for.

A PNG is its signature and chunks (length, type, data, CRC). Critical chunks must be the ones
the standard defines with valid lengths, and every CRC must match (a wrong CRC is four free
bytes; libpng only warns for ancillary chunks). The image data (the IDAT chunks together) must
be one zlib stream that ends exactly at the end of the last IDAT and inflates to exactly the
filtered scanlines the header describes: libpng ignores what comes after either ("Extra
compressed data", "Too much image data"), so text could ride there. Ancillary chunks are
removed unless they are fixed-size rendering facts (gAMA, cHRM, sRGB, sBIT, pHYs, tRNS, bKGD,
hIST, cICP, mDCV, cLLI) of the size the standard gives; text, time, EXIF, ICC profiles and
palettes (iCCP and sPLT carry a free-text name) go. Non-zero bytes after IEND go.
"""
from __future__ import annotations

import struct
import zlib

from .segments import MalformedStream

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
FIXED = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"cICP": 4, b"mDCV": 24, b"cLLI": 8}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))   # (x0, y0, dx, dy) of each interlace pass


def _scanline_bytes(width: int, height: int, depth: int, channels: int, interlaced: bool) -> int:
    def rows(w: int, h: int) -> int:
        return 0 if not w or not h else h * (1 + (w * channels * depth + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(rows(max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy)))
               for x0, y0, dx, dy in ADAM7)


def _ancillary_fits(kind: bytes, data: bytes, color: int, depth: int) -> bool:
    if kind in FIXED:
        return len(data) == FIXED[kind]
    channels = CHANNELS[color]
    if kind == b"sBIT":
        return len(data) == (3 if color == 3 else channels)
    if kind == b"tRNS":
        return (len(data) <= 256 if color == 3 else len(data) == {0: 2, 2: 6}.get(color, -1))
    if kind == b"bKGD":
        return len(data) == (1 if color == 3 else 2 if color in (0, 4) else 6)
    if kind == b"hIST":
        return len(data) % 2 == 0
    return False


def clean_png(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The image without text-bearing ancillary chunks and without trailing bytes; raises
    MalformedStream for any other byte outside the syntax."""
    if not data.startswith(SIGNATURE):
        raise MalformedStream("PNG stream does not start with the PNG signature")
    out = bytearray(SIGNATURE)
    removed: list[tuple[str, bytes]] = []
    pos = len(SIGNATURE)
    header: tuple[int, int, int, int, int] | None = None
    image = zlib.decompressobj()
    inflated = 0
    while True:
        if pos + 12 > len(data):
            raise MalformedStream("PNG chunk truncated")
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data) or not kind.isalpha():
            raise MalformedStream("PNG chunk length or type out of range")
        body = data[pos + 8:end - 4]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, end - 4)[0]:
            raise MalformedStream(f"PNG chunk {kind.decode('latin-1')} has a wrong CRC")
        if header is None and kind != b"IHDR":
            raise MalformedStream("PNG without IHDR first")
        if kind[:1].isupper():
            header, inflated = _critical(kind, body, header, image, inflated)
            out += data[pos:end]
        elif _ancillary_fits(kind, body, header[3], header[2]):
            out += data[pos:end]
        else:
            removed.append((kind.decode("latin-1"), body))
        pos = end
        if kind == b"IEND":
            break
    width, height, depth, color, interlaced = header
    if not image.eof or image.unused_data:
        raise MalformedStream("PNG image data does not end where its zlib stream ends")
    if inflated != _scanline_bytes(width, height, depth, CHANNELS[color], interlaced):
        raise MalformedStream("PNG image data is not the size its header says")
    tail = data[pos:]
    if any(tail):
        removed.append(("trailing data", tail))
    else:
        out += tail
    return bytes(out), removed


def _critical(kind: bytes, body: bytes, header, image, inflated: int):
    if kind == b"IHDR":
        if header is not None or len(body) != 13:
            raise MalformedStream("PNG IHDR repeated or of the wrong size")
        width, height, depth, color, method, filtering, interlace = struct.unpack(">IIBBBBB", body)
        if (not width or not height or depth not in DEPTHS.get(color, ()) or method or filtering
                or interlace > 1):
            raise MalformedStream("PNG IHDR values out of range")
        return (width, height, depth, color, interlace), inflated
    if kind == b"PLTE":
        if len(body) % 3 or len(body) > 768:
            raise MalformedStream("PNG PLTE of the wrong size")
    elif kind == b"IDAT":
        if image.eof and body:
            raise MalformedStream("PNG image data after the end of its zlib stream")
        try:
            inflated += len(image.decompress(body))
        except zlib.error as exc:
            raise MalformedStream(f"PNG image data does not inflate ({exc})") from None
    elif kind == b"IEND":
        if body:
            raise MalformedStream("PNG IEND is not empty")
    else:
        raise MalformedStream(f"PNG critical chunk {kind.decode('latin-1')} is unknown")
    return header, inflated
