"""Search raw bytes for identifier strings: ASCII/UTF-8, Latin-1 and UTF-16, any case."""
from __future__ import annotations

import os
import re
from pathlib import Path

CHUNK = 64 << 20
MIN_NEEDLE = 4
BARE_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
# values that say a field is empty or unnamed: no identifier, and words kept values use
# ("--- none ---", "Slide zoom level")
PLACEHOLDERS = {"none", "null", "n/a", "unknown", "empty", "default", "true", "false", "slide",
                "image"}
NUMBER_TOKEN = re.compile(r"(?<![\d.])[+-]?\d+(?:\.\d+)?(?![\d.])")


def needle_forms(needle: str) -> set[bytes]:
    forms: set[bytes] = set()
    for variant in {needle, needle.lower(), needle.upper()}:
        for encoding in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            try:
                forms.add(variant.encode(encoding).lower())
            except UnicodeEncodeError:
                pass
    return forms


MAX_NEEDLE = 1024   # longer values are searched for by three slices of SLICE characters
SLICE = 256


def pieces(value: str) -> list[str]:
    """What to search for one value: itself, or, past MAX_NEEDLE characters, its start,
    middle and end (any survival of the whole value contains all three, and memory stays
    bounded: the encoded forms of a 50 MB value would take a gigabyte)."""
    if len(value) <= MAX_NEEDLE:
        return [value]
    mid = len(value) // 2
    return [value[:SLICE], value[mid - SLICE // 2: mid + SLICE // 2], value[-SLICE:]]


def usable(values, kept_texts=(), min_len: int = MIN_NEEDLE, written=()) -> list[str]:
    """Needles worth searching: every removed value long enough to mean something, unless the
    output holds it on purpose as a whole: a kept value equal to it (AppMag kept in level 0 and
    removed with a dropped label's description), or a number that is a whole number of a kept
    value, or a placeholder ("None", "slide"). A removed value inside a kept one in any other
    way (a name in a model string) is searched for, so that its survival fails verification
    instead of being skipped. Inside a value the tool wrote itself (a dummy, a pseudonym, a
    shifted date) a removed value is a coincidence of digits: skipped. A value past MAX_NEEDLE
    characters is searched for by its pieces (decided on the whole value first)."""
    kept = {k.strip().lower() for k in kept_texts if k}
    kept_numbers = {n for k in kept for n in NUMBER_TOKEN.findall(k)}
    own = [w.lower() for w in written if w]
    out = set()
    for value in values:
        value = value.strip().strip("\x00")
        if len(value) < min_len:
            continue
        low = value.lower()
        if (low in kept or low in PLACEHOLDERS or any(low in w for w in own)
                or (BARE_NUMBER.fullmatch(value) and _same_number(value, kept_numbers))):
            continue
        out.update(pieces(value))
    return sorted(out)


def _same_number(value: str, kept_numbers: set[str]) -> bool:
    """A kept number with the same value (0.499 removed, 0.4990 kept: the kept one is found)."""
    if value in kept_numbers:
        return True
    try:
        number = float(value)
    except ValueError:
        return False
    return any(_float(k) == number for k in kept_numbers)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _forms(needle: str) -> set[bytes]:
    return {f for piece in pieces(needle) for f in needle_forms(piece)}


def find_in(data: bytes, needles: list[str]) -> list[str]:
    low = data.lower()
    return [n for n in needles if any(form in low for form in _forms(n))]


def find_in_ranges(fd: int, ranges, needles: list[str]) -> list[str]:
    """Search byte ranges of an open file, each in chunks that overlap by the longest needle
    form; stretches of zeros (a gap the writer cleared) hold no needle and are skipped."""
    if not needles:
        return []
    forms = {n: _forms(n) for n in needles}
    overlap = max(len(f) for fs in forms.values() for f in fs)
    found: set[str] = set()
    zeros = bytes(CHUNK + overlap)
    for start, end in ranges:
        pos = start
        while pos < end:
            n = min(CHUNK + overlap, end - pos)
            data = os.pread(fd, n, pos)
            if data != zeros[:len(data)]:
                low = data.lower()
                for needle, fs in forms.items():
                    if needle not in found and any(f in low for f in fs):
                        found.add(needle)
            pos += CHUNK
    return sorted(found)


def find_in_file(path: Path, needles: list[str]) -> list[str]:
    """Search a whole file, in chunks that overlap by the longest needle form."""
    if not needles:
        return []
    forms = {n: _forms(n) for n in needles}
    overlap = max(len(f) for fs in forms.values() for f in fs)
    found: set[str] = set()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos < size:
            data = os.pread(fh.fileno(), CHUNK + overlap, pos).lower()
            for n, fs in forms.items():
                if n not in found and any(f in data for f in fs):
                    found.add(n)
            pos += CHUNK
    return sorted(found)
