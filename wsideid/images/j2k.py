"""JPEG 2000 codestreams (ITU-T T.800 Annex A; T.814 for the HTJ2K markers) with every byte
outside the packet data accounted for.

A codestream is SOC, a main header (SIZ first), tile-parts (SOT, a tile-part header, SOD,
packet data) and EOC. Every marker segment is checked against its syntax: its length must be
exactly what its fields say (a COD, QCD or SIZ one byte longer carries a free byte), and only
the markers of Part 1 and Part 15 are accepted. Comments (COM) are removed unless they are a
known encoder comment; optional index and rendering markers that cannot be checked against
the stream (TLM, PLM, PLT that disagree with the tile-parts, CRG) are removed: decoders do not
need them. Psot = 0 means the tile-part runs to EOC (A.4.2), which is found, not assumed to
be the last two bytes; anything after EOC but zero padding goes. Any other byte that does not
fit the syntax makes the stream malformed, and the caller refuses the slide.

`screen_j2k` flags, for all tiles at once, every stream that is not of the plain shape whose
every header byte it checked (SIZ, COD, QCD and known comments in the main header, one
tile-part with an empty header and Psot up to EOC); the flagged ones get the full parse.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .. import catalog
from .segments import MalformedStream, walk_segments

SOC, SOT, SOD, EOC = 0x4F, 0x90, 0x93, 0xD9
SIZ, COD, COC, QCD, QCC, RGN, POC = 0x51, 0x52, 0x53, 0x5C, 0x5D, 0x5E, 0x5F
TLM, PLM, PLT, PPM, PPT, CRG, COM, CAP, CPF = 0x55, 0x57, 0x58, 0x60, 0x61, 0x63, 0x64, 0x50, 0x59
NAMES = {SIZ: "SIZ", COD: "COD", COC: "COC", QCD: "QCD", QCC: "QCC", RGN: "RGN", POC: "POC",
         TLM: "TLM", PLM: "PLM", PLT: "PLT", PPM: "PPM", PPT: "PPT", CRG: "CRG", COM: "COM",
         CAP: "CAP", CPF: "CPF"}
MAIN_MARKERS = {COD, COC, QCD, QCC, RGN, POC, TLM, PLM, PPM, CRG, COM, CAP, CPF}
TILE_MARKERS = {COD, COC, QCD, QCC, RGN, POC, PLT, PPT, COM}
MAX_LEVELS = 32

# Encoder comments that are known to hold nothing but the encoder's name or its rate-control
# statistics (Kakadu writes one per codestream in Aperio J2K slides). Matched whole, so nothing
# else can ride along; every other comment is removed.
# The version is the catalog's (formats/types.toml: a long digit run or a date is none);
# Kakadu prints each quality layer's statistics as "%6.1f, %8.1e" (a log2 slope and a byte
# count), for at most a few dozen layers.
VERSION = catalog.grammar_of("version").pattern.encode("ascii")
SAFE_COMMENTS = (
    re.compile(rb"Kdu-Layer-Info: log_2\{Delta-D\(MSE\)/\[2\^16\*Delta-L\(bytes\)\]\}, L\(bytes\)"
               rb"(\n *-?[0-9]{1,3}\.[0-9], *[0-9]\.[0-9]e[+-][0-9]{2,3}){1,64}\n?\x00?"),
    re.compile(rb"Kakadu-v" + VERSION + rb"\x00?"),
    re.compile(rb"Created by OpenJPEG version " + VERSION + rb"\x00?"),
    re.compile(rb"\x00*"),  # an empty comment carries nothing
)


def safe_comment(payload: bytes) -> bool:
    return any(p.fullmatch(payload) for p in SAFE_COMMENTS)


@dataclass
class _Coding:
    """What later segments are checked against: the component count from SIZ, and the number
    of decomposition levels by component (COC) and by default (COD), per scope."""
    components: int = 0
    tiles: int = 0
    levels: int | None = None
    component_levels: dict[int, int] = field(default_factory=dict)
    pending: list[tuple[int, bytes]] = field(default_factory=list)   # QCD/QCC, checked at the end

    def index_size(self) -> int:
        return 1 if self.components < 257 else 2

    def levels_of(self, component: int | None, main: "_Coding | None") -> int | None:
        for scope in (self, main):
            if scope is None:
                continue
            if component is not None and component in scope.component_levels:
                return scope.component_levels[component]
            if scope.levels is not None:
                return scope.levels
        return None


def _check_siz(body: bytes, coding: _Coding) -> None:
    if len(body) < 38:
        raise MalformedStream("JPEG 2000 SIZ segment too short")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack_from(">8I", body, 2)
    components = struct.unpack_from(">H", body, 34)[0]
    if not 1 <= components <= 16384 or len(body) != 36 + 3 * components:
        raise MalformedStream("JPEG 2000 SIZ length does not match its component count")
    if not (xt and yt and xsiz > xo and ysiz > yo and xto <= xo and yto <= yo):
        raise MalformedStream("JPEG 2000 SIZ geometry is invalid")
    coding.components = components
    coding.tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)


def _coding_style(body: bytes, at: int, style: int, what: str) -> int:
    """The levels of a COD/COC whose SPcod starts at `at`; its length must be exact."""
    if len(body) < at + 5:
        raise MalformedStream(f"JPEG 2000 {what} segment too short")
    levels = body[at]
    if levels > MAX_LEVELS or body[at + 4] > 1:
        raise MalformedStream(f"JPEG 2000 {what} values out of range")
    if len(body) != at + 5 + (levels + 1 if style & 1 else 0):
        raise MalformedStream(f"JPEG 2000 {what} length does not match its fields")
    return levels


def _check_quantization(body: bytes, at: int, levels: int | None, what: str) -> None:
    """QCD/QCC: the step sizes must be exactly one per subband (A.6.4, A.6.5)."""
    if len(body) <= at:
        raise MalformedStream(f"JPEG 2000 {what} segment too short")
    style = body[at] & 0x1F
    n = len(body) - at - 1
    if style == 1:
        ok = n == 2
    elif style in (0, 2):
        per_band = 1 if style == 0 else 2
        bands, extra = divmod(n, per_band)
        ok = not extra and bands % 3 == 1 and (bands - 1) // 3 <= MAX_LEVELS
        ok = ok and (levels is None or bands == 3 * levels + 1)
    else:
        ok = False
    if not ok:
        raise MalformedStream(f"JPEG 2000 {what} length does not match its subbands")


def _component(body: bytes, coding: _Coding, what: str) -> tuple[int, int]:
    size = coding.index_size()
    if len(body) < size:
        raise MalformedStream(f"JPEG 2000 {what} segment too short")
    c = body[0] if size == 1 else struct.unpack_from(">H", body)[0]
    if c >= coding.components:
        raise MalformedStream(f"JPEG 2000 {what} names a component that does not exist")
    return c, size


def _plt_lengths(body: bytes) -> list[int] | None:
    """Packet lengths of a PLT segment (A.7.3: 7 bits a byte, high bit = more follows)."""
    out, value = [], 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            out.append(value)
            value = 0
    return out if body[-1:] and not body[-1] & 0x80 else None


def _segment_action(marker: int, body: bytes, coding: _Coding, main: _Coding | None) -> str:
    """keep, remove (with the reason in the name), or raises MalformedStream."""
    what = NAMES.get(marker, f"FF{marker:02X}")
    if marker == COD:
        if len(body) < 1 or body[0] & 0xF8 or len(body) >= 2 and body[1] > 4:
            raise MalformedStream("JPEG 2000 COD values out of range")
        coding.levels = _coding_style(body, 5, body[0], what)
    elif marker == COC:
        c, size = _component(body, coding if main is None else main, what)
        if len(body) <= size or body[size] & 0xFE:
            raise MalformedStream("JPEG 2000 COC values out of range")
        coding.component_levels[c] = _coding_style(body, size + 1, body[size], what)
    elif marker in (QCD, QCC):
        coding.pending.append((marker, body))
    elif marker == RGN:
        _, size = _component(body, coding if main is None else main, what)
        if len(body) != size + 2 or body[size] != 0:
            raise MalformedStream("JPEG 2000 RGN length or style is invalid")
    elif marker == POC:
        size = (coding if main is None else main).index_size()
        if not body or len(body) % (5 + 2 * size):
            raise MalformedStream("JPEG 2000 POC length does not match its entries")
    elif marker in (PPM, PPT):
        if not body:
            raise MalformedStream(f"JPEG 2000 {what} segment is empty")
    elif marker == CAP:
        if len(body) < 4:
            raise MalformedStream("JPEG 2000 CAP segment too short")
        pcap = struct.unpack_from(">I", body)[0]
        if len(body) != 4 + 2 * bin(pcap).count("1"):
            raise MalformedStream("JPEG 2000 CAP length does not match Pcap")
    elif marker == CPF:
        if not body or len(body) % 2:
            raise MalformedStream("JPEG 2000 CPF length is invalid")
    elif marker == COM:
        return "keep" if safe_comment(body[2:]) else "remove"
    elif marker in (TLM, PLM, PLT, CRG):
        return "index"     # decided once the tile-parts are known (TLM, PLT) or removed
    else:
        raise MalformedStream(f"JPEG 2000 marker FF{marker:02X} is not one this tool can screen")
    return "keep"


def _check_pending(coding: _Coding, main: _Coding | None) -> None:
    for marker, body in coding.pending:
        if marker == QCD:
            _check_quantization(body, 0, coding.levels_of(None, main), "QCD")
        else:
            c, size = _component(body, coding if main is None else main, "QCC")
            _check_quantization(body, size, coding.levels_of(c, main), "QCC")


@dataclass
class _Segment:
    marker: int
    raw: bytes          # the whole segment, marker included
    action: str


def _header(data: bytes, pos: int, stop: int, allowed: set[int], coding: _Coding,
            main: _Coding | None) -> tuple[int, list[_Segment]]:
    n = len(data)
    found: list[_Segment] = []
    while True:
        if pos + 2 > n or data[pos] != 0xFF:
            raise MalformedStream(f"JPEG 2000 marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == stop:
            return pos, found
        if marker not in allowed:
            raise MalformedStream(f"JPEG 2000 marker FF{marker:02X} where it is not allowed")
        if pos + 4 > n:
            raise MalformedStream("JPEG 2000 segment truncated")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2 or pos + 2 + length > n:
            raise MalformedStream("JPEG 2000 segment length out of range")
        raw = data[pos:pos + 2 + length]
        found.append(_Segment(marker, raw, _segment_action(marker, raw[4:], coding, main)))
        pos += 2 + length


@dataclass
class _TilePart:
    tile: int
    part: int
    parts: int
    psot: int
    headers: list[_Segment]
    body: bytes


def _tile_parts(data: bytes, pos: int, main: _Coding) -> tuple[list[_TilePart], int]:
    n = len(data)
    parts: list[_TilePart] = []
    while pos + 2 <= n and data[pos:pos + 2] == b"\xff\x90":
        if pos + 12 > n:
            raise MalformedStream("JPEG 2000 SOT truncated")
        lsot, tile, psot, part, count = struct.unpack_from(">HHIBB", data, pos + 2)
        if lsot != 10 or tile >= main.tiles or psot and psot < 14 or count and part >= count:
            raise MalformedStream("JPEG 2000 SOT values out of range")
        end = pos + psot
        if end > n:
            raise MalformedStream("JPEG 2000 tile-part runs past the stream")
        coding = _Coding()
        sod, headers = _header(data, pos + 12, SOD, TILE_MARKERS, coding, main)
        _check_pending(coding, main)
        if not psot:    # to EOC (A.4.2); no EOC can occur inside packet data (A.1.1)
            end = data.find(b"\xff\xd9", sod + 2)
            if end < 0:
                raise MalformedStream("JPEG 2000 tile-part with Psot = 0 and no EOC")
        parts.append(_TilePart(tile, part, count, psot, headers, data[sod:end]))
        pos = end
        if not psot:
            break
    return parts, pos


def _part_length(part: _TilePart) -> int:
    return 12 + sum(len(s.raw) for s in part.headers if s.action == "keep") + len(part.body)


def _settle_index_markers(main_segments: list[_Segment], parts: list[_TilePart]) -> None:
    """TLM and PLT are kept only when they describe the tile-parts as written; PLM and CRG go."""
    for part in parts:
        plts = [s for s in part.headers if s.marker == PLT]
        if not plts:
            continue
        lengths = [_plt_lengths(s.raw[4:]) for s in plts]
        packed = any(s.marker == PPT for s in part.headers) or any(
            s.marker == PPM for s in main_segments)
        ok = not packed and all(v is not None for v in lengths) and sum(
            sum(v) for v in lengths) == len(part.body) - 2
        for s in plts:
            s.action = "keep" if ok else "remove"
    written = [(p.tile, _part_length(p) if p.psot else 0) for p in parts]
    for s in main_segments:
        if s.action != "index":
            continue
        s.action = "remove"
        if s.marker == TLM and _tlm_entries(s.raw[4:]) == written:
            s.action = "keep"


def _tlm_entries(body: bytes) -> list[tuple[int | None, int]] | None:
    if len(body) < 2:
        return None
    stlm = body[1]
    st, sp = (stlm >> 4) & 3, (stlm >> 6) & 1
    if st == 3 or stlm & 0x8F:
        return None
    size = st + (4 if sp else 2)
    rest = body[2:]
    if len(rest) % size:
        return None
    out: list[tuple[int | None, int]] = []
    for i in range(0, len(rest), size):
        tile = int.from_bytes(rest[i:i + st], "big") if st else len(out)
        out.append((tile, int.from_bytes(rest[i + st:i + size], "big")))
    return out


def clean_j2k(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The codestream with its comments and unverifiable index markers removed and nothing
    after EOC; raises MalformedStream for any byte outside the syntax."""
    if data[:2] != b"\xff\x4f":
        raise MalformedStream("JPEG 2000 codestream does not start with SOC")
    if data[2:4] != b"\xff\x51":
        raise MalformedStream("JPEG 2000 codestream without SIZ after SOC")
    length = struct.unpack_from(">H", data, 4)[0] if len(data) >= 6 else 0
    if length < 2 or 4 + length > len(data):
        raise MalformedStream("JPEG 2000 SIZ segment truncated")
    main = _Coding()
    _check_siz(data[6:4 + length], main)
    pos, main_segments = _header(data, 4 + length, SOT, MAIN_MARKERS, main, None)
    _check_pending(main, None)
    parts, pos = _tile_parts(data, pos, main)
    _settle_index_markers(main_segments, parts)
    removed: list[tuple[str, bytes]] = []

    def kept(segments: list[_Segment]) -> bytes:
        out = bytearray()
        for s in segments:
            if s.action == "keep":
                out += s.raw
            else:
                removed.append((NAMES[s.marker], s.raw[6:] if s.marker == COM else b""))
        return bytes(out)

    out = bytearray(data[:4 + length]) + kept(main_segments)
    for part in parts:
        headers = kept(part.headers)
        psot = 12 + len(headers) + len(part.body) if part.psot else 0
        out += struct.pack(">HHHIBB", 0xFF90, 10, part.tile, psot, part.part, part.parts)
        out += headers + part.body
    n = len(data)
    if pos < n:
        tail = data[pos:]
        if tail[:2] == b"\xff\xd9":
            out += tail[:2]
            if any(tail[2:]):
                removed.append(("trailing data", tail[2:]))
            else:
                out += tail[2:]   # zero padding (DICOM items) carries nothing
        elif any(tail):
            raise MalformedStream("unexpected bytes after the last JPEG 2000 tile-part")
        else:
            out += tail
    return bytes(out), removed


# ---- the vectorised screen ---------------------------------------------------------------------

def _u16(buf: np.ndarray, p: np.ndarray) -> np.ndarray:
    last = len(buf) - 1
    return (buf[np.minimum(p, last)].astype(np.int64) << 8) | buf[np.minimum(p + 1, last)]


def _u32(buf: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (_u16(buf, p) << 16) | _u16(buf, p + 2)


def screen_j2k(buf: np.ndarray, offs: np.ndarray, cnts: np.ndarray) -> np.ndarray:
    """True for every codestream that is not of the plain shape (see the module notes)."""
    flags = np.ones(len(offs), dtype=bool)
    idx = np.nonzero(cnts >= 16)[0]
    if idx.size == 0:
        return flags
    o, e = offs[idx], offs[idx] + cnts[idx]
    last = len(buf) - 1
    soc = (buf[o] == 0xFF) & (buf[o + 1] == SOC) & (buf[o + 2] == 0xFF) & (buf[o + 3] == SIZ)
    levels = np.full(len(idx), -1, dtype=np.int64)
    comments: list[tuple[np.ndarray, np.ndarray]] = []

    def odd(m: np.ndarray, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        length = _u16(buf, p + 2)
        bad = ~np.isin(m, (COD, QCD, COM))
        cod = m == COD
        scod, nl = buf[np.minimum(p + 4, last)], buf[np.minimum(p + 9, last)].astype(np.int64)
        bad |= cod & (((scod & 0xF8) != 0) | (nl > MAX_LEVELS) | (buf[np.minimum(p + 5, last)] > 4)
                      | (buf[np.minimum(p + 13, last)] > 1)
                      | (length != 12 + np.where(scod & 1, nl + 1, 0)))
        levels[s[cod]] = nl[cod]
        qcd = m == QCD
        style = buf[np.minimum(p + 4, last)] & 0x1F
        known = levels[s]
        bands = 3 * known + 1
        need = np.where(style == 0, bands, np.where(style == 2, 2 * bands, 2))
        bad |= qcd & ((known < 0) | (style > 2) | (length != 3 + need))
        return bad

    siz_len = _u16(buf, o + 4)     # SIZ follows SOC; its length must match Csiz
    header_flag, sot, stop = walk_segments(buf, o + 4 + siz_len, e, (SOT,), odd, COM, comments)
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = (_u32(buf, o + 8 + 4 * i) for i in range(8))
    components = _u16(buf, o + 40)
    geometry = ((xt > 0) & (yt > 0) & (xsiz > xo) & (ysiz > yo) & (xto <= xo) & (yto <= yo)
                & (components >= 1) & (components <= 16384))
    tiles = (-(-(xsiz - xto) // np.maximum(xt, 1))) * (-(-(ysiz - yto) // np.maximum(yt, 1)))
    header_flag |= (siz_len != 38 + 3 * components) | ~geometry
    sot = np.minimum(sot, e - 14)
    psot = _u32(buf, sot + 4 + 2)
    padded = (buf[e - 1] == 0) & (buf[e - 3] == 0xFF) & (buf[e - 2] == EOC)
    data_end = np.where(padded, e - 3, e - 2)
    plain = ((stop == SOT) & (_u16(buf, sot + 2) == 10) & (psot > 0) & (sot + psot == data_end)
             & (buf[np.minimum(data_end, last)] == 0xFF)
             & (buf[np.minimum(data_end + 1, last)] == EOC)
             & (_u16(buf, sot + 4) < tiles) & (buf[sot + 10] == 0) & (buf[sot + 11] <= 1)
             & (buf[sot + 12] == 0xFF) & (buf[sot + 13] == SOD))
    flags[idx] = ~soc | header_flag | ~plain
    safe: dict[bytes, bool] = {}
    for streams, positions in comments:
        for stream, pos in zip(streams.tolist(), positions.tolist()):
            length = (int(buf[pos + 2]) << 8) | int(buf[pos + 3])
            payload = buf[pos + 6:pos + 2 + length].tobytes()
            ok = safe.get(payload)
            if ok is None:
                ok = safe[payload] = safe_comment(payload)
            if not ok:
                flags[idx[stream]] = True
    return flags
