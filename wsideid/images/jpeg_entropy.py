"""Baseline JPEG (ITU T.81, sequential Huffman, 8-bit) at the level of quantised coefficients.

`parse_jpeg` reads the marker segments (tables may come from a separate abbreviated stream, as
TIFF's JPEGTables), `block_layout` says where every coded block sits, `decode_interval` turns
one restart interval of entropy-coded data into coefficients, `encode_interval` does the
reverse with given Huffman tables. Coefficients stay in zigzag order (T.81 figure A.6) as
(n_blocks, 64) int32 arrays; DC values are absolute (the prediction of F.1.2.1 is undone).

Decoding is sequential by nature and written as a tight pure-Python loop over 16-bit lookup
tables; encoding is vectorised with numpy.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


class JpegError(ValueError):
    """A JPEG stream this codec cannot read or write (corrupt or not baseline)."""


@dataclass(frozen=True)
class Component:
    ident: int
    h: int
    v: int
    tq: int


@dataclass(frozen=True)
class HuffmanTable:
    counts: bytes  # number of codes of each length 1..16 (T.81 B.2.4.2, BITS)
    values: bytes  # HUFFVAL

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(code, length) for every symbol 0..255; length 0 where the table lacks it."""
        return _codes(self.counts, self.values)

    def lut(self) -> list[int]:
        return _lut(self.counts, self.values)


@dataclass
class JpegInfo:
    width: int
    height: int
    components: list[Component]
    qtables: dict[int, np.ndarray] = field(default_factory=dict)   # id -> 64 values, zigzag
    dc_tables: dict[int, HuffmanTable] = field(default_factory=dict)
    ac_tables: dict[int, HuffmanTable] = field(default_factory=dict)
    restart_interval: int = 0
    scan: list[tuple[int, int, int]] = field(default_factory=list)  # (component index, Td, Ta)
    adobe_transform: int | None = None
    jfif: bool = False
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (marker, start, end)
    data_start: int = 0      # first byte of entropy-coded data
    data_end: int = 0        # the marker that ends the scan (normally EOI)

    @property
    def hmax(self) -> int:
        return max(c.h for c in self.components)

    @property
    def vmax(self) -> int:
        return max(c.v for c in self.components)


# ---- markers -------------------------------------------------------------------------------

def parse_jpeg(stream: bytes, tables: bytes | None = None) -> JpegInfo:
    """Frame, tables and the one scan of a baseline JPEG; `tables` (an abbreviated table
    specification, T.81 B.5) is read first and the stream's own tables override it."""
    info = JpegInfo(0, 0, [])
    if tables:
        _walk(tables, info, tables_only=True)
    _walk(stream, info, tables_only=False)
    if not info.components:
        raise JpegError("JPEG without a frame header")
    if not info.scan:
        raise JpegError("JPEG without a scan")
    for ci, td, ta in info.scan:
        if td not in info.dc_tables or ta not in info.ac_tables:
            raise JpegError("JPEG scan refers to a missing Huffman table")
    for c in info.components:
        if c.tq not in info.qtables:
            raise JpegError("JPEG frame refers to a missing quantisation table")
    return info


def _walk(stream: bytes, info: JpegInfo, tables_only: bool) -> None:
    if stream[:2] != b"\xff\xd8":
        raise JpegError("not a JPEG stream (no SOI)")
    pos = 2
    while True:
        while pos < len(stream) and stream[pos] == 0xFF and pos + 1 < len(stream) \
                and stream[pos + 1] == 0xFF:
            pos += 1                                   # fill bytes before a marker (B.1.1.2)
        if pos + 4 > len(stream) or stream[pos] != 0xFF:
            if tables_only:
                return
            raise JpegError("JPEG marker segments are truncated")
        marker = stream[pos + 1]
        if marker == 0xD9:
            if tables_only:
                return
            raise JpegError("JPEG ends before its scan")
        length = struct.unpack(">H", stream[pos + 2:pos + 4])[0]
        payload = stream[pos + 4:pos + 2 + length]
        if len(payload) != length - 2:
            raise JpegError("JPEG marker segment is truncated")
        if not tables_only:
            info.segments.append((marker, pos, pos + 2 + length))
        _segment(marker, payload, info, tables_only)
        pos += 2 + length
        if marker == 0xDA:
            info.data_start = pos
            info.data_end = _scan_end(stream, pos)
            if stream[info.data_end:info.data_end + 2] == b"\xff\xda":
                raise JpegError("JPEG with more than one scan (progressive or "
                                "non-interleaved) is not supported")
            return


def _segment(marker: int, payload: bytes, info: JpegInfo, tables_only: bool) -> None:
    if marker == 0xDB:
        _read_dqt(payload, info)
    elif marker == 0xC4:
        _read_dht(payload, info)
    elif marker == 0xDD:
        info.restart_interval = struct.unpack(">H", payload[:2])[0]
    elif tables_only:
        return
    elif marker in (0xC0, 0xC1):
        precision, height, width, n = struct.unpack(">BHHB", payload[:6])
        if precision != 8:
            raise JpegError("only 8-bit JPEG is supported")
        if height == 0:
            raise JpegError("JPEG with the height given after the scan (DNL) is not supported")
        info.width, info.height = width, height
        info.components = [Component(payload[6 + 3 * i], payload[7 + 3 * i] >> 4,
                                     payload[7 + 3 * i] & 15, payload[8 + 3 * i])
                           for i in range(n)]
    elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
        raise JpegError("only baseline and extended Huffman JPEG is supported")
    elif marker == 0xDA:
        ids = [c.ident for c in info.components]
        n = payload[0]
        scan = []
        for i in range(n):
            cid, tables = payload[1 + 2 * i], payload[2 + 2 * i]
            if cid not in ids:
                raise JpegError("JPEG scan names an unknown component")
            scan.append((ids.index(cid), tables >> 4, tables & 15))
        ss, se, a = payload[1 + 2 * n:4 + 2 * n]
        if (ss, se, a) != (0, 63, 0):
            raise JpegError("JPEG scan is not sequential")
        if n != len(ids):
            raise JpegError("JPEG with more than one scan is not supported")
        info.scan = scan
    elif marker == 0xE0 and payload.startswith(b"JFIF\x00"):
        info.jfif = True
    elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
        info.adobe_transform = payload[11]


def _read_dqt(payload: bytes, info: JpegInfo) -> None:
    pos = 0
    while pos < len(payload):
        pq, tq = payload[pos] >> 4, payload[pos] & 15
        size = 128 if pq else 64
        values = np.frombuffer(payload[pos + 1:pos + 1 + size], ">u2" if pq else "u1")
        if len(values) != 64:
            raise JpegError("JPEG quantisation table is truncated")
        info.qtables[tq] = values.astype(np.int32)
        pos += 1 + size


def _read_dht(payload: bytes, info: JpegInfo) -> None:
    pos = 0
    while pos < len(payload):
        tc, th = payload[pos] >> 4, payload[pos] & 15
        counts = bytes(payload[pos + 1:pos + 17])
        total = sum(counts)
        values = bytes(payload[pos + 17:pos + 17 + total])
        if len(counts) != 16 or len(values) != total:
            raise JpegError("JPEG Huffman table is truncated")
        (info.ac_tables if tc else info.dc_tables)[th] = HuffmanTable(counts, values)
        pos += 17 + total


def _scan_end(stream: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data that is not RSTn (B.1.1.5)."""
    while True:
        pos = stream.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(stream):
            raise JpegError("JPEG scan has no end marker")
        nxt = stream[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            pos += 2
        elif nxt == 0xFF:
            pos += 1
        else:
            return pos


def interval_ends(stream: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each restart interval's bytes between start and end, markers excluded."""
    spans, pos, begin = [], start, start
    while True:
        pos = stream.find(b"\xff", pos, end)
        if pos < 0:
            break
        nxt = stream[pos + 1]
        if 0xD0 <= nxt <= 0xD7:
            spans.append((begin, pos))
            begin = pos + 2
        pos += 2 if nxt != 0xFF else 1
    spans.append((begin, end))
    return spans


# ---- block layout --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where the coded blocks lie: each MCU holds the same pattern of (component, row, column)
    offsets (T.81 A.2.3); a one-component scan is not interleaved and its MCU is one block of
    that component's own sample grid (A.2.2)."""
    comp: np.ndarray          # per block of one MCU: component index
    dy: np.ndarray            # block row offset inside the MCU
    dx: np.ndarray
    h: np.ndarray             # blocks per MCU of that component, across and down
    v: np.ndarray
    mcus_x: int
    mcus_y: int
    scale: list[tuple[int, int]]   # per component: pixels per block (x, y)

    @property
    def blocks_per_mcu(self) -> int:
        return len(self.comp)

    @property
    def n_blocks(self) -> int:
        return self.mcus_x * self.mcus_y * len(self.comp)

    def blocks(self, first_mcu: int = 0, n_mcus: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(component, block row, block column) of every block of these MCUs, in scan order."""
        if n_mcus is None:
            n_mcus = self.mcus_x * self.mcus_y - first_mcu
        my, mx = np.divmod(np.arange(first_mcu, first_mcu + n_mcus), self.mcus_x)
        comp = np.tile(self.comp, n_mcus)
        by = (my[:, None] * self.v[None, :] + self.dy[None, :]).ravel()
        bx = (mx[:, None] * self.h[None, :] + self.dx[None, :]).ravel()
        return comp, by, bx


def block_layout(info: JpegInfo) -> Layout:
    hmax, vmax = info.hmax, info.vmax
    scale = []
    for c in info.components:
        if hmax % c.h or vmax % c.v:
            raise JpegError("JPEG sampling factors that do not divide are not supported")
        scale.append((8 * hmax // c.h, 8 * vmax // c.v))
    one = np.ones(1, np.int64)
    if len(info.scan) == 1:
        sx, sy = scale[0]
        return Layout(0 * one, 0 * one, 0 * one, one, one, -(-info.width // sx),
                      -(-info.height // sy), scale)
    pattern = [(ci, j, i, info.components[ci].h, info.components[ci].v)
               for ci, _, _ in info.scan
               for j in range(info.components[ci].v) for i in range(info.components[ci].h)]
    comp, dy, dx, h, v = (np.array(col, np.int64) for col in zip(*pattern))
    return Layout(comp, dy, dx, h, v, -(-info.width // (8 * hmax)),
                  -(-info.height // (8 * vmax)), scale)


# ---- Huffman tables ------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _codes(counts: bytes, values: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Canonical codes (T.81 C.2, figures C.1-C.3)."""
    code_of = np.zeros(256, np.int64)
    len_of = np.zeros(256, np.int64)
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            code_of[values[k]] = code
            len_of[values[k]] = length
            code += 1
            k += 1
        code <<= 1
    return code_of, len_of


@lru_cache(maxsize=64)
def _lut(counts: bytes, values: bytes) -> list[int]:
    """16-bit peek -> code length | symbol << 8, or -1 where no code starts."""
    code_of, len_of = _codes(counts, values)
    lut = np.full(1 << 16, -1, np.int64)
    for sym in values:
        length = int(len_of[sym])
        first = int(code_of[sym]) << (16 - length)
        lut[first:first + (1 << (16 - length))] = length | (sym << 8)
    return lut.tolist()


# ---- decoding ------------------------------------------------------------------------------

def decode_interval(data: bytes, info: JpegInfo, comps: np.ndarray) -> np.ndarray:
    """Coefficients (n_blocks, 64) of one restart interval's entropy-coded bytes, whose blocks
    belong to these components."""
    raw = data.replace(b"\xff\x00", b"\xff")           # undo byte stuffing (F.1.2.3)
    buf = np.frombuffer(raw + b"\xff" * 8, np.uint8).astype(np.int64)
    win = ((buf[:-3] << 24) | (buf[1:-2] << 16) | (buf[2:-1] << 8) | buf[3:]).tolist()
    n_blocks = len(comps)
    comps = comps.tolist()
    tables = {ci: (info.dc_tables[td].lut(), info.ac_tables[ta].lut())
              for ci, td, ta in info.scan}
    out = [0] * (64 * n_blocks)
    pred = [0] * len(info.components)
    pos = 0
    for b in range(n_blocks):
        ci = comps[b]
        dclut, aclut = tables[ci]
        e = dclut[(win[pos >> 3] >> (16 - (pos & 7))) & 0xFFFF]
        if e < 0:
            raise JpegError("JPEG entropy data is corrupt (bad DC code)")
        pos += e & 31
        s = e >> 8
        diff = 0
        if s:
            if s > 11:
                raise JpegError("JPEG entropy data is corrupt (DC size)")
            diff = (win[pos >> 3] >> (32 - (pos & 7) - s)) & ((1 << s) - 1)
            if diff < (1 << (s - 1)):                  # EXTEND (F.2.2.1)
                diff -= (1 << s) - 1
            pos += s
        pred[ci] += diff
        base = 64 * b
        out[base] = pred[ci]
        k = 1
        while k < 64:
            e = aclut[(win[pos >> 3] >> (16 - (pos & 7))) & 0xFFFF]
            if e < 0:
                raise JpegError("JPEG entropy data is corrupt (bad AC code)")
            pos += e & 31
            rs = e >> 8
            s = rs & 15
            if s:
                k += rs >> 4
                if k > 63:
                    raise JpegError("JPEG entropy data is corrupt (run past the block)")
                v = (win[pos >> 3] >> (32 - (pos & 7) - s)) & ((1 << s) - 1)
                if v < (1 << (s - 1)):
                    v -= (1 << s) - 1
                out[base + k] = v
                pos += s
                k += 1
            elif rs == 0xF0:
                k += 16
            else:
                break                                  # EOB
        if k > 64:
            raise JpegError("JPEG entropy data is corrupt (run past the block)")
    if pos > 8 * len(raw):
        raise JpegError("JPEG entropy data ends early")
    return np.array(out, np.int32).reshape(n_blocks, 64)


# ---- encoding ------------------------------------------------------------------------------

def _bit_size(values: np.ndarray) -> np.ndarray:
    """SSSS: bits needed for |v| (T.81 tables F.1, F.2)."""
    mag = np.abs(values).astype(np.int64)
    size = np.zeros(mag.shape, np.int64)
    while (mag >> size).any():
        size += (mag >> size) > 0
    return size


def _append_bits(values: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Additional bits: v itself if positive, v - 1 in `size` bits if negative (F.1.2.1)."""
    return np.where(values >= 0, values, values + (1 << size) - 1).astype(np.int64)


def encode_interval(coefs: np.ndarray, comps: np.ndarray, info: JpegInfo,
                    dc: dict[int, HuffmanTable], ac: dict[int, HuffmanTable]) -> bytes:
    """Entropy-coded bytes (stuffed, padded with 1-bits) of one restart interval.

    `dc`/`ac` map a component index to its table. Raises KeyError naming no data when a
    table lacks a symbol the coefficients need.
    """
    n = len(coefs)
    coefs = coefs.astype(np.int64)
    keys, vals, lens = [], [], []
    # DC: difference to the previous block of the same component (F.1.2.1)
    diff = np.empty(n, np.int64)
    for ci in np.unique(comps):
        idx = np.flatnonzero(comps == ci)
        diff[idx] = np.diff(coefs[idx, 0], prepend=0)
    size = _bit_size(diff)
    code, length = _table_for(comps, dc, size)
    keys.append(np.arange(n) * 256)
    vals.append((code << size) | _append_bits(diff, size))
    lens.append(length + size)
    # AC: runs of zeros, ZRL for each full 16, then RS symbol; EOB if the block ends in zeros
    blk, kk = np.nonzero(coefs[:, 1:])
    k = kk + 1
    prev = np.where(np.r_[True, blk[1:] != blk[:-1]], 0, np.r_[0, k[:-1]])
    run = k - prev - 1
    v = coefs[blk, k]
    size = _bit_size(v)
    code, length = _table_for(comps[blk], ac, ((run & 15) << 4) | size)
    keys.append(blk * 256 + 2 * k)
    vals.append((code << size) | _append_bits(v, size))
    lens.append(length + size)
    zrl_n = run >> 4
    if zrl_n.any():
        zb = np.repeat(blk, zrl_n)
        code, length = _table_for(comps[zb], ac, np.full(len(zb), 0xF0))
        keys.append(np.repeat(blk * 256 + 2 * k - 1, zrl_n))
        vals.append(code)
        lens.append(length)
    last = np.zeros(n, np.int64)
    np.maximum.at(last, blk, k)
    eob = np.flatnonzero(last < 63)
    code, length = _table_for(comps[eob], ac, np.zeros(len(eob), np.int64))
    keys.append(eob * 256 + 255)
    vals.append(code)
    lens.append(length)
    order = np.argsort(np.concatenate(keys), kind="stable")
    return pack_bits(np.concatenate(vals)[order], np.concatenate(lens)[order])


def _table_for(comps: np.ndarray, tables: dict[int, HuffmanTable], symbols: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    code = np.zeros(len(symbols), np.int64)
    length = np.zeros(len(symbols), np.int64)
    for ci, table in tables.items():
        sel = comps == ci
        code_of, len_of = table.codes()
        code[sel], length[sel] = code_of[symbols[sel]], len_of[symbols[sel]]
    if len(symbols) and (length == 0).any():
        raise KeyError("Huffman table lacks a symbol")
    return code, length


def pack_bits(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate codes of up to 32 bits MSB first, pad with 1-bits, stuff 0xFF bytes.

    Each code is placed at its bit offset inside a 40-bit window and split into five bytes;
    codes never share a bit, so summing the bytes per position (bincount) ORs them.
    """
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    window = values.astype(np.int64) << (40 - (offsets & 7) - lengths)
    parts = (window[:, None] >> np.array([32, 24, 16, 8, 0])) & 0xFF
    index = (offsets >> 3)[:, None] + np.arange(5)
    n_bytes = -(-total // 8)
    packed = np.bincount(index.ravel(), weights=parts.ravel(), minlength=n_bytes + 5)
    packed = packed[:n_bytes].astype(np.uint8)
    if total % 8:
        packed[-1] |= (1 << (8 - total % 8)) - 1          # pad with 1-bits (F.1.2.3)
    ff = np.flatnonzero(packed == 0xFF)
    return np.insert(packed, ff + 1, 0).tobytes()
