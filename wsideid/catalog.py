"""Field catalogs: `formats/*.toml`, one per format, every known field with its action."""
from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import InstallError

NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
TIME = re.compile(r"\d{1,2}:\d{2}(:\d{2})?(\.\d+)?")
CODEC = re.compile(r"JPEG|PNG|BMP24|JPEG2000|JPEGXR|RAW")  # MIRAX image formats


def has_type(value: str, kind: str) -> bool:
    """Kept values must look like what the catalog says they are (a number cannot carry a name)."""
    if kind == "number":
        return bool(NUMBER.fullmatch(value))
    if kind == "time":
        return bool(TIME.fullmatch(value))
    if kind == "codec":
        return bool(CODEC.fullmatch(value))
    return "\x00" not in value


# A source checkout run without installing finds the catalogs beside the package.
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "formats"


def read_catalog(filename: str) -> str:
    """The text of one catalog shipped in the package `wsideid.formats` (formats/ in the
    repository). A missing catalog is a broken installation, never the input's fault."""
    try:
        source = resources.files("wsideid.formats") / filename
    except ModuleNotFoundError:
        source = CHECKOUT_DIR / filename
    try:
        return source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"field catalog {filename} is missing or unreadable in this "
                           f"installation ({getattr(exc, 'strerror', None) or exc}); "
                           "reinstall wsideid") from None


@dataclass(frozen=True)
class Entry:
    name: str
    action: str
    why: str
    type: str = "text"
    attributes: object = None  # OME elements: "*" or a list of attribute names kept


UNKNOWN = Entry("?", "remove", "not in the catalog: only fields known to be safe are kept")


class Catalog:
    def __init__(self, filename: str, section: str | None = None):
        try:
            data = tomllib.loads(read_catalog(filename))
        except tomllib.TOMLDecodeError as exc:
            raise InstallError(f"field catalog {filename} is not valid TOML ({exc})") from None
        self.filename = filename
        self.meta = data.get("catalog", {})
        self.exact: dict[str, Entry] = {}
        self.patterns: list[tuple[str, Entry]] = []
        entries = data.get(section, {}) if section else (data.get("fields") or data.get("tags") or {})
        for key, spec in entries.items():
            name = spec.get("name", key)
            attrs = spec.get("attributes")
            entry = Entry(name, spec["action"], spec.get("why", ""), spec.get("type", "text"),
                          tuple(attrs) if isinstance(attrs, list) else attrs)
            if "*" in key:
                self.patterns.append((key, entry))
            else:
                self.exact[key] = entry

    def knows(self, key: str | int) -> bool:
        return self.lookup(key) is not UNKNOWN

    def lookup(self, key: str | int) -> Entry:
        key = str(key)
        if key in self.exact:
            return self.exact[key]
        for pattern, entry in self.patterns:
            if fnmatch.fnmatchcase(key, pattern):
                return entry
        return UNKNOWN


@lru_cache(maxsize=None)
def load(name: str, section: str | None = None) -> Catalog:
    return Catalog(f"{name}.toml", section)
