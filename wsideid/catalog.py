"""Field catalogs: `formats/*.toml`, one per format, every known field with its action and type.

The catalogs ship inside the package (`wsideid.formats`; `formats/` in the repository).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import InstallError

# What a kept value may look like, by the type a catalog gives it (a number cannot carry a
# name). There is no free text: a kept value has a type with a grammar, from this table or
# from formats/types.toml (vocabularies of real products, versions, filter names, ...).
_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
TYPES = {
    "number": re.compile(_NUMBER),
    # one number, or a comma-separated list of numbers of one shape (no slashes, dashes or
    # spaces between them: those make dates and record numbers)
    "numbers": re.compile(rf"{_NUMBER}(,{_NUMBER}){{0,63}}"),
    "time": re.compile(r"\d{1,2}:\d{2}(:\d{2})?(\.\d+)?"),
    "codec": re.compile(r"JPEG|PNG|BMP24|JPEG2000|JPEGXR|RAW"),   # MIRAX image formats
    "boolean": re.compile(r"true|false|0|1"),
    # OME IDs once made canonical (adapters/ometiff.py): the element's type and small indices
    "lsid": re.compile(r"[A-Z][A-Za-z]{1,31}(:Resolution)?(:\d{1,4}){1,4}"),
    # a binary TIFF tag's value is checked by its field type, count and its own rule
    # (adapters/tiff.py); as text it is nothing
    "binary": re.compile(r""),
}
TYPE_WORDS = {"number": "a number", "numbers": "numeric", "time": "a time", "codec": "a codec",
              "boolean": "a boolean", "enum": "a word of the format's vocabulary",
              "unit": "a unit", "lsid": "an identifier", "text": "known (free text is not kept)"}
NUMBER = TYPES["number"]
TIME = TYPES["time"]
# Types whose values are checked elsewhere against a vocabulary (the OME schema's
# enumerations): the catalog entry names the vocabulary, the adapter applies it.
VOCABULARY_TYPES = ("enum", "unit")
# "marker": a line without a value that a format uses as a heading (kept as it is).
# "date": a calendar date, transformed by the date policy (dates.py), never kept as it is.
STRUCTURAL_TYPES = ("marker", "date")


@lru_cache(maxsize=1)
def shared_grammars() -> dict[str, re.Pattern]:
    """Every grammar a catalog may name: the built-in TYPES and formats/types.toml."""
    table = {name: re.compile(rx) for name, rx in read_toml("types.toml").get("types", {}).items()}
    return {**table, **TYPES}


def grammar_of(kind: str) -> re.Pattern | None:
    return shared_grammars().get(kind)


def has_type(value: str, kind: str) -> bool:
    """Whether a value to be kept looks like what its catalog says it is. A type without a
    grammar (`text`, the default) accepts nothing: free text is never kept."""
    pattern = grammar_of(kind)
    return pattern is not None and _shaped(pattern, kind, value)


def _shaped(pattern: re.Pattern, kind: str, value: str) -> bool:
    """The value matches the pattern whole, and a number of a numeric type holds no record
    number or date."""
    return bool(pattern.fullmatch(value)) and not (kind in NUMERIC_TYPES and record_number_in(value))


NUMERIC_TYPES = ("number", "numbers")
# the whole part of a number: digits that do not follow a decimal point (an exponent's digits
# follow a sign and count, but are never nine)
_WHOLE_PART = re.compile(r"(?<![\d.])\d+")


def record_number_in(value: str) -> bool:
    """Whether a number holds more whole digits than any measurement or count of a slide (nine
    or more: a record, phone or social security number) or is an eight-digit calendar date
    (19000101-20991231). Fractions are not bounded: a DICOM spacing has fifteen decimals."""
    for run in _WHOLE_PART.findall(value):
        digits = run.lstrip("0")
        if len(digits) >= 9 or (len(digits) == 8 and _calendar_date(digits)):
            return True
    return False


def _calendar_date(digits: str) -> bool:
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:])
    return 1900 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31


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
        return _shaped(entry.grammar, entry.type, value)
    return has_type(value, entry.type)


def has_grammar(entry: Entry) -> bool:
    """Whether a kept entry says what its values look like (a grammar, a vocabulary checked by
    its adapter, or a structural type)."""
    return (entry.grammar is not None or grammar_of(entry.type) is not None
            or entry.type in VOCABULARY_TYPES + STRUCTURAL_TYPES)


UNKNOWN = Entry("?", "remove", "not in the catalog: only fields known to be safe are kept")


KEY_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")   # camel case and capitals
KEY_SEPARATOR = re.compile(r"[_./ ]")


class Catalog:
    """A key the catalog lists exactly, or one matched by a pattern whose wildcard part is made
    of the format's own words (`key_words` in the catalog) and of numbers only where the
    vendor writes them (`key_numbers`: an index `[0]`, a magnification `10x`, ...): a key name
    is the slide's text too, so a pattern cannot let a made-up name or number through."""

    def __init__(self, filename: str, section: str | None = None):
        data = read_toml(filename)
        self.filename = filename
        self.meta = data.get("catalog", {})
        self.key_words = {w.lower() for w in self.meta.get("key_words", [])}
        # a number token is whole: never followed by another digit ("47" of "4711" is no index)
        self.key_numbers = [re.compile(f"(?:{rx})(?!\\d)") for rx in self.meta.get("key_numbers", [])]
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

    def entries(self) -> list[tuple[str, Entry]]:
        """Every entry with the key (or pattern) it is listed under."""
        return list(self.exact.items()) + [(p.pattern, e) for p, e in self.patterns]

    def knows(self, key: str | int) -> bool:
        return self.lookup(key) is not UNKNOWN

    def lookup(self, key: str | int) -> Entry:
        key = str(key)
        if key in self.exact:
            return self.exact[key]
        for pattern, entry in self.patterns:
            match = pattern.fullmatch(key)
            if match and all(self._made_of_words(part) for part in match.groups()):
                return _unless_named_identifier(entry, key)
        return UNKNOWN

    def _made_of_words(self, part: str) -> bool:
        """Words of the format (single letters too only when listed: R, G, B, X, ...),
        separators, and numbers of the shapes the vendor uses; nothing else."""
        pos = 0
        while pos < len(part):
            for rule in [*self.key_numbers, KEY_WORD, KEY_SEPARATOR]:
                match = rule.match(part, pos)
                if match and match.end() > pos:
                    break
            else:
                return False
            token = match.group(0)
            if rule is KEY_WORD and token.lower() not in self.key_words:
                return False
            pos = match.end()
        return True


@lru_cache(maxsize=None)
def identifier_words() -> frozenset[str]:
    """formats/types.toml [key_names]: words that announce an identifier in a key's name."""
    return frozenset(w.lower() for w in
                     read_toml("types.toml").get("key_names", {}).get("identifier_words", []))


def _unless_named_identifier(entry: Entry, key: str) -> Entry:
    """A key kept only because a pattern matched it is removed when a word of its name
    announces an identifier (`roi.barcode.no`): the pattern stands for geometry and settings.
    Dates and device serials have their own actions and options: left to them."""
    if entry.action != "keep":
        return entry
    words = {w.lower() for w in KEY_WORD.findall(key)}
    named = sorted(words & identifier_words())
    if not named:
        return entry
    return replace(entry, action="remove",
                   why=f"matched only by a pattern, and its name says {named[0]!r}: an identifier")


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
