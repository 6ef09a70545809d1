"""Field catalogs: `formats/*.toml`, one per format, every known field with its action and type.

The catalogs ship inside the package (`wsideid.formats`; `formats/` in the repository).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import InstallError

# What a kept value may look like, by the type a catalog gives it (a number cannot carry a name).
TYPES = {
    "number": re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"),
    "numbers": re.compile(r"[-+0-9.,:%eE /_]*"),      # lists, ranges and ratios of numbers
    "time": re.compile(r"\d{1,2}:\d{2}(:\d{2})?(\.\d+)?"),
    "codec": re.compile(r"JPEG|PNG|BMP24|JPEG2000|JPEGXR|RAW"),   # MIRAX image formats
    "boolean": re.compile(r"true|false|0|1"),
    "enum": re.compile(r"[A-Za-z0-9_+\-:]{1,64}"),          # a word from a fixed vocabulary
    "unit": re.compile(r"[^\s<>&\"']{1,16}"),                # um, nm, degrees C, ...
    "lsid": re.compile(r"[^\s<>&\"']{1,200}:[^\s<>&\"']{1,200}"),  # OME IDs (Type:n, urn:lsid:...)
}
TYPE_WORDS = {"number": "a number", "numbers": "numeric", "time": "a time", "codec": "a codec",
              "boolean": "a boolean", "enum": "a word of the format's vocabulary",
              "unit": "a unit", "lsid": "an identifier"}
NUMBER = TYPES["number"]
TIME = TYPES["time"]


# "marker": a line without a value that a format uses as a heading (kept as it is).


def has_type(value: str, kind: str) -> bool:
    """Whether a value to be kept looks like what its catalog says it is."""
    pattern = TYPES.get(kind)
    if pattern is not None:
        return bool(pattern.fullmatch(value))
    return "\x00" not in value


def type_word(kind: str) -> str:
    return TYPE_WORDS.get(kind, f"a {kind}")


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


@lru_cache(maxsize=None)
def read_toml(filename: str) -> dict:
    try:
        return tomllib.loads(read_catalog(filename))
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"field catalog {filename} is not valid TOML ({exc})") from None


@dataclass(frozen=True)
class Entry:
    name: str
    action: str
    why: str
    type: str = "text"
    attributes: object = None  # OME elements: "*" or a list of attribute names kept
    tiff_type: tuple[str, ...] | None = None   # TIFF tags: the field types the standard allows
    count: str | None = None                   # TIFF tags: how many values (see tiff-tags.toml)
    required: bool = False                     # TIFF tags: the image cannot be read without it
    grammar: re.Pattern | None = None          # the catalog's own definition of `type`


def entry_accepts(entry: Entry, value: str) -> bool:
    """Whether a value to be kept is what the entry says it is."""
    if entry.grammar is not None:
        return bool(entry.grammar.fullmatch(value))
    return has_type(value, entry.type)


UNKNOWN = Entry("?", "remove", "not in the catalog: only fields known to be safe are kept")


KEY_PART = re.compile(r"[A-Za-z0-9_.\[\]/ ]*")


class Catalog:
    """A key the catalog lists exactly, or one matched by a pattern whose wildcard part is made
    of the format's own words (`key_words` in the catalog): a key name is the slide's text too,
    so a pattern cannot let a made-up name through."""

    def __init__(self, filename: str, section: str | None = None):
        data = read_toml(filename)
        self.filename = filename
        self.meta = data.get("catalog", {})
        self.key_words = {w.lower() for w in self.meta.get("key_words", [])}
        # grammars of free-text types: formats/types.toml, and a catalog's own [types]
        grammars = {name: re.compile(rx) for name, rx in
                    {**read_toml("types.toml").get("types", {}), **data.get("types", {})}.items()}
        self.exact: dict[str, Entry] = {}
        self.patterns: list[tuple[str, Entry]] = []
        entries = data.get(section, {}) if section else (data.get("fields") or data.get("tags") or {})
        for key, spec in entries.items():
            name = spec.get("name", key)
            attrs = spec.get("attributes")
            # a field under the date action holds a date unless the catalog says otherwise
            kind = spec.get("type", "date" if spec["action"] == "date" else "text")
            types = spec.get("tiff_type")
            entry = Entry(name, spec["action"], spec.get("why", ""), kind,
                          tuple(attrs) if isinstance(attrs, list) else attrs,
                          tuple(types) if types else None, spec.get("count"),
                          bool(spec.get("required", False)), grammars.get(kind))
            if "*" in key:
                wild = re.compile("(.*?)".join(re.escape(p) for p in key.split("*")), re.DOTALL)
                self.patterns.append((wild, entry))
            else:
                self.exact[key] = entry

    def knows(self, key: str | int) -> bool:
        return self.lookup(key) is not UNKNOWN

    def lookup(self, key: str | int) -> Entry:
        key = str(key)
        if key in self.exact:
            return self.exact[key]
        for pattern, entry in self.patterns:
            match = pattern.fullmatch(key)
            if match and all(self._made_of_words(part) for part in match.groups()):
                return entry
        return UNKNOWN

    def _made_of_words(self, part: str) -> bool:
        if not KEY_PART.fullmatch(part):
            return False
        words = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", part)   # camel case and capitals
        return all(len(w) == 1 or w.lower() in self.key_words for w in words)


# The catalog that decides the fields named with each prefix (a report cites, per slide, the
# catalogs its fields came from). Text segments inside codestreams (jpeg:, codestream:) follow
# fixed rules, not a catalog.
CATALOG_OF_PREFIX = {"tiff": "tiff-tags.toml", "exif": "tiff-tags.toml", "gps": "tiff-tags.toml",
                     "aperio": "aperio-svs.toml", "ndpi": "hamamatsu-ndpi.toml",
                     "ome": "ome-tiff.toml", "mirax": "mirax.toml", "dicom": "dicom-ps3.15.toml"}


def catalogs_of(field_names) -> list[str]:
    """The catalog files that decided fields of these names."""
    return sorted({CATALOG_OF_PREFIX[p] for p in (n.split(":", 1)[0] for n in field_names)
                   if p in CATALOG_OF_PREFIX})


def describe(filename: str) -> dict:
    """A catalog's format, version and the digest of its text (what a report cites)."""
    import hashlib

    meta = read_toml(filename).get("catalog", {})
    return {"format": meta.get("format", ""), "version": meta.get("version", ""),
            "sha256": hashlib.sha256(read_catalog(filename).encode("utf-8")).hexdigest()}


@lru_cache(maxsize=None)
def load(name: str, section: str | None = None) -> Catalog:
    return Catalog(f"{name}.toml", section)


def lookup(catalogs, key: str | int) -> Entry:
    """The entry of the first catalog that knows `key` (a vendor's before the standard's)."""
    for cat in catalogs:
        entry = cat.lookup(key)
        if entry is not UNKNOWN:
            return entry
    return UNKNOWN
