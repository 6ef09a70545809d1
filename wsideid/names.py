"""Released names for an input tree: pseudonyms for folders, the lab's own export list
(`--mapping FILE.csv`, columns `original,pseudonym`), and the subject a slide belongs to.

An original of the mapping may be a folder name, a slide file's stem, or a barcode or
accession number read from the slide. Matching ignores case and Unicode normalisation; the
list is refused up front when one original has two pseudonyms, two originals share one
pseudonym, a pseudonym contains an original, or a pseudonym is not a safe file name.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .keyring import Keyring

# Fields a plan reads that name a slide or its case (matched against the mapping's originals).
IDENTIFIER_FIELDS = ("aperio:Barcode", "tiff:NDPI.SlideLabel", "mirax:general.SLIDE_BARCODE",
                     "mirax:record.BARCODE_VALUE", "dicom:BarcodeValue", "dicom:ContainerIdentifier",
                     "dicom:AccessionNumber")
# Extensions taken off a slide file's name to give its stem (longest first).
SLIDE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".ome.btf", ".svs", ".ndpi", ".mrxs", ".tiff", ".tif",
                    ".btf", ".dcm", ".scn", ".bif", ".vms", ".vmu", ".qptiff")
MAX_NAME_BYTES = 200


def normal(text: str) -> str:
    """How names are compared: Unicode NFC, case folded, surrounding blanks removed."""
    return unicodedata.normalize("NFC", text).strip().casefold()


def stem(name: str) -> str:
    lower = name.lower()
    for ext in SLIDE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return Path(name).stem


class MappingError(ValueError):
    pass


@dataclass
class Mapping:
    rows: dict[str, str] = field(default_factory=dict)   # normal(original) -> pseudonym
    digest: str = ""                                      # of the rows, for the journal

    def __bool__(self) -> bool:
        return bool(self.rows)

    def get(self, original: str) -> str | None:
        return self.rows.get(normal(original))


def read_mapping(path: Path) -> Mapping:
    """The lab's export list, checked whole before anything is written. Errors name line
    numbers, never the values."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MappingError("not UTF-8 text") from None
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = [h.strip().lower() for h in next(reader, [])]
    if "original" not in header or "pseudonym" not in header:
        raise MappingError("the first line must name the columns original,pseudonym")
    col_o, col_p = header.index("original"), header.index("pseudonym")
    rows: dict[str, str] = {}
    where: dict[str, int] = {}
    owner: dict[str, tuple[str, int]] = {}
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col_o, col_p):
            raise MappingError(f"line {number}: fewer columns than the header")
        original, pseudonym = row[col_o].strip(), unicodedata.normalize("NFC", row[col_p].strip())
        if not original or not pseudonym:
            raise MappingError(f"line {number}: an empty original or pseudonym")
        problem = unsafe_name(pseudonym)
        if problem:
            raise MappingError(f"line {number}: the pseudonym {problem}")
        key = normal(original)
        if key in rows and rows[key] != pseudonym:
            raise MappingError(f"lines {where[key]} and {number}: one original with two pseudonyms")
        other = owner.get(normal(pseudonym))
        if other is not None and other[0] != key:
            raise MappingError(f"lines {other[1]} and {number}: two originals mapped to one pseudonym")
        rows[key], where[key], owner[normal(pseudonym)] = pseudonym, number, (key, number)
    # an original inside a pseudonym, as written or spelled otherwise (fullwidth letters,
    # accents dropped, invisible characters, punctuation or spaces between its letters)
    skeletons = {s: n for s, n in ((skeleton(k), n) for k, n in where.items())
                 if len(s) >= MIN_SKELETON}
    for key, pseudonym in rows.items():
        for text, originals in ((normal(pseudonym), where), (skeleton(pseudonym), skeletons)):
            line = _contained(text, originals)
            if line is not None:
                raise MappingError(f"line {where[key]}: the pseudonym contains the original "
                                   f"of line {line}")
    digest = hashlib.sha256("\n".join(f"{k}\t{v}" for k, v in sorted(rows.items())).encode()).hexdigest()
    return Mapping(rows, digest)


MIN_SKELETON = 4
# besides letters and digits, what a pseudonym may hold: no slash, no character Windows
# forbids in a name, no control, format (zero-width, bidirectional) or private character
NAME_PUNCTUATION = frozenset(" -_.+()#,=@~")
RESERVED_NAMES = {"wsideid-report.json"}   # what the tool writes into OUTDIR itself
WINDOWS_DEVICES = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def skeleton(text: str) -> str:
    """A name's letters and digits only: compatibility forms folded (fullwidth, ligatures),
    accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum()).casefold()


def _contained(text: str, originals: dict[str, int]) -> int | None:
    """The line of an original that occurs in `text`, or None."""
    lengths = sorted({len(k) for k in originals})
    for start in range(len(text)):
        for size in lengths:
            if start + size > len(text):
                break
            line = originals.get(text[start:start + size])
            if line is not None:
                return line
    return None


def unsafe_name(name: str) -> str | None:
    """Why a pseudonym cannot be a file or folder name on every system a release may reach,
    or None."""
    if name in (".", "..") or name.startswith("."):
        return "starts with a dot"
    if any(c in name for c in "/\\"):
        return "holds a slash"
    if any(not (c.isalnum() or c in NAME_PUNCTUATION) for c in name):
        return ("holds a character other than letters, digits, spaces and - _ . + ( ) # , = @ ~ "
                "(a control, invisible or direction character, or one Windows forbids)")
    if name.startswith("-"):
        return "starts with a dash (commands would read it as an option)"
    if name.endswith((".", " ")) or WINDOWS_DEVICES.fullmatch(name):
        return "is a name Windows cannot hold (a device name, or a dot or space at its end)"
    if name.casefold() in RESERVED_NAMES:
        return "is the name of the audit report wsideid writes into OUTDIR"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass
class Namer:
    """Released names of one run: folder pseudonyms, slide names and subjects."""
    keyring: Keyring
    mapping: Mapping

    def folder(self, name: str) -> str:
        return self.mapping.get(name) or self.keyring.folder_pseudonym(name)

    def folders(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.folder(p) for p in parts)

    def slide(self, file_name: str | None, identifiers: list[str]) -> str:
        """The mapping's pseudonym for a slide, by its file's stem, then by a barcode or
        accession number read from it; "" when none matches (the keyed pseudonym is used)."""
        if not self.mapping:
            return ""
        if file_name is not None:
            hit = self.mapping.get(stem(file_name)) or self.mapping.get(file_name)
            if hit:
                return hit
        for value in identifiers:
            hit = self.mapping.get(value)
            if hit:
                return hit
        return ""

    def subject(self, parts: tuple[str, ...], mapped_slide: str) -> str:
        """Whose dates are shifted together: the outermost folder the mapping names, else the
        slide's own pseudonym from the mapping, else the top-level folder; "" for a slide
        lying directly in an input folder or named alone without a match (the key's shift)."""
        for part in parts:
            hit = self.mapping.get(part)
            if hit:
                return hit
        if mapped_slide:
            return mapped_slide
        return self.folder(parts[0]) if parts else ""
