"""Search raw bytes for identifier strings: ASCII/UTF-8, Latin-1 and UTF-16, any case."""
from __future__ import annotations

import os
from pathlib import Path

CHUNK = 64 << 20
MIN_NEEDLE = 4


def needle_forms(needle: str) -> set[bytes]:
    forms: set[bytes] = set()
    for variant in {needle, needle.lower(), needle.upper()}:
        for encoding in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            try:
                forms.add(variant.encode(encoding).lower())
            except UnicodeEncodeError:
                pass
    return forms


def usable(values, kept_texts=(), min_len: int = MIN_NEEDLE) -> list[str]:
    """Needles worth searching: long enough to mean something, and not part of what is kept."""
    kept = [k.lower() for k in kept_texts if k]
    out = set()
    for value in values:
        value = value.strip().strip("\x00")
        if len(value) < min_len:
            continue
        if any(value.lower() in k for k in kept):
            continue
        out.add(value)
    return sorted(out)


def find_in(data: bytes, needles: list[str]) -> list[str]:
    low = data.lower()
    return [n for n in needles if any(form in low for form in needle_forms(n))]


def find_in_file(path: Path, needles: list[str]) -> list[str]:
    """Search a whole file, in chunks that overlap by the longest needle form."""
    if not needles:
        return []
    forms = {n: needle_forms(n) for n in needles}
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
