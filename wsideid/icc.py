"""ICC colour profiles (ICC.1:2010, profile versions 2 and 4), rebuilt from what defines colour.

A profile is a 128-byte header, a tag table (count, then signature, offset, size per tag) and
tag data. Text can hide in the header (CMM, manufacturer, model and creator signatures, the
creation date, the profile ID, reserved bytes), in text tags (`desc`, `cprt`, `dmnd`, `dmdd`,
`vued`, colorant and named-colour tables, ...) and between or after tags. So a profile is
never kept as it is: it is parsed, every colour-defining tag is checked against its type's
layout, and a new profile is written from those tags alone, with `desc` and `cprt` holding
fixed neutral text and every other header field that says nothing about colour zeroed.
Lookup tables (A2Bn, B2An) are left out too: their grids and shaper tables are arbitrary
bytes, where text cannot be told from colour. A profile that does not parse, or keeps no
matrix and curves (or grey curve) a colour engine can use, is refused.

Cleaning is idempotent: a cleaned profile cleans to the same bytes (verification re-plans
the output and must find nothing left to do).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

HEADER = 128
MAX_PROFILE = 64 << 20
MAX_TAGS = 100
NEUTRAL_DESCRIPTION = "Colour profile"
NEUTRAL_COPYRIGHT = "No copyright information"

CLASSES = {b"scnr", b"mntr", b"prtr", b"link", b"spac", b"abst", b"nmcl"}
COLOUR_SPACES = {b"XYZ ", b"Lab ", b"Luv ", b"YCbr", b"Yxy ", b"RGB ", b"GRAY", b"HSV ",
                 b"HLS ", b"CMYK", b"CMY "} | {f"{n:X}CLR".encode() for n in range(2, 16)}
PCS = {b"XYZ ", b"Lab "}
# Tags that define colour (ICC.1:2010 9.2), with the tag types each may have.
CURVE_TYPES = {b"curv", b"para"}
COLOUR_TAGS: dict[bytes, set[bytes]] = {
    b"rXYZ": {b"XYZ "}, b"gXYZ": {b"XYZ "}, b"bXYZ": {b"XYZ "},
    b"wtpt": {b"XYZ "}, b"bkpt": {b"XYZ "},
    b"rTRC": CURVE_TYPES, b"gTRC": CURVE_TYPES, b"bTRC": CURVE_TYPES, b"kTRC": CURVE_TYPES,
    b"chad": {b"sf32"},
}
MATRIX_TRC = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")
LUT_TAGS = {f"{d}{n}".encode() for d in ("A2B", "B2A") for n in range(3)}
PARAMETRIC_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}   # ICC.1:2010 10.18, Table 65
ASCII_RUN = re.compile(rb"[\x20-\x7e]{5,}")
UTF16_RUN = re.compile(rb"(?:\x00[\x20-\x7e]){5,}")
# s15Fixed16 values of colorimetry are small; text read as numbers is not (0x20.. per byte)
MAX_FIXED = 16.0


class IccError(ValueError):
    """The profile is malformed or holds nothing a colour engine can use."""


@dataclass
class Cleaned:
    data: bytes                 # the rebuilt profile
    dropped: list[str]          # signatures of the tags left out, in hex (counted in reports)
    texts: list[str]            # text found in the profile's text tags (searched for in output)


def clean(profile: bytes) -> Cleaned:
    """The profile rebuilt from its colour-defining tags (IccError if it cannot be)."""
    if len(profile) < HEADER + 4 or len(profile) > MAX_PROFILE:
        raise IccError("not an ICC profile (size)")
    size, version, kind, space, pcs = struct.unpack(">I4x4s4s4s4s", profile[:24])
    if profile[36:40] != b"acsp":
        raise IccError("not an ICC profile (no 'acsp' signature)")
    if size != len(profile):
        raise IccError("declared size differs from the stored size")
    major = version[0]
    if major not in (2, 4) or version[2:] != b"\0\0":
        raise IccError("unsupported profile version")
    if kind not in CLASSES or space not in COLOUR_SPACES or pcs not in PCS | COLOUR_SPACES:
        raise IccError("unknown profile class or colour space")
    intent = struct.unpack(">I", profile[64:68])[0]
    if intent > 3:
        raise IccError("unknown rendering intent")
    illuminant = _fixed(profile[68:80])
    if any(not 0 <= v <= 2 for v in illuminant):
        raise IccError("illuminant out of range")
    kept: dict[bytes, bytes] = {}
    dropped: list[str] = []
    texts: list[str] = []
    for signature, data in _tags(profile):
        allowed = COLOUR_TAGS.get(signature)
        if signature in LUT_TAGS:
            # a lookup table's grid and its shaper tables may hold any bytes: no layout check
            # can tell a colour transform from text written into them
            dropped.append(signature.hex())
            continue
        if allowed is None:
            dropped.append(signature.hex())   # counted in reports, never shown as text
            texts += [t for t in _text_of(data) if t not in (NEUTRAL_DESCRIPTION, NEUTRAL_COPYRIGHT)]
            continue
        kind_of_data = data[:4]
        if kind_of_data not in allowed:
            # named by the ICC's own signature table, never by the slide's bytes
            raise IccError(f"tag {signature.decode('ascii')} has an unexpected type")
        _check_tag(kind_of_data, data)
        kept[signature] = data
    if not (all(s in kept for s in MATRIX_TRC) or b"kTRC" in kept):
        raise IccError("no colour-defining tags that can be checked (matrix and curves; lookup "
                       "tables can hold any bytes)")
    kept[b"desc"] = _description(major, NEUTRAL_DESCRIPTION)
    kept[b"cprt"] = _copyright(major, NEUTRAL_COPYRIGHT)
    header = bytearray(HEADER)
    header[8:24] = profile[8:24]                 # version, class, colour space, PCS
    header[36:40] = b"acsp"
    header[64:80] = profile[64:80]               # rendering intent, PCS illuminant
    return Cleaned(_assemble(bytes(header), kept), sorted(set(dropped)), sorted(set(texts)))


def _tags(profile: bytes) -> list[tuple[bytes, bytes]]:
    count = struct.unpack(">I", profile[HEADER:HEADER + 4])[0]
    if count > MAX_TAGS or HEADER + 4 + 12 * count > len(profile):
        raise IccError("tag table is larger than the profile")
    out = []
    seen = set()
    for i in range(count):
        signature, offset, size = struct.unpack(">4sII", profile[HEADER + 4 + 12 * i:HEADER + 16 + 12 * i])
        if signature in seen:
            raise IccError("a tag is listed twice")
        seen.add(signature)
        if offset < HEADER + 4 + 12 * count or size < 8 or offset + size > len(profile):
            raise IccError("a tag lies outside the profile")
        out.append((signature, profile[offset:offset + size]))
    return out


def _fixed(data: bytes) -> list[float]:
    return [v / 65536 for v in struct.unpack(f">{len(data) // 4}i", data[:len(data) // 4 * 4])]


def _check_tag(kind: bytes, data: bytes) -> None:
    """The tag's layout is exactly what its type says (ICC.1:2010 clause 10): no byte left
    over where text could stay, reserved bytes zero, numbers in range."""
    if data[4:8] != b"\0\0\0\0":
        raise IccError("reserved bytes of a tag are not zero")
    if kind == b"XYZ ":
        if (len(data) - 8) % 12 or len(data) == 8:
            raise IccError("XYZ tag of the wrong size")
        _check_fixed(data[8:])
    elif kind == b"sf32":
        if len(data) != 8 + 36:
            raise IccError("chromatic adaptation matrix of the wrong size")
        _check_fixed(data[8:])
    elif kind in CURVE_TYPES:
        if _curve_size(data, 0) != len(data):
            raise IccError("curve of the wrong size")


def _check_fixed(data: bytes) -> None:
    if any(abs(v) > MAX_FIXED for v in _fixed(data)):
        raise IccError("colorimetric value out of range")


def _curve_size(data: bytes, at: int) -> int:
    """Size of the curve element at `at` (without padding); the curve's values checked."""
    kind = data[at:at + 4]
    if kind == b"curv":
        if len(data) < at + 12:
            raise IccError("truncated curve")
        count = struct.unpack(">I", data[at + 8:at + 12])[0]
        end = at + 12 + 2 * count
        if end > len(data):
            raise IccError("truncated curve")
        values = struct.unpack(f">{count}H", data[at + 12:end])
        if count > 1 and any(b < a for a, b in zip(values, values[1:])):
            raise IccError("tone curve is not monotonic")
        return end - at
    if kind == b"para":
        if len(data) < at + 12:
            raise IccError("truncated parametric curve")
        function, reserved = struct.unpack(">HH", data[at + 8:at + 12])
        if function not in PARAMETRIC_COUNTS or reserved:
            raise IccError("unknown parametric curve")
        end = at + 12 + 4 * PARAMETRIC_COUNTS[function]
        if end > len(data):
            raise IccError("truncated parametric curve")
        _check_fixed(data[at + 12:end])
        return end - at
    raise IccError("unknown curve type")


def _text_of(data: bytes) -> list[str]:
    """The readable text of a dropped tag (searched for in the output, never reported)."""
    kind, body = data[:4], data[8:]
    try:
        if kind == b"desc":   # textDescriptionType: a counted ASCII string, then Unicode
            count = struct.unpack(">I", body[:4])[0]
            body = body[4:]
            runs = [body[:count].split(b"\0")[0].decode("latin-1")]
            body = body[count:]
        elif kind == b"mluc":   # multiLocalizedUnicodeType: records of UTF-16BE strings
            records, size = struct.unpack(">II", body[:8])
            runs = []
            for i in range(min(records, 64)):
                length, offset = struct.unpack(">II", body[12 + i * size:20 + i * size])
                runs.append(data[offset:offset + length].decode("utf-16-be", errors="ignore"))
            body = b""
        else:
            runs = []
    except struct.error:
        runs = []
    runs += [m.group(0).decode("ascii") for m in ASCII_RUN.finditer(body)]
    runs += [m.group(0).decode("utf-16-be") for m in UTF16_RUN.finditer(body)]
    # runs of four characters are tag and type signatures (which the rebuilt profile uses too)
    found = {run.strip() for run in runs if len(run.strip()) >= 5}
    # a counted string read as a run starts with its count byte: the string alone is enough
    return sorted(run for run in found if run[1:] not in found)


def _description(major: int, text: str) -> bytes:
    if major >= 4:
        return _mluc(text)
    ascii_text = text.encode("ascii") + b"\0"
    # textDescriptionType (ICC.1:2001-04 6.5.17): ASCII, an empty Unicode and ScriptCode part
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def _copyright(major: int, text: str) -> bytes:
    if major >= 4:
        return _mluc(text)
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _mluc(text: str) -> bytes:
    encoded = text.encode("utf-16-be")
    return (b"mluc\0\0\0\0" + struct.pack(">II", 1, 12) + b"enUS"
            + struct.pack(">II", len(encoded), 28) + encoded)


def _assemble(header: bytes, tags: dict[bytes, bytes]) -> bytes:
    """Header, tag table and tag data, each tag 4-byte aligned with zero padding; identical
    tag data (the three TRCs of a grey curve, say) stored once, as profiles usually do."""
    order = sorted(tags)
    table_end = HEADER + 4 + 12 * len(order)
    body = bytearray()
    placed: dict[bytes, int] = {}
    entries = []
    for signature in order:
        data = tags[signature]
        if data not in placed:
            placed[data] = table_end + len(body)
            body += data + bytes(-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, placed[data], len(data)))
    total = table_end + len(body)
    out = bytearray(header)
    out[0:4] = struct.pack(">I", total)
    out += struct.pack(">I", len(order)) + b"".join(entries) + body
    return bytes(out)
