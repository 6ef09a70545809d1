"""Aperio SVS.

ImageDescription (every IFD): a header of one or more `;`-joined parts, each a product line
(`Aperio Image Library v11.2.1`) and a geometry line (`46000x32914 [0,100 46000x32914]
(256x256) JPEG/RGB Q=30`, or `label 387x463` for associated images), then `|key = value`
pairs. OpenSlide detects the format by the leading "Aperio", reads `aperio.*` properties from
IFD 0's pairs, and names associated images by the first word of the description's second line.

IFD order (Aperio data interchange note, as OpenSlide documents it): level 0 (tiled),
thumbnail (stripped, IFD 1), further tiled levels, then label and macro (stripped). GT450 leaves
label/macro descriptions empty and marks them with NewSubfileType 1 (label) and 9 (macro).
"""
from __future__ import annotations

import re

from .. import catalog
from ..model import Field
from ..policy import Policy
from ..pseudonym import transform_date
from ..tiff.reader import Ifd, TiffFile
from .tiffbase import TiffSlide

HEADER_TOKEN = re.compile(r"""(?x)
    Aperio|Image|Library|Leica|Biosystems|ImageServer|ScanScope|Format|Versa|
    GT\d{2,4}|AT2?|CS2?|DX|v\d+(?:\.\d+)*[a-z]?|\(fake\)|
    \d+x\d+|\[\d+,\d+|\d+x\d+\]|\[\d+,\d+,\d+x\d+\]|\(\d+x\d+\)|->|-|
    (?:JPEG|J2K|JP2K|LZW|RAW|NONE|DEFLATE)(?:/(?:RGB|YCC|YCbCr|KDU|RAW))?|Q=\d+|
    label|macro|thumbnail
""")
LINE_SPLIT = re.compile(r"(\r\n|\r|\n)")
TIME = catalog.TIME


def is_aperio(tiff: TiffFile) -> bool:
    text = tiff.ifds[0].text(270)
    return bool(text) and text.startswith("Aperio")


def split_description(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    header, *parts = text.split("|")
    pairs: list[tuple[str, str | None]] = []
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            pairs.append((key.strip(), value.strip()))
        else:
            pairs.append((part.strip(), None))
    return header, pairs


def clean_header(header: str) -> tuple[str, list[str]]:
    """Keep only known header tokens; returns the header and the tokens that were dropped."""
    dropped: list[str] = []
    out_parts = []
    for part in header.split(";"):
        pieces = LINE_SPLIT.split(part)
        for i in range(0, len(pieces), 2):
            tokens = pieces[i].split(" ")
            kept = [t for t in tokens if t == "" or HEADER_TOKEN.fullmatch(t)]
            dropped += [t for t in tokens if t and not HEADER_TOKEN.fullmatch(t)]
            if len(kept) != len(tokens):
                pieces[i] = " ".join(t for t in kept if t)
        out_parts.append("".join(pieces))
    return ";".join(out_parts), dropped


class SvsSlide(TiffSlide):
    format = "aperio-svs"
    extension = ".svs"

    def __init__(self, path, tiff=None):
        self.fields_catalog = catalog.load("aperio-svs")
        super().__init__(path, tiff)

    def classify(self) -> list[str]:
        roles = []
        for i, ifd in enumerate(self.tiff.ifds):
            if 322 in ifd.tags:
                roles.append("level")
            elif i == 1:
                roles.append("thumbnail")
            else:
                roles.append(self._associated_role(ifd))
        return roles

    def _associated_role(self, ifd: Ifd) -> str:
        lines = [line for line in LINE_SPLIT.split(ifd.text(270) or "")[2::2]]
        word = lines[0].split(" ", 1)[0].strip().lower() if lines else ""
        if word in ("label", "macro"):
            return word
        subfile = ifd.int_value(254, self.bo, 0) or 0
        if subfile == 9:
            return "macro"
        if subfile == 1:
            return "label"
        return "unknown"

    def describe(self, ifd: Ifd, text: str, policy: Policy) -> tuple[str | None, list[Field]]:
        where = f"{ifd.label} ImageDescription"
        if not text.startswith("Aperio"):
            if not text.strip():
                return text, []
            return None, [Field("aperio:description", where, text, "remove",
                                why="not an Aperio description")]
        header, pairs = split_description(text)
        fields: list[Field] = []
        new_header, dropped = clean_header(header)
        for token in dropped:
            fields.append(Field("aperio:header", f"{where} header", token, "remove",
                                why="header token that is not a product name, size or codec"))
        fields.append(Field("aperio:header", f"{where} header", "", "keep",
                            why="product line and geometry; OpenSlide detects Aperio by it"))
        out = [new_header]
        for key, value in pairs:
            field = self._plan_pair(key, value, where, policy)
            fields.append(field)
            if field.action == "keep":
                out.append(f"{key} = {value}")
            elif field.action == "date":
                out.append(f"{key} = {field.new_value}")
        return "|".join(out), fields

    def _plan_pair(self, key: str, value: str | None, where: str, policy: Policy) -> Field:
        name = f"aperio:{key}"
        if value is None:
            return Field(name, where, key, "remove", why="fragment without '='", known=False)
        entry = self.fields_catalog.lookup(key)
        known = entry is not catalog.UNKNOWN
        action = policy.field_action(entry.action)
        if action == "keep" and not catalog.has_type(value, entry.type):
            return Field(name, where, value, "remove", why=f"value is not a {entry.type}",
                         known=known)
        if action == "date":
            if entry.type == "date":
                new = transform_date(value, policy.dates, policy.date_shift_days)
                if new is None:
                    return Field(name, where, value, "remove", why=entry.why + " (not a date)")
                return Field(name, where, value, "date", new, why=entry.why)
            action = "keep" if policy.dates == "shift" else "remove"
            if action == "keep" and entry.type == "time" and not TIME.fullmatch(value):
                return Field(name, where, value, "remove", why="value is not a time")
        return Field(name, where, value, action, why=entry.why, known=known)
