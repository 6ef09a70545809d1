"""JPEG codestreams with every byte outside the entropy-coded data accounted for, and the
vectorised marker walk the screens share.

JPEG (ITU T.81 B.1): SOI, marker segments, SOS, entropy-coded data (where FF is followed by 00
or a restart marker), more segments and scans, EOI. Every segment is checked against its
syntax, so that no byte rides along: DQT and DHT must be exactly their tables, SOF, SOS, DRI
and DNL exactly their fields; a marker outside baseline, extended, progressive and lossless
JPEG (hierarchical, JPGn, reserved ones) makes the stream malformed, as do bytes between
segments (libjpeg skips them with a warning) and fill bytes are dropped. APPn and COM can
carry free text wherever they sit and are removed, with three exceptions that decoders need:
an APP0 JFIF and an APP14 Adobe segment (colour space, Adobe TN 5116; libjpeg's
`default_decompress_parms`) are kept when every byte has a value the specifications define,
and otherwise rewritten to their canonical form with the same meaning; the NDP.scan product
comment stays. In a sequential DCT scan the spectral-selection fields are unused (libjpeg
only warns when they are not 0, 63, 0) and are rewritten to those values. Non-zero bytes after
EOI go; zero padding stays.

Scanning every tile of a large slide in Python would be slow, so `screen_jpeg` walks the
marker chains of all tiles at once with numpy and only flags streams that need a closer look.
"""
from __future__ import annotations

import os
import re
import struct

import numpy as np

from ..buffers import scratch
from ..errors import SlideError

# Product comment NDP.scan writes into every level JPEG (OpenSlide's NDPI sample slides).
SAFE_JPEG_COMMENTS = (re.compile(rb"Hamamatsu NanoZoomer Digital Pathology\x00?"),)
MAX_HEADER_SEGMENTS = 64

SOI, EOI, SOS, DHT, DQT, DRI, DNL, DAC, APP0, APP14, COM = (
    0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xDC, 0xCC, 0xE0, 0xEE, 0xFE)
SEQUENTIAL = {0xC0, 0xC1, 0xC9}          # DCT scans whose Ss, Se, Ah/Al are fixed
PROGRESSIVE = {0xC2, 0xCA}
LOSSLESS = {0xC3, 0xCB}
SOF_MARKERS = SEQUENTIAL | PROGRESSIVE | LOSSLESS
# JFIF 1.02 APP0 without thumbnail: "JFIF\0", version, units, X and Y density, 0 x 0
JFIF_BODY = 14
# (units, X density, Y density) encoders write by default: square pixels without a size, or
# the usual screen and print resolutions. Any other density is four free bytes: rewritten.
JFIF_DENSITIES = {(0, 1, 1), (1, 72, 72), (1, 96, 96), (1, 150, 150), (1, 300, 300),
                  (1, 600, 600)}
CANONICAL_JFIF_TAIL = b"\x00\x00\x01\x00\x01\x00\x00"   # units 0, 1:1, no thumbnail
TABLE_NAMES = {DQT: "DQT", DHT: "DHT", DAC: "DAC"}
ADOBE_BODY = 12      # "Adobe", version, flags0, flags1, transform (Adobe TN 5116, 18)


class MalformedStream(ValueError):
    pass


def segment_name(marker: int) -> str:
    if marker == COM:
        return "COM"
    if marker in TABLE_NAMES:
        return TABLE_NAMES[marker]
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    return f"FF{marker:02X}"


def why_removed(what: str, text_segment: str) -> str:
    """The report's reason for something cleaning took out of a codestream."""
    if what.startswith("unused "):
        return "a table no frame or scan selects: no decoder reads it"
    return text_segment


def payload_text(payload: bytes) -> str:
    """A removed segment's payload as text (for the plan and the residue search)."""
    return payload.decode("latin-1").strip("\x00 \r\n")


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
        if marker == SOS:
            break
        pos += 2 + length
    return 0, 0


# ---- segment syntax ------------------------------------------------------------------------

def _tables_fit(body: bytes, header: int, size) -> bool:
    """A DQT or DHT body is a sequence of tables that ends exactly at the segment's end."""
    pos = 0
    while pos < len(body):
        kind = body[pos]
        if kind >> 4 > 1 or kind & 15 > 3 or pos + header > len(body):
            return False
        pos += size(body, pos)
    return pos == len(body)


def _dqt_size(body: bytes, pos: int) -> int:
    return 1 + 64 * (1 + (body[pos] >> 4))


def _dht_size(body: bytes, pos: int) -> int:
    codes = sum(body[pos + 1:pos + 17])
    return 17 + codes if codes <= 256 else len(body) + 1


def jfif_ok(body: bytes) -> bool:
    if len(body) != JFIF_BODY or body[:5] != b"JFIF\x00" or body[5] != 1 or body[6] > 2:
        return False
    units, x, y = body[7], *struct.unpack_from(">HH", body, 8)
    return (units, x, y) in JFIF_DENSITIES and body[12:14] == b"\x00\x00"


def canonical_jfif(body: bytes) -> bytes:
    """JFIF with the same meaning for a decoder (it says: YCbCr) and no free byte."""
    minor = body[6] if body[5] == 1 and body[6] <= 2 else 1
    return b"JFIF\x00\x01" + bytes([minor]) + CANONICAL_JFIF_TAIL


def adobe_ok(body: bytes) -> bool:
    if len(body) != ADOBE_BODY or body[:5] != b"Adobe":
        return False
    version, flags0, flags1, transform = struct.unpack_from(">HHHB", body, 5)
    return version in (100, 101) and flags0 in (0, 0x8000) and flags1 == 0 and transform <= 2


def canonical_adobe(body: bytes, components: int | None) -> bytes:
    """libjpeg reads the transform byte only: 0 = no transform (RGB or CMYK); any other value
    is YCbCr for three components and YCCK for four (jdapimin.c, default_decompress_parms)."""
    transform = body[11]
    if transform > 2:
        transform = 2 if components == 4 else 1
    return b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform)


def _app_action(marker: int, body: bytes, components: int | None) -> tuple[str, bytes]:
    """("keep" | "remove" | "rewrite", new body). Text can ride in any APPn or COM; JFIF and
    Adobe are recognised as libjpeg does (examine_app0/examine_app14: the identifier and at
    least the fixed fields) and kept or rewritten."""
    if marker == COM:
        return ("keep" if any(p.fullmatch(body) for p in SAFE_JPEG_COMMENTS) else "remove"), body
    if marker == APP0 and len(body) >= JFIF_BODY and body[:5] == b"JFIF\x00":
        return ("keep", body) if jfif_ok(body) else ("rewrite", canonical_jfif(body))
    if marker == APP14 and len(body) >= ADOBE_BODY and body[:5] == b"Adobe":
        if adobe_ok(body):
            return "keep", body
        return "rewrite", canonical_adobe(body, components)
    return "remove", b""


def app_segment(marker: int, body: bytes, components: int | None) -> bytes | None:
    """An APPn or COM segment as it may be written: itself, its canonical form, or None."""
    action, new = _app_action(marker, body, components)
    if action == "remove":
        return None
    return bytes([0xFF, marker]) + struct.pack(">H", len(new) + 2) + new


def _check_segment(marker: int, body: bytes, sof: int | None) -> None:
    """Raise MalformedStream unless the segment's length is exactly what its fields say."""
    n = len(body)
    if marker == DQT:
        ok = _tables_fit(body, 1, _dqt_size)
    elif marker == DHT:
        ok = _tables_fit(body, 17, _dht_size)
    elif marker in SOF_MARKERS:
        ok = (n >= 6 and body[5] >= 1 and n == 6 + 3 * body[5]
              and all(body[8 + 3 * k] <= 3 for k in range(body[5])))     # Tq (B.2.2)
    elif marker == SOS:
        ok = (n >= 1 and 1 <= body[0] <= 4 and n == 4 + 2 * body[0] and sof is not None
              and all(body[2 + 2 * k] >> 4 <= 3 and body[2 + 2 * k] & 15 <= 3
                      for k in range(body[0])))                          # Td, Ta (B.2.3)
        if ok and sof in LOSSLESS:
            ss, se, ahal = body[-3:]
            ok = 1 <= ss <= 7 and se == 0 and ahal >> 4 == 0
        elif ok and sof in PROGRESSIVE:
            ss, se, ahal = body[-3:]
            ok = ss <= se <= 63 and ahal >> 4 <= 13 and ahal & 15 <= 13
    elif marker in (DRI, DNL):
        ok = n == 2
    elif marker == DAC:
        ok = n % 2 == 0 and all(body[i] >> 4 <= 1 and body[i] & 15 <= 3 for i in range(0, n, 2))
    else:
        raise MalformedStream(f"JPEG marker FF{marker:02X} is not one this tool can screen")
    if not ok:
        raise MalformedStream(f"JPEG {segment_name(marker)} segment does not match its syntax")


def clean_jpeg(data: bytes, references: frozenset[TableKey] | None = None,
               frame: tuple[int, int] | None = None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The stream without APPn/COM segments (wherever they sit), with canonical JFIF/Adobe
    segments and sequential scan headers, without fill bytes, without tables no scan uses and
    without non-zero bytes after EOI; raises MalformedStream for any other byte outside the
    syntax.

    A stream without a scan (TIFF JPEGTables) keeps the tables in `references` (the selectors
    of the tiles that use it; None: all of them), checked against `frame` ((SOF marker,
    precision) of those tiles)."""
    if data[:2] != b"\xff\xd8":
        raise MalformedStream("JPEG stream does not start with SOI")
    out: list[bytes | _TableSegment] = [b"\xff\xd8"]
    removed: list[tuple[str, bytes]] = []
    pos, n = 2, len(data)
    sof: int | None = None
    components: int | None = None
    precision = 8
    quant: dict[int, int] = {}               # component id -> its quantisation table
    usage = _TableUsage()
    adobe_at: list[tuple[int, bytes]] = []   # rewritten Adobe segments, settled after SOF
    scans = 0
    while True:
        fill = pos
        while pos + 1 < n and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes (T.81 B.1.1.2): nothing a decoder needs
        if pos > fill:
            removed.append(("fill bytes", b""))
        if pos + 2 > n or data[pos] != 0xFF:
            raise MalformedStream(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == EOI:
            out.append(data[pos:pos + 2])
            pos += 2
            break
        if pos + 4 > n:
            raise MalformedStream("JPEG segment truncated")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2 or pos + 2 + length > n:
            raise MalformedStream("JPEG segment length out of range")
        body = data[pos + 4:pos + 2 + length]
        if 0xE0 <= marker <= 0xEF or marker == COM:
            action, new = _app_action(marker, body, components)
            if action == "keep":
                out.append(data[pos:pos + 2 + length])
            else:
                removed.append((segment_name(marker), body))
                if action == "rewrite":
                    if marker == APP14:
                        adobe_at.append((len(out), body))
                    out.append(bytes([0xFF, marker]) + struct.pack(">H", len(new) + 2) + new)
        else:
            _check_segment(marker, body, sof)
            if marker in SOF_MARKERS:
                sof, components, precision = marker, body[5], body[0]
                quant = {body[6 + 3 * k]: body[8 + 3 * k] for k in range(body[5])}
            if marker == SOS and sof in SEQUENTIAL and body[-3:] != b"\x00\x3f\x00":
                removed.append(("SOS spectral fields", b""))
                body = body[:-3] + b"\x00\x3f\x00"
            if marker in (DQT, DHT, DAC):
                segment = _TableSegment(marker, body)
                usage.define(segment)
                out.append(segment)
            else:
                out.append(data[pos:pos + 4] + body)
            if marker == SOS:
                scans += 1
                usage.use(scan_references(sof, body, quant))
        pos += 2 + length
        if marker == SOS:  # entropy-coded data follows up to the next marker
            end = _entropy_end(data, pos)
            out.append(data[pos:end])
            pos = end
            if pos >= n:
                break   # no EOI: the stream ends with its data
    if scans == 0:
        usage.use(references)
        sof, precision = frame if frame is not None else (sof, precision)
    usage.check_symbols(sof, precision)
    for at, body in adobe_at:    # the transform's meaning depends on the component count
        out[at] = out[at][:4] + canonical_adobe(body, components)
    removed += usage.unused()
    cleaned = b"".join(p.written() if isinstance(p, _TableSegment) else p for p in out)
    tail = data[pos:]
    if any(tail):
        removed.append(("trailing data", tail))
    else:
        cleaned += tail    # zero padding (DICOM items, tile alignment) carries nothing
    return cleaned, removed


# ---- tables and the scans that use them ------------------------------------------------------
# A table is named (kind, class, id): kind DQT, DHT or DAC; class 0 (DC; every quantisation
# table) or 1 (AC). A table no scan selects is never read by a decoder, so all its bytes are
# free: it goes. A used table's values decide the pixels and stay (docs: covert capacity).

TableKey = tuple[int, int, int]
ARITHMETIC = {0xC9, 0xCA, 0xCB}


def scan_references(sof: int | None, sos: bytes, quant: dict[int, int]) -> set[TableKey]:
    """The tables a scan reads (T.81 B.2.3, G.1.1.1.1, H.1.1): the quantisation table of each
    component (none in lossless frames), and the DC (Td) and AC (Ta) entropy tables: Huffman
    or, in arithmetic frames, conditioning (DAC); lossless scans and progressive DC scans use no
    AC table, progressive AC scans no DC table, DC refinement scans none."""
    kind = DAC if sof in ARITHMETIC else DHT
    ss, ahal = sos[-3], sos[-1]
    progressive = sof in PROGRESSIVE
    dc = sof in LOSSLESS or not progressive or (ss == 0 and ahal >> 4 == 0)
    ac = sof not in LOSSLESS and (not progressive or ss > 0)
    refs: set[TableKey] = set()
    for k in range(sos[0]):
        cs, tdta = sos[1 + 2 * k], sos[2 + 2 * k]
        if sof not in LOSSLESS and cs in quant:
            refs.add((DQT, 0, quant[cs]))
        if dc:
            refs.add((kind, 0, tdta >> 4))
        if ac:
            refs.add((kind, 1, tdta & 15))
    return refs


def table_keys(marker: int, body: bytes) -> list[tuple[TableKey, int, int]]:
    """(key, start, end) of every table in a DQT, DHT or DAC body (already checked)."""
    found, pos = [], 0
    while pos < len(body):
        if marker == DQT:
            key, size = (DQT, 0, body[pos] & 15), _dqt_size(body, pos)
        elif marker == DHT:
            key, size = (DHT, body[pos] >> 4, body[pos] & 15), _dht_size(body, pos)
        else:
            key, size = (DAC, body[pos] >> 4, body[pos] & 15), 2
        found.append((key, pos, pos + size))
        pos += size
    return found


class _TableSegment:
    """A DQT, DHT or DAC segment whose tables are each kept only when a scan uses them."""

    def __init__(self, marker: int, body: bytes) -> None:
        self.marker = marker
        self.body = body
        self.tables = table_keys(marker, body)
        self.used = [False] * len(self.tables)

    def written(self) -> bytes:
        body = b"".join(self.body[a:b] for (_, a, b), u in zip(self.tables, self.used) if u)
        if not body:
            return b""
        return bytes([0xFF, self.marker]) + struct.pack(">H", len(body) + 2) + body


class _TableUsage:
    """Which table definition each scan reads: the latest one of its key before the scan."""

    def __init__(self) -> None:
        self.segments: list[_TableSegment] = []
        self.current: dict[TableKey, tuple[_TableSegment, int]] = {}

    def define(self, segment: _TableSegment) -> None:
        self.segments.append(segment)
        for i, (key, _, _) in enumerate(segment.tables):
            self.current[key] = (segment, i)

    def use(self, keys: set[TableKey] | frozenset[TableKey] | None) -> None:
        for key, (segment, i) in self.current.items():
            if keys is None or key in keys:
                segment.used[i] = True

    def check_symbols(self, sof: int | None, precision: int) -> None:
        for segment in self.segments:
            for (key, a, b), used in zip(segment.tables, segment.used):
                if used and not _table_values_ok(key, segment.body[a:b], sof, precision):
                    raise MalformedStream(f"JPEG {segment_name(segment.marker)} table "
                                          f"{key[1]}/{key[2]} holds values outside its range")

    def unused(self) -> list[tuple[str, bytes]]:
        return [(f"unused {segment_name(s.marker)} table", b"")
                for s in self.segments for u in s.used if not u]


def stream_tables(data: bytes) -> tuple[set[TableKey], set[TableKey], tuple[int, int] | None]:
    """(tables defined, tables its scans select, (SOF marker, precision)) of a stream, read
    without checks (JPEGTables and the first tile that uses them)."""
    defined: set[TableKey] = set()
    used: set[TableKey] = set()
    frame: tuple[int, int] | None = None
    quant: dict[int, int] = {}
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == EOI:
            break
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = data[pos + 4:pos + 2 + length]
        if marker in (DQT, DHT, DAC):
            try:
                defined |= {key for key, _, _ in table_keys(marker, body)}
            except IndexError:
                pass
        elif marker in SOF_MARKERS and len(body) >= 6:
            frame = (marker, body[0])
            count = min(body[5], (len(body) - 6) // 3)
            quant = {body[6 + 3 * k]: body[8 + 3 * k] for k in range(count)}
        elif marker == SOS and len(body) >= 4 and len(body) >= 4 + 2 * body[0]:
            used |= scan_references(frame[0] if frame else None, body, quant)
        pos += 2 + length
        if marker == SOS:
            pos = _entropy_end(data, pos)
    return defined, used, frame


def table_references(buf: np.ndarray, offs: np.ndarray, cnts: np.ndarray) -> np.ndarray:
    """Per stream, the bits (TABLE_BITS) of the tables its frame and first scan select and it
    does not define itself (those it reads from JPEGTables), found with the vectorised walk; a
    stream that cannot be walked selects them all."""
    refs = np.zeros(len(offs), dtype=np.int64)
    own = np.zeros(len(offs), dtype=np.int64)
    arithmetic = np.zeros(len(offs), dtype=bool)
    lossless = np.zeros(len(offs), dtype=bool)
    frames = list(SOF_MARKERS)

    def frame(m: np.ndarray, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        for marker, most in ((DQT, 4), (DHT, 8)):
            i = np.flatnonzero(m == marker)
            if i.size:
                end = p[i] + 2 + _u16(buf, p[i] + 2)
                own[s[i]] |= _tables_misfit(buf, p[i], end, most, marker == DHT)[1]
        i = np.flatnonzero(np.isin(m, frames))
        if i.size:
            nf = _at(buf, p[i] + 9)
            arithmetic[s[i]] = np.isin(m[i], list(ARITHMETIC))
            lossless[s[i]] = np.isin(m[i], list(LOSSLESS))
            for k in range(4):
                tq = _at(buf, p[i] + 12 + 3 * k) & 3
                refs[s[i]] |= np.where((k < nf) & ~lossless[s[i]], 1 << tq, 0)
        return np.zeros(len(m), dtype=bool)

    live = cnts >= 4
    walked, at, stop = walk_segments(buf, offs + 2, offs + np.maximum(cnts, 4), (SOS, EOI), frame)
    ns = _at(buf, at + 4)
    dc_base = np.where(arithmetic, 12, 4)
    ac_base = np.where(arithmetic, 16, 8)
    for k in range(4):
        tdta = _at(buf, at + 6 + 2 * k)
        here = (k < ns) & (stop == SOS)
        refs |= np.where(here, 1 << (dc_base + ((tdta >> 4) & 3)), 0)
        refs |= np.where(here & ~lossless, 1 << (ac_base + (tdta & 3)), 0)
    return np.where(walked | ~live, ALL_TABLES, refs & ~own)


TABLE_BITS = {(DQT, 0, t): t for t in range(4)} | {
    (kind, cls, t): base + 4 * cls + t for kind, base in ((DHT, 4), (DAC, 12))
    for cls in (0, 1) for t in range(4)}
ALL_TABLES = (1 << 20) - 1


def keys_of(bits: int) -> frozenset[TableKey]:
    return frozenset(key for key, bit in TABLE_BITS.items() if bits >> bit & 1)


def _table_values_ok(key: TableKey, table: bytes, sof: int | None, precision: int) -> bool:
    """Huffman symbols within their class's range (T.81 F.1.2.1, F.1.2.2, G.1.2.2, H.1.2.2);
    DAC conditioning values within theirs (F.1.4.4.1.4, F.1.4.4.2.1)."""
    kind, cls, _ = key
    if kind == DHT:
        return all(_symbol_ok(cls, s, sof, precision) for s in table[17:])
    if kind == DAC:
        value = table[1]
        return 1 <= value <= 63 if cls == 1 else (value & 15) <= (value >> 4)
    return True


def _symbol_ok(cls: int, symbol: int, sof: int | None, precision: int) -> bool:
    if sof is None:     # tables whose frame is not known: the widest ranges
        return symbol <= 16 if cls == 0 else True
    if cls == 0:
        return symbol <= (16 if sof in LOSSLESS else 11 if precision == 8 else 15)
    size, run = symbol & 15, symbol >> 4
    if size == 0:     # EOB and ZRL; in progressive scans EOBn runs (G.1.2.2)
        return run in (0, 15) or sof in PROGRESSIVE
    return size <= (10 if precision == 8 else 15)


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
        if marker == SOS:
            return pos + 2 + length
        pos += 2 + length
    return 0


# ---- the vectorised walk -------------------------------------------------------------------

def walk_segments(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, stops: tuple[int, ...],
                  flag_marker, record: int | None = None,
                  found: list[tuple[np.ndarray, np.ndarray]] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk marker segments of many streams at once.

    `flag_marker(markers, positions, streams)` says which segments flag their stream (the
    streams are indices into `pos`). Returns (flagged, stopped_at, stop_marker) per stream;
    segments with marker `record` are appended to `found` as (stream indices, positions)."""
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
        pos[idx[stop]] = p[stop]
        active[idx[stop]] = False
        idx, p, m1 = idx[~stop], p[~stop], m1[~stop]
        flagged[idx[flag_marker(m1, p, idx)]] = True
        if record is not None and found is not None:
            hit = m1 == record
            if hit.any():
                found.append((idx[hit], p[hit]))
        length = (buf[p + 2].astype(np.int64) << 8) | buf[p + 3]
        pos[idx] = p + 2 + length
    flagged[active] = True
    return flagged, pos, stop_marker


def _at(buf: np.ndarray, p: np.ndarray) -> np.ndarray:
    return buf.take(p, mode="clip").astype(np.int64)


def _u16(buf: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (_at(buf, p) << 8) | _at(buf, p + 1)


def _starts_with(buf: np.ndarray, pos: np.ndarray, sig: bytes) -> np.ndarray:
    ok = np.ones(len(pos), dtype=bool)
    for i, byte in enumerate(sig):
        ok &= _at(buf, pos + i) == byte
    return ok


# The screen's view of tables: one bit per table, DQT id t at bit t, DHT DC t at 4 + t and
# DHT AC t at 8 + t. Symbols are held to the narrowest ranges (8-bit sequential); a 12-bit or
# lossless table outside them gets the full parse, which knows the frame.
_SYMBOLS = np.arange(256)
# indexed by class * 256 + symbol
SYMBOL_OK = np.concatenate([_SYMBOLS <= 11, np.isin(_SYMBOLS & 15, np.arange(1, 11))
                            | np.isin(_SYMBOLS, (0, 0xF0))])
GATHER = 1 << 22        # symbol bytes gathered at a time


def _tables_misfit(buf: np.ndarray, p: np.ndarray, end: np.ndarray, most: int,
                   dht: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised _tables_fit over segments at `p` ending at `end`: (misfit or a symbol out
    of range or a table defined twice, the bits of the tables defined)."""
    bad = np.zeros(len(p), dtype=bool)
    bits = np.zeros(len(p), dtype=np.int64)
    q = p + 4
    for _ in range(most):
        more = q < end
        if not more.any():
            break
        kind = _at(buf, q)
        bad |= more & (((kind >> 4) > 1) | ((kind & 15) > 3))
        bit = np.where(more, 1 << ((4 + 4 * (kind >> 4) if dht else 0) + (kind & 3)), 0)
        bad |= (bits & bit) != 0
        bits |= bit
        if dht:
            counts = _at(buf, q[:, None] + np.arange(1, 17)).sum(axis=1)
            bad |= more & (counts > 256)
            bad |= more & _symbols_odd(buf, q + 17, np.where(more, np.minimum(counts, 256), 0),
                                       (kind >> 4) == 1)
            step = 17 + counts
        else:
            step = 1 + 64 * (1 + (kind >> 4))
        q = np.where(more, q + step, q)
    return bad | (q != end), bits


def _symbols_odd(buf: np.ndarray, start: np.ndarray, counts: np.ndarray,
                 ac: np.ndarray) -> np.ndarray:
    """Whether any of each table's `counts` symbols at `start` is outside its class's range."""
    odd = np.zeros(len(start), dtype=bool)
    width = int(counts.max(initial=0))
    if width == 0:
        return odd
    rows = max(1, GATHER // width)
    cols = np.arange(width)
    for lo in range(0, len(start), rows):
        sl = slice(lo, lo + rows)
        symbols = buf.take(start[sl, None] + cols, mode="clip")
        ok = SYMBOL_OK[(ac[sl, None].astype(np.intp) << 8) | symbols]
        odd[sl] = (~ok & (cols < counts[sl, None])).any(axis=1)
    return odd


def _jfif_plain(buf: np.ndarray, p: np.ndarray, length: np.ndarray) -> np.ndarray:
    density = (_at(buf, p + 11) << 32) | (_u16(buf, p + 12) << 16) | _u16(buf, p + 14)
    allowed = np.array([(u << 32) | (x << 16) | y for u, x, y in JFIF_DENSITIES])
    return ((length == JFIF_BODY + 2) & _starts_with(buf, p + 4, b"JFIF\x00")
            & (_at(buf, p + 9) == 1) & (_at(buf, p + 10) <= 2) & np.isin(density, allowed)
            & (_at(buf, p + 16) == 0) & (_at(buf, p + 17) == 0))


def _adobe_plain(buf: np.ndarray, p: np.ndarray, length: np.ndarray) -> np.ndarray:
    return ((length == ADOBE_BODY + 2) & _starts_with(buf, p + 4, b"Adobe")
            & np.isin(_u16(buf, p + 9), (100, 101)) & np.isin(_u16(buf, p + 11), (0, 0x8000))
            & (_u16(buf, p + 13) == 0) & (_at(buf, p + 15) <= 2))


def screen_jpeg(buf: np.ndarray, offs: np.ndarray, cnts: np.ndarray) -> np.ndarray:
    """True for every JPEG stream that is not plain: a single sequential or lossless scan
    after header segments that all match their syntax (no APPn but exact JFIF and Adobe, no
    COM, no fill byte), every table defined once and selected by the frame or the scan, only
    restart markers in the scan data, and EOI at the end (or EOI and one padding NUL). The
    flagged ones get the full parse."""
    flags = np.ones(len(offs), dtype=bool)
    idx = np.nonzero(cnts >= 4)[0]
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
    plain_end = (b2 == 0xFF) & (b1 == EOI)
    padded_end = (b3 == 0xFF) & (b2 == EOI) & (b1 == 0)
    return plain_end | padded_end, np.where(padded_end & ~plain_end, e - 3, e - 2)


def _jpeg_head(buf: np.ndarray, o: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For streams at `o` (ending at `e`): whether SOI is missing or a header segment does not
    match its syntax, or the scan is not one plain sequential or lossless scan, and where the
    entropy-coded data after SOS starts. Reads at most HEAD_BYTES of each stream."""
    soi = (_at(buf, o) == 0xFF) & (_at(buf, o + 1) == SOI)
    sof = np.zeros(len(o), dtype=np.int64)
    defined = np.zeros(len(o), dtype=np.int64)     # table bits (see SYMBOL_OK)
    used = np.zeros(len(o), dtype=np.int64)
    twice = np.zeros(len(o), dtype=bool)

    def tables(s: np.ndarray, q: np.ndarray, n: np.ndarray, most: int, dht: bool) -> np.ndarray:
        bad, bits = _tables_misfit(buf, q, q + 2 + n, most, dht)
        twice[s] |= (defined[s] & bits) != 0       # the first definition is never read
        defined[s] |= bits
        return bad

    checks = {DQT: lambda s, q, n: tables(s, q, n, 4, False),
              DHT: lambda s, q, n: tables(s, q, n, 8, True),
              DRI: lambda s, q, n: n != 4,
              APP0: lambda s, q, n: ~_jfif_plain(buf, q, n),
              APP14: lambda s, q, n: ~_adobe_plain(buf, q, n)}
    sof_markers = [0xC0, 0xC1, 0xC3]     # Huffman-coded (arithmetic ones get the full parse)

    def odd(m: np.ndarray, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Each marker's check on the streams where it sits (one kind at a time: in a slide's
        tiles the n-th segment is mostly the same kind everywhere)."""
        length = _u16(buf, p + 2)
        bad = np.ones(len(m), dtype=bool)
        i = np.flatnonzero(np.isin(m, sof_markers))
        if i.size:
            nf = _at(buf, p[i] + 9)
            bad[i] = (nf == 0) | (nf > 4) | (length[i] != 8 + 3 * nf)
            sof[s[i]] = m[i]
            for k in range(4):      # each component's Tq (B.2.2); lossless frames use none
                tq = _at(buf, p[i] + 12 + 3 * k)
                here = (k < nf) & (m[i] != 0xC3)
                bad[i] |= here & (tq > 3)
                used[s[i]] |= np.where(here, 1 << (tq & 3), 0)
        for marker, check in checks.items():
            i = np.flatnonzero(m == marker)
            if i.size:
                bad[i] = check(s[i], p[i], length[i])
        return bad

    walked, at, stop = walk_segments(buf, o + 2, e, (SOS, EOI), odd)
    ns = _at(buf, at + 4)
    sos_length = _u16(buf, at + 2)
    spectral = at + 5 + 2 * ns
    ss, se, ahal = _at(buf, spectral), _at(buf, spectral + 1), _at(buf, spectral + 2)
    sequential = np.isin(sof, list(SEQUENTIAL)) & (ss == 0) & (se == 63) & (ahal == 0)
    lossless = (np.isin(sof, list(LOSSLESS)) & (ss >= 1) & (ss <= 7) & (se == 0)
                & ((ahal >> 4) == 0))
    sos_ok = ((stop == SOS) & (ns >= 1) & (ns <= 4) & (sos_length == 6 + 2 * ns)
              & (sequential | lossless))
    for k in range(4):      # each scan component's Td and Ta (B.2.3); lossless: no AC table
        tdta = _at(buf, at + 6 + 2 * k)
        here = k < ns
        sos_ok &= ~here | (((tdta >> 4) <= 3) & ((tdta & 15) <= 3))
        used |= np.where(here, 1 << (4 + ((tdta >> 4) & 3)), 0)
        used |= np.where(here & ~lossless, 1 << (8 + (tdta & 3)), 0)
    unused = twice | ((defined & ~used) != 0)
    return ~soi | walked | ~sos_ok | unused, np.minimum(at + 2 + sos_length, e)


# the most of a stream _jpeg_head reads: SOI, MAX_HEADER_SEGMENTS segments of at most 2 + 65535
# bytes each, and the next segment's marker and length
HEAD_BYTES = 2 + MAX_HEADER_SEGMENTS * (2 + 0xFFFF) + 4


MARKER_CHUNK = 1 << 20


def _markers_between(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each [start, end): does it hold a marker other than a stuffed zero, a restart
    marker or a fill byte (T.81 B.1.1.5)?"""
    lo, hi = int(starts.min(initial=0)), int(ends.max(initial=0))
    if hi <= lo:
        return np.zeros(len(starts), dtype=bool)
    # a piece at a time into one small mask: a window-sized mask costs its page faults and
    # leaves the cache
    mask = np.empty(min(MARKER_CHUNK, hi - lo), dtype=bool)
    pieces = []
    for a in range(lo, hi, MARKER_CHUNK):
        here = mask[:min(MARKER_CHUNK, hi - a)]
        np.equal(buf[a:a + len(here)], 0xFF, out=here)
        ff = np.flatnonzero(here) + a
        pieces.append(ff[_is_marker(buf[np.minimum(ff + 1, len(buf) - 1)])])
    found = np.concatenate(pieces)
    return np.searchsorted(found, ends, side="left") > np.searchsorted(found, starts, side="left")


def _is_marker(following: np.ndarray) -> np.ndarray:
    """Whether FF followed by these bytes is a marker (not a stuffed zero, a restart marker
    or a fill byte)."""
    return (following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))


WINDOW = 64 << 20


def screen_runs(fd: int, file_size: int, offs: np.ndarray, cnts: np.ndarray, screen,
                dtype: type = bool) -> np.ndarray:
    """Apply a vectorised screen to byte runs of a file, one bounded window at a time.

    Windows keep memory small. They are read with pread, not mapped: a mapped file that
    shrinks while it is read kills the process with SIGBUS, and a mapping cannot be closed
    while a view of it waits for the garbage collector (Dask workers defer collection). A
    single run larger than a window is screened by _screen_large, also through pread."""
    flags = np.zeros(len(offs), dtype=dtype)
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
            buffer = scratch("screen_window", hi - base)
            flags[chunk] = screen(_read_into(fd, buffer, base, hi - base), offs[chunk] - base,
                                  cnts[chunk])
        start = stop
    return flags


def _read_into(fd: int, buffer: np.ndarray, offset: int, length: int) -> np.ndarray:
    """`length` bytes of the file at `offset`, read into the start of `buffer`."""
    view = buffer[:length]
    if os.preadv(fd, [memoryview(view)], offset) != length:
        raise SlideError("image data ends before its stated length (was the file "
                         "truncated or changed while being read?)")
    return view


def _read(fd: int, offset: int, length: int) -> np.ndarray:
    """`length` bytes of the file at `offset`; a short read is the input's error."""
    window = bytearray(length)
    if os.preadv(fd, [window], offset) != length:
        raise SlideError("image data ends before its stated length (was the file "
                         "truncated or changed while being read?)")
    return np.frombuffer(window, dtype=np.uint8)


def _screen_large(fd: int, off: int, cnt: int, screen):
    """Screen one run larger than a window in bounded memory (no memory map: a file that
    shrinks would kill the process with SIGBUS). A JPEG's headers, its last bytes and its
    entropy-coded data window by window; a run of another codec is flagged (parsed whole)."""
    if cnt <= WINDOW:     # a small run that shares the large one's window
        return screen(_read(fd, off, cnt), np.zeros(1, np.int64), np.full(1, cnt))[0]
    if screen is table_references:    # what the headers select: they lie in HEAD_BYTES
        head = min(cnt, HEAD_BYTES)
        return screen(_read(fd, off, head), np.zeros(1, np.int64), np.full(1, head))[0]
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
