"""Lossless TIFF image data (LZW, Deflate, PackBits, uncompressed) with every byte accounted for.

A tile or strip is one compressed stream that decodes to exactly the bytes its geometry needs
(`sizes`: the exact size, and for the last strip of an image also the size of a full strip,
which some writers encode). libtiff stops reading where the output is full (PackBits,
LZW) or the stream ends (Deflate, LZW at its EOI code) and ignores the rest of the byte count,
so text appended after the stream, or encoded as more output than the image needs, would be
released. Here:

- Deflate (TIFF TN 2, RFC 1950): the zlib stream must end (zlib's `eof`) and inflate to an
  allowed size; bytes after it are cut.
- LZW (TIFF 6.0 section 13, MSB-first codes of 9 to 12 bits with "early change"): the stream
  must start with Clear; its end is the EOI code, found by walking the code positions (their
  widths depend only on how many codes follow the last Clear, so the walk reads codes without
  building strings); bytes after EOI are cut and its padding bits set to zero; the codes before
  it must decode (imagecodecs) to an allowed size.
- PackBits (TIFF 6.0 section 9): decoding stops where the exact size is reached; a run that
  overshoots it is malformed, bytes after it are cut.
- Uncompressed: the count must be at least the exact size; bytes after it are cut.

Zero bytes after a stream's end are left (tile alignment; they carry nothing). Anything
else raises MalformedStream: the caller refuses the slide.
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from .segments import MalformedStream

CLEAR, EOI = 256, 257
TABLE = 4096          # codes between two Clears before the code table is full
INFLATE_CHUNK = 16 << 20


@lru_cache(maxsize=1)
def _lzw_layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bit offset from the segment start, width, end offset) of code k after a Clear, k <
    TABLE. Code 0 is read at 9 bits and adds no entry; code k >= 1 is read with the table
    holding 258 + k - 1 entries, and the width grows when the table reaches 511, 1023 and 2047
    entries (libtiff's LZWDecode: "++free_entp > maxcodep")."""
    entries = 258 + np.maximum(np.arange(TABLE) - 1, 0)
    width = np.select([entries < 511, entries < 1023, entries < 2047], [9, 10, 11], 12)
    offset = np.concatenate(([0], np.cumsum(width)[:-1]))
    return offset.astype(np.int64), width.astype(np.int64), (offset + width).astype(np.int64)


def _windows(data: bytes) -> np.ndarray:
    """w[i] = bytes i..i+3 as a big-endian uint32, for every byte position: four zero-copy
    aligned views interleaved, cheaper than shifting and or-ing three gathered bytes."""
    padded = data + b"\x00" * (8 - len(data) % 4)
    words = len(padded) // 4 - 1
    out = np.empty(4 * words, dtype=np.uint32)
    for s in range(4):
        out[s::4] = np.frombuffer(padded, ">u4", count=words, offset=s)
    return out


def _codes_at(windows: np.ndarray, first: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Codes of `width` bits starting at bit positions `first` (MSB first)."""
    shift = (32 - (first & 7) - width).astype(np.uint32)
    return (windows[first >> 3] >> shift) & ((np.uint32(1) << width.astype(np.uint32)) - 1)


def lzw_end(data: bytes) -> int:
    """Bit position just after the EOI code. Segments (Clear to Clear) are walked one at a
    time until one ends in a Clear; encoders clear at the same table size every time, so the
    segments after it are then read together, assuming that period, and walked one by one
    again from the first that breaks it."""
    if len(data) < 2 or data[0] == 0 and data[1] & 1:
        raise MalformedStream("LZW data in the old (pre-TIFF 6.0) bit order")
    windows = _windows(data)
    total = len(data) * 8
    if int(_codes_at(windows, np.array([0]), np.array([9]))[0]) != CLEAR:
        raise MalformedStream("LZW data does not start with a Clear code")
    offset, width, ends = _lzw_layout()
    start = 9
    clear_at: int | None = None     # the code index of the Clear that ended the last segment
    while True:
        if clear_at is not None:
            start = _full_segments(windows, start, total, clear_at)
        fits = int(np.searchsorted(ends, total - start, side="right"))
        codes = _codes_at(windows, start + offset[:fits], width[:fits])
        hits = np.flatnonzero((codes | 1) == EOI)
        if hits.size:
            k = int(hits[0])
            end = start + int(ends[k])
            if int(codes[k]) == EOI:
                return end
            start, clear_at = end, k
            continue
        if fits < TABLE:
            raise MalformedStream("LZW data ends without an EOI code")
        # a full table without Clear: libtiff keeps reading 12-bit codes
        start += int(ends[-1])
        rest = np.arange(start, total - 11, 12)
        codes = _codes_at(windows, rest, np.full(len(rest), 12))
        hits = np.flatnonzero(codes == EOI)
        if not hits.size or np.flatnonzero(codes[:hits[0]] == CLEAR).size:
            raise MalformedStream("LZW data overflows its code table")
        return int(rest[hits[0]]) + 12


@lru_cache(maxsize=8)
def _segment_tables(clear_at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a segment of `clear_at` + 1 codes starting at bit alignment a (0-7): the byte of
    each code relative to the segment's first byte, and the shift that brings the code to the
    low bits of that byte's 32-bit window; and the codes' masks."""
    offset, width, _ = _lzw_layout()
    first = np.arange(8)[:, None] + offset[:clear_at + 1]
    shift = 32 - (first & 7) - width[:clear_at + 1]
    mask = (np.uint32(1) << width[:clear_at + 1].astype(np.uint32)) - np.uint32(1)
    return (first >> 3).astype(np.int64), shift.astype(np.uint32), mask


def _full_segments(windows: np.ndarray, start: int, total: int, clear_at: int) -> int:
    """Where the run of segments that each end in a Clear at code `clear_at` (and hold no
    other Clear or EOI) stops, read in batches from bit `start`."""
    period = int(_lzw_layout()[2][clear_at])
    rel, shift, mask = _segment_tables(clear_at)
    while True:
        count = min((total - start) // period, 256)
        if count < 2:
            return start
        bits = start + period * np.arange(count)
        align = bits & 7
        codes = (windows[(bits >> 3)[:, None] + rel[align]] >> shift[align]) & mask
        odd = ((codes[:, :-1] | 1) == EOI).any(axis=1) | (codes[:, -1] != CLEAR)
        if odd.any():
            return start + period * int(np.argmax(odd))
        start += period * count


def clean_lzw(data: bytes, sizes: tuple[int, ...]) -> tuple[bytes, list[tuple[str, bytes]]]:
    import imagecodecs

    end_bit = lzw_end(data)
    end = (end_bit + 7) // 8
    stream = data[:end]
    spare = end * 8 - end_bit
    removed: list[tuple[str, bytes]] = []
    if spare and stream[-1] & ((1 << spare) - 1):
        stream = stream[:-1] + bytes([stream[-1] & ~((1 << spare) - 1) & 0xFF])
        removed.append(("padding bits", b""))
    try:
        decoded = len(imagecodecs.lzw_decode(stream))
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error types
        raise MalformedStream(f"LZW data does not decode ({exc})") from None
    _check_size("LZW", decoded, sizes)
    return _cut(data, stream, end, removed)


def clean_deflate(data: bytes, sizes: tuple[int, ...]) -> tuple[bytes, list[tuple[str, bytes]]]:
    inflater = zlib.decompressobj()
    decoded = 0
    pending = data
    try:
        while pending and not inflater.eof:
            decoded += len(inflater.decompress(pending, INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise MalformedStream(f"Deflate data does not inflate ({exc})") from None
    if not inflater.eof:
        raise MalformedStream("Deflate data ends before its zlib stream does")
    _check_size("Deflate", decoded, sizes)
    end = len(data) - len(inflater.unused_data)
    return _cut(data, data[:end], end, [])


def clean_packbits(data: bytes, sizes: tuple[int, ...]) -> tuple[bytes, list[tuple[str, bytes]]]:
    need = sizes[0]
    pos = produced = 0
    n = len(data)
    while produced < need:
        if pos >= n:
            raise MalformedStream(f"PackBits data decodes to {produced} bytes where the image "
                                  f"needs {need}")
        header = data[pos]
        if header < 128:          # a literal run of header + 1 bytes
            produced += header + 1
            pos += header + 2
        elif header > 128:        # one byte repeated 257 - header times
            produced += 257 - header
            pos += 2
        else:                     # 128: no operation
            pos += 1
    if produced != need or pos > n:
        raise MalformedStream("PackBits data overruns the image")
    return _cut(data, data[:pos], pos, [])


def clean_uncompressed(data: bytes, sizes: tuple[int, ...]) -> tuple[bytes, list[tuple[str, bytes]]]:
    need = sizes[0]
    if len(data) < need:
        raise MalformedStream(f"uncompressed data of {len(data)} bytes where the image needs {need}")
    return _cut(data, data[:need], need, [])


def _check_size(codec: str, decoded: int, sizes: tuple[int, ...]) -> None:
    if decoded not in sizes:
        raise MalformedStream(f"{codec} data decodes to {decoded} bytes where the image needs "
                              f"{sizes[0]}")


def _cut(data: bytes, stream: bytes, end: int, removed: list[tuple[str, bytes]]
         ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The stream alone when non-zero bytes follow it; zero bytes after it stay."""
    tail = data[end:]
    if any(tail):
        return stream, removed + [("trailing data", tail)]
    return (stream + tail, removed) if removed else (data, [])


CLEANERS = {"lzw": clean_lzw, "deflate": clean_deflate, "packbits": clean_packbits,
            "none": clean_uncompressed}
