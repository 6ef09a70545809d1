"""Slidedat.ini: the MIRAX key file, read and written the way OpenSlide's reader expects.

OpenSlide reads it with GLib's GKeyFile (openslide-vendor-mirax.c): UTF-8, an optional BOM,
`[group]` lines, `key=value` lines with the spaces around `=` ignored, `#` comments. The
scanner writes a BOM and CRLF line ends; this writer does the same and never shortens a line.
"""
from __future__ import annotations

import re

from ...errors import SlideError

BOM = b"\xef\xbb\xbf"
GENERAL, HIERARCHICAL, DATAFILE = "GENERAL", "HIERARCHICAL", "DATAFILE"
INDEX_NAME = "Index.dat"
SCANNER_SECTION = re.compile(r"(NONHIER)?LAYER_\d+(_LEVEL_\d+)?_SECTION")
MAX_SIZE = 1 << 20  # OpenSlide refuses larger Slidedat.ini files (SLIDEDAT_MAX_SIZE)


class Slidedat:
    def __init__(self, sections: dict[str, dict[str, str]], bom: bool = True,
                 repeated: dict[str, set[str]] | None = None):
        self.sections = sections
        self.bom = bom
        # keys given more than once in a group with different values (GKeyFile keeps the last)
        self.repeated = repeated or {}

    @classmethod
    def parse(cls, data: bytes) -> Slidedat:
        if len(data) > MAX_SIZE:
            raise SlideError(f"Slidedat.ini is larger than {MAX_SIZE} bytes")
        bom = data.startswith(BOM)
        try:
            text = data[len(BOM) if bom else 0:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SlideError(f"Slidedat.ini is not UTF-8 (byte {exc.start})") from None
        sections: dict[str, dict[str, str]] = {}
        repeated: dict[str, set[str]] = {}
        current: dict[str, str] | None = None
        group = ""
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                group = line[1:-1]
                current = sections.setdefault(group, {})   # repeated groups merge (GKeyFile)
                continue
            key, eq, value = line.partition("=")
            if not eq or current is None or not key.strip():
                raise SlideError(f"Slidedat.ini line {number} is not a group, key=value or comment")
            key, value = key.strip(), value.strip()
            if current.get(key, value) != value:
                repeated.setdefault(group, set()).add(key)
            current[key] = value
        return cls(sections, bom, repeated)

    def to_bytes(self) -> bytes:
        lines: list[str] = []
        for name, keys in self.sections.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {value}" for key, value in keys.items()]
        return (BOM if self.bom else b"") + ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def value(self, section: str, key: str) -> str:
        if section not in self.sections:
            raise SlideError(f"Slidedat.ini: section {_named(section)} is missing")
        if key not in self.sections[section]:
            raise SlideError(f"Slidedat.ini: {key} is missing in section {_named(section)}")
        if key in self.repeated.get(section, ()):
            raise SlideError(f"Slidedat.ini: {key} is repeated with different values in section "
                             f"{_named(section)}; readers disagree on which one counts")
        return self.sections[section][key]

    def integer(self, section: str, key: str, minimum: int = 0) -> int:
        """Errors name the key but never quote the value: they go into the audit report."""
        text = self.value(section, key)
        try:
            number = int(text)
        except ValueError:
            raise SlideError(f"Slidedat.ini: {key} in section {_named(section)} is not a whole number") from None
        if number < minimum:
            raise SlideError(f"Slidedat.ini: {key} in section {_named(section)} is {number} "
                             f"(must be >= {minimum})")
        return number


def _named(section: str) -> str:
    """A section as errors may name it: the format's own names, else only that it is one that
    [HIERARCHICAL] refers to (its name is the slide's text)."""
    if section in (GENERAL, HIERARCHICAL, DATAFILE) or SCANNER_SECTION.fullmatch(section):
        return f"[{section}]"
    return "(a name [HIERARCHICAL] refers to)"


def data_file_name(number: int) -> str:
    """Output data files are named the scanner's way, whatever the input called them."""
    return f"Data{number:04d}.dat"
