"""Find and remove text-bearing segments inside JPEG and JPEG 2000 codestreams.

JPEG (ITU T.81 B.1): after SOI, marker segments `FF xx LL LL ...` up to SOS, then entropy-coded
data (where FF is followed by 00 or a restart marker), then EOI; markers may also stand between
scans and after the last one. APPn (FFE0-FFEF) and COM (FFFE) can carry free text wherever they
sit: they are removed, except an APP0 that is exactly a JFIF header without thumbnail (JFIF
1.02: 16 bytes) and an APP14 that is exactly Adobe's colour-transform segment (Adobe TN 5116:
14 bytes), which decoders need and which hold nothing else. Non-zero bytes after EOI go.
JPEG 2000 (ITU T.800 A.4-A.9): COM (FF64) in the main header or in a tile-part header
(between SOT and SOD).

Scanning every tile of a large slide in Python would be slow, so `screen_*` walks the marker
chains of all tiles at once with numpy and only flags streams that need a closer look.
"""
from __future__ import annotations

import os
import re
import struct

import numpy as np

from ..errors import SlideError

JFIF_LENGTH = 16     # the segment's length field: "JFIF\0", version, units, densities, 0x0 thumbnail
ADOBE_LENGTH = 14    # "Adobe", version, flags0, flags1, transform
# Encoder comments that are known to hold nothing but the encoder's name or its rate-control
# statistics (Kakadu writes one per codestream in Aperio J2K slides). Matched whole, so nothing
# else can ride along; every other comment is removed.
SAFE_J2K_COMMENTS = (
    re.compile(rb"Kdu-Layer-Info: log_2\{Delta-D\(MSE\)/\[2\^16\*Delta-L\(bytes\)\]\}, L\(bytes\)"
               rb"(\n *-?[0-9.]+, *[0-9.]+(e[+-]?[0-9]+)?)+\n?\x00?"),
    re.compile(rb"Kakadu-v[0-9.]+\x00?"),
    re.compile(rb"Created by OpenJPEG version [0-9.]+\x00?"),
    re.compile(rb"\x00*"),  # an empty comment carries nothing
)
# Product comment NDP.scan writes into every level JPEG (OpenSlide's NDPI sample slides).
SAFE_JPEG_COMMENTS = (re.compile(rb"Hamamatsu NanoZoomer Digital Pathology\x00?"),)
MAX_HEADER_SEGMENTS = 64


def segment_name(marker: int) -> str:
    if marker == 0xFE:
        return "COM"
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    if marker == 0x64:
        return "COM"
    return f"FF{marker:02X}"


def _removable_jpeg(marker: int, payload: bytes) -> bool:
    if marker == 0xFE:
        return not any(p.fullmatch(payload) for p in SAFE_JPEG_COMMENTS)
    if marker == 0xE0:
        return not (len(payload) == JFIF_LENGTH - 2 and payload.startswith(b"JFIF\x00")
                    and payload[12:14] == b"\x00\x00")
    if marker == 0xEE:
        return not (len(payload) == ADOBE_LENGTH - 2 and payload.startswith(b"Adobe"))
    return 0xE1 <= marker <= 0xEF


class MalformedStream(ValueError):
    pass


def payload_text(payload: bytes) -> str:
    """A removed segment's payload as text (for the plan and the residue search)."""
    return payload.decode("latin-1").strip("\x00 \r\n")


SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment (T.81 B.2.2); (0, 0) if there is none."""
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:
            break
        pos += 2 + length
    return 0, 0


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary PNG chunks that only describe how to render the pixels (PNG 3rd ed. 11.3); every
# other ancillary chunk (tEXt, zTXt, iTXt, eXIf, tIME, private ones) is removed. Critical
# chunks (upper-case first letter) are always kept.
PNG_RENDERING_CHUNKS = {b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tRNS", b"bKGD",
                        b"cICP", b"mDCV", b"cLLI", b"hIST", b"sPLT"}


def clean_png(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Remove text-bearing ancillary chunks and anything after IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise MalformedStream("PNG stream does not start with the PNG signature")
    out = bytearray(PNG_SIGNATURE)
    removed: list[tuple[str, bytes]] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise MalformedStream("PNG chunk truncated")
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise MalformedStream("PNG chunk length out of range")
        if kind[:1].islower() and kind not in PNG_RENDERING_CHUNKS:
            removed.append((kind.decode("latin-1"), data[pos + 8:end - 4]))
        else:
            out += data[pos:end]
        pos = end
        if kind == b"IEND":
            break
    if data[pos:].strip(b"\x00"):
        removed.append(("trailing data", data[pos:]))
    return bytes(out), removed


def clean_image(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A JPEG or PNG image without its text segments (chosen by the image's own signature)."""
    if data.startswith(PNG_SIGNATURE):
        return clean_png(data)
    return clean_jpeg(data)


def clean_jpeg(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Remove APPn/COM segments wherever they sit (before, between and after the scans) and
    non-zero bytes after EOI."""
    if data[:2] != b"\xff\xd8":
        raise MalformedStream("JPEG stream does not start with SOI")
    out = bytearray(b"\xff\xd8")
    removed: list[tuple[str, bytes]] = []
    pos = 2
    n = len(data)
    while True:
        while pos + 1 < n and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes (T.81 B.1.1.2)
        if pos + 2 > n or data[pos] != 0xFF:
            raise MalformedStream(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            out += data[pos:pos + 2]
            pos += 2
            break
        if pos + 4 > n:
            raise MalformedStream("JPEG segment truncated")
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if length < 2 or pos + 2 + length > n:
            raise MalformedStream("JPEG segment length out of range")
        segment = data[pos:pos + 2 + length]
        if _removable_jpeg(marker, segment[4:]):
            removed.append((segment_name(marker), segment[4:]))
        else:
            out += segment
        pos += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data follows up to the next marker
            end = _entropy_end(data, pos)
            out += data[pos:end]
            pos = end
            if pos >= n:
                break   # no EOI: the stream ends with its data
    tail = data[pos:]
    if any(tail):
        removed.append(("trailing data", tail))
    else:
        out += tail    # zero padding (DICOM items, tile alignment) carries nothing
    return bytes(out), removed


def _entropy_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at `pos` ends: at the first marker that is not a
    stuffed zero or a restart marker (T.81 B.1.1.5, F.1.2.3), or at the end of the data."""
    n = len(data)
    while True:
        i = data.find(b"\xff", pos)
        if i < 0 or i + 1 >= n:
            return n
        following = data[i + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos = i + 2
        elif following == 0xFF:
            pos = i + 1
        else:
            return i


def scan_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte (just after the first SOS segment), or 0."""
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    return 0


def clean_j2k(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Remove COM segments from the main and tile-part headers of a J2K codestream."""
    if data[:2] != b"\xff\x4f":
        raise MalformedStream("JPEG 2000 codestream does not start with SOC")
    out = bytearray(b"\xff\x4f")
    removed: list[tuple[str, bytes]] = []
    pos = 2
    n = len(data)

    def header_segments(pos: int, stop: int, sink: bytearray) -> int:
        while True:
            if pos + 4 > n or data[pos] != 0xFF:
                raise MalformedStream(f"JPEG 2000 marker expected at byte {pos}")
            marker = data[pos + 1]
            if marker == stop:
                return pos
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if length < 2 or pos + 2 + length > n:
                raise MalformedStream("JPEG 2000 segment length out of range")
            comment = data[pos + 6:pos + 2 + length]
            if marker == 0x64 and not any(p.fullmatch(comment) for p in SAFE_J2K_COMMENTS):
                removed.append(("COM", comment))
            else:
                sink += data[pos:pos + 2 + length]
            pos += 2 + length

    pos = header_segments(pos, 0x90, out)
    while pos + 2 <= n and data[pos:pos + 2] == b"\xff\x90":
        if pos + 12 > n:
            raise MalformedStream("JPEG 2000 SOT truncated")
        sot = bytearray(data[pos:pos + 12])
        psot = struct.unpack(">I", sot[6:10])[0]
        part_end = pos + psot if psot else n
        if part_end > n:
            raise MalformedStream("JPEG 2000 tile-part runs past the stream")
        headers = bytearray()
        sod = header_segments(pos + 12, 0x93, headers)
        rest = data[sod:part_end] if psot else data[sod:]
        if psot:
            new_len = 12 + len(headers) + len(rest)
            sot[6:10] = struct.pack(">I", new_len)
        out += sot + headers + rest
        pos = part_end
        if not psot:
            break
    if pos < n:
        tail = data[pos:]
        if tail[:2] == b"\xff\xd9":
            out += tail[:2]
            if any(tail[2:]):
                removed.append(("trailing data", tail[2:]))
        elif any(tail):
            raise MalformedStream("unexpected bytes after the last JPEG 2000 tile-part")
    return bytes(out), removed


def _walk(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, stops: tuple[int, ...],
          flag_marker, record: int | None = None,
          found: list[tuple[np.ndarray, np.ndarray]] | None = None,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk marker segments of many streams at once.

    Returns (flagged, stopped_at, stop_marker) per stream; segments with marker `record` are
    appended to `found` as (stream indices, segment positions)."""
    n = len(pos)
    flagged = np.zeros(n, dtype=bool)
    stop_marker = np.zeros(n, dtype=np.int64)
    pos = pos.copy()
    active = np.ones(n, dtype=bool)
    for _ in range(MAX_HEADER_SEGMENTS):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        p = pos[idx]
        oob = p + 4 > end[idx]
        flagged[idx[oob]] = True
        active[idx[oob]] = False
        idx, p = idx[~oob], p[~oob]
        m0 = buf[p]
        m1 = buf[p + 1].astype(np.int64)
        bad = m0 != 0xFF
        flagged[idx[bad]] = True
        active[idx[bad]] = False
        idx, p, m1 = idx[~bad], p[~bad], m1[~bad]
        stop = np.isin(m1, stops)
        stop_marker[idx[stop]] = m1[stop]
        active[idx[stop]] = False
        idx, p, m1 = idx[~stop], p[~stop], m1[~stop]
        flagged[idx[flag_marker(m1, p)]] = True
        if record is not None and found is not None:
            hit = m1 == record
            if hit.any():
                found.append((idx[hit], p[hit]))
        length = (buf[p + 2].astype(np.int64) << 8) | buf[p + 3]
        pos[idx] = p + 2 + length
    flagged[active] = True
    return flagged, pos, stop_marker


def _starts_with(buf: np.ndarray, pos: np.ndarray, sig: bytes) -> np.ndarray:
    ok = np.ones(len(pos), dtype=bool)
    for i, byte in enumerate(sig):
        ok &= buf[np.minimum(pos + i, len(buf) - 1)] == byte
    return ok


def screen_jpeg(buf: np.ndarray, offs: np.ndarray, cnts: np.ndarray) -> np.ndarray:
    """True for every JPEG stream that may hold APPn/COM segments (anywhere: in the headers,
    between scans, after the entropy-coded data) or trailing data."""
    flags = np.zeros(len(offs), dtype=bool)
    ok = cnts >= 4
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return flags
    o, e = offs[idx], offs[idx] + cnts[idx]
    tail, data_end = _jpeg_tail(buf[e - 3], buf[e - 2], buf[e - 1], e)
    bad_head, data_start = _jpeg_head(buf, o, e)
    flags[idx] = bad_head | ~tail | _markers_between(buf, data_start, data_end)
    return flags


def _jpeg_tail(b3: np.ndarray, b2: np.ndarray, b1: np.ndarray,
               e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From a stream's last three bytes: whether it ends with EOI (a stream may end with one
    padding NUL: DICOM items have even lengths), and where its entropy-coded data ends."""
    plain_end = (b2 == 0xFF) & (b1 == 0xD9)
    padded_end = (b3 == 0xFF) & (b2 == 0xD9) & (b1 == 0)
    return plain_end | padded_end, np.where(padded_end & ~plain_end, e - 3, e - 2)


def _jpeg_head(buf: np.ndarray, o: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For streams at `o` (ending at `e`): whether SOI is missing or a header segment may hold
    text, and where the entropy-coded data after SOS starts. Reads at most HEAD_BYTES of each
    stream."""
    soi = (buf[o] == 0xFF) & (buf[o + 1] == 0xD8)

    def suspicious(m: np.ndarray, p: np.ndarray) -> np.ndarray:
        app = ((m >= 0xE1) & (m <= 0xED)) | (m == 0xEF) | (m == 0xFE)
        length = (buf[np.minimum(p + 2, len(buf) - 1)].astype(np.int64) << 8) | buf[np.minimum(p + 3, len(buf) - 1)]
        jfif = (_starts_with(buf, p + 4, b"JFIF\x00") & (length == JFIF_LENGTH)
                & (buf[np.minimum(p + 16, len(buf) - 1)] == 0) & (buf[np.minimum(p + 17, len(buf) - 1)] == 0))
        adobe = _starts_with(buf, p + 4, b"Adobe") & (length == ADOBE_LENGTH)
        app |= (m == 0xE0) & ~jfif
        app |= (m == 0xEE) & ~adobe
        return app

    walked, stops, _ = _walk(buf, o + 2, e, (0xDA, 0xD9), suspicious)
    # after SOS: any marker other than a restart marker before the final EOI
    sos_length = ((buf[np.minimum(stops + 2, len(buf) - 1)].astype(np.int64) << 8)
                  | buf[np.minimum(stops + 3, len(buf) - 1)])
    return ~soi | walked, np.minimum(stops + 2 + sos_length, e)


# the most of a stream _jpeg_head reads: SOI, MAX_HEADER_SEGMENTS segments of at most 2 + 65535
# bytes each, and the next segment's marker and length
HEAD_BYTES = 2 + MAX_HEADER_SEGMENTS * (2 + 0xFFFF) + 4


def _markers_between(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each [start, end): does it hold a marker other than a stuffed zero, a restart
    marker or a fill byte (T.81 B.1.1.5)?"""
    lo, hi = int(starts.min(initial=0)), int(ends.max(initial=0))
    if hi <= lo:
        return np.zeros(len(starts), dtype=bool)
    ff = np.flatnonzero(buf[lo:hi] == 0xFF) + lo
    found = ff[_is_marker(buf[np.minimum(ff + 1, len(buf) - 1)])]
    return np.searchsorted(found, ends, side="left") > np.searchsorted(found, starts, side="left")


def _is_marker(following: np.ndarray) -> np.ndarray:
    """Whether FF followed by these bytes is a marker (not a stuffed zero, a restart marker
    or a fill byte)."""
    return (following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))


def screen_j2k(buf: np.ndarray, offs: np.ndarray, cnts: np.ndarray) -> np.ndarray:
    """True for every J2K codestream that may hold a COM segment that is not a known-safe
    encoder comment (main header or first tile-part header)."""
    flags = np.zeros(len(offs), dtype=bool)
    ok = cnts >= 16
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return flags
    o, e = offs[idx], offs[idx] + cnts[idx]
    soc = (buf[o] == 0xFF) & (buf[o + 1] == 0x4F)
    comments: list[tuple[np.ndarray, np.ndarray]] = []

    def never(m: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.zeros(len(m), dtype=bool)

    main_flag, sot_pos, _ = _walk(buf, o + 2, e, (0x90,), never, 0x64, comments)
    sot_pos = np.minimum(sot_pos, e - 12)
    psot = ((buf[sot_pos + 6].astype(np.int64) << 24) | (buf[sot_pos + 7].astype(np.int64) << 16)
            | (buf[sot_pos + 8].astype(np.int64) << 8) | buf[sot_pos + 9])
    # A stream of more than one tile-part gets the full Python walk.
    single = (psot == 0) | (sot_pos + psot >= e - 2)
    tp_flag, _, _ = _walk(buf, sot_pos + 12, e, (0x93,), never, 0x64, comments)
    flags[idx] = ~soc | main_flag | tp_flag | ~single
    # Comments: only those that are not a known encoder comment flag their stream.
    safe_cache: dict[bytes, bool] = {}
    for streams, positions in comments:
        for stream, pos in zip(streams.tolist(), positions.tolist()):
            length = (int(buf[pos + 2]) << 8) | int(buf[pos + 3])
            payload = buf[pos + 6:pos + 2 + length].tobytes()
            safe = safe_cache.get(payload)
            if safe is None:
                safe = safe_cache[payload] = any(p.fullmatch(payload) for p in SAFE_J2K_COMMENTS)
            if not safe:
                flags[idx[stream]] = True
    return flags


WINDOW = 64 << 20


def screen_runs(fd: int, file_size: int, offs: np.ndarray, cnts: np.ndarray, screen) -> np.ndarray:
    """Apply a vectorised screen to byte runs of a file, one bounded window at a time.

    Windows keep memory small. They are read with pread, not mapped: a mapped file that
    shrinks while it is read kills the process with SIGBUS, and a mapping cannot be closed
    while a view of it waits for the garbage collector (Dask workers defer collection). A
    single run larger than a window is screened by _screen_large, also through pread."""
    flags = np.zeros(len(offs), dtype=bool)
    live = np.nonzero(cnts > 0)[0]
    if live.size == 0:
        return flags
    order = live[np.argsort(offs[live], kind="stable")]
    start = 0
    while start < len(order):
        base = int(offs[order[start]])
        end_limit = base + WINDOW
        stop = start + 1
        while stop < len(order) and offs[order[stop]] + cnts[order[stop]] <= end_limit:
            stop += 1
        chunk = order[start:stop]
        hi = int((offs[chunk] + cnts[chunk]).max())
        if hi - base > WINDOW:  # one run larger than a window (an NDPI level's single JPEG)
            flags[chunk] = [_screen_large(fd, int(offs[i]), int(cnts[i]), screen)
                            for i in chunk.tolist()]
        else:
            flags[chunk] = screen(_read(fd, base, hi - base), offs[chunk] - base, cnts[chunk])
        start = stop
    return flags


def _read(fd: int, offset: int, length: int) -> np.ndarray:
    """`length` bytes of the file at `offset`; a short read is the input's error."""
    window = bytearray(length)
    if os.preadv(fd, [window], offset) != length:
        raise SlideError("image data ends before its stated length (was the file "
                         "truncated or changed while being read?)")
    return np.frombuffer(window, dtype=np.uint8)


def _screen_large(fd: int, off: int, cnt: int, screen) -> bool:
    """Screen one run larger than a window in bounded memory (no memory map: a file that
    shrinks would kill the process with SIGBUS). A JPEG's headers, its last bytes and its
    entropy-coded data window by window; a run of another codec is flagged (parsed whole)."""
    if cnt <= WINDOW:     # a small run that shares the large one's window
        return bool(screen(_read(fd, off, cnt), np.zeros(1, np.int64), np.full(1, cnt))[0])
    if screen is not screen_jpeg:
        return True
    o, e = np.array([0], dtype=np.int64), np.array([cnt], dtype=np.int64)
    last = _read(fd, off + cnt - 3, 3)
    tail, data_end = _jpeg_tail(last[0:1], last[1:2], last[2:3], e)
    bad_head, data_start = _jpeg_head(_read(fd, off, min(cnt, HEAD_BYTES)), o, e)
    if bad_head[0] or not tail[0]:
        return True
    return _markers_in_file(fd, off + int(data_start[0]), off + int(data_end[0]))


def _markers_in_file(fd: int, start: int, end: int) -> bool:
    """Whether [start, end) of the file holds a marker other than a stuffed zero, a restart
    marker or a fill byte, read window by window (each with the byte after it)."""
    for pos in range(start, end, WINDOW):
        stop = min(pos + WINDOW, end)
        buf = _read(fd, pos, stop - pos + 1)
        if _markers_between(buf, np.array([0]), np.array([stop - pos]))[0]:
            return True
    return False
